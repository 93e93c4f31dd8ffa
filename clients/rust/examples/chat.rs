//! A reliable chat client: `cargo run -p connection-host-client --example chat -- ws://127.0.0.1:8080/dev`
//! Each line of standard input goes out as a `sendmessage` action; everything the host sends is
//! printed, as are connection changes.

use std::time::Duration;

use connection_host_client::{Client, Event, Options};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8080/dev".to_owned());
    let options = Options::new(url)
        .reliable(true)
        .request_timeout(Duration::from_secs(10));
    let mut client = Client::connect(options);
    let sender = client.sender();

    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let body = serde_json::json!({"action": "sendmessage", "data": line}).to_string();
            match sender.request(body).await {
                Ok(reply) => eprintln!("sent ({reply:?})"),
                Err(e) => eprintln!("not sent: {e}"),
            }
        }
        sender.close().await;
    });

    while let Some(event) = client.recv().await {
        match event {
            Event::Message(message) => println!("{}", message.as_text().unwrap_or("<binary>")),
            Event::Connected {
                first: false,
                recovered: false,
                reason,
                ..
            } => eprintln!("new session ({reason:?}): messages sent meanwhile are lost"),
            other => eprintln!("{other:?}"),
        }
    }
}
