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

Answers written without moto's generic serializer: moto turns a handler's result into its JSON body by
walking the operation's output shape member by member, asking its attribute picker under which names to
look for each member, for every attribute value of every item. That walk was three quarters of a Query's
time: a strongly consistent Query of a 2,000-frame partition (what a host taking over a session reads,
17 sessions at once when a host of the chaos test dies) took 0.38–0.42 s of the server's CPU, while every
other request waited. For the item reads and writes (`FAST_OPERATIONS`), `fast_serialized` walks the
same shape with functions made once per operation (`converter`), which do to each shape what moto's
serializer does (their docstring lists it) and skip the picker's lookups only where they cannot find
anything but the member's own name; moto's serializer still sets the status and the Content-Type and encodes the body (`json.dumps`: the
same bytes), and moto adds x-amzn-RequestId and x-amz-crc32 as before. Errors, and any result, shape or
value the converters do not follow, go through moto's serializer. With `dynamo_to_dict` (below), the same
Query now takes 0.07–0.08 s, and a Query of 10 items 0.68 ms instead of 1.41 (`python tests/moto_load.py
--endpoint URL --partition 2000 --pid PID`, and without --partition; load average 4 on 2 cores).
`python tests/moto_check.py` (the test step of tests/run.sh runs it) serialises a mix of results both ways
and fails unless status, headers and body are the same, byte for byte.
"""

import argparse
import asyncio
import base64
import functools
import gc
import io
import os
import sys
import time
import traceback
from enum import Enum
from urllib.parse import unquote

from botocore.exceptions import ClientError
from botocore.model import OperationNotFoundError
from moto import settings as moto_settings
from moto.core import responses as moto_responses
from moto.core.request import Request
from moto.core.serialize import (
    DEFAULT_ALIAS_PROVIDERS,
    AttributePickerContext,
    JSONSerializer,
    XFormedAttributePicker,
    get_serializer_class,
)
from moto.core.utils import get_service_model
from moto.dynamodb import responses as dynamodb_responses
from moto.dynamodb.models.dynamo_type import DynamoType, LimitedSizeDict
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler, DynamoResult
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

# A handler's result (DynamoResult) first has its items' attribute values (DynamoType) turned into dicts
# by moto's `dynamo_to_dict`, which tests what each value is an instance of, and whether it has a
# `to_json`, before it sees a dict, a list or a string. This one answers the common kinds by their exact
# type, as moto's does (a dict, an item's attributes (a LimitedSizeDict, a dict without `to_json`), a list
# or a DynamoType other than B and BS is converted the same way; a str, int, float, bool or None is
# returned, as moto's finds it none of the others), and hands everything else to moto's.
_moto_dynamo_to_dict = dynamodb_responses.dynamo_to_dict
_AS_THEY_ARE = frozenset([str, int, float, bool, type(None)])


def dynamo_to_dict(value):
    kind = type(value)
    if kind is dict or kind is LimitedSizeDict:
        return {key: dynamo_to_dict(each) for key, each in value.items()}
    if kind is list:
        return [dynamo_to_dict(each) for each in value]
    if kind is DynamoType and value.type != "B" and value.type != "BS":
        return {value.type: dynamo_to_dict(value.value)}
    if kind in _AS_THEY_ARE:
        return value
    return _moto_dynamo_to_dict(value)


dynamodb_responses.dynamo_to_dict = dynamo_to_dict

# The operations whose answers `fast_serialized` writes (tests/moto_check.py compares each with moto's).
FAST_OPERATIONS = frozenset(
    [
        "Query",
        "Scan",
        "GetItem",
        "BatchGetItem",
        "TransactGetItems",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchWriteItem",
        "TransactWriteItems",
    ]
)
# Set by a converter only for a structure that is None: its member, map entry or list item is not written.
OMIT = object()


class Unconvertible(Exception):
    """A shape or a value the converters do not follow: moto's serializer answers instead."""


def converter(shape, known):
    """A function from a handler's value to what moto's JSON serializer writes for it, for this shape.

    moto's serializer (`moto.core.serialize.JSONSerializer`), for a result of plain dicts, lists and
    scalars, step by step: a structure writes, in the shape's member order, each member the attribute
    picker finds under one of the member's possible keys (the first found) and whose value is not None;
    a map writes every entry, its key as it is; a list writes every item, and an item its shape writes
    nothing for (a structure that is None) as it is; a string is `str(value)` (an Enum's value first)
    unless it is None, {} or []; an integer or long `int(value)`, a double or float `float(value)`; a
    blob the base64 of its bytes (of its UTF-8 for a str); a boolean as it is. Other shapes (timestamps,
    documents, event streams) and serialisation names are not converted: `Unconvertible`.
    """
    if shape.name in known:
        return known[shape.name]
    if shape.serialization.get("name") is not None:
        raise Unconvertible(f"{shape.name} has a serialisation name")
    kind = shape.type_name
    if kind == "structure":
        if shape.is_document_type:
            raise Unconvertible(f"{shape.name} is a document")
        return structure_converter(shape, known)
    if kind in ("list", "map"):
        # A list or map of itself (AttributeValue's L and M) is converted by the function made here.
        inner = []

        if kind == "list":

            def convert(value):
                item = inner[0]
                out = []
                for each in value:
                    converted = item(each)
                    out.append(each if converted is OMIT else converted)
                return out

        else:

            def convert(value):
                item = inner[0]
                out = {}
                for key, each in value.items():
                    converted = item(each)
                    if converted is not OMIT:
                        out[key] = converted
                return out

        known[shape.name] = convert
        inner.append(converter(shape.member if kind == "list" else shape.value, known))
        return convert
    scalar = SCALARS.get(kind)
    if scalar is None:
        raise Unconvertible(f"{shape.name} is a {kind}")
    known[shape.name] = scalar
    return scalar


def structure_converter(shape, known):
    members = []  # (name, the keys the picker tries for it in a dict, in its order, converter)

    def convert(value):
        if value is None:
            return OMIT
        if type(value) is not dict:
            raise Unconvertible(f"{shape.name} from a {type(value).__name__}")  # the picker reads objects
        # When every key of the dict is a member that no other member's possible keys name, the
        # picker finds each member under its own name: the lookups are skipped.
        if value.keys() <= plain:
            if len(value) == 1:
                ((name, member),) = value.items()
                return {} if member is None else {name: convert_member[name](member)}
            out = {}
            for name in order:
                member = value.get(name)
                if member is not None:
                    out[name] = convert_member[name](member)
            return out
        out = {}
        for name, keys, convert_one in members:
            for key in keys:
                if key in value:
                    member = value[key]
                    if member is not None:
                        out[name] = convert_one(member)
                    break
        return out

    known[shape.name] = convert
    picker = XFormedAttributePicker()
    for name, member_shape in shape.members.items():
        member_shape.parent = shape  # as moto's serializer sets it; the picker's aliases read it
        context = AttributePickerContext(obj={}, key=name, shape=member_shape)
        keys = tuple(picker.get_possible_keys(context))
        if any(not isinstance(key, str) or "." in key for key in keys):
            raise Unconvertible(f"{shape.name}.{name} is looked up by a path")
        members.append((name, keys, converter(member_shape, known)))
    order = [name for name, _, _ in members]
    convert_member = {name: convert_one for name, _, convert_one in members}
    plain = frozenset(
        name for name in order if not any(name in keys for other, keys, _ in members if other != name)
    )
    return convert


def string_value(value):
    if type(value) is str:
        return value
    if isinstance(value, Enum):
        value = value.value
    return str(value) if value not in [None, {}, []] else value


def blob_value(value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return base64.b64encode(value).strip().decode("utf-8")


SCALARS = {
    "string": string_value,
    "boolean": lambda value: value,
    "integer": int,
    "long": int,
    "double": float,
    "float": float,
    "blob": blob_value,
}
_output_converters = {}  # operation -> (its output shape, kept alive, and its converter)


def output_converter(operation_model):
    known = _output_converters.get(operation_model.name)
    if known is None or known[0] is not operation_model.output_shape:
        shape = operation_model.output_shape
        try:
            convert = converter(shape, {}) if shape is not None else None
        except Unconvertible:
            convert = None
        known = _output_converters[operation_model.name] = (shape, convert)
    return known[1]


_moto_serialized = moto_responses.BaseResponse.serialized


def fast_serialized(handler, action_result):
    """What moto's `BaseResponse.serialized` answers for a result of `FAST_OPERATIONS`, or None.

    Only the walk of the output shape is replaced (by `converter`'s functions); the status, the
    Content-Type and the body's encoding are moto's serializer's own steps, and the headers moto adds
    around it (x-amzn-RequestId, x-amz-crc32) are added by moto as before. None (moto's serializer
    answers) for an error, a paginated or empty result, response transformers, another operation, or
    any shape or value the converters do not follow.
    """
    result = action_result.result
    if (
        type(action_result) not in (moto_responses.ActionResult, DynamoResult)
        or isinstance(result, Exception)
        or handler.RESPONSE_KEY_PATH_TO_TRANSFORMER
    ):
        return None
    service_model = get_service_model(handler.boto3_service_name)
    try:
        operation_model = service_model.operation_model(handler._get_action())
    except OperationNotFoundError:
        return None
    if operation_model.name not in FAST_OPERATIONS or operation_model.has_event_stream_output:
        return None
    protocol = handler.determine_response_protocol(service_model)
    serializer_cls = get_serializer_class(service_model.service_name, protocol)
    convert = output_converter(operation_model)
    if serializer_cls is not JSONSerializer or convert is None:
        return None
    try:
        serialized = convert(result)
    except Exception:  # Unconvertible, or a value moto's serializer fails on too: moto's answer, as before
        return None
    serializer = serializer_cls(operation_model, pretty_print=moto_settings.PRETTIFY_RESPONSES)
    response = serializer._create_default_response()
    response = serializer._serialized_result_to_response(
        response, result, operation_model.output_shape, {} if serialized is OMIT else serialized
    )
    headers = response["headers"]
    headers.update(handler.response_headers)
    return response["status_code"], headers, response["body"]


def serialized(handler, action_result):
    answer = fast_serialized(handler, action_result)
    return answer if answer is not None else _moto_serialized(handler, action_result)


DynamoHandler.serialized = serialized


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


# Python's full garbage collection walks every object it tracks, and moto keeps each item as a dozen
# or so: with the 300,000 items (frames and keys) of the chaos test at 50 clients x 2,000 messages, a
# full collection stopped the server for about 3 s, past the hosts' 2 s attempt timeout, every few
# minutes as the heap grew (20,000 items: 311,000 objects, 0.19 s). Every FREEZE_EVERY requests, the
# objects that survived them are moved out of the collector's reach (`gc.freeze`): each later full
# collection walks only what is newer. moto's items hold no reference cycles, so reference counting
# still frees one when it is deleted; short-lived cycles (a request's exception and its traceback)
# are collected by the young generations, which run every few hundred allocations, long before.
FREEZE_EVERY = 2000
_answered = 0


def settle_heap():
    global _answered
    _answered += 1
    if _answered % FREEZE_EVERY == 0:
        gc.collect(1)
        gc.freeze()


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
            settle_heap()
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
