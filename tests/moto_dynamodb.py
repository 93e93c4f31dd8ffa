"""moto's server, answering one request at a time, for the tests and benchmarks that use DynamoDB.

    python tests/moto_dynamodb.py -H 127.0.0.1 -p PORT

moto_server handles each request on its own thread, and its DynamoDB checks a write's condition and then
writes without a lock: two conditional writes racing on one item can both succeed (seen with eight
concurrent `SET owner = :new IF owner = :old` updates: two winners for 4 keys in 300). DynamoDB never lets
both succeed, and the host's session take-over, key claims and frame fencing rely on that. Serialising the
requests gives moto DynamoDB's atomicity; moto runs under one interpreter lock anyway, so it costs little
throughput. Everything else is moto_server as is.
"""

import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.server import main

_serve = DomainDispatcherApplication.__call__
_one_at_a_time = threading.Lock()


def _serialised(self, environ, start_response):
    with _one_at_a_time:
        # The body is produced here, inside the lock, so the whole request is one step.
        return list(_serve(self, environ, start_response))


DomainDispatcherApplication.__call__ = _serialised

if __name__ == "__main__":
    main()
