"""Checks that tests/moto_dynamodb.py answers as moto would: its own serialisation of read and write results.

    python tests/moto_check.py

moto_dynamodb.py writes the answers of Query, Scan, GetItem, BatchGetItem, TransactGetItems and the item
writes itself (`fast_serialized`) instead of through moto's generic response serializer, from results it
turns into plain dicts itself (`dynamo_to_dict`). This runs, in this
process, a mix of requests through moto_dynamodb.py's request handling, with every result serialised both ways:
items with every attribute type (S, N, B, BOOL, NULL, L, M, SS, NS, BS; nested, empty, non-ASCII), projections,
Select=COUNT, filters, empty results, LastEvaluatedKey paging (Limit and 1 MB pages), ConsumedCapacity (TOTAL,
INDEXES, an index), item collection metrics, UnprocessedKeys (a BatchGetItem over 16 MB), return values of
writes, and errors (which must go through moto's path). It fails unless, for every successful request of those
operations, both give the same status, the same headers and the same body, byte for byte. Then it converts
results moto's handlers do not make (members under the serializer's aliases, None in lists and maps, values
of the wrong type, members the output does not have) both ways and compares them too. And every handler's
result is turned into plain dicts (`dynamo_to_dict`) both ways, which must give equal values of the same types.
"""

import base64
import datetime
import enum
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moto_dynamodb  # noqa: E402  (after the path: the server's module, with its patches of moto)
from moto.core.serialize import JSONSerializer, XFormedAttributePicker  # noqa: E402
from moto.core.utils import get_service_model  # noqa: E402
from moto.dynamodb import responses as dynamodb_responses  # noqa: E402
from moto.dynamodb.models.dynamo_type import DynamoType  # noqa: E402
from moto.dynamodb.responses import DynamoHandler  # noqa: E402

AUTH = (
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0"
)
compared = []  # (operation, fast answer or None, moto's answer) of the request being sent


def both(handler, action_result):
    fast = moto_dynamodb.fast_serialized(handler, action_result)
    moto = moto_dynamodb._moto_serialized(handler, action_result)
    # Copies: moto then adds to the headers of the answer it sends (x-amzn-RequestId, x-amz-crc32).
    copy = lambda answer: answer and (answer[0], dict(answer[1]), answer[2])  # noqa: E731
    compared.append((handler._get_action(), copy(fast), copy(moto)))
    return moto


DynamoHandler.serialized = both


def same(a, b):
    """Equal, and of the same types all the way down (1 == 1.0 == True, but a client tells them apart)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a) and list(a) == list(b)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def converted_both_ways(value):
    fast = moto_dynamodb.dynamo_to_dict(value)
    moto = moto_dynamodb._moto_dynamo_to_dict(value)
    if not same(fast, moto):
        failures.append(f"dynamo_to_dict:\n  fast {fast!r}\n  moto {moto!r}")
    else:
        counts["results"] += 1
    return moto


dynamodb_responses.dynamo_to_dict = converted_both_ways

counts = {"same": 0, "moto": 0, "results": 0}
failures = []


def call(operation, body, expect=200):
    """Sends one request through the server's handling; checks both serialisations of its result."""
    compared.clear()
    payload = json.dumps(body).encode()
    headers = {
        "host": "127.0.0.1:5000",
        "content-type": "application/x-amz-json-1.0",
        "x-amz-target": f"DynamoDB_20120810.{operation}",
        "x-amz-date": "20260101T000000Z",
        "authorization": AUTH,
        "content-length": str(len(payload)),
    }
    raw = moto_dynamodb.respond(
        "POST", "/", "HTTP/1.1", headers, payload, ("127.0.0.1", 5000), ("127.0.0.1", 40000), False
    )
    head, _, answer = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    parsed = json.loads(answer)
    if status != expect:
        failures.append(f"{operation} {json.dumps(body)[:200]}: status {status}, not {expect}: {parsed}")
    if status != 200 and not compared:
        counts["moto"] += 1  # an error moto answers without its serializer
        return parsed
    if len(compared) != 1:
        failures.append(f"{operation}: serialised {len(compared)} times")
        return parsed
    _, fast, moto = compared[0]
    if status != 200 or operation not in moto_dynamodb.FAST_OPERATIONS:
        if fast is not None:
            failures.append(f"{operation} answered {status}: the fast path answered too")
        counts["moto"] += 1
        return parsed
    if fast is None:
        failures.append(f"{operation} {json.dumps(body)[:200]}: the fast path did not answer")
        return parsed
    (fast_status, fast_headers, fast_body), (moto_status, moto_headers, moto_body) = fast, moto
    problems = []
    if fast_status != moto_status:
        problems.append(f"status {fast_status} != {moto_status}")
    if fast_headers != moto_headers:
        problems.append(f"headers {fast_headers} != {moto_headers}")
    if json.loads(fast_body) != json.loads(moto_body):
        problems.append(f"bodies differ:\n  fast {fast_body[:400]}\n  moto {moto_body[:400]}")
    elif fast_body != moto_body:
        problems.append("bodies parse the same but differ in bytes")
    if problems:
        failures.append(f"{operation} {json.dumps(body)[:200]}: " + "; ".join(problems))
    else:
        counts["same"] += 1
    return parsed


def b64(data):
    return base64.b64encode(data).decode()


def item(pk, sk):
    """An item with every attribute type, some nested, empty or non-ASCII."""
    return {
        "pk": {"S": pk},
        "sk": {"N": str(sk)},
        "lsk": {"S": f"l{sk % 7:03}"},
        "g": {"S": f"g{sk % 3}"},
        "s": {"S": "" if sk % 5 == 0 else f"héllo ✓ \"quoted\" \\ {sk}"},
        "n": {"N": ["-12.50", "1e10", "123456789012345678901234567890", "0", "3.14159"][sk % 5]},
        "b": {"B": b64(bytes(range(256))[sk:])},
        "t": {"BOOL": sk % 2 == 0},
        "z": {"NULL": True},
        "l": {
            "L": [
                {"S": "x"},
                {"N": "1"},
                {"M": {"deep": {"L": [{"BOOL": False}, {"NULL": True}, {"B": b64(b"\x00\xff")}]}}},
                {"L": []},
                {"SS": ["a", "b"]},
            ]
        },
        "m": {"M": {"a": {"S": "α"}, "nested": {"M": {"x": {"NS": ["1", "2.5", "-3"]}}}, "empty": {"M": {}}}},
        "ss": {"SS": [f"s{sk}", "shared", "ünï"]},
        "ns": {"NS": [str(sk), "-0.001", "99999999999999999999"]},
        "bs": {"BS": [b64(b"one"), b64(bytes([sk % 256, 1, 2]))]},
    }


def create(table, attributes, key, **extra):
    call(
        "CreateTable",
        {
            "TableName": table,
            "KeySchema": [{"AttributeName": name, "KeyType": kind} for name, kind in key],
            "AttributeDefinitions": [{"AttributeName": name, "AttributeType": kind} for name, kind in attributes],
            "BillingMode": "PAY_PER_REQUEST",
            **extra,
        },
    )


def page(operation, body):
    """Follows LastEvaluatedKey to the end; returns the number of pages."""
    body = dict(body)
    pages = 0
    while True:
        answer = call(operation, body)
        pages += 1
        if "LastEvaluatedKey" not in answer:
            return pages
        body["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def requests():
    create(
        "check",
        [("pk", "S"), ("sk", "N"), ("lsk", "S"), ("g", "S")],
        [("pk", "HASH"), ("sk", "RANGE")],
        LocalSecondaryIndexes=[
            {
                "IndexName": "lsi",
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "lsk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "gsi",
                "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
    )
    create("plain", [("id", "S")], [("id", "HASH")])
    for sk in range(30):
        call("PutItem", {"TableName": "check", "Item": item("p1", sk)})
    for n in range(12):  # 100 KB each: a Query of the partition pages at 1 MB
        big = {"pk": {"S": "big"}, "sk": {"N": str(n)}, "s": {"S": "x" * 100_000}}
        call("PutItem", {"TableName": "check", "Item": big})
    call("PutItem", {"TableName": "plain", "Item": {"id": {"S": "one"}, "v": {"N": "1"}}})

    key = {"pk": {"S": "p1"}, "sk": {"N": "3"}}
    # GetItem
    call("GetItem", {"TableName": "check", "Key": key})
    call("GetItem", {"TableName": "check", "Key": key, "ConsistentRead": True, "ReturnConsumedCapacity": "TOTAL"})
    call("GetItem", {"TableName": "check", "Key": key, "ReturnConsumedCapacity": "INDEXES"})
    names = {"ExpressionAttributeNames": {"#s": "s", "#m": "m"}}
    call("GetItem", {"TableName": "check", "Key": key, "ProjectionExpression": "#s, #m.nested, l[2], ns", **names})
    call("GetItem", {"TableName": "check", "Key": {"pk": {"S": "p1"}, "sk": {"N": "999"}}})
    nothing = {"pk": {"S": "none"}, "sk": {"N": "0"}}
    call("GetItem", {"TableName": "check", "Key": nothing, "ReturnConsumedCapacity": "TOTAL"})
    call("GetItem", {"TableName": "plain", "Key": {"id": {"S": "one"}}, "AttributesToGet": ["v"]})
    # Query
    p1 = {":p": {"S": "p1"}}
    partition = {"TableName": "check", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": p1}
    call("Query", partition)
    call("Query", {**partition, "ConsistentRead": True, "ScanIndexForward": False, "ReturnConsumedCapacity": "TOTAL"})
    call("Query", {**partition, "Select": "COUNT"})
    call("Query", {**partition, "Select": "COUNT", "ReturnConsumedCapacity": "INDEXES"})
    call("Query", {**partition, "ProjectionExpression": "pk, #s, #m.nested.x, l[4]", **names})
    for t in ({"BOOL": True}, {"S": "no"}):
        call("Query", {**partition, "FilterExpression": "t = :t", "ExpressionAttributeValues": {**p1, ":t": t}})
    call("Query", {**partition, "ExpressionAttributeValues": {":p": {"S": "empty"}}})
    call("Query", {**partition, "ExpressionAttributeValues": {":p": {"S": "empty"}}, "Select": "COUNT"})
    call(
        "Query",
        {
            "TableName": "check",
            "KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b",
            "ExpressionAttributeValues": {":p": {"S": "p1"}, ":a": {"N": "4"}, ":b": {"N": "11"}},
        },
    )
    assert page("Query", {**partition, "Limit": 7}) == 5
    assert page("Query", {**partition, "Limit": 7, "ScanIndexForward": False, "Select": "COUNT"}) == 5
    assert page("Query", {**partition, "ExpressionAttributeValues": {":p": {"S": "big"}}}) > 1
    call("Query", {**partition, "IndexName": "lsi", "ReturnConsumedCapacity": "INDEXES"})
    assert page("Query", {**partition, "IndexName": "lsi", "Limit": 4, "Select": "ALL_PROJECTED_ATTRIBUTES"}) > 1
    call(
        "Query",
        {
            "TableName": "check",
            "IndexName": "gsi",
            "KeyConditionExpression": "g = :g",
            "ExpressionAttributeValues": {":g": {"S": "g1"}},
            "ReturnConsumedCapacity": "INDEXES",
        },
    )
    conditions = {"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "p1"}]}}
    call("Query", {"TableName": "check", "KeyConditions": conditions, "Limit": 3})
    # Scan
    call("Scan", {"TableName": "check"})
    call("Scan", {"TableName": "check", "ReturnConsumedCapacity": "TOTAL", "ConsistentRead": True})
    call("Scan", {"TableName": "check", "Select": "COUNT"})
    zero = {":z": {"N": "0"}}
    exists = {"FilterExpression": "attribute_exists(ss) AND n > :z", "ExpressionAttributeValues": zero}
    call("Scan", {"TableName": "check", **exists})
    call("Scan", {"TableName": "check", "ProjectionExpression": "pk, b, bs"})
    call("Scan", {"TableName": "check", "Segment": 1, "TotalSegments": 3})
    call("Scan", {"TableName": "check", "IndexName": "gsi"})
    call("Scan", {"TableName": "plain", "FilterExpression": "v = :z", "ExpressionAttributeValues": zero})
    assert page("Scan", {"TableName": "check", "Limit": 9}) > 1
    # BatchGetItem and TransactGetItems
    keys = [{"pk": {"S": "p1"}, "sk": {"N": str(n)}} for n in (0, 5, 17, 999)]
    call("BatchGetItem", {"RequestItems": {"check": {"Keys": keys}}})
    call(
        "BatchGetItem",
        {
            "RequestItems": {
                "check": {"Keys": keys, "ProjectionExpression": "#s, #m, sk", "ConsistentRead": True, **names},
                "plain": {"Keys": [{"id": {"S": "one"}}, {"id": {"S": "two"}}]},
            },
            "ReturnConsumedCapacity": "TOTAL",
        },
    )
    call("BatchGetItem", {"RequestItems": {"check": {"Keys": [{"pk": {"S": "x"}, "sk": {"N": "1"}}]}}})
    call("TransactGetItems", {"TransactItems": [{"Get": {"TableName": "check", "Key": k}} for k in keys]})
    call(
        "TransactGetItems",
        {
            "TransactItems": [
                {"Get": {"TableName": "check", "Key": keys[1], "ProjectionExpression": "#m", **names}},
                {"Get": {"TableName": "plain", "Key": {"id": {"S": "one"}}}},
            ],
            "ReturnConsumedCapacity": "TOTAL",
        },
    )
    # Writes, with what they return
    old = {"ReturnValues": "ALL_OLD"}
    call("PutItem", {"TableName": "check", "Item": item("p1", 3), **old, "ReturnConsumedCapacity": "TOTAL"})
    call("PutItem", {"TableName": "check", "Item": item("p2", 1), **old, "ReturnItemCollectionMetrics": "SIZE"})
    for values in ("ALL_NEW", "UPDATED_OLD", "UPDATED_NEW", "ALL_OLD", "NONE"):
        call(
            "UpdateItem",
            {
                "TableName": "check",
                "Key": key,
                "UpdateExpression": "SET #s = :s, tally = if_not_exists(tally, :z) + :one ADD ns :x",
                "ExpressionAttributeNames": {"#s": "s"},
                "ExpressionAttributeValues": {**zero, ":s": {"S": "new ✓"}, ":one": {"N": "1"}, ":x": {"NS": ["7"]}},
                "ReturnValues": values,
                "ReturnConsumedCapacity": "INDEXES",
                "ReturnItemCollectionMetrics": "SIZE",
            },
        )
    p2 = {"pk": {"S": "p2"}, "sk": {"N": "1"}}
    call("DeleteItem", {"TableName": "check", "Key": p2, **old, "ReturnConsumedCapacity": "TOTAL"})
    call("DeleteItem", {"TableName": "check", "Key": p2})
    call(
        "BatchWriteItem",
        {
            "RequestItems": {
                "check": [{"PutRequest": {"Item": item("p3", n)}} for n in range(3)],
                "plain": [{"DeleteRequest": {"Key": {"id": {"S": "gone"}}}}],
            },
            "ReturnConsumedCapacity": "TOTAL",
            "ReturnItemCollectionMetrics": "SIZE",
        },
    )
    call(
        "TransactWriteItems",
        {
            "TransactItems": [
                {"Put": {"TableName": "plain", "Item": {"id": {"S": "t"}, "v": {"N": "5"}}}},
                {"Update": {"TableName": "check", "Key": key, "UpdateExpression": "REMOVE tally"}},
            ],
            "ReturnConsumedCapacity": "INDEXES",
        },
    )
    call("TransactWriteItems", {"TransactItems": [{"Put": {"TableName": "plain", "Item": {"id": {"S": "u"}}}}]})
    # UnprocessedKeys: a BatchGetItem whose items pass 16 MB
    create("large", [("id", "S")], [("id", "HASH")])
    for n in range(44):
        call("PutItem", {"TableName": "large", "Item": {"id": {"S": f"{n:02}"}, "v": {"S": "y" * 399_000}}})
    large = [{"id": {"S": f"{n:02}"}} for n in range(44)]
    answer = call("BatchGetItem", {"RequestItems": {"large": {"Keys": large}}})
    assert answer.get("UnprocessedKeys", {}).get("large", {}).get("Keys"), "no UnprocessedKeys"
    # Errors: moto's path
    call("Query", {**partition, "TableName": "missing"}, expect=400)
    call("GetItem", {"TableName": "check", "Key": {"pk": {"S": "p1"}}}, expect=400)
    absent = {"ConditionExpression": "attribute_not_exists(id)"}
    call("PutItem", {"TableName": "plain", "Item": {"id": {"S": "one"}}, **absent}, expect=400)
    call("Scan", {"TableName": "check", "Segment": 3, "TotalSegments": 3}, expect=400)
    check = {"ConditionCheck": {"TableName": "plain", "Key": {"id": {"S": "one"}}, **absent}}
    call("TransactWriteItems", {"TransactItems": [check]}, expect=400)
    # Not of the fast path: moto's, as before
    call("DescribeTable", {"TableName": "check"})
    for table in ("check", "plain", "large"):
        call("DeleteTable", {"TableName": table})


class Color(enum.Enum):
    RED = "red"


def conversions():
    """Results moto's handlers do not make, converted both ways: the picker's aliases and odd values."""
    service = get_service_model("dynamodb")
    results = {
        "Query": [
            {"Items": [{"a": {"S": 5}, "b": {"N": 1.5}, "c": {"S": Color.RED}, "d": {"S": None}, "e": {"S": []}}]},
            {"Count": "3", "scanned_count": 4.0, "Extra": 1, "LastEvaluatedKey": {"k": {"N": "1"}}},
            {"ItemList": [{"a": {"S": "from the shape's name"}}], "Items": [{"a": {"S": "from the member's name"}}]},
            {"items": [{"a": {"L": [None, {"S": "x"}, {"M": {"gone": None, "kept": {"NULL": True}}}]}}]},
            {"Items": [{"a": {"S": "a", "N": "1", "B": "text", "BS": [b"\x00", "str"], "Other": 1}}]},
            {"Items": [{"a": {"MapAttributeValue": {"x": {"S": "alias"}}, "M": {"x": {"S": "member"}}}}]},
            {"ConsumedCapacity": {"TableName": "t", "capacity_units": 1, "Table": {"CapacityUnits": 2, "Units": 3}}},
            {"ConsumedCapacity": {"CapacityUnits": None, "GlobalSecondaryIndexes": {"i": {"ReadCapacityUnits": "5"}}}},
            {"Items": None, "Count": None},
            {},
            None,
        ],
        "BatchGetItem": [
            {"Responses": {"t": [{"k": {"S": "v"}}, None]}},
            {"UnprocessedKeys": {"t": {"Keys": [{"k": {"S": "v"}}], "AttributesToGet": ["k"], "ConsistentRead": 1}}},
            {"ConsumedCapacity": [{"TableName": "t", "CapacityUnits": 2}, None]},
            {"Responses": {"t": [{"k": {"N": 1}}], "u": None}},
        ],
    }
    for operation, cases in results.items():
        model = service.operation_model(operation)
        convert = moto_dynamodb.output_converter(model)
        for result in cases:
            serializer = JSONSerializer(operation_model=model, value_picker=XFormedAttributePicker())
            # A value moto's serializer fails on must fail the conversion too (moto then answers, and fails).
            try:
                expected = serializer.serialize(result)["body"]
            except Exception as e:
                expected = f"fails: {type(e).__name__}"
            try:
                got = json.dumps({} if result is None else convert(result))
            except Exception as e:
                got = f"fails: {type(e).__name__}"
            if got != expected:
                failures.append(f"{operation} {result!r}:\n  fast {got}\n  moto {expected}")
            else:
                counts["same"] += 1
    # Results with what moto's handlers may put in them: blobs as base64 text or bytes, dates, tuples.
    converted_both_ways(
        {
            "Items": [
                {"b": DynamoType({"B": "AAE="}), "bs": DynamoType({"BS": ["AAE=", b"\x00"]}), "n": DynamoType({"N": "1"})},
                {"l": DynamoType({"L": [DynamoType({"M": {"s": DynamoType({"S": "a"})}}), DynamoType({"NULL": True})]})},
            ],
            "When": datetime.datetime(2026, 1, 1),
            "Pair": (DynamoType({"S": "x"}), 1.5),
            "Count": 2,
            "Flag": False,
            "Nothing": None,
        }
    )
    # A value moto's serializer reads as an object, not a dict: not converted.
    class Thing:
        Count = 1

    try:
        moto_dynamodb.output_converter(service.operation_model("Query"))(Thing())
        failures.append("an object was converted")
    except moto_dynamodb.Unconvertible:
        pass


def main():
    requests()
    conversions()
    for failure in failures:
        print(f"DIFFERENT: {failure}", file=sys.stderr)
    print(
        f"moto_check: {counts['same']} answers the same both ways, {counts['moto']} left to moto's serializer, "
        f"{counts['results']} results turned into dicts the same both ways, {len(failures)} different"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
