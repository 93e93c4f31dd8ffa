#!/bin/bash
# LocalStack init hook (ready.d): the connection host's three tables, exactly as
# connection-host/STORE.md describes them (and `connection-host store init` creates them), and the
# chat's rooms table (functions/src/rooms/dynamodb.rs), each with TTL. The definitions are the
# JSON files of localstack/tables/ (mounted at /opt/tables), which tests/run.sh's infra step
# creates on moto and checks against those schemas.
set -euo pipefail

for table in connection-host-connections connection-host-groups connection-host-sessions chat-rooms; do
    if ! awslocal dynamodb describe-table --table-name "$table" >/dev/null 2>&1; then
        awslocal dynamodb create-table --cli-input-json "file:///opt/tables/$table.json" >/dev/null
    fi
    awslocal dynamodb wait table-exists --table-name "$table"
    awslocal dynamodb update-time-to-live --cli-input-json "file:///opt/tables/$table.ttl.json" >/dev/null
done
echo "tables: connection-host-connections, connection-host-groups, connection-host-sessions, chat-rooms (TTL on)"
