"""Requests per second of a DynamoDB-API endpoint (moto_dynamodb.py), and its conditional writes' atomicity.

    python tests/moto_load.py --endpoint http://127.0.0.1:PORT [--clients 1,16] [--seconds 5] [--pid PID]
    python tests/moto_load.py --endpoint http://127.0.0.1:PORT --atomicity 300
    python tests/moto_load.py --endpoint http://127.0.0.1:PORT --partition 2000 [--reads 5] [--pid PID]

The first form creates a table and, for each number of concurrent clients, sends PutItem, GetItem, a
conditional UpdateItem and a Query (10 items), in that order, for --seconds each, every client on one keep-alive
connection, and prints requests/s and latency percentiles; with --pid (the server's process) also the
server's CPU time per request, which another load on the machine disturbs less than requests/s. The
clients are threads spread over up to four processes, so that the load generator's own interpreter
lock does not cap what it measures.

The second form runs ROUNDS rounds of eight concurrent `SET #o = :me IF #o = :old` updates on one item,
each round from a new owner: DynamoDB lets exactly one of each round's eight succeed, and so must the
server. Exits non-zero when a round has another number of winners.

The third form writes one partition of N items shaped like a session's frames (a ~200-byte JSON `frame`,
`writer`, `ttl`) and times --reads strongly consistent Queries of the whole partition, each followed over its
1 MB pages, as a host taking over a session reads its frames; it prints each read's time and pages (and
with --pid the server's CPU time for it).
"""

import argparse
import http.client
import json
import multiprocessing
import os
import threading
import time
import uuid
from urllib.parse import urlparse

AUTH = (
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0"
)
OPERATIONS = ["PutItem", "GetItem", "UpdateItem", "Query"]
QUERY_ITEMS = 10


class Dynamo:
    """One keep-alive connection, sending DynamoDB JSON requests as the AWS SDKs do."""

    def __init__(self, endpoint):
        url = urlparse(endpoint)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)

    def call(self, operation, body):
        data = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"DynamoDB_20120810.{operation}",
            "X-Amz-Date": "20260101T000000Z",
            "Authorization": AUTH,
        }
        self.conn.request("POST", "/", data, headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")


def request_body(operation, table, client, n):
    """The n-th request of one client: each client writes its own 10 items, all query one partition."""
    key = {"pk": {"S": f"c{client}-{n % 10}"}, "sk": {"S": "item"}}
    if operation == "PutItem":
        return {"TableName": table, "Item": {**key, "owner": {"S": "a"}, "n": {"N": str(n)}}}
    if operation == "GetItem":
        return {"TableName": table, "Key": key}
    if operation == "UpdateItem":
        # Alternates the owner between a and b: the condition always holds, and is always checked.
        old, new = ("a", "b") if n // 10 % 2 == 0 else ("b", "a")
        return {
            "TableName": table,
            "Key": key,
            "UpdateExpression": "SET #o = :new",
            "ConditionExpression": "#o = :old",
            "ExpressionAttributeNames": {"#o": "owner"},
            "ExpressionAttributeValues": {":new": {"S": new}, ":old": {"S": old}},
        }
    return {
        "TableName": table,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": "query"}},
    }


def run_clients(endpoint, table, operation, clients, deadline, out):
    """Runs `clients` (a list of client numbers) as threads until `deadline`; puts their latencies on `out`."""
    latencies = []
    errors = []
    lock = threading.Lock()

    def client(number):
        dynamo = Dynamo(endpoint)
        mine = []
        n = 0
        while time.time() < deadline:
            start = time.perf_counter()
            try:
                status, answer = dynamo.call(operation, request_body(operation, table, number, n))
            except (OSError, http.client.HTTPException) as e:
                status, answer = "no answer", repr(e)
            mine.append(time.perf_counter() - start)
            if status != 200:
                with lock:
                    errors.append(f"{operation} {status}: {answer}")
                return
            n += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((latencies, errors))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(endpoint, table, operation, clients, seconds, pid):
    processes = min(clients, 4)
    out = multiprocessing.Queue()
    start = time.time()
    cpu = cpu_seconds(pid) if pid else None
    workers = [
        multiprocessing.Process(
            target=run_clients,
            args=(endpoint, table, operation, list(range(p, clients, processes)), start + seconds, out),
        )
        for p in range(processes)
    ]
    for w in workers:
        w.start()
    latencies, errors = [], []
    for _ in workers:
        lat, err = out.get()
        latencies.extend(lat)
        errors.extend(err)
    for w in workers:
        w.join()
    elapsed = time.time() - start
    if errors:
        raise SystemExit(f"errors: {errors[:3]}")
    latencies.sort()
    count = len(latencies)
    line = (
        f"{operation:<11} {clients:>2} clients: {count / elapsed:7.0f} requests/s, "
        f"p50 {latencies[count // 2] * 1000:6.2f} ms, p99 {latencies[count * 99 // 100] * 1000:6.2f} ms"
    )
    if pid:
        line += f", server CPU {(cpu_seconds(pid) - cpu) / count * 1000:.2f} ms/request"
    print(line, flush=True)


def create_table(dynamo, table):
    status, answer = dynamo.call(
        "CreateTable",
        {
            "TableName": table,
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            "AttributeDefinitions": [
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            "BillingMode": "PAY_PER_REQUEST",
        },
    )
    assert status == 200, answer


def atomicity(endpoint, rounds):
    dynamo = Dynamo(endpoint)
    table = f"atomicity-{uuid.uuid4().hex}"
    create_table(dynamo, table)
    key = {"pk": {"S": "item"}, "sk": {"S": "item"}}
    status, answer = dynamo.call("PutItem", {"TableName": table, "Item": {**key, "owner": {"S": "0"}}})
    assert status == 200, answer
    racers = [Dynamo(endpoint) for _ in range(8)]
    bad = 0
    for round_ in range(rounds):
        start = threading.Barrier(len(racers))
        results = [None] * len(racers)

        def race(i):
            body = {
                "TableName": table,
                "Key": key,
                "UpdateExpression": "SET #o = :new",
                "ConditionExpression": "#o = :old",
                "ExpressionAttributeNames": {"#o": "owner"},
                "ExpressionAttributeValues": {":new": {"S": f"{round_ + 1}-{i}"}, ":old": {"S": old}},
            }
            start.wait()
            results[i] = racers[i].call("UpdateItem", body)

        status, answer = dynamo.call("GetItem", {"TableName": table, "Key": key, "ConsistentRead": True})
        old = answer["Item"]["owner"]["S"]
        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(racers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = sum(1 for status, _ in results if status == 200)
        refused = sum(
            1 for status, answer in results
            if status == 400 and answer.get("__type", "").endswith("ConditionalCheckFailedException")
        )
        if winners != 1 or winners + refused != len(racers):
            bad += 1
            print(f"round {round_}: {winners} winners, {refused} refused: {results}")
    dynamo.call("DeleteTable", {"TableName": table})
    print(f"atomicity: {rounds - bad} of {rounds} rounds had exactly one winner of {len(racers)}")
    return bad == 0


def frame_partition(endpoint, items, reads, pid):
    dynamo = Dynamo(endpoint)
    table = f"frames-{uuid.uuid4().hex}"
    status, answer = dynamo.call(
        "CreateTable",
        {
            "TableName": table,
            "KeySchema": [
                {"AttributeName": "connectionId", "KeyType": "HASH"},
                {"AttributeName": "item", "KeyType": "RANGE"},
            ],
            "AttributeDefinitions": [
                {"AttributeName": "connectionId", "AttributeType": "S"},
                {"AttributeName": "item", "AttributeType": "S"},
            ],
            "BillingMode": "PAY_PER_REQUEST",
        },
    )
    assert status == 200, answer
    session = {"S": "c-" + uuid.uuid4().hex[:12]}
    for start in range(0, items, 25):
        puts = []
        for n in range(start, min(start + 25, items)):
            frame = json.dumps({"seq": n, "kind": "message", "key": uuid.uuid4().hex, "data": "x" * 120})
            item = {
                "connectionId": session,
                "item": {"S": f"m#{n:012}"},
                "frame": {"S": frame},
                "writer": {"S": "host-a"},
                "ttl": {"N": str(1_900_000_000 + n)},
            }
            puts.append({"PutRequest": {"Item": item}})
        status, answer = dynamo.call("BatchWriteItem", {"RequestItems": {table: puts}})
        assert status == 200 and not answer.get("UnprocessedItems"), answer
    for _ in range(reads):
        start = time.perf_counter()
        cpu = cpu_seconds(pid) if pid else None
        request = {
            "TableName": table,
            "KeyConditionExpression": "connectionId = :c",
            "ExpressionAttributeValues": {":c": session},
            "ConsistentRead": True,
        }
        count = pages = 0
        while True:
            status, answer = dynamo.call("Query", request)
            assert status == 200, answer
            count += answer["Count"]
            pages += 1
            if "LastEvaluatedKey" not in answer:
                break
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        assert count == items, count
        line = f"Query of {items} items: {time.perf_counter() - start:.3f} s, {pages} page(s)"
        if pid:
            line += f", server CPU {cpu_seconds(pid) - cpu:.3f} s"
        print(line, flush=True)
    dynamo.call("DeleteTable", {"TableName": table})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--clients", default="1,16", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="per operation and number of clients")
    parser.add_argument("--pid", type=int, help="the server's process, for its CPU time per request")
    parser.add_argument("--atomicity", type=int, metavar="ROUNDS", help="check atomicity instead")
    parser.add_argument("--partition", type=int, metavar="N", help="time Queries of one partition of N frames")
    parser.add_argument("--reads", type=int, default=5, help="with --partition: how many reads of it")
    args = parser.parse_args()
    if args.partition:
        return frame_partition(args.endpoint, args.partition, args.reads, args.pid)
    if args.atomicity:
        raise SystemExit(0 if atomicity(args.endpoint, args.atomicity) else 1)

    dynamo = Dynamo(args.endpoint)
    table = f"load-{uuid.uuid4().hex}"
    create_table(dynamo, table)
    for i in range(QUERY_ITEMS):
        dynamo.call("PutItem", {"TableName": table, "Item": {"pk": {"S": "query"}, "sk": {"S": f"{i:02}"}}})
    for clients in [int(c) for c in args.clients.split(",")]:
        # PutItem first: it (re)writes the items GetItem and UpdateItem then read.
        for operation in OPERATIONS:
            measure(args.endpoint, table, operation, clients, args.seconds, args.pid)
    dynamo.call("DeleteTable", {"TableName": table})


if __name__ == "__main__":
    main()
