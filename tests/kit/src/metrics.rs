//! Reading a host's Prometheus metrics: [`scrape`] fetches `GET /metrics` and parses it with the
//! host's own reader ([`Exposition`]), so a test asserts counters instead of log text.

pub use connection_host::metrics::{Exposition, Sample};

/// Fetches `{base}/metrics` (`base` is `http://ADDR` of a listener that serves the management
/// API) and parses it; panics unless it answers 200 with the Prometheus text format.
pub async fn scrape(base: &str) -> Exposition {
    let response = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200, "GET {base}/metrics");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Exposition::parse(&response.text().await.expect("metrics body"))
}

/// The value of the series `name` with `labels` (summed over any other labels) at `base`.
pub async fn metric(base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(base).await.sum(name, labels)
}
