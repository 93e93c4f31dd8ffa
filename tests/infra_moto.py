"""moto's server, for tests/infra_deploy.py, with one gap of moto 5.2 filled in.

    python tests/infra_moto.py -H 127.0.0.1 -p PORT

moto's CloudFormation creates every AWS::ElasticLoadBalancingV2::LoadBalancer as an application
load balancer, whatever its Type, and then refuses a network load balancer's TCP and TLS listeners.
This passes Type (and nothing else new) through to moto's own create_load_balancer, which handles
network load balancers when called through the ELBv2 API. Everything else is moto_server as is.
"""

import sys

from moto.elbv2.models import FakeLoadBalancer, elbv2_backends
from moto.server import main


def _create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    properties = cloudformation_json["Properties"]
    return elbv2_backends[account_id][region_name].create_load_balancer(
        resource_name,
        properties.get("SecurityGroups"),
        properties.get("Subnets"),
        scheme=properties.get("Scheme", "internet-facing"),
        loadbalancer_type=properties.get("Type", "application"),
    )


FakeLoadBalancer.create_from_cloudformation_json = classmethod(_create_from_cloudformation_json)

if __name__ == "__main__":
    main(sys.argv[1:])
