"""Deploys the templates of infra/ to moto's CloudFormation and checks what comes up.

    python tests/infra_deploy.py --endpoint http://127.0.0.1:PORT [--host-bin PATH] [--out DIR]

infra/managed.yaml is a SAM template: it is first transformed offline with aws-sam-translator (no
network: the managed-policy loader answers from an empty map, since the template names no managed
policy; CodeUris become s3:// objects uploaded to moto's S3). infra/self-hosted.yaml is plain
CloudFormation; it gets a VPC, subnets and an ACM certificate made in moto first. Each stack must
reach CREATE_COMPLETE, then the resources moto really creates are compared with what the templates
mean: DynamoDB keys and indexes (STORE.md's schema for the host's tables), IAM roles and their
policies (least privilege), Lambda functions and their invoke permissions, log group retention,
ECS, load balancers and security groups; the CloudWatch dashboard (its body, as deployed, parses and
shows the mode's metrics and the stack's alarms) and alarms (their metrics, dimensions and statistics).

What moto 5.2 does not do, and how this copes (each is listed in the output as "note"):
- it creates no AWS::ApiGatewayV2::* resource and no AWS::SecretsManager::Secret, and leaves a
  reference to them inside Fn::Sub as the literal text (`${WebSocketApi}`): the API resources are
  checked in the transformed template, and ARNs that contain the API ID are compared with the
  literal placeholder in it;
- it does not apply TimeToLiveSpecification, nor a Lambda function's Architectures, and creates no
  AWS::CloudWatch::Alarm: these are checked in the template;
- its AWS::Logs::LogGroup Arn lacks the ":*" that AWS appends; the comparison ignores it;
- its CloudFormation makes every load balancer an application load balancer: tests/infra_moto.py
  (the moto server this step runs) passes the Type through.

Then localstack/: the table definitions its init script feeds LocalStack are created on moto and
compared with the same schemas, and its compose file and host configuration are read and compared
with the init scripts. Last, connection-host/docker-entrypoint.sh runs with stand-ins for the host
and the ECS task metadata endpoint.

With --host-bin, the host configurations (the one self-hosted.yaml hands to its containers, and
localstack/connection-host.toml) are also checked by `connection-host config check`.

Prints one line per check ("ok" / "FAILED") and, last, "infra: N passed, M failed"; exits 1 when a
check failed or a stack did not deploy. Needs boto3, aws-sam-translator and aws-sam-cli (for its
YAML loader, which reads !Ref and friends).
"""

import argparse
import ast
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig
from samcli.yamlhelper import yaml_parse
from samtranslator.translator.transform import transform

ROOT = Path(__file__).resolve().parent.parent
MANAGED = ROOT / "infra" / "managed.yaml"
SELF_HOSTED = ROOT / "infra" / "self-hosted.yaml"
# The name the functions call the @connections API by, in the test deployment.
MANAGEMENT_DOMAIN = "management.ws.example.test"
LOCALSTACK = ROOT / "localstack"
ENTRYPOINT = ROOT / "connection-host" / "docker-entrypoint.sh"
REGION = "us-east-1"
CODE_BUCKET = "infra-test-function-code"
FUNCTIONS = ("chat", "echo", "authorizer")
STAGE = "dev"
ACCOUNT = "123456789012"
# What moto leaves in place of the API's ID (a resource it does not create).
API_PLACEHOLDER = "${WebSocketApi}"


# connection-host/STORE.md, "Schema": (key schema, attribute definitions, indexes, TTL attribute).
CONNECTIONS_SCHEMA = (
    [("connectionId", "HASH")],
    {"connectionId": "S", "ownerHost": "S"},
    {"byOwner": ([("ownerHost", "HASH"), ("connectionId", "RANGE")], "ALL")},
    "ttl",
)
GROUPS_SCHEMA = (
    [("group", "HASH"), ("connectionId", "RANGE")],
    {"group": "S", "connectionId": "S"},
    {"byConnection": ([("connectionId", "HASH"), ("group", "RANGE")], "KEYS_ONLY")},
    "ttl",
)
SESSIONS_SCHEMA = (
    [("connectionId", "HASH"), ("item", "RANGE")],
    {"connectionId": "S", "item": "S"},
    {},
    "ttl",
)
# functions/src/rooms/dynamodb.rs.
ROOMS_SCHEMA = (
    [("room", "HASH"), ("connectionId", "RANGE")],
    {"room": "S", "connectionId": "S"},
    {"byConnection": ([("connectionId", "HASH"), ("room", "RANGE")], "ALL")},
    "expiresAt",
)
# What functions/demo.toml routes, plus the two-way echo route of the templates.
HOST_ROUTES = {
    "$connect": {"integration": "chat", "authorizer": "guest"},
    "$disconnect": {"integration": "chat"},
    "$default": {"integration": "chat"},
    "echo": {"integration": "echo", "two_way": True},
}


class Checks:
    """Counts and prints checks; a failed check never stops the others."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok      {name}")
        else:
            self.failed += 1
            print(f"FAILED  {name}" + (f": {detail}" if detail else ""))
        return ok

    def equal(self, name, actual, expected):
        if isinstance(actual, dict) and isinstance(expected, dict):
            # Only what differs: role grants and environments are long.
            detail = "; ".join(
                f"{key!r}: expected {expected.get(key, '(absent)')!r}, got {actual.get(key, '(absent)')!r}"
                for key in sorted(set(actual) | set(expected), key=str)
                if actual.get(key, ...) != expected.get(key, ...)
            )
        else:
            detail = f"expected {expected!r}, got {actual!r}"
        return self.check(name, actual == expected, detail)


class NoNetworkPolicyLoader:
    """aws-sam-translator's managed-policy loader, without IAM: the templates name no managed
    policy, so there is nothing to look up."""

    def load(self):
        return {}


def clients(endpoint):
    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
    )
    config = BotoConfig(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=60)
    return lambda service: session.client(service, endpoint_url=endpoint, config=config)


def code_zip():
    """A stand-in for a cargo-lambda zip: moto's Lambda never runs the code."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        z.writestr(info, "#!/bin/sh\necho 'placeholder: build with cargo lambda' >&2\nexit 1\n")
    return buffer.getvalue()


def upload_code(aws, prefix):
    s3 = aws("s3")
    try:
        s3.create_bucket(Bucket=CODE_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    for name in FUNCTIONS:
        s3.put_object(Bucket=CODE_BUCKET, Key=f"{prefix}{name}/bootstrap.zip", Body=code_zip())


def transform_managed(template):
    """SAM → CloudFormation, offline. `sam build` would replace each CodeUri with the built
    function; here each points at an uploaded stand-in zip."""
    template = json.loads(json.dumps(template))
    template.get("Globals", {}).get("Function", {}).pop("CodeUri", None)
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            binary = resource["Metadata"]["BuildProperties"]["Binary"]
            resource["Properties"]["CodeUri"] = f"s3://{CODE_BUCKET}/managed/{binary}/bootstrap.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    return transform(template, {}, NoNetworkPolicyLoader())


def deploy(checks, aws, name, body, parameters):
    cfn = aws("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    deadline = time.monotonic() + 90
    status = "?"
    while time.monotonic() < deadline:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        status = stack["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            break
        time.sleep(0.5)
    ok = checks.equal(f"{name}: stack status", status, "CREATE_COMPLETE")
    resources = {
        r["LogicalResourceId"]: r
        for page in cfn.get_paginator("list_stack_resources").paginate(StackName=name)
        for r in page["StackResourceSummaries"]
    }
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return ok, resources, outputs


def report_skipped(name, template, resources):
    """Resources of the template that moto did not create, by type, for the record."""
    skipped = {}
    for logical_id, resource in template["Resources"].items():
        if logical_id not in resources:
            skipped.setdefault(resource["Type"], []).append(logical_id)
    for kind, ids in sorted(skipped.items()):
        print(f"note    {name}: moto does not create {kind}: {', '.join(sorted(ids))} (checked in the template only)")
    return skipped


def physical(resources, logical_id):
    return resources.get(logical_id, {}).get("PhysicalResourceId")


# ---- checks shared by both stacks -------------------------------------------------------------------

def check_table(checks, aws, label, table_name, schema):
    """schema: ([(name, HASH|RANGE)], {attribute: type}, {index: ([(name, type)], projection)}, ttl)."""
    keys, attributes, indexes, _ = schema
    if not checks.check(f"{label}: table exists", bool(table_name), "no physical ID"):
        return
    table = aws("dynamodb").describe_table(TableName=table_name)["Table"]
    checks.equal(f"{label}: key schema", [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]], keys)
    checks.equal(
        f"{label}: attribute definitions",
        {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]},
        attributes,
    )
    checks.equal(
        f"{label}: billing mode",
        table.get("BillingModeSummary", {}).get("BillingMode"),
        "PAY_PER_REQUEST",
    )
    actual = {
        gsi["IndexName"]: (
            [(k["AttributeName"], k["KeyType"]) for k in gsi["KeySchema"]],
            gsi["Projection"]["ProjectionType"],
        )
        for gsi in table.get("GlobalSecondaryIndexes", [])
    }
    checks.equal(f"{label}: global secondary indexes", actual, indexes)


def check_ttl_declared(checks, label, resource, attribute):
    """moto's CloudFormation does not apply TimeToLiveSpecification; the template must declare it."""
    spec = resource["Properties"].get("TimeToLiveSpecification", {})
    checks.equal(
        f"{label}: template enables TTL on {attribute}",
        (spec.get("AttributeName"), spec.get("Enabled")),
        (attribute, True),
    )


def role_policies(aws, role_name):
    iam = aws("iam")
    names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    policies = {}
    for name in names:
        policies[name] = policy_document(iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"])
    attached = iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
    return policies, attached


def policy_document(document):
    """A policy document as moto answers it: a dict, JSON, or (for inline policies made by its
    CloudFormation) Python's repr of the dict."""
    if isinstance(document, str):
        try:
            return json.loads(document)
        except ValueError:
            return ast.literal_eval(document)
    return document


def statements(document):
    found = document.get("Statement", [])
    return [found] if isinstance(found, dict) else found


def as_list(value):
    return value if isinstance(value, list) else [value]


def grants(policies):
    """{action: sorted resources} over every Allow statement of the inline policies."""
    granted = {}
    for document in policies.values():
        for statement in statements(document):
            if statement.get("Effect") != "Allow":
                continue
            for action in as_list(statement.get("Action", [])):
                # A reference moto cannot resolve (a secret: it makes none) may come back as None.
                resources = [
                    r.removesuffix(":*") if isinstance(r, str) and ":log-group:" in r else r
                    for r in as_list(statement.get("Resource", []))
                ]
                granted.setdefault(action, set()).update(resources)
    return {action: sorted(resources, key=str) for action, resources in granted.items()}


# Actions AWS defines without resource-level permissions: "*" is the only resource they take.
RESOURCELESS_ACTIONS = {
    "ecr:GetAuthorizationToken",
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}


def check_role(checks, aws, label, role_name, service, expected):
    """expected: {action: [resources]}: exactly these grants, no managed policy, no wildcard
    action, and "*" only where AWS allows nothing else."""
    if not checks.check(f"{label}: role exists", bool(role_name), "no physical ID"):
        return
    role = aws("iam").get_role(RoleName=role_name)["Role"]
    trust = policy_document(role["AssumeRolePolicyDocument"])
    principals = [s.get("Principal", {}).get("Service") for s in statements(trust)]
    checks.equal(f"{label}: trusted by", principals, [service])
    policies, attached = role_policies(aws, role_name)
    checks.equal(f"{label}: no managed policies", [p["PolicyArn"] for p in attached], [])
    granted = grants(policies)
    checks.equal(f"{label}: granted actions and resources", granted, {a: sorted(r, key=str) for a, r in expected.items()})
    loose = [
        (action, resources)
        for action, resources in granted.items()
        if "*" in action or ("*" in resources and action not in RESOURCELESS_ACTIONS)
    ]
    checks.equal(f"{label}: no wildcard actions or resources", loose, [])


def check_function(checks, aws, label, function_name, role_arn, env, resource, vpc=None):
    """resource: the function in the (transformed) template, for what moto does not keep."""
    if not checks.check(f"{label}: function exists", bool(function_name), "no physical ID"):
        return None
    config = aws("lambda").get_function(FunctionName=function_name)["Configuration"]
    checks.equal(
        f"{label}: runtime, handler",
        (config.get("Runtime"), config.get("Handler")),
        ("provided.al2023", "bootstrap"),
    )
    checks.equal(
        f"{label}: architecture (template; moto ignores it)",
        resource["Properties"].get("Architectures"),
        [{"Ref": "Architecture"}],
    )
    checks.equal(f"{label}: role", config.get("Role"), role_arn)
    # moto keeps numbers as numbers; Lambda's are strings.
    got = {k: str(v) for k, v in config.get("Environment", {}).get("Variables", {}).items()}
    checks.equal(f"{label}: environment", got, env)
    if vpc is not None:
        got = config.get("VpcConfig", {})
        checks.equal(
            f"{label}: VPC subnets and security groups",
            (sorted(got.get("SubnetIds", [])), got.get("SecurityGroupIds", [])),
            (sorted(vpc[0]), vpc[1]),
        )
    return config


def check_log_groups(checks, aws, label, names, retention):
    logs = aws("logs")
    for name in names:
        found = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
        got = [g.get("retentionInDays") for g in found if g["logGroupName"] == name]
        checks.equal(f"{label}: log group {name} retention", got, [retention])


def role_arn(aws, role_name):
    return aws("iam").get_role(RoleName=role_name)["Role"]["Arn"] if role_name else None


# ---- infra/managed.yaml --------------------------------------------------------------------------

def check_managed(checks, aws, out):
    name = "infra-managed"
    source = yaml_parse(MANAGED.read_text())
    try:
        template = transform_managed(source)
    except Exception as e:  # the translator's errors name the resource and the property
        checks.check("managed.yaml: SAM transform (aws-sam-translator, offline)", False, str(e))
        return
    checks.check("managed.yaml: SAM transform (aws-sam-translator, offline)", True)
    (out / "managed.transformed.json").write_text(json.dumps(template, indent=2))
    check_managed_api(checks, template)

    upload_code(aws, "managed/")
    ok, resources, outputs = deploy(checks, aws, name, json.dumps(template), {})
    if not ok:
        return
    report_skipped(name, template, resources)

    table = physical(resources, "RoomsTable")
    check_table(checks, aws, f"{name}: rooms table", table, ROOMS_SCHEMA)
    check_ttl_declared(checks, f"{name}: rooms table", template["Resources"]["RoomsTable"], "expiresAt")

    ddb_table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}"
    log_arn = lambda fn: f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{name}-{fn}"
    manage = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_PLACEHOLDER}/{STAGE}/POST/@connections/*"
    expected_roles = {
        "ChatFunctionRole": {
            "logs:CreateLogStream": [log_arn("chat")],
            "logs:PutLogEvents": [log_arn("chat")],
            **{
                f"dynamodb:{a}": [ddb_table, f"{ddb_table}/index/byConnection"]
                for a in ("PutItem", "DeleteItem", "GetItem", "Query")
            },
            "execute-api:ManageConnections": [manage],
        },
        "EchoFunctionRole": {
            "logs:CreateLogStream": [log_arn("echo")],
            "logs:PutLogEvents": [log_arn("echo")],
            "execute-api:ManageConnections": [manage],
        },
        "AuthorizerFunctionRole": {
            "logs:CreateLogStream": [log_arn("authorizer")],
            "logs:PutLogEvents": [log_arn("authorizer")],
        },
    }
    for logical_id, expected in expected_roles.items():
        check_role(checks, aws, f"{name}: {logical_id}", physical(resources, logical_id), "lambda.amazonaws.com", expected)

    envs = {
        "chat": {"ROOMS_BACKEND": "dynamodb", "ROOMS_TABLE": table, "ROOMS_TTL_SECONDS": "7200", "RUST_LOG": "info"},
        "echo": {"RUST_LOG": "info"},
        "authorizer": {"ALLOW_GUEST_NICKNAMES": "true", "RUST_LOG": "info"},
    }
    for fn in FUNCTIONS:
        logical_id = f"{fn.capitalize()}Function"
        check_function(
            checks, aws, f"{name}: {fn} function", physical(resources, logical_id),
            role_arn(aws, physical(resources, f"{logical_id}Role")), envs[fn],
            template["Resources"][logical_id],
        )
    check_invoke_permissions(checks, aws, name, resources, outputs)
    check_log_groups(checks, aws, name, [f"/aws/lambda/{name}-{fn}" for fn in FUNCTIONS], 14)
    check_monitoring(
        checks, aws, name, template, resources, "AWS/ApiGateway", API_PLACEHOLDER, {"Ref": "WebSocketApi"},
        API_METRICS, {"AWS/ApiGateway", "AWS/Lambda"},
    )
    checks.equal(
        f"{name}: outputs WebSocketUrl and ManagementEndpoint",
        (outputs.get("WebSocketUrl"), outputs.get("ManagementEndpoint")),
        (
            f"wss://{API_PLACEHOLDER}.execute-api.{REGION}.amazonaws.com/{STAGE}",
            f"https://{API_PLACEHOLDER}.execute-api.{REGION}.amazonaws.com/{STAGE}",
        ),
    )


def check_invoke_permissions(checks, aws, name, resources, outputs):
    api = API_PLACEHOLDER
    expected = {
        "chat": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{api}/{STAGE}/*",
        "echo": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{api}/{STAGE}/echo",
        "authorizer": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{api}/authorizers/${{GuestAuthorizer}}",
    }
    for fn, source_arn in expected.items():
        function_name = physical(resources, f"{fn.capitalize()}Function")
        policy = json.loads(aws("lambda").get_policy(FunctionName=function_name)["Policy"])
        got = [
            (s.get("Principal", {}).get("Service"), s.get("Action"),
             s.get("Condition", {}).get("ArnLike", {}).get("AWS:SourceArn"))
            for s in policy["Statement"]
        ]
        checks.equal(
            f"{name}: {fn} may be invoked by API Gateway from this API only",
            got, [("apigateway.amazonaws.com", "lambda:InvokeFunction", source_arn)],
        )


def check_managed_api(checks, template):
    """The API Gateway resources, which moto skips: checked as transformed."""
    resources = template["Resources"]
    by_type = {}
    for logical_id, resource in resources.items():
        by_type.setdefault(resource["Type"], {})[logical_id] = resource
    apis = by_type.get("AWS::ApiGatewayV2::Api", {})
    checks.equal(
        "managed.yaml: one WEBSOCKET API routing on $request.body.action",
        [(a["Properties"].get("ProtocolType"), a["Properties"].get("RouteSelectionExpression")) for a in apis.values()],
        [("WEBSOCKET", "$request.body.action")],
    )
    routes = {r["Properties"]["RouteKey"]: r["Properties"] for r in by_type.get("AWS::ApiGatewayV2::Route", {}).values()}
    checks.equal("managed.yaml: route keys", sorted(routes), sorted(["$connect", "$disconnect", "$default", "echo"]))
    integrations = by_type.get("AWS::ApiGatewayV2::Integration", {})

    def target(route_key):
        sub = routes.get(route_key, {}).get("Target", {}).get("Fn::Sub", "")
        return sub.removeprefix("integrations/${").removesuffix("}")

    def integration_function(logical_id):
        uri = integrations.get(logical_id, {}).get("Properties", {}).get("IntegrationUri", {}).get("Fn::Sub", "")
        return uri.split("/functions/${")[-1].split(".Arn}")[0]

    checks.equal(
        "managed.yaml: routes → functions (as functions/demo.toml, plus echo)",
        {key: integration_function(target(key)) for key in routes},
        {"$connect": "ChatFunction", "$disconnect": "ChatFunction", "$default": "ChatFunction", "echo": "EchoFunction"},
    )
    checks.equal(
        "managed.yaml: integrations are AWS_PROXY",
        sorted({i["Properties"].get("IntegrationType") for i in integrations.values()}),
        ["AWS_PROXY"],
    )
    authorizers = by_type.get("AWS::ApiGatewayV2::Authorizer", {})
    connect = routes.get("$connect", {})
    checks.equal(
        "managed.yaml: $connect is CUSTOM-authorized by a REQUEST authorizer on ?nickname",
        (
            connect.get("AuthorizationType"),
            [(a["Properties"].get("AuthorizerType"), a["Properties"].get("IdentitySource")) for a in authorizers.values()],
            connect.get("AuthorizerId", {}).get("Ref") in authorizers,
        ),
        ("CUSTOM", [("REQUEST", ["route.request.querystring.nickname"])], True),
    )
    responses = by_type.get("AWS::ApiGatewayV2::RouteResponse", {})
    echo_id = next((i for i, r in by_type.get("AWS::ApiGatewayV2::Route", {}).items() if r["Properties"]["RouteKey"] == "echo"), None)
    checks.equal(
        "managed.yaml: echo is two-way (route response $default)",
        (
            routes.get("echo", {}).get("RouteResponseSelectionExpression"),
            [(r["Properties"]["RouteId"].get("Ref"), r["Properties"]["RouteResponseKey"]) for r in responses.values()],
        ),
        ("$default", [(echo_id, "$default")]),
    )
    deployments = by_type.get("AWS::ApiGatewayV2::Deployment", {})
    route_ids = set(by_type.get("AWS::ApiGatewayV2::Route", {}))
    checks.check(
        "managed.yaml: the deployment depends on every route",
        len(deployments) == 1 and route_ids <= set(as_list(next(iter(deployments.values())).get("DependsOn", []))),
        repr(deployments),
    )
    stages = by_type.get("AWS::ApiGatewayV2::Stage", {})
    checks.equal(
        "managed.yaml: one stage on that deployment",
        [s["Properties"].get("DeploymentId") for s in stages.values()],
        [{"Ref": next(iter(deployments), None)}],
    )


# ---- infra/self-hosted.yaml ----------------------------------------------------------------------

def network(aws):
    ec2 = aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
        for i, az in enumerate("abab")
    ]
    certificate = aws("acm").request_certificate(DomainName="ws.example.test")["CertificateArn"]
    return vpc, subnets[:2], subnets[2:], certificate


def check_self_hosted(checks, aws, out, host_bin):
    name = "infra-self-hosted"
    text = SELF_HOSTED.read_text()
    template = yaml_parse(text)
    upload_code(aws, "self-hosted/")
    vpc, public, private, certificate = network(aws)
    management_certificate = aws("acm").request_certificate(DomainName=MANAGEMENT_DOMAIN)["CertificateArn"]
    parameters = {
        "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/connection-host:test",
        "CertificateArn": certificate,
        "VpcId": vpc,
        "PublicSubnetIds": ",".join(public),
        "PrivateSubnetIds": ",".join(private),
        "FunctionCodeBucket": CODE_BUCKET,
        "FunctionCodePrefix": "self-hosted/",
        "ManagementDomainName": MANAGEMENT_DOMAIN,
        "ManagementCertificateArn": management_certificate,
    }
    ok, resources, outputs = deploy(checks, aws, name, text, parameters)
    if not ok:
        return
    report_skipped(name, template, resources)

    connections = physical(resources, "ConnectionsTable")
    groups = physical(resources, "GroupsTable")
    check_table(checks, aws, f"{name}: connections table", connections, CONNECTIONS_SCHEMA)
    check_table(checks, aws, f"{name}: groups table", groups, GROUPS_SCHEMA)
    sessions = physical(resources, "SessionsTable")
    check_table(checks, aws, f"{name}: sessions table", sessions, SESSIONS_SCHEMA)
    for logical_id in ("ConnectionsTable", "GroupsTable", "SessionsTable"):
        check_ttl_declared(checks, f"{name}: {logical_id}", template["Resources"][logical_id], "ttl")

    lam = aws("lambda")
    functions = {fn: physical(resources, f"{fn.capitalize()}Function") for fn in FUNCTIONS}
    function_arns = {
        fn: lam.get_function(FunctionName=physical_name)["Configuration"]["FunctionArn"]
        for fn, physical_name in functions.items() if physical_name
    }
    elbv2 = aws("elbv2")
    balancers = {
        logical_id: elbv2.describe_load_balancers(LoadBalancerArns=[physical(resources, logical_id)])["LoadBalancers"][0]
        for logical_id in ("PublicLoadBalancer", "ManagementLoadBalancer")
        if physical(resources, logical_id)
    }
    management_url = f"https://{MANAGEMENT_DOMAIN}:9080/{STAGE}"

    account = ACCOUNT
    table_arn = lambda t: f"arn:aws:dynamodb:{REGION}:{account}:table/{t}"
    store_resources = [
        table_arn(connections), f"{table_arn(connections)}/index/byOwner",
        table_arn(groups), f"{table_arn(groups)}/index/byConnection",
        table_arn(sessions),
    ]
    log_arn = lambda group: f"arn:aws:logs:{REGION}:{account}:log-group:{group}"
    host_log = f"/ecs/{name}-connection-host"
    # moto makes no secret, so a reference to one resolves to nothing it can name: the grants are
    # compared with whatever moto made of it, and pinned in the template below.
    key_grant = {"secretsmanager:GetSecretValue": None}
    eni = {
        f"ec2:{a}": ["*"]
        for a in ("CreateNetworkInterface", "DescribeNetworkInterfaces", "DeleteNetworkInterface",
                  "AssignPrivateIpAddresses", "UnassignPrivateIpAddresses")
    }
    expected_roles = {
        "TaskRole": ("ecs-tasks.amazonaws.com", {
            **{f"dynamodb:{a}": store_resources for a in (
                "DescribeTable", "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query",
                "BatchWriteItem")},
            "lambda:InvokeFunction": sorted(function_arns.values()),
        }),
        "TaskExecutionRole": ("ecs-tasks.amazonaws.com", {
            "ecr:GetAuthorizationToken": ["*"],
            **{f"ecr:{a}": [f"arn:aws:ecr:{REGION}:{account}:repository/*"]
               for a in ("BatchCheckLayerAvailability", "BatchGetImage", "GetDownloadUrlForLayer")},
            "logs:CreateLogStream": [log_arn(host_log)],
            "logs:PutLogEvents": [log_arn(host_log)],
            **key_grant,
        }),
        "ChatFunctionRole": ("lambda.amazonaws.com", {
            "logs:CreateLogStream": [log_arn(f"/aws/lambda/{name}-chat")],
            "logs:PutLogEvents": [log_arn(f"/aws/lambda/{name}-chat")],
            **key_grant,
            **eni,
        }),
        "EchoFunctionRole": ("lambda.amazonaws.com", {
            "logs:CreateLogStream": [log_arn(f"/aws/lambda/{name}-echo")],
            "logs:PutLogEvents": [log_arn(f"/aws/lambda/{name}-echo")],
            **key_grant,
            **eni,
        }),
        "AuthorizerFunctionRole": ("lambda.amazonaws.com", {
            "logs:CreateLogStream": [log_arn(f"/aws/lambda/{name}-authorizer")],
            "logs:PutLogEvents": [log_arn(f"/aws/lambda/{name}-authorizer")],
        }),
    }
    for logical_id, (service, expected) in expected_roles.items():
        if "secretsmanager:GetSecretValue" in expected:
            # Whatever moto made of the reference; the template checks below pin it.
            policies, _ = role_policies(aws, physical(resources, logical_id))
            expected = {**expected, "secretsmanager:GetSecretValue": grants(policies).get("secretsmanager:GetSecretValue")}
        check_role(checks, aws, f"{name}: {logical_id}", physical(resources, logical_id), service, expected)
    check_secrets(checks, name, template)

    function_sg = physical(resources, "FunctionSecurityGroup")
    # What moto made of each key's reference (it makes no secret); the template pins the references.
    key_secret_arns = {
        key: lam.get_function(FunctionName=functions[fn])["Configuration"]["Environment"]["Variables"]
        .get("APIGW_MANAGEMENT_KEY_SECRET")
        for fn, key in (("chat", "ChatManagementKey"), ("echo", "EchoManagementKey")) if functions.get(fn)
    }
    checks.equal(
        f"{name}: chat and echo read their own management key secret (template)",
        {fn: template["Resources"][f"{fn.capitalize()}Function"]["Properties"]["Environment"]["Variables"]
         .get("APIGW_MANAGEMENT_KEY_SECRET") for fn in ("chat", "echo")},
        {"chat": {"Ref": "ChatManagementKey"}, "echo": {"Ref": "EchoManagementKey"}},
    )
    envs = {
        "chat": {"ROOMS_BACKEND": "groups", "APIGW_MANAGEMENT_ENDPOINT": management_url,
                 "APIGW_MANAGEMENT_KEY_SECRET": key_secret_arns.get("ChatManagementKey"), "RUST_LOG": "info"},
        "echo": {"APIGW_MANAGEMENT_ENDPOINT": management_url,
                 "APIGW_MANAGEMENT_KEY_SECRET": key_secret_arns.get("EchoManagementKey"), "RUST_LOG": "info"},
        "authorizer": {"ALLOW_GUEST_NICKNAMES": "true", "RUST_LOG": "info"},
    }
    if None in key_secret_arns.values():
        print(f"note    {name}: moto drops an environment variable that names a secret it did not make "
              "(APIGW_MANAGEMENT_KEY_SECRET: checked in the template only)")
    for fn in FUNCTIONS:
        logical_id = f"{fn.capitalize()}Function"
        check_function(
            checks, aws, f"{name}: {fn} function", functions[fn],
            role_arn(aws, physical(resources, f"{logical_id}Role")),
            {k: v for k, v in envs[fn].items() if v is not None},
            template["Resources"][logical_id],
            vpc=None if fn == "authorizer" else (private, [function_sg]),
        )
    check_log_groups(
        checks, aws, name, [host_log] + [f"/aws/lambda/{name}-{fn}" for fn in FUNCTIONS], 14
    )

    check_load_balancers(checks, aws, name, resources, balancers, certificate, management_certificate)
    check_management_name(checks, name, template)
    check_security_groups(checks, aws, name, template, resources)
    config_toml = check_ecs(checks, aws, name, template, resources, function_arns, connections, groups, sessions)
    if config_toml is not None:
        (out / "self-hosted.connection-host.toml").write_text(config_toml)
        check_host_config(checks, name, config_toml, host_bin)
    check_monitoring(
        checks, aws, name, template, resources, "ConnectionHost", template["Parameters"]["ApiId"]["Default"],
        {"Ref": "ApiId"}, API_METRICS | {"Connections", "StoreErrors", "ClusterHosts"},
        {"ConnectionHost", "AWS/ECS", "AWS/Lambda"},
    )

    public_dns = balancers.get("PublicLoadBalancer", {}).get("DNSName")
    checks.equal(
        f"{name}: outputs WebSocketUrl and ManagementEndpoint",
        (outputs.get("WebSocketUrl"), outputs.get("ManagementEndpoint")),
        (f"wss://{public_dns}/{STAGE}", management_url),
    )


def check_secrets(checks, name, template):
    """The cluster secret and one management key per function, generated in Secrets Manager,
    and who may read them (moto creates none of it, so this is the template's word)."""
    res = template["Resources"]
    checks.equal(
        f"{name}: secrets generated in Secrets Manager: the cluster secret, one key per function (template)",
        {k: (r["Type"], r["Properties"].get("GenerateSecretString"))
         for k, r in res.items() if r["Type"] == "AWS::SecretsManager::Secret"},
        {
            "ClusterSecret": ("AWS::SecretsManager::Secret", {"PasswordLength": 48, "ExcludePunctuation": True}),
            **{f"{fn.capitalize()}ManagementKey": ("AWS::SecretsManager::Secret", {
                "SecretStringTemplate": json.dumps({"accessKeyId": fn}),
                "GenerateStringKey": "secretAccessKey", "PasswordLength": 40, "ExcludePunctuation": True,
            }) for fn in ("chat", "echo")},
        },
    )

    def secret_reads(statements):
        return sorted(
            json.dumps(r, sort_keys=True)
            for st in statements if st["Action"] == "secretsmanager:GetSecretValue"
            for r in as_list(st["Resource"])
        )

    def role_statements(role):
        return [st for p in res[role]["Properties"]["Policies"] for st in p["PolicyDocument"]["Statement"]]

    checks.equal(
        f"{name}: the execution role reads the cluster secret and the two keys; each function only its own key (template)",
        {role: secret_reads(role_statements(role))
         for role in ("TaskExecutionRole", "ChatFunctionRole", "EchoFunctionRole", "AuthorizerFunctionRole", "TaskRole")},
        {
            "TaskExecutionRole": sorted(json.dumps({"Ref": k}) for k in ("ClusterSecret", "ChatManagementKey", "EchoManagementKey")),
            "ChatFunctionRole": [json.dumps({"Ref": "ChatManagementKey"})],
            "EchoFunctionRole": [json.dumps({"Ref": "EchoManagementKey"})],
            "AuthorizerFunctionRole": [],
            "TaskRole": [],
        },
    )
    container = res["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    checks.equal(
        f"{name}: the container gets the cluster secret and the keys' secret access keys through ECS Secrets (template)",
        {s["Name"]: s["ValueFrom"] for s in container.get("Secrets", [])},
        {
            "CONNECTION_HOST_CLUSTER__SECRET": {"Ref": "ClusterSecret"},
            "MANAGEMENT_KEY_CHAT": {"Fn::Sub": "${ChatManagementKey}:secretAccessKey::"},
            "MANAGEMENT_KEY_ECHO": {"Fn::Sub": "${EchoManagementKey}:secretAccessKey::"},
        },
    )


def check_management_name(checks, name, template):
    """ManagementDomainName resolves, inside the VPC only, to the internal load balancer (moto
    keeps no private zone or alias, so this is the template's word)."""
    res = template["Resources"]
    zone = res["ManagementZone"]["Properties"]
    record = res["ManagementRecord"]["Properties"]
    checks.equal(
        f"{name}: a private hosted zone in the VPC names the internal load balancer (template)",
        (zone["Name"], zone["VPCs"], record["HostedZoneId"], record["Name"], record["Type"], record["AliasTarget"]),
        (
            {"Ref": "ManagementDomainName"}, [{"VPCId": {"Ref": "VpcId"}, "VPCRegion": {"Ref": "AWS::Region"}}],
            {"Ref": "ManagementZone"}, {"Ref": "ManagementDomainName"}, "A",
            {"DNSName": {"Fn::GetAtt": ["ManagementLoadBalancer", "DNSName"]},
             "HostedZoneId": {"Fn::GetAtt": ["ManagementLoadBalancer", "CanonicalHostedZoneID"]}},
        ),
    )


def check_load_balancers(checks, aws, name, resources, balancers, certificate, management_certificate):
    elbv2 = aws("elbv2")
    checks.equal(
        f"{name}: load balancers (type, scheme)",
        {k: (b.get("Type"), b.get("Scheme")) for k, b in balancers.items()},
        {"PublicLoadBalancer": ("network", "internet-facing"), "ManagementLoadBalancer": ("network", "internal")},
    )
    listeners = {}
    for logical_id, balancer in balancers.items():
        for listener in elbv2.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]:
            listeners[logical_id] = (
                listener["Port"], listener["Protocol"],
                [c["CertificateArn"] for c in listener.get("Certificates", [])],
                [a.get("TargetGroupArn") for a in listener["DefaultActions"]],
            )
    public_tg = physical(resources, "PublicTargetGroup")
    management_tg = physical(resources, "ManagementTargetGroup")
    checks.equal(
        f"{name}: listeners (443 TLS with the certificate, 9080 TLS with the management certificate)",
        listeners,
        {
            "PublicLoadBalancer": (443, "TLS", [certificate], [public_tg]),
            "ManagementLoadBalancer": (9080, "TLS", [management_certificate], [management_tg]),
        },
    )
    groups = elbv2.describe_target_groups(TargetGroupArns=[public_tg, management_tg])["TargetGroups"]
    got = {
        g["TargetGroupArn"]: (g["Protocol"], g["Port"], g["TargetType"], g["HealthCheckProtocol"],
                              str(g["HealthCheckPort"]), g.get("HealthCheckPath"))
        for g in groups
    }
    checks.equal(
        f"{name}: target groups (IP targets; health checks on 9080: /health/ready, /health)",
        got,
        {
            public_tg: ("TCP", 8080, "ip", "HTTP", "9080", "/health/ready"),
            management_tg: ("TCP", 9080, "ip", "HTTP", "9080", "/health"),
        },
    )


def check_security_groups(checks, aws, name, template, resources):
    ec2 = aws("ec2")
    ids = {k: physical(resources, k) for k in (
        "HostSecurityGroup", "PublicNlbSecurityGroup", "ManagementNlbSecurityGroup", "FunctionSecurityGroup")}
    found = {g["GroupId"]: g for g in ec2.describe_security_groups(GroupIds=[i for i in ids.values() if i])["SecurityGroups"]}

    def ingress(logical_id):
        rules = set()
        for p in found.get(ids[logical_id], {}).get("IpPermissions", []):
            for r in p.get("IpRanges", []):
                rules.add((p.get("FromPort"), r["CidrIp"]))
            for g in p.get("UserIdGroupPairs", []):
                rules.add((p.get("FromPort"), next(k for k, v in ids.items() if v == g["GroupId"])))
        return sorted(rules, key=str)

    checks.equal(
        f"{name}: hosts accept 8080 from the public load balancer, 9080 from the load balancers and each other",
        ingress("HostSecurityGroup"),
        sorted({(8080, "PublicNlbSecurityGroup"), (9080, "PublicNlbSecurityGroup"),
                (9080, "ManagementNlbSecurityGroup"), (9080, "HostSecurityGroup")}, key=str),
    )
    checks.equal(f"{name}: public load balancer accepts 443 from anywhere", ingress("PublicNlbSecurityGroup"), [(443, "0.0.0.0/0")])

    # moto keeps a security group's default egress, not the template's.
    checks.equal(
        f"{name}: the functions reach only the @connections load balancer and HTTPS (Secrets Manager) (template)",
        [(r["FromPort"], r.get("DestinationSecurityGroupId") or r.get("CidrIp"))
         for r in template["Resources"]["FunctionSecurityGroup"]["Properties"]["SecurityGroupEgress"]],
        [(9080, {"Ref": "ManagementNlbSecurityGroup"}), (443, "0.0.0.0/0")],
    )
    checks.equal(
        f"{name}: the @connections load balancer accepts only the functions",
        ingress("ManagementNlbSecurityGroup"), [(9080, "FunctionSecurityGroup")],
    )


def check_ecs(checks, aws, name, template, resources, function_arns, connections, groups, sessions):
    ecs = aws("ecs")
    cluster = physical(resources, "Cluster")
    service_id = physical(resources, "Service")
    if not checks.check(f"{name}: ECS cluster and service exist", bool(cluster and service_id), repr((cluster, service_id))):
        return None
    service = ecs.describe_services(cluster=cluster, services=[service_id])["services"][0]
    checks.equal(f"{name}: service runs 2 hosts", service.get("desiredCount"), 2)
    task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    checks.equal(f"{name}: service runs the task definition", task.get("family"), f"{name}-connection-host")
    # moto's CloudFormation keeps only a service's desired count and a task definition's family,
    # memory and containers: the rest is checked in the template.
    print(f"note    {name}: moto keeps no launch type, network configuration or load balancers of an ECS service, "
          "nor a task definition's network mode, CPU, platform or roles (checked in the template only)")
    properties = template["Resources"]["Service"]["Properties"]
    checks.equal(
        f"{name}: service: Fargate, private subnets, the host security group, both target groups (template)",
        (
            properties.get("LaunchType"),
            properties["NetworkConfiguration"]["AwsvpcConfiguration"],
            [(lb["TargetGroupArn"], lb["ContainerPort"]) for lb in properties.get("LoadBalancers", [])],
        ),
        (
            "FARGATE",
            {"AssignPublicIp": {"Ref": "AssignPublicIp"}, "Subnets": {"Ref": "PrivateSubnetIds"},
             "SecurityGroups": [{"Ref": "HostSecurityGroup"}]},
            [({"Ref": "PublicTargetGroup"}, 8080), ({"Ref": "ManagementTargetGroup"}, 9080)],
        ),
    )
    properties = template["Resources"]["TaskDefinition"]["Properties"]
    checks.equal(
        f"{name}: task definition: awsvpc, Fargate, CPU, platform, roles (template)",
        (properties.get("NetworkMode"), properties.get("RequiresCompatibilities"), properties.get("Cpu"),
         properties.get("RuntimePlatform"), properties.get("TaskRoleArn"), properties.get("ExecutionRoleArn")),
        ("awsvpc", ["FARGATE"], {"Ref": "TaskCpu"},
         {"OperatingSystemFamily": "LINUX", "CpuArchitecture": {"Fn::If": ["IsArm64", "ARM64", "X86_64"]}},
         {"Fn::GetAtt": ["TaskRole", "Arn"]}, {"Fn::GetAtt": ["TaskExecutionRole", "Arn"]}),
    )
    checks.equal(f"{name}: task memory", task.get("memory"), "1024")
    container = task["containerDefinitions"][0]
    checks.equal(
        f"{name}: container ports, health check, stop timeout",
        (
            sorted(p["containerPort"] for p in container.get("portMappings", [])),
            container.get("healthCheck", {}).get("command"),
            container.get("stopTimeout"),
        ),
        ([8080, 9080], ["CMD", "curl", "-fsS", "--max-time", "2", "http://127.0.0.1:9080/health"], 30),
    )
    checks.equal(
        f"{name}: cluster secret and management keys from Secrets Manager",
        sorted(s["name"] for s in container.get("secrets", [])),
        ["CONNECTION_HOST_CLUSTER__SECRET", "MANAGEMENT_KEY_CHAT", "MANAGEMENT_KEY_ECHO"],
    )
    env = {e["name"]: e["value"] for e in container.get("environment", [])}
    # The host refuses unknown CONNECTION_HOST_* variables (they name configuration fields).
    checks.equal(
        f"{name}: container environment",
        sorted(env), ["CONNECTION_HOST_METRICS__EMF", "ENTRYPOINT_ADVERTISE_PORT", "ENTRYPOINT_CONFIG_TOML", "RUST_LOG"],
    )
    checks.equal(f"{name}: the hosts write EMF metrics (metrics.emf)", env.get("CONNECTION_HOST_METRICS__EMF"), "true")
    text = env.get("ENTRYPOINT_CONFIG_TOML", "")
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        checks.check(f"{name}: host configuration is TOML", False, str(e))
        return None
    checks.equal(
        f"{name}: host routes (as functions/demo.toml, plus two-way echo)",
        config.get("routes"),
        HOST_ROUTES,
    )
    checks.equal(
        f"{name}: host integrations and authorizer invoke the stack's functions",
        (config.get("integrations"), config.get("authorizers")),
        (
            {"chat": {"type": "lambda", "function_name": function_arns.get("chat")},
             "echo": {"type": "lambda", "function_name": function_arns.get("echo")}},
            {"guest": {"function_name": function_arns.get("authorizer"),
                       "identity_sources": ["route.request.querystring.nickname"]}},
        ),
    )
    checks.equal(
        f"{name}: host store is the stack's tables",
        config.get("store"),
        {"kind": "dynamodb", "connections_table": connections, "groups_table": groups,
         "sessions_table": sessions},
    )
    checks.equal(
        f"{name}: host listeners, stage, groups extension with the presence notices chat relies on",
        (config.get("server"), config.get("api", {}).get("stage"), config.get("extensions")),
        ({"listen": "0.0.0.0:8080", "management_listen": "0.0.0.0:9080"}, STAGE,
         {"groups": {"enabled": True, "presence": "frames"}}),
    )
    checks.equal(
        f"{name}: the @connections API requires SigV4 with the functions' keys from the task's Secrets",
        config.get("management", {}).get("auth"),
        {"mode": "sigv4", "keys": {"chat": {"secret_env": "MANAGEMENT_KEY_CHAT"},
                                   "echo": {"secret_env": "MANAGEMENT_KEY_ECHO"}}},
    )
    checks.check(
        f'{name}: no mode = "none" anywhere in the template',
        'mode = "none"' not in SELF_HOSTED.read_text(),
    )
    return text


# ---- monitoring: the CloudWatch dashboard and alarms of either mode -------------------------------

# API Gateway's WebSocket metrics the alarms of both modes use (the error ratios and latency).
API_METRICS = {"ClientError", "IntegrationError", "ExecutionError", "MessageCount", "IntegrationLatency"}


def alarm_metrics(props):
    """(namespace, metric, dimensions, statistic) of an alarm: its metric, or each metric of its math."""
    stats = [(props, props.get("ExtendedStatistic") or props.get("Statistic"))] if "MetricName" in props else [
        (q["MetricStat"]["Metric"], q["MetricStat"]["Stat"]) for q in props.get("Metrics", []) if "MetricStat" in q
    ]
    return [
        (m["Namespace"], m["MetricName"], json.dumps(m.get("Dimensions"), sort_keys=True), stat) for m, stat in stats
    ]


def check_monitoring(checks, aws, name, template, resources, namespace, api_id, api_ref, metrics, namespaces):
    """Alarms (in the template: moto creates none) on the mode's namespace by ApiId and Stage; the
    dashboard as deployed: JSON, the mode's namespaces, this API and stage, every alarm shown."""
    alarms = {k: r["Properties"] for k, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    used = [m for props in alarms.values() for m in alarm_metrics(props)]
    dimensions = json.dumps([{"Name": "ApiId", "Value": api_ref}, {"Name": "Stage", "Value": {"Ref": "StageName"}}],
                            sort_keys=True)
    checks.equal(
        f"{name}: alarms on {namespace} metrics by ApiId and Stage",
        sorted({(ns, metric, dims) for ns, metric, dims, _ in used}),
        sorted((namespace, metric, dimensions) for metric in metrics),
    )
    checks.equal(
        f"{name}: the latency alarm is on p95 of IntegrationLatency",
        [stat for _, metric, _, stat in used if metric == "IntegrationLatency"], ["p95"],
    )
    notify = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    checks.check(
        f"{name}: every alarm notifies AlarmTopicArn (when given) of ALARM and OK",
        all(props.get("AlarmActions") == notify and props.get("OKActions") == notify for props in alarms.values()),
    )

    try:
        body = json.loads(
            aws("cloudwatch").get_dashboard(DashboardName=physical(resources, "Dashboard"))["DashboardBody"]
        )
    except (ValueError, aws("cloudwatch").exceptions.ClientError) as e:
        checks.check(f"{name}: dashboard body is JSON", False, str(e))
        return
    rows = [
        row for w in body["widgets"] if w["type"] == "metric" for row in w["properties"]["metrics"]
        if isinstance(row[0], str)
    ]
    checks.equal(f"{name}: dashboard metrics' namespaces", sorted({row[0] for row in rows}), sorted(namespaces))
    checks.check(
        f"{name}: dashboard shows the stack's API and stage",
        all(row[2:6] == ["ApiId", api_id, "Stage", STAGE] for row in rows if row[0] == namespace),
    )
    shown = [arn for w in body["widgets"] if w["type"] == "alarm" for arn in w["properties"]["alarms"]]
    checks.equal(
        f"{name}: dashboard shows every alarm",
        sorted(shown),
        sorted(
            f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:" + props["AlarmName"]["Fn::Sub"].replace("${AWS::StackName}", name)
            for props in alarms.values()
        ),
    )


# ---- localstack/ and the image's entrypoint ------------------------------------------------------

def check_localstack(checks, aws, host_bin):
    """The table definitions 10-tables.sh feeds to LocalStack, created on moto; the host's
    configuration and the compose file, read."""
    name = "localstack"
    ddb = aws("dynamodb")
    for table, schema in (
        ("connection-host-connections", CONNECTIONS_SCHEMA),
        ("connection-host-groups", GROUPS_SCHEMA),
        ("connection-host-sessions", SESSIONS_SCHEMA),
        ("chat-rooms", ROOMS_SCHEMA),
    ):
        definition = json.loads((LOCALSTACK / "tables" / f"{table}.json").read_text())
        ttl = json.loads((LOCALSTACK / "tables" / f"{table}.ttl.json").read_text())
        ddb.create_table(**definition)
        check_table(checks, aws, f"{name}: tables/{table}.json", definition["TableName"], schema)
        ddb.update_time_to_live(**ttl)
        got = ddb.describe_time_to_live(TableName=definition["TableName"])["TimeToLiveDescription"]
        checks.equal(
            f"{name}: tables/{table}.ttl.json enables TTL",
            (got.get("TimeToLiveStatus"), got.get("AttributeName")), ("ENABLED", schema[3]),
        )
    script = (LOCALSTACK / "init" / "ready.d" / "10-tables.sh").read_text()
    checks.check(
        f"{name}: init/ready.d/10-tables.sh creates every table of tables/",
        "for table in connection-host-connections connection-host-groups connection-host-sessions chat-rooms; do"
        in script,
    )

    text = (LOCALSTACK / "connection-host.toml").read_text()
    config = tomllib.loads(text)
    checks.equal(f"{name}: connection-host.toml routes", config.get("routes"), HOST_ROUTES)
    functions_script = (LOCALSTACK / "init" / "ready.d" / "20-functions.sh").read_text()
    invoked = sorted(
        [i["function_name"] for i in config.get("integrations", {}).values()]
        + [a["function_name"] for a in config.get("authorizers", {}).values()]
    )
    created = sorted(line.split()[1] for line in functions_script.splitlines() if line.startswith("create "))
    checks.equal(f"{name}: connection-host.toml invokes the functions 20-functions.sh creates", invoked, created)
    checks.equal(
        f"{name}: connection-host.toml uses the tables 10-tables.sh creates",
        config.get("store"),
        {"kind": "dynamodb", "connections_table": "connection-host-connections", "groups_table": "connection-host-groups",
         "sessions_table": "connection-host-sessions"},
    )
    check_host_config(checks, name, text, host_bin, cluster=False)

    compose = yaml_parse((LOCALSTACK / "docker-compose.yml").read_text())
    services = compose.get("services", {})
    localstack = services.get("localstack", {})
    host = services.get("connection-host", {})
    checks.equal(
        f"{name}: docker-compose.yml LocalStack services",
        sorted(localstack.get("environment", {}).get("SERVICES", "").split(",")),
        sorted(["dynamodb", "lambda", "iam", "cloudformation", "logs"]),
    )
    build = host.get("build", {})
    checks.check(
        f"{name}: docker-compose.yml builds the host from connection-host/Dockerfile",
        (LOCALSTACK / build.get("context", "/nonexistent") / build.get("dockerfile", "")).resolve()
        == (ROOT / "connection-host" / "Dockerfile").resolve(),
        repr(build),
    )
    checks.equal(
        f"{name}: docker-compose.yml points the host's AWS calls at LocalStack",
        host.get("environment", {}).get("AWS_ENDPOINT_URL"), "http://localstack:4566",
    )
    missing = [
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if volume.startswith(".") and not (LOCALSTACK / volume.split(":")[0]).exists()
        # cargo lambda's output does not exist until the functions are built.
        and volume.split(":")[0] != "../target/lambda"
    ]
    checks.equal(f"{name}: docker-compose.yml mounts files that exist", missing, [])
    checks.check(
        f"{name}: docker-compose.yml publishes on 127.0.0.1 only",
        all(str(p).startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", [])),
    )


def check_entrypoint(checks):
    """connection-host/docker-entrypoint.sh with stand-ins for connection-host and curl (the ECS
    task metadata endpoint), as in a task of self-hosted.yaml."""
    name = "docker-entrypoint.sh"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "connection-host").write_text(
            '#!/bin/sh\nprintf "args=%s\\n" "$*"\nenv | grep -E "^(CONNECTION_HOST|ENTRYPOINT)_" | sort\n'
            'for a; do [ -f "$a" ] && sed "s/^/file=/" "$a"; done; exit 0\n'
        )
        (tmp / "curl").write_text(
            "#!/bin/sh\nprintf '{\\n \"Networks\": [ {\\n  \"NetworkMode\": \"awsvpc\",\\n"
            "  \"IPv4Addresses\": [\\n   \"10.20.2.15\"\\n  ]\\n } ]\\n}\\n'\n"
        )
        for stub in ("connection-host", "curl"):
            (tmp / stub).chmod(0o755)
        env = {
            "PATH": f"{tmp}:/usr/bin:/bin",
            "TMPDIR": str(tmp),
            "ENTRYPOINT_CONFIG_TOML": '[server]\nlisten = "0.0.0.0:8080"',
            "ENTRYPOINT_ADVERTISE_PORT": "9080",
            "ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/test",
        }
        result = subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=10)
        out = result.stdout.splitlines()
        checks.equal(
            f"{name}: ENTRYPOINT_CONFIG_TOML becomes --config, advertise URL from the task metadata",
            out,
            [
                f"args=--config {tmp}/connection-host.toml",
                "CONNECTION_HOST_CLUSTER__ADVERTISE_URL=http://10.20.2.15:9080",
                "file=[server]",
                'file=listen = "0.0.0.0:8080"',
            ],
        )
        env = {"PATH": env["PATH"], "CONNECTION_HOST_CLUSTER__ADVERTISE_URL": "http://10.0.0.9:9080",
               "ENTRYPOINT_ADVERTISE_PORT": "9080"}
        result = subprocess.run(
            ["sh", str(ENTRYPOINT), "--config", "/x.toml", "config", "check"],
            env=env, capture_output=True, text=True, timeout=10,
        )
        checks.equal(
            f"{name}: a given --config and advertise URL win",
            result.stdout.splitlines(),
            ["args=--config /x.toml config check", "CONNECTION_HOST_CLUSTER__ADVERTISE_URL=http://10.0.0.9:9080"],
        )


def check_host_config(checks, name, text, host_bin, cluster=True):
    if not host_bin:
        print(f"note    {name}: connection-host binary not given (--host-bin): `config check` of the host configuration skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "host.toml"
        path.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTION_HOST_")}
        if cluster:
            # As a task of self-hosted.yaml has them: the secret from Secrets Manager, the
            # task's own address from the entrypoint.
            env["CONNECTION_HOST_CLUSTER__SECRET"] = "a-test-secret-of-48-characters-0123456789abcdefg"
            env["CONNECTION_HOST_CLUSTER__ADVERTISE_URL"] = "http://10.20.2.15:9080"
            # ... and the functions' secret access keys, from the task's Secrets.
            env["MANAGEMENT_KEY_CHAT"] = "a-test-key-of-40-characters-0123456789ab"
            env["MANAGEMENT_KEY_ECHO"] = "another-test-key-of-40-characters-012345"
            # ... and the EMF switch the template sets (its EmfMetrics parameter).
            env["CONNECTION_HOST_METRICS__EMF"] = "true"
        result = subprocess.run(
            [host_bin, "config", "check", str(path)], env=env, capture_output=True, text=True, timeout=30
        )
    checks.check(
        f"{name}: `connection-host config check` accepts the host configuration",
        result.returncode == 0, (result.stdout + result.stderr).strip(),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="moto server URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--host-bin", help="connection-host binary, to `config check` the self-hosted configuration")
    parser.add_argument("--out", default=str(ROOT / ".test-run" / "infra"), help="where the transformed template goes")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checks = Checks()
    aws = clients(args.endpoint)
    for run in (
        lambda: check_managed(checks, aws, out),
        lambda: check_self_hosted(checks, aws, out, args.host_bin),
        lambda: check_localstack(checks, aws, args.host_bin),
        lambda: check_entrypoint(checks),
    ):
        try:
            run()
        except Exception as e:  # one broken stack must not hide the other's results
            checks.check("deploy and inspect", False, f"{type(e).__name__}: {e}")
    print(f"infra: {checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
