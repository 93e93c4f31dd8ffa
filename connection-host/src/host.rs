//! The running host's shared state, and [`Host::build`]: the one step that turns a [`Config`]
//! into it. A start and `config check` both run it, so the check accepts exactly what a start
//! does, and every file the configuration names (template, certificates, JWT keys, secrets) is
//! read once.
//!
//! Building starts nothing: no socket is bound, no function process spawned, no store called.
//! [`crate::server::run`] does that with the built host.

use crate::access_keys::Verifier;
use crate::access_log::AccessLog;
use crate::authorizer::Authorizer;
use crate::cluster::{Cluster, Identity};
use crate::config::{Config, ConfigError};
use crate::events::ConnectionContext;
use crate::limits::{HostLimits, RouteThrottle};
use crate::local_lambda::LocalFunctions;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::routing::table::{Route, RouteTable};
use crate::store::{ConnectionRecord, ConnectionStore, SessionRecord};
use crate::template::{ApiDefinition, TemplateError};
use crate::tls::TlsAcceptor;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a configuration does not make a host; every variant names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is out of range, inconsistent, or names a file or secret that cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The template named by `--template` or `[template] file` cannot be used.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// Everything the host's tasks share. Built once by [`Host::build`]; its parts are reached by
/// the front ends (gateway, management, liveness) inside the crate only.
pub struct Host {
    /// The configuration the host runs with, its template applied.
    pub(crate) config: Config,
    /// The API definition read from the template, if the configuration names one.
    pub(crate) definition: Option<ApiDefinition>,
    /// Connections held by this host.
    pub(crate) registry: Registry,
    /// Connection records and groups.
    pub(crate) store: Arc<dyn ConnectionStore>,
    /// Routes and the selection expression.
    pub(crate) routes: RouteTable,
    /// Connection and invocation tasks, awaited on shutdown.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the host starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// WebSocket protocol limits derived from `config.limits`.
    pub(crate) ws_config: WebSocketConfig,
    /// Who this host is in the store (every record it writes names it).
    pub(crate) identity: Identity,
    /// Owner lookups and host-to-host calls; `None` when not clustered.
    pub(crate) cluster: Option<Cluster>,
    /// The functions this host runs itself (`[functions]`); their processes start with the host.
    pub(crate) functions: LocalFunctions,
    /// `server.static_dir`, ready to serve.
    pub(crate) static_files: Option<tower_http::services::ServeDir>,
    /// The authorizer the `$connect` route names, run before `$connect` on every attempt.
    pub(crate) authorizer: Option<Authorizer>,
    /// SigV4 verification of management and Invoke API calls; `None` when they are open.
    pub(crate) management_auth: Option<Verifier>,
    /// Abuse limits shared by every connection: origins, rates, per-IP and per-principal counts.
    pub(crate) limits: HostLimits,
    /// `server.tls`, loaded.
    pub(crate) tls: Option<TlsAcceptor>,
    /// `server.management_tls`, loaded.
    pub(crate) management_tls: Option<TlsAcceptor>,
    /// The host's Prometheus series (`GET /metrics`).
    pub(crate) metrics: Arc<Metrics>,
    /// `[access_log]`, when enabled; its writer starts with the host.
    pub(crate) access_log: Option<AccessLog>,
    /// Tells the groups a connection that ended has left (`[extensions.groups] presence`); set by
    /// the server to the management API's announcer, which sits above the host.
    pub(crate) on_leave: Option<LeaveHook>,
}

/// What runs when a connection ends having been in `groups` (its memberships already removed).
pub(crate) type LeaveHook = fn(
    Arc<Host>,
    Arc<ConnectionContext>,
    Vec<String>,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("identity", &self.identity)
            .field("stage", &self.config.api.stage)
            .field("connections", &self.registry.len())
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Compiles `config`: applies its template, checks every setting, loads certificates, JWT
    /// keys and management secrets, and builds routes, integrations and the authorizer over
    /// `store` (which building does not call).
    pub async fn build(
        config: Config,
        store: Arc<dyn ConnectionStore>,
    ) -> Result<Self, BuildError> {
        let (config, definition) = crate::template::apply(config)?;
        config.validate()?;
        let metrics = Arc::new(Metrics::new(&config.api.api_id, &config.api.stage));
        let store: Arc<dyn ConnectionStore> =
            Arc::new(crate::store::Instrumented::new(store, metrics.clone()));
        let tls = load_tls(&config.server.tls, "server.tls")?;
        let management_tls = load_tls(&config.server.management_tls, "server.management_tls")?;
        let access_log = AccessLog::from_config(&config.access_log)?;
        let limits = HostLimits::from_config(&config.limits).map_err(|e| ConfigError::Invalid {
            field: "limits.allowed_origins".into(),
            reason: e.to_string(),
        })?;
        // Decided on the configured address; `run` refuses a listener that would need more.
        let management_addr = config
            .server
            .management_listen
            .unwrap_or(config.server.listen);
        let management_auth =
            Verifier::from_config(&config.management.auth, &config.api.region, management_addr)
                .map_err(|e| ConfigError::Invalid {
                    field: e.field,
                    reason: e.reason,
                })?;
        let functions = LocalFunctions::new(
            &config.functions,
            &config.api.region,
            &config.api.account_id,
            &metrics,
        );
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .build()
            .expect("the HTTP client builds with static settings");
        // Integrations and the authorizer reach the local runtime only through this lookup.
        let local = |name: &str| functions.get(name);
        let mut integrations = std::collections::HashMap::new();
        for (name, integration) in &config.integrations {
            integrations.insert(
                name.clone(),
                crate::integration::build(integration, &config.api, &http, &local).await,
            );
        }
        let routes = config.routes.iter().map(|(key, route)| Route {
            key: key.clone(),
            metrics: metrics.route(key),
            integration: integrations[&route.integration].clone(),
            two_way: route.two_way,
            timeout: route.timeout,
            ordered: route.ordered || config.extensions.sessions.ordered,
            throttle: {
                let settings = route.settings(config.api.default_route_settings);
                RouteThrottle::new(
                    settings.throttling_rate_limit,
                    settings.throttling_burst_limit,
                )
            },
        });
        let routes = RouteTable::new(config.api.route_selection_expression.clone(), routes);
        let authorizer = Authorizer::for_connect(&config, &local).await?;
        let l = &config.limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(l.read_buffer_size)
            .write_buffer_size(0)
            .max_write_buffer_size(l.outbound_queue_bytes.max(l.frame_size) * 2)
            .max_frame_size(Some(l.frame_size))
            .max_message_size(Some(l.message_size));
        let identity = Identity::new(&config.cluster);
        // The same pooled keep-alive client as the integrations: forwarded calls reuse connections.
        let cluster = Cluster::new(&config.cluster, &identity, http);
        let static_files = config
            .server
            .static_dir
            .as_ref()
            .map(tower_http::services::ServeDir::new);
        Ok(Self {
            config,
            definition,
            registry: Registry::new(),
            store,
            routes,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            ws_config,
            identity,
            cluster,
            functions,
            static_files,
            authorizer,
            management_auth,
            limits,
            tls,
            management_tls,
            metrics,
            access_log,
            on_leave: None,
        })
    }

    /// The host's metrics in Prometheus text format, as `GET /metrics` serves them: the gauges
    /// that mirror the host's state (open connections, queued bytes) are read first.
    pub fn metrics_text(&self) -> String {
        self.sample_gauges();
        self.metrics.render()
    }

    /// The headline figures (connections, messages, errors, integration latency) for a status
    /// page or a periodic writer; see [`crate::metrics::Snapshot`].
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        self.sample_gauges();
        self.metrics.snapshot()
    }

    /// Sets the gauges read from the registry rather than kept on every change: a scrape pays for
    /// them once instead of every message.
    fn sample_gauges(&self) {
        let (mut open, mut queued) = (0usize, 0usize);
        for handle in self.registry.all() {
            let (bytes, attached) = handle.queue_state();
            // A reliable session waiting for its client to resume holds no WebSocket.
            open += usize::from(attached);
            queued += bytes;
        }
        self.metrics.connections.set(open as f64);
        self.metrics.outbound_queue_bytes.set(queued as f64);
    }

    /// The configuration the host runs with, its template applied.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The API definition read from the template, if the configuration names one.
    pub fn definition(&self) -> Option<&ApiDefinition> {
        self.definition.as_ref()
    }

    /// The store record of a connection this host holds: written before its 101, rewritten when
    /// the host rejoins the cluster or a session's token changes.
    pub(crate) fn record(
        &self,
        context: &ConnectionContext,
        session: Option<SessionRecord>,
    ) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: context.connection_id.clone(),
            connected_at: context.connected_at,
            source_ip: context.source_ip.clone(),
            user_agent: context.user_agent.clone(),
            owner_host: self.identity.host_id.clone(),
            owner_incarnation: self.identity.incarnation.clone(),
            owner_endpoint: self.identity.endpoint.clone(),
            authorizer: context.authorizer.clone(),
            session: session.map(Box::new),
        }
    }
}

fn load_tls(
    tls: &Option<crate::config::TlsConfig>,
    field: &str,
) -> Result<Option<TlsAcceptor>, ConfigError> {
    tls.as_ref()
        .map(|tls| crate::tls::acceptor(tls, field))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthorizerConfig, IntegrationConfig};
    use crate::store::MemoryStore;

    async fn build(toml: &str) -> Result<Host, BuildError> {
        let config = Config::from_toml(toml)?;
        Host::build(config, Arc::new(MemoryStore::new())).await
    }

    #[tokio::test]
    async fn files_secrets_and_patterns_are_read_when_building() {
        for (toml, field) in [
            (
                "[limits]\nallowed_origins = [\"example.com\"]",
                "limits.allowed_origins",
            ),
            (
                "[authorizers.j]\ntype = \"jwt\"\n[[authorizers.j.keys]]\nalgorithm = \"RS256\"\npem_file = \"/nonexistent/rs.pem\"\n[integrations.m]\ntype = \"mock\"\n[routes.\"$connect\"]\nintegration = \"m\"\nauthorizer = \"j\"",
                "authorizers.j.keys[0].pem_file",
            ),
            (
                "[server.tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"",
                "server.tls.cert_file",
            ),
            (
                "[management.auth]\nmode = \"sigv4\"",
                "management.auth.keys",
            ),
            (
                "[access_log]\nformat = \"$context.requestId $context.bogus\"",
                "access_log.format: unknown variable $context.bogus",
            ),
            (
                "[management.auth]\nmode = \"sigv4\"\n[management.auth.keys.AKIDEXAMPLE]\nsecret_env = \"CONNECTION_HOST_TEST_UNSET_SECRET\"",
                "management.auth.keys.AKIDEXAMPLE.secret_env",
            ),
        ] {
            let err = build(toml).await.unwrap_err().to_string();
            assert!(err.starts_with(field), "{toml}: {err}");
        }
        // Validation runs first, within the same step.
        let err = build("[limits]\nframe_size = 10").await.unwrap_err();
        assert!(err.to_string().starts_with("limits.frame_size"), "{err}");
        assert!(build("").await.is_ok());
    }

    async fn with_fixture_template(rest: &str) -> Result<Config, BuildError> {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/chat-template.yaml"
        );
        build(&format!(
            "[template]\nfile = \"{fixture}\"\nfunctions = {{ ChatFunction = \"chat\", AuthorizerFunction = \"authorizer\" }}\n[functions.chat]\ncommand = \"chat\"\n[functions.authorizer]\ncommand = \"authorizer\"\n{rest}"
        ))
        .await
        .map(|host| host.config)
    }

    #[tokio::test]
    async fn a_template_supplies_the_api_definition() {
        let c = with_fixture_template("[api]\nregion = \"eu-west-1\"")
            .await
            .unwrap();
        assert_eq!(c.api.stage, "dev");
        assert_eq!(c.api.region, "eu-west-1");
        assert_eq!(c.routes.len(), 3);
        assert_eq!(
            c.routes["$connect"].authorizer.as_deref(),
            Some("GuestAuthorizer")
        );
        assert!(matches!(
            &c.integrations["ChatIntegration"],
            IntegrationConfig::Lambda { function_name, .. } if function_name == "chat"
        ));
        let AuthorizerConfig::Request(guest) = &c.authorizers["GuestAuthorizer"] else {
            panic!("a template's REQUEST authorizer is a Lambda authorizer");
        };
        assert_eq!(guest.function_name, "authorizer");
        for (rest, field) in [
            (
                "[routes.\"$default\"]\nintegration = \"m\"\n[integrations.m]\ntype = \"mock\"",
                "routes:",
            ),
            ("[integrations.m]\ntype = \"mock\"", "integrations:"),
            (
                "[api]\nroute_selection_expression = \"$request.body.x\"",
                "api.route_selection_expression:",
            ),
            ("[api]\nstage = \"prod\"", "api.stage:"),
            ("[template.parameters]\nStageName = \"a b\"", "api.stage:"),
        ] {
            let err = with_fixture_template(rest).await.unwrap_err().to_string();
            assert!(err.starts_with(field), "{rest}: {err}");
        }
        // The template's Timeout (Globals: 10), MemorySize and variables reach the function the
        // host runs, unless the configuration sets them.
        let chat = &c.functions["chat"];
        assert_eq!(chat.timeout, std::time::Duration::from_secs(10));
        assert_eq!(chat.environment["ROOMS_BACKEND"], "dynamodb");
        let c = with_fixture_template(
            // Continues [functions.authorizer].
            "timeout = \"4s\"\n[functions.chat.environment]\nROOMS_BACKEND = \"groups\"\n",
        )
        .await
        .unwrap();
        assert_eq!(c.functions["chat"].environment["ROOMS_BACKEND"], "groups");
        assert_eq!(
            c.functions["authorizer"].timeout,
            std::time::Duration::from_secs(4)
        );
        assert_eq!(
            c.functions["authorizer"].environment["ALLOW_GUEST_NICKNAMES"],
            "true"
        );
        let err = build("[template]\nfile = \"/nonexistent.yaml\"")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent.yaml"), "{err}");
    }
}
