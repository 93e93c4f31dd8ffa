//! The `authorizer` Lambda function: a REQUEST authorizer for `$connect` (see
//! `ws_handler::examples::authorizer` for its configuration). Not an HTTP event, so it runs on
//! `lambda_runtime` directly.

use lambda_http::aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};
use ws_handler::examples::authorizer::{AuthorizerConfig, authorize};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ws_handler::init_logging();
    // Read once, so a bad configuration fails the cold start instead of every event.
    let config = AuthorizerConfig::from_env()
        .inspect_err(|error| tracing::error!(%error, "invalid authorizer configuration"))?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>| {
            let decision = authorize(&config, &event.payload);
            async move { decision }
        },
    ))
    .await
}
