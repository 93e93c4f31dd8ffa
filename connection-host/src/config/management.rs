//! `[management]`: who may call the `@connections` API.

use super::*;

/// The `@connections` management API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Who may call it: SigV4 signatures checked against configured access keys.
    pub auth: ManagementAuthConfig,
}

/// Authentication of management API calls (and of the Lambda Invoke API for local functions):
/// AWS Signature Version 4 as API Gateway checks it, against access keys configured here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementAuthConfig {
    /// `auto` (SigV4 unless the listener serving the management API is bound to a loopback
    /// address), `sigv4` (always) or `none` (never: anyone who reaches the listener may post to,
    /// read and close every connection).
    pub mode: AuthMode,
    /// How far a request's `X-Amz-Date` may be from the host's clock, either way (AWS: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Accepted access keys by access key ID; each names where its secret comes from.
    pub keys: BTreeMap<String, AccessKeyConfig>,
}

impl Default for ManagementAuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Auto,
            clock_skew: Duration::from_secs(300),
            keys: BTreeMap::new(),
        }
    }
}

/// When the management API requires SigV4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// SigV4 unless the management API's listener is bound to a loopback address.
    #[default]
    Auto,
    /// SigV4 on every listener.
    Sigv4,
    /// No authentication.
    None,
}

impl AuthMode {
    /// The mode as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Auto => "auto",
            AuthMode::Sigv4 => "sigv4",
            AuthMode::None => "none",
        }
    }
}

/// Where one access key's secret comes from: exactly one of the three fields.
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AccessKeyConfig {
    /// Name of an environment variable holding the secret (preferred).
    pub secret_env: String,
    /// A file holding the secret (surrounding whitespace is ignored), e.g. a mounted secret.
    pub secret_file: Option<std::path::PathBuf>,
    /// The secret itself, for tests and local setups; keep real secrets out of files under
    /// version control.
    pub secret: String,
}

// Secrets must not end up in logs through `{:?}` of the configuration.
impl std::fmt::Debug for AccessKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeyConfig")
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

impl AccessKeyConfig {
    /// How many of the three sources are set; exactly one is valid.
    pub fn sources(&self) -> usize {
        usize::from(!self.secret_env.is_empty())
            + usize::from(self.secret_file.is_some())
            + usize::from(!self.secret.is_empty())
    }
}
