"""moto answering the DynamoDB API one request at a time, for the tests and benchmarks that use DynamoDB.

    python tests/moto_dynamodb.py -H 127.0.0.1 -p PORT

One request at a time: moto_server handles each request on its own thread, and its DynamoDB checks a
write's condition and then writes without a lock, so two conditional writes racing on one item can both
succeed (seen with eight concurrent `SET owner = :new IF owner = :old` updates: two winners for 4 keys in
300). DynamoDB never lets both succeed, and the host's session take-over, key claims and frame fencing
rely on that. Here every request is answered in turn by one event loop, which gives moto DynamoDB's
atomicity.

Faster than moto_server: most of moto_server's time per request went to its HTTP layer (werkzeug's
development server: a new connection and thread per request, an access-log line, Flask's dispatch), not
to DynamoDB. This server keeps connections alive (a thread each) and hands a DynamoDB request (`POST /`
with an `X-Amz-Target: DynamoDB_20120810.*` header) straight to moto's DynamoDB handler, the one
moto_server's Flask route calls, and writes the status, headers and body moto_server would (only
werkzeug's own `Server` header and the access log are gone). Every other request (`/moto-api/`, other
services, a request with an `Origin` header, which moto_server answers with CORS headers) goes to
moto_server's own WSGI application, in the same turn. `python tests/moto_load.py` measures it
(requests/s per operation) and checks the atomicity.
"""

import argparse
import asyncio
import functools
import io
import os
import sys
import time
import traceback
from urllib.parse import unquote

from botocore.exceptions import ClientError
from moto.core import responses as moto_responses
from moto.core.request import Request
from moto.core.serialize import DEFAULT_ALIAS_PROVIDERS, XFormedAttributePicker
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler
from moto.moto_api import recorder
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.exceptions import InternalServerError
from werkzeug.http import HTTP_STATUS_CODES, http_date

DYNAMODB_TARGET = "dynamodb_20120810."
# Request heads larger than this are refused (an AWS SDK's are well under 8 KiB).
MAX_HEAD = 64 * 1024

moto_server_app = DomainDispatcherApplication(create_backend_app)

# Two of moto's steps recompute, on every request, what depends only on code and on the API's model;
# each is remembered here, which changes no answer. Every request listed the handler's methods
# (inspect.getmembers) to find its action's.
moto_responses.method_names_from_class = functools.cache(moto_responses.method_names_from_class)
# And the response serializer asked six alias providers, for every member of every structure it
# wrote (ten per attribute value), under which names to look for that member in the handler's result.
# For a dict result, the providers' answer depends only on the member's shape, its parent structure's
# shape and the member's name: remembered by those (the shapes, kept alive here, are those of moto's
# cached service model, so their ids stay theirs).
# moto's Query finds its candidates in `Table.all_items()`, which lists and sorts every item of the table,
# for every Query: a session's frames (one partition) cost a sort of every frame of every session, and
# the chaos test's resumes then outran the server as the table grew. The candidates given here are the
# items moto would keep: for a Query of the table's own key, the partition's (moto keeps the table's
# items by partition, and keeps only those whose partition key matches) that the sort key condition
# keeps; for an index, every item, unsorted (moto sorts the matches by the index's key and then the
# table's, which orders them fully). The answer is moto's own. Safe only because requests are answered
# one at a time.
_moto_query = Table.query


def _query_candidates(self, hash_key, *args, **kwargs):
    index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
    if index_name is None and hash_key is not None:
        partition = self.items.get(hash_key)  # not self.items[...]: a defaultdict would add it
        if partition is None:
            candidates = []
        elif not self.range_key_attr:
            candidates = [partition]
        else:
            candidates = list(partition.values())
            # And only those its sort key condition keeps: moto sizes and sorts every candidate
            # before it compares them, and a session's partition holds thousands of frames, of
            # which a resume reads the few after the client's last sequence number.
            comparison = args[0] if args else kwargs.get("range_comparison")
            if comparison:
                values = args[1] if len(args) > 1 else kwargs.get("range_objs")
                candidates = [item for item in candidates if item.range_key.compare(comparison, values)]
    elif self.range_key_attr:
        candidates = [item for partition in self.items.values() for item in partition.values()]
    else:
        candidates = list(self.items.values())
    self.all_items = lambda: candidates
    try:
        return _moto_query(self, hash_key, *args, **kwargs)
    finally:
        del self.all_items


Table.query = _query_candidates

_possible_keys = XFormedAttributePicker.get_possible_keys
_possible_keys_of = {}


def possible_keys(picker, context):
    if type(context.obj) is not dict or picker.alias_providers is not DEFAULT_ALIAS_PROVIDERS:
        return _possible_keys(picker, context)
    shape = context.shape
    parent = getattr(shape, "parent", None)
    key = (id(shape), id(parent), context.key)
    known = _possible_keys_of.get(key)
    if known is None:
        known = _possible_keys_of[key] = (shape, parent, tuple(_possible_keys(picker, context)))
    return known[2]


XFormedAttributePicker.get_possible_keys = possible_keys


class ServerRequest(Request):
    """moto's request as moto_server builds it: the server, not moto, writes the Date header."""

    from_wsgi_server = True


def status_line(code):
    # werkzeug's reason phrases, upper-cased as moto_server's responses have them.
    return f"HTTP/1.1 {code} {HTTP_STATUS_CODES.get(code, 'UNKNOWN').upper()}\r\n"


def environ_for(method, target, version, headers, body, server, peer):
    """The WSGI environ werkzeug's development server would make of this request."""
    path, _, query = target.partition("?")
    environ = {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path).encode().decode("latin1"),
        "QUERY_STRING": query,
        "REQUEST_URI": target,
        "RAW_URI": target,
        "REMOTE_ADDR": peer[0],
        "REMOTE_PORT": peer[1],
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": version,
    }
    for name, value in headers.items():
        if "_" in name:
            continue  # as werkzeug: X_Foo must not pass for X-Foo
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    return environ


def dynamodb(environ):
    """What moto_server's Flask route for DynamoDB answers (moto.core.utils.convert_to_flask_response)."""
    request = ServerRequest(environ)
    recorder._record_request(request)
    try:
        status, headers, body = DynamoHandler.dispatch(request, request.raw_url, dict(request.headers))
    except ClientError as exc:
        status, headers, body = 400, {}, exc.response["Error"]["Message"]
    headers = {name: str(value) for name, value in headers.items()}
    lower = {name.lower() for name in headers}
    if "content-type" not in lower:
        headers["Content-Type"] = "text/html; charset=utf-8"  # Flask's default
    body = body.encode() if isinstance(body, str) else body
    # flask_cors, as configured by moto_server, for a request without an Origin header.
    headers["Access-Control-Allow-Origin"] = "*"
    return int(status), list(headers.items()), body


def wsgi(environ):
    """moto_server's application, for everything that is not a DynamoDB request."""
    started = []

    def start_response(status, headers, exc_info=None):
        started[:] = [int(status.split(" ", 1)[0]), headers]

    chunks = moto_server_app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return started[0], started[1], body


def respond(method, target, version, headers, body, server, peer, close):
    """The response's bytes; moto's failures become werkzeug's 500 page, with the traceback on stderr."""
    environ = environ_for(method, target, version, headers, body, server, peer)
    try:
        if (
            method == "POST"
            and target == "/"
            and headers.get("x-amz-target", "").lower().startswith(DYNAMODB_TARGET)
            and "origin" not in headers
        ):
            status, response_headers, payload = dynamodb(environ)
        else:
            status, response_headers, payload = wsgi(environ)
    except Exception:
        print(f"Error on request {method} {target}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        error = InternalServerError()
        status, response_headers, payload = 500, error.get_headers(), error.get_body().encode()
    lower = {name.lower() for name, _ in response_headers}
    head = [status_line(status)]
    head.extend(f"{name}: {value}\r\n" for name, value in response_headers)
    if "date" not in lower:
        head.append(f"Date: {http_date(time.time())}\r\n")
    if "content-length" not in lower:
        head.append(f"Content-Length: {len(payload)}\r\n")
    head.append("Connection: close\r\n\r\n" if close else "\r\n")
    return "".join(head).encode("latin1") + (b"" if method == "HEAD" else payload)


async def connection(reader, writer):
    """One client connection: HTTP/1.1 with keep-alive, its requests answered in order.

    Every connection is a coroutine of one event loop, and `respond` runs without awaiting: requests
    are answered one at a time by construction, with no lock and no thread per connection (the hosts
    of a cluster test keep a few hundred connections open, and threads contending for one lock and
    the interpreter's spent more of the CPU than moto did).
    """
    server = writer.get_extra_info("sockname")
    peer = writer.get_extra_info("peername")
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                if len(line) > MAX_HEAD:
                    raise ValueError("request line too long")
                method, target, version = line.decode("latin1").rstrip("\r\n").split(" ")
                headers = {}
                head_size = len(line)
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    head_size += len(line)
                    if head_size > MAX_HEAD:
                        raise ValueError("request head too large")
                    name, value = line.decode("latin1").rstrip("\r\n").split(":", 1)
                    name = name.strip().lower()
                    value = value.strip()
                    headers[name] = f"{headers[name]},{value}" if name in headers else value
                length = int(headers.get("content-length", "0"))
            except ValueError:
                return await refuse(writer, 400)
            if "transfer-encoding" in headers:
                return await refuse(writer, 501)  # AWS SDKs send DynamoDB requests with a Content-Length
            body = await reader.readexactly(length)
            close = version != "HTTP/1.1" or headers.get("connection", "").lower() == "close"
            writer.write(respond(method, target, version, headers, body, server, peer, close))
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # a client that goes away mid-request (a host the test kills) is not the server's error
    finally:
        writer.close()


async def refuse(writer, status):
    writer.write(f"{status_line(status)}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()


async def serve(host, port):
    # The hosts of a cluster test open many connections at once: a backlog well above the default.
    server = await asyncio.start_server(connection, host, port, backlog=1024, limit=MAX_HEAD)
    print(f" * Running on http://{host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description="moto's DynamoDB API, one request at a time")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    args = parser.parse_args()
    # As moto_server: some of moto's answers name the server's own URL.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
