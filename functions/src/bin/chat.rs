//! The `chat` Lambda function (see `ws_handler::examples::chat`). Rooms backend from
//! `ROOMS_BACKEND` / `ROOMS_TABLE` / `ROOMS_TTL_SECONDS`; management endpoint from the event or
//! `APIGW_MANAGEMENT_ENDPOINT`.

use lambda_http::{Error, service_fn};
use ws_handler::RoomsConfig;
use ws_handler::examples::chat;

#[tokio::main]
async fn main() -> Result<(), Error> {
    ws_handler::init_logging();
    // Read once, so a bad configuration fails the cold start instead of every event.
    let config = RoomsConfig::from_env()
        .inspect_err(|error| tracing::error!(%error, "invalid rooms configuration"))?;
    lambda_http::run(service_fn(|request| chat::handle_request(&config, request))).await
}
