//! The host's one typed configuration: API Gateway's quotas are the defaults.
//!
//! Sources, later ones winning: the built-in defaults, a TOML file, environment variables
//! (`CONNECTION_HOST_` + the field path with `__` between levels, e.g.
//! `CONNECTION_HOST_LIMITS__IDLE_TIMEOUT=5m`), then command-line flags.

mod access_log;
mod api;
mod functions;
mod groups;
mod limits;
mod management;
mod metrics;
mod routes;
mod server;
mod sessions;
mod store;
#[cfg(test)]
mod tests;
mod validate;

pub use access_log::*;
pub use api::*;
pub use functions::*;
pub use groups::*;
pub use limits::*;
pub use management::*;
pub use metrics::*;
pub use routes::*;
pub use server::*;
pub use sessions::*;
pub use store::*;

use crate::routing::RouteSelectionExpression;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The complete, commented default configuration file (`connection-host config default`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

/// Prefix of the environment variables that override configuration fields.
pub const ENV_PREFIX: &str = "CONNECTION_HOST_";

/// Variables under [`ENV_PREFIX`] that belong to the command line, not to the configuration
/// (`CONNECTION_HOST_CONFIG` names the file), so they are not read as fields.
pub const COMMAND_LINE_ENV: &[&str] = &["config"];

/// Everything the host needs to know; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners and process behaviour.
    pub server: ServerConfig,
    /// The API's identity as it appears in events and URLs.
    pub api: ApiConfig,
    /// Quotas and timers.
    pub limits: LimitsConfig,
    /// Routes by route key (`$connect`, `$disconnect`, `$default`, or a custom key).
    pub routes: BTreeMap<String, RouteConfig>,
    /// Integrations by name, referred to from routes.
    pub integrations: BTreeMap<String, IntegrationConfig>,
    /// Authorizers by name (Lambda `REQUEST` or built-in JWT), referred to from the `$connect` route.
    pub authorizers: BTreeMap<String, AuthorizerConfig>,
    /// Lambda functions the host runs itself (its local Lambda runtime), by function name.
    pub functions: BTreeMap<String, FunctionConfig>,
    /// A CloudFormation/SAM template to read the API definition from instead of `[routes]`,
    /// `[integrations]` and `[authorizers]`.
    pub template: TemplateConfig,
    /// Behaviour beyond API Gateway's; all off by default.
    pub extensions: ExtensionsConfig,
    /// Where connection records and group memberships live.
    pub store: StoreConfig,
    /// This host's identity in a cluster of hosts sharing one DynamoDB store.
    pub cluster: ClusterConfig,
    /// The `@connections` management API (and the Lambda Invoke API beside it).
    pub management: ManagementConfig,
    /// Metrics published besides `GET /metrics` (CloudWatch Embedded Metric Format lines).
    pub metrics: MetricsConfig,
    /// Access log lines per connection event.
    pub access_log: AccessLogConfig,
    /// Where the template-defined settings came from; not part of the file format.
    #[serde(skip)]
    pub provenance: Provenance,
}

/// Which settings the file and the environment set themselves, rather than the defaults: a
/// template refuses to replace a setting given both ways. Filled by [`Config::load`] and
/// [`Config::from_toml`]; a `Config` built in code has none.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The keys of [`TEMPLATE_KEYS`], `api.stage`, `api.default_route_settings`, and each
    /// function's `timeout` and `memory_size` (`functions.NAME.timeout`) that the file or the
    /// environment set.
    pub given: Vec<String>,
    /// Whether `--stage` chose the stage (it wins over a template's).
    pub stage_flag: bool,
}

/// What `{:?}` shows of a secret: whether one is set, never the secret.
pub(crate) fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or did not match the schema.
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range or inconsistent.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// Why it is wrong.
        reason: String,
    },
}

// Where a setting came from does not change what it is: configurations compare by their settings.
impl PartialEq for Provenance {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Provenance {
    fn of(given: &Figment, stage_flag: bool) -> Self {
        let functions = given
            .find_value("functions")
            .ok()
            .and_then(|v| v.into_dict())
            .map(|d| d.into_keys().collect::<Vec<_>>())
            .unwrap_or_default();
        let function_fields = functions.iter().flat_map(|name| {
            ["timeout", "memory_size"].map(|field| format!("functions.{name}.{field}"))
        });
        Self {
            given: TEMPLATE_KEYS
                .into_iter()
                .chain(["api.stage", "api.default_route_settings"])
                .map(String::from)
                .chain(function_fields)
                .filter(|key| given.contains(key))
                .collect(),
            stage_flag,
        }
    }

    /// Whether the file or the environment set `key` (one of those [`Provenance::given`] lists).
    pub fn gave(&self, key: &str) -> bool {
        self.given.iter().any(|given| given == key)
    }
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    /// `server.listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `server.management_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management_listen: Option<SocketAddr>,
    /// `api.stage`; with a template, it also wins over the template's stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// `template.file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<std::path::PathBuf>,
}

/// Settings the template defines, as configuration keys; a configuration setting them too is
/// refused. `api.stage` joins them when the template has a stage.
pub const TEMPLATE_KEYS: [&str; 4] = [
    "routes",
    "integrations",
    "authorizers",
    "api.route_selection_expression",
];

impl Config {
    /// Loads defaults < `file` < environment < `overrides`. Only the schema is checked here:
    /// the template is applied, and everything else checked, by `Host::build`, which a start and
    /// `config check` both run.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        // What the file and the environment set, without the defaults: a template refuses them.
        let mut given = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    field: "--config".into(),
                    reason: format!("file {} does not exist", file.display()),
                });
            }
            given = given.merge(Toml::file(file));
        }
        given = given.merge(
            Env::prefixed(ENV_PREFIX)
                .ignore(COMMAND_LINE_ENV)
                .split("__")
                .map(env_path)
                // Last: every `map` turns figment's own lower-casing back on.
                .lowercase(false),
        );
        let mut figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Profile::layer(&given)?)
            .merge(given.clone());
        let mut server = serde_json::Map::new();
        if let Some(listen) = overrides.listen {
            server.insert("listen".into(), listen.to_string().into());
        }
        if let Some(m) = overrides.management_listen {
            server.insert("management_listen".into(), m.to_string().into());
        }
        if !server.is_empty() {
            figment = figment.merge(Serialized::default("server", server));
        }
        if let Some(stage) = &overrides.stage {
            figment = figment.merge(Serialized::default("api.stage", stage));
        }
        if let Some(template) = &overrides.template {
            figment = figment.merge(Serialized::default("template.file", template));
        }
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.provenance = Provenance::of(&given, overrides.stage.is_some());
        Ok(config)
    }

    /// Parses a TOML document on top of the defaults (no environment). Like [`Config::load`], it
    /// checks only the schema.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let given = Figment::from(Toml::string(text));
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Profile::layer(&given)?)
            .merge(given.clone())
            .extract()
            .map_err(Box::new)?;
        config.provenance = Provenance::of(&given, false);
        Ok(config)
    }
}

/// The configuration path an environment variable sets (its name after [`ENV_PREFIX`], `__`
/// already turned into `.`): field names are lower-cased, as the schema spells them, but an
/// access key ID under `management.auth.keys` keeps its case, because it must equal the ID a
/// request is signed with (`AKIA…`), and a lower-cased one would never match.
fn env_path(key: &figment::value::UncasedStr) -> figment::value::Uncased<'_> {
    const KEYS: [&str; 3] = ["management", "auth", "keys"];
    key.as_str()
        .split('.')
        .enumerate()
        .map(|(i, segment)| {
            let is_key_id = i == KEYS.len()
                && key
                    .as_str()
                    .split('.')
                    .zip(KEYS)
                    .all(|(s, k)| s.eq_ignore_ascii_case(k));
            if is_key_id {
                segment.to_string()
            } else {
                segment.to_ascii_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
        .into()
}
