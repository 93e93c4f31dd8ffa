//! The host's metrics as CloudWatch Embedded Metric Format (EMF) log lines (`metrics.emf`;
//! METRICS.md, "Embedded Metric Format"): wherever stdout reaches CloudWatch Logs, CloudWatch
//! extracts them into metrics, with no agent and no PutMetricData call.
//!
//! [`Emf::lines`] turns a reading of the host's Prometheus series ([`Exposition`]) into the lines
//! of one interval: one with the dimensions `[ApiId, Stage]` (API Gateway's metrics over every
//! route, and the host's own), then one `[ApiId, Stage, Route]` line per route that had traffic.
//! Counters are written as what they grew by since the previous reading, so no increment is lost
//! or counted twice however reads and increments interleave; gauges as their current value;
//! `IntegrationLatency` as a distribution (`Values`/`Counts`) of its histogram buckets.
//!
//! It reads what `GET /metrics` reads: nothing is recorded for it on any hot path.

use crate::config::MetricsConfig;
use crate::metrics::{Exposition, Sample};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// Most metrics one metric directive may name (EMF specification).
const MAX_METRICS_PER_DIRECTIVE: usize = 100;

/// The distribution's series: a histogram in milliseconds, as CloudWatch's `IntegrationLatency`.
const LATENCY: &str = "IntegrationLatency";

/// What a CloudWatch metric is read from.
enum Source {
    /// What the counters named so grew by in the interval (summed over their series).
    Counter(&'static str, &'static [(&'static str, &'static str)]),
    /// The gauge's value now.
    Gauge(&'static str),
}

/// The metrics of the `[ApiId, Stage]` line besides `IntegrationLatency`: CloudWatch name, unit,
/// and the Prometheus series it comes from. API Gateway's keep their names; the host's own are
/// their Prometheus names without `connection_host_`, in CamelCase (METRICS.md).
const HOST_METRICS: [(&str, &str, Source); 21] = [
    (
        "ConnectCount",
        "Count",
        Source::Counter("ConnectCount", &[]),
    ),
    (
        "MessageCount",
        "Count",
        Source::Counter("MessageCount", &[]),
    ),
    (
        "IntegrationError",
        "Count",
        Source::Counter("IntegrationError", &[]),
    ),
    ("ClientError", "Count", Source::Counter("ClientError", &[])),
    (
        "ExecutionError",
        "Count",
        Source::Counter("ExecutionError", &[]),
    ),
    (
        "Connections",
        "Count",
        Source::Gauge("connection_host_connections"),
    ),
    (
        "MessagesIn",
        "Count",
        Source::Counter("connection_host_messages", &[("direction", "in")]),
    ),
    (
        "MessagesOut",
        "Count",
        Source::Counter("connection_host_messages", &[("direction", "out")]),
    ),
    (
        "MessageBytesIn",
        "Bytes",
        Source::Counter("connection_host_message_bytes", &[("direction", "in")]),
    ),
    (
        "MessageBytesOut",
        "Bytes",
        Source::Counter("connection_host_message_bytes", &[("direction", "out")]),
    ),
    (
        "OutboundQueueBytes",
        "Bytes",
        Source::Gauge("connection_host_outbound_queue_bytes"),
    ),
    (
        "SlowConsumerCloses",
        "Count",
        Source::Counter("connection_host_slow_consumer_closes", &[]),
    ),
    (
        "HeartbeatCloses",
        "Count",
        Source::Counter("connection_host_heartbeat_closes", &[]),
    ),
    (
        "Throttles",
        "Count",
        Source::Counter("connection_host_throttles", &[]),
    ),
    (
        "StoreCalls",
        "Count",
        Source::Counter("connection_host_store_calls", &[]),
    ),
    (
        "StoreErrors",
        "Count",
        Source::Counter("connection_host_store_calls", &[("outcome", "error")]),
    ),
    (
        "ClusterHosts",
        "Count",
        Source::Gauge("connection_host_cluster_hosts"),
    ),
    (
        "ClusterForwardErrors",
        "Count",
        Source::Counter("connection_host_cluster_forwards", &[("outcome", "error")]),
    ),
    (
        "ClusterReapedConnections",
        "Count",
        Source::Counter("connection_host_cluster_reaped_connections", &[]),
    ),
    (
        "FunctionCrashes",
        "Count",
        Source::Counter("connection_host_function_crashes", &[]),
    ),
    (
        "SessionResumes",
        "Count",
        Source::Counter("connection_host_session_resumes", &[]),
    ),
];

/// The counters of each `[ApiId, Stage, Route]` line (besides `IntegrationLatency`).
const ROUTE_COUNTERS: [&str; 4] = [
    "MessageCount",
    "IntegrationError",
    "ClientError",
    "ExecutionError",
];

// The host line's directive names every metric above and IntegrationLatency.
const _: () = assert!(HOST_METRICS.len() < MAX_METRICS_PER_DIRECTIVE);

/// Writes one host's EMF lines: remembers the previous reading, so each interval's lines carry
/// what happened in it.
#[derive(Debug)]
pub(crate) struct Emf {
    namespace: String,
    api_id: String,
    stage: String,
    host_id: String,
    /// Every sample's value at the previous reading, by [`series_key`]; empty before the first,
    /// so the first interval counts from the host's start (every counter starts at 0).
    previous: HashMap<String, f64>,
}

impl Emf {
    /// The writer of the host `host_id` serving `api_id`'s stage `stage`.
    pub(crate) fn new(config: &MetricsConfig, api_id: &str, stage: &str, host_id: &str) -> Self {
        Self {
            namespace: config.emf_namespace.clone(),
            api_id: api_id.to_string(),
            stage: stage.to_string(),
            host_id: host_id.to_string(),
            previous: HashMap::new(),
        }
    }

    /// The lines (JSON documents, without their newline) of the interval that ends with `now`, a
    /// reading of the host's series, stamped `timestamp_ms` (milliseconds since the Unix epoch).
    pub(crate) fn lines(&mut self, now: &Exposition, timestamp_ms: u64) -> Vec<String> {
        let interval = Interval {
            now,
            before: &self.previous,
        };
        let mut metrics: Vec<(&str, &str, Value)> = HOST_METRICS
            .iter()
            .map(|(name, unit, source)| {
                let value = match source {
                    Source::Counter(series, labels) => interval.delta(series, labels),
                    Source::Gauge(series) => now.sum(series, &[]),
                };
                (*name, *unit, number(value))
            })
            .collect();
        if let Some(latency) = interval.distribution(&[]) {
            metrics.push((LATENCY, "Milliseconds", latency));
        }
        let mut lines = vec![self.line(None, metrics, timestamp_ms)];
        for route in routes(now) {
            let labels = [("route", route)];
            let mut metrics: Vec<(&str, &str, Value)> = ROUTE_COUNTERS
                .iter()
                .map(|name| (*name, "Count", interval.delta(name, &labels)))
                .filter(|(_, _, delta)| *delta > 0.0)
                .map(|(name, unit, delta)| (name, unit, number(delta)))
                .collect();
            if let Some(latency) = interval.distribution(&labels) {
                metrics.push((LATENCY, "Milliseconds", latency));
            }
            // A quiet route costs no line: CloudWatch reads no data as none happened.
            if !metrics.is_empty() {
                lines.push(self.line(Some(route), metrics, timestamp_ms));
            }
        }
        self.previous = now
            .samples
            .iter()
            .map(|s| (series_key(s), s.value))
            .collect();
        lines
    }

    /// One EMF document: the `_aws` metadata with one directive naming `metrics`, the
    /// dimensions, the metrics' values, and the host's ID (for Logs Insights, not a dimension:
    /// hosts come and go).
    fn line(
        &self,
        route: Option<&str>,
        metrics: Vec<(&str, &str, Value)>,
        timestamp_ms: u64,
    ) -> String {
        let mut dimensions = vec!["ApiId", "Stage"];
        let mut root = Map::new();
        root.insert("ApiId".into(), self.api_id.clone().into());
        root.insert("Stage".into(), self.stage.clone().into());
        if let Some(route) = route {
            dimensions.push("Route");
            root.insert("Route".into(), route.into());
        }
        let definitions: Vec<Value> = metrics
            .iter()
            .map(|(name, unit, _)| json!({ "Name": name, "Unit": unit }))
            .collect();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [dimensions],
                    "Metrics": definitions,
                }],
            }),
        );
        for (name, _, value) in metrics {
            root.insert(name.into(), value);
        }
        root.insert("HostId".into(), self.host_id.clone().into());
        Value::Object(root).to_string()
    }
}

/// Two readings of the same series.
struct Interval<'a> {
    now: &'a Exposition,
    before: &'a HashMap<String, f64>,
}

impl Interval<'_> {
    /// What the counters `name` with `labels` grew by, summed.
    fn delta(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.now
            .matching(name, labels)
            .map(|s| s.value - self.before.get(&series_key(s)).copied().unwrap_or(0.0))
            .sum()
    }

    /// `IntegrationLatency` samples of the interval (of the series with `labels`, merged) as an
    /// EMF distribution: each non-empty bucket's midpoint in `Values`, its samples in `Counts`;
    /// `None` when there were none.
    fn distribution(&self, labels: &[(&str, &str)]) -> Option<Value> {
        // Cumulative counts by upper bound, over every matching series.
        let mut cumulative: Vec<(f64, f64)> = Vec::new();
        for sample in self.now.matching("IntegrationLatency_bucket", labels) {
            let Some(bound) = sample
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| parse_bound(v))
            else {
                continue;
            };
            let delta = sample.value - self.before.get(&series_key(sample)).copied().unwrap_or(0.0);
            match cumulative.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, count)) => *count += delta,
                None => cumulative.push((bound, delta)),
            }
        }
        cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut values, mut counts) = (Vec::new(), Vec::new());
        let (mut lower, mut below) = (0.0, 0.0);
        for (upper, cumulative) in cumulative {
            let count = (cumulative - below).round();
            if count > 0.0 {
                // Past the last bound there is no upper end: the last bound stands for them.
                values.push(if upper.is_finite() {
                    (lower + upper) / 2.0
                } else {
                    lower
                });
                counts.push(count as u64);
            }
            (lower, below) = (upper, cumulative);
        }
        let (&min, &max) = (values.first()?, values.last()?);
        let sum: f64 = values.iter().zip(&counts).map(|(v, &c)| v * c as f64).sum();
        // Sum, Min and Max are those of the values written, so the statistic set is consistent
        // (CloudWatch drops one whose sum is outside what its count, min and max allow).
        Some(json!({
            "Values": values,
            "Counts": counts,
            "Max": max,
            "Min": min,
            "Count": counts.iter().sum::<u64>(),
            "Sum": sum,
        }))
    }
}

/// The routes the host has series for (each has a `MessageCount`), in the exposition's order.
fn routes(now: &Exposition) -> Vec<&str> {
    let mut routes: Vec<&str> = Vec::new();
    for sample in now.matching("MessageCount", &[]) {
        if let Some((_, route)) = sample.labels.iter().find(|(k, _)| k == "route")
            && !routes.contains(&route.as_str())
        {
            routes.push(route);
        }
    }
    routes
}

/// A histogram bucket's `le`.
fn parse_bound(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        le => le.parse().ok(),
    }
}

/// A sample's identity across readings: its name and labels.
fn series_key(sample: &Sample) -> String {
    let mut key = sample.name.clone();
    for (k, v) in &sample.labels {
        key.push_str(&format!("\u{0}{k}\u{0}{v}"));
    }
    key
}

/// A JSON number: an integer when the value is whole (counts always are).
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&value) {
        (value as u64).into()
    } else {
        json!(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::time::Duration;

    fn emf() -> Emf {
        Emf::new(&MetricsConfig::default(), "abcde12345", "dev", "host-1")
    }

    fn read(metrics: &Metrics) -> Exposition {
        Exposition::parse(&metrics.render())
    }

    fn parse(lines: &[String]) -> Vec<Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON document"))
            .collect()
    }

    fn route_line<'a>(lines: &'a [Value], route: &str) -> Option<&'a Value> {
        lines.iter().find(|l| l["Route"] == route)
    }

    #[test]
    fn an_interval_carries_deltas_of_counters_and_values_of_gauges() {
        let metrics = Metrics::new("abcde12345", "dev");
        let chat = metrics.route("sendmessage");
        let mut emf = emf();
        chat.message_count.increment(3);
        metrics.posts.message_count.increment(2);
        metrics.connect_count.increment(4);
        metrics.connections.set(7.0);
        metrics.store_call(
            crate::metrics::StoreOperation::PutItem,
            Duration::from_millis(1),
            false,
        );
        let first = parse(&emf.lines(&read(&metrics), 1_000));
        assert_eq!(first[0]["MessageCount"], 5);
        assert_eq!(first[0]["ConnectCount"], 4);
        assert_eq!(first[0]["Connections"], 7);
        assert_eq!(first[0]["StoreErrors"], 1);
        assert_eq!(first[0]["_aws"]["Timestamp"], 1_000);
        assert_eq!(
            route_line(&first, "sendmessage").unwrap()["MessageCount"],
            3
        );
        assert_eq!(
            route_line(&first, "@connections").unwrap()["MessageCount"],
            2
        );
        // Routes without traffic have no line.
        assert!(route_line(&first, "(unmatched)").is_none());

        chat.message_count.increment(1);
        metrics.connections.set(2.0);
        let second = parse(&emf.lines(&read(&metrics), 2_000));
        assert_eq!(second[0]["MessageCount"], 1);
        assert_eq!(second[0]["ConnectCount"], 0);
        assert_eq!(second[0]["Connections"], 2);
        assert_eq!(second[0]["StoreErrors"], 0);
        assert_eq!(
            route_line(&second, "sendmessage").unwrap()["MessageCount"],
            1
        );
        assert!(route_line(&second, "@connections").is_none());
    }

    #[test]
    fn integration_latency_is_a_distribution_of_bucket_midpoints() {
        let metrics = Metrics::new("abcde12345", "dev");
        let chat = metrics.route("sendmessage");
        let echo = metrics.route("echo");
        let mut emf = emf();
        // Buckets (ms): …, (10, 25], (25, 50], …, (10000, 29000], (29000, +Inf).
        chat.integration_call(Duration::from_millis(30), Some(200));
        chat.integration_call(Duration::from_millis(40), Some(200));
        echo.integration_call(Duration::from_millis(20), Some(200));
        echo.integration_call(Duration::from_secs(40), None);
        metrics.upkeep();
        let lines = parse(&emf.lines(&read(&metrics), 1));
        let all = &lines[0]["IntegrationLatency"];
        assert_eq!(all["Values"], json!([17.5, 37.5, 29000.0]));
        assert_eq!(all["Counts"], json!([1, 2, 1]));
        assert_eq!(all["Count"], 4);
        assert_eq!(all["Min"], 17.5);
        assert_eq!(all["Max"], 29000.0);
        assert_eq!(all["Sum"], 17.5 + 2.0 * 37.5 + 29000.0);
        let chat = &route_line(&lines, "sendmessage").unwrap()["IntegrationLatency"];
        assert_eq!(
            (&chat["Values"], &chat["Counts"]),
            (&json!([37.5]), &json!([2]))
        );
        let echo = route_line(&lines, "echo").unwrap();
        assert_eq!(echo["ExecutionError"], 1);
        assert_eq!(echo["IntegrationLatency"]["Count"], 2);
        // Only what the interval saw: nothing more was timed, so no distribution at all.
        let next = parse(&emf.lines(&read(&metrics), 2));
        assert!(next[0].get("IntegrationLatency").is_none());
        let names = next[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        assert!(names.iter().all(|m| m["Name"] != LATENCY));
    }

    #[test]
    fn counters_read_while_they_grow_lose_no_increment() {
        let metrics = std::sync::Arc::new(Metrics::new("abcde12345", "dev"));
        let mut emf = emf();
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        metrics.messages_in.increment(1);
                    }
                })
            })
            .collect();
        let mut written = 0;
        let mut intervals = 0;
        while writers.iter().any(|w| !w.is_finished()) || intervals == 0 {
            let lines = parse(&emf.lines(&read(&metrics), 0));
            written += lines[0]["MessagesIn"].as_u64().unwrap();
            intervals += 1;
        }
        for writer in writers {
            writer.join().unwrap();
        }
        written += parse(&emf.lines(&read(&metrics), 0))[0]["MessagesIn"]
            .as_u64()
            .unwrap();
        assert_eq!(written, 80_000, "over {intervals} intervals");
    }

    #[test]
    fn the_envelope_names_every_metric_and_the_dimension_sets() {
        let metrics = Metrics::new("abcde12345", "dev");
        metrics.route("sendmessage").message_count.increment(1);
        let lines = parse(&emf().lines(&read(&metrics), 5));
        let directive = |line: &Value| line["_aws"]["CloudWatchMetrics"][0].clone();
        assert_eq!(directive(&lines[0])["Namespace"], "ConnectionHost");
        assert_eq!(
            directive(&lines[0])["Dimensions"],
            json!([["ApiId", "Stage"]])
        );
        let route = route_line(&lines, "sendmessage").unwrap();
        assert_eq!(
            directive(route)["Dimensions"],
            json!([["ApiId", "Stage", "Route"]])
        );
        assert_eq!(
            directive(route)["Metrics"],
            json!([{ "Name": "MessageCount", "Unit": "Count" }])
        );
        for line in &lines {
            assert_eq!(
                (&line["ApiId"], &line["Stage"]),
                (&json!("abcde12345"), &json!("dev"))
            );
            assert_eq!(line["HostId"], "host-1");
            for definition in directive(line)["Metrics"].as_array().unwrap() {
                let name = definition["Name"].as_str().unwrap();
                assert!(line.get(name).is_some(), "{name} has no value in {line}");
            }
        }
        let host_names: Vec<_> = directive(&lines[0])["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_string())
            .collect();
        for alarmed in [
            "Connections",
            "SlowConsumerCloses",
            "StoreErrors",
            "ClusterHosts",
        ] {
            assert!(host_names.iter().any(|n| n == alarmed), "{alarmed}");
        }
    }
}
