#!/bin/bash
# LocalStack init hook (ready.d): the example functions, from the zips cargo-lambda built
# (`cd functions && cargo lambda build --release --output-format zip`, mounted at /opt/functions).
# They call the host's @connections API at MANAGEMENT_ENDPOINT (set in docker-compose.yml).
set -euo pipefail

arch="${FUNCTION_ARCHITECTURE:-x86_64}"
endpoint="${MANAGEMENT_ENDPOINT:-http://connection-host:9080/dev}"

# Without the zips, LocalStack still serves DynamoDB (enough for the test suite); the chat demo
# then fails its connections until the functions exist.
for fn in chat echo authorizer; do
    if [[ ! -f "/opt/functions/$fn/bootstrap.zip" ]]; then
        echo "WARNING: no target/lambda/$fn/bootstrap.zip: functions not deployed;" \
            "run 'cd functions && cargo lambda build --release --output-format zip', then restart" >&2
        exit 0
    fi
done

role="$(awslocal iam get-role --role-name chat-functions --query Role.Arn --output text 2>/dev/null || true)"
if [[ -z "$role" || "$role" == "None" ]]; then
    role="$(awslocal iam create-role --role-name chat-functions \
        --assume-role-policy-document '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}' \
        --query Role.Arn --output text)"
fi

create() {
    local fn="$1" environment="$2"
    if awslocal lambda get-function --function-name "$fn" >/dev/null 2>&1; then
        awslocal lambda update-function-code --function-name "$fn" \
            --zip-file "fileb:///opt/functions/$fn/bootstrap.zip" >/dev/null
    else
        awslocal lambda create-function --function-name "$fn" \
            --runtime provided.al2023 --handler bootstrap --architectures "$arch" \
            --role "$role" --timeout 10 --memory-size 128 \
            --zip-file "fileb:///opt/functions/$fn/bootstrap.zip" \
            --environment "$environment" >/dev/null
    fi
    awslocal lambda wait function-active-v2 --function-name "$fn"
}

create chat "{\"Variables\":{\"ROOMS_BACKEND\":\"groups\",\"APIGW_MANAGEMENT_ENDPOINT\":\"$endpoint\",\"RUST_LOG\":\"info\"}}"
create echo "{\"Variables\":{\"APIGW_MANAGEMENT_ENDPOINT\":\"$endpoint\",\"RUST_LOG\":\"info\"}}"
create authorizer '{"Variables":{"ALLOW_GUEST_NICKNAMES":"true","RUST_LOG":"info"}}'
echo "functions: chat, echo, authorizer ($arch), calling back to $endpoint"
