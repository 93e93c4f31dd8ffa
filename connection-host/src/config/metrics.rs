//! `[metrics]`: what the host publishes about itself beyond `GET /metrics` (METRICS.md).

use super::*;

/// The host's metrics as CloudWatch Embedded Metric Format log lines (METRICS.md, "Embedded
/// Metric Format"): where the logs reach CloudWatch Logs (ECS's `awslogs` driver, Lambda), they
/// become CloudWatch metrics without an agent. `GET /metrics` is served either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Write an EMF line per dimension set to stdout every `emf_interval`.
    pub emf: bool,
    /// How often the lines are written, each with what happened since the previous ones.
    #[serde(with = "humantime_serde")]
    pub emf_interval: Duration,
    /// The CloudWatch namespace of the metrics.
    pub emf_namespace: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            emf: false,
            emf_interval: Duration::from_secs(60),
            emf_namespace: "ConnectionHost".into(),
        }
    }
}
