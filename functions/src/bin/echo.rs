//! The `echo` Lambda function (see `ws_handler::examples::echo`). Management endpoint from the
//! event or `APIGW_MANAGEMENT_ENDPOINT`.

use lambda_http::{Error, service_fn};
use ws_handler::examples::echo;

#[tokio::main]
async fn main() -> Result<(), Error> {
    ws_handler::init_logging();
    lambda_http::run(service_fn(echo::handle_request)).await
}
