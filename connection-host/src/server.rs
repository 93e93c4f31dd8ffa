//! `run(config, listeners, shutdown)`: the whole host as one function, so tests start it on port 0.

use crate::cluster::{Cluster, Identity};
use crate::config::{Config, StoreKind};
use crate::local_lambda::{LocalFunctions, RuntimeSettings};
use crate::registry::Registry;
use crate::routing::{Route, RouteTable};
use crate::store::{ConnectionStore, DynamoDbStore, MemoryStore};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The sockets the host serves.
#[derive(Debug)]
pub struct Listeners {
    /// Client WebSockets (and the management API unless `management` is set).
    pub public: TcpListener,
    /// A separate listener for the management API and `/health`.
    pub management: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(public: TcpListener) -> Self {
        Self {
            public,
            management: None,
        }
    }
}

impl Listeners {
    /// Binds the addresses in `config.server` with its backlog.
    pub fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            public: bind(config.server.listen, config.server.backlog)?,
            management: config
                .server
                .management_listen
                .map(|addr| bind(addr, config.server.backlog))
                .transpose()?,
        })
    }
}

/// Binds a listener with an explicit backlog (tokio's default of 1024 overflows under connect bursts).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Why the host could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener failed.
    #[error("listener error: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is invalid (a `Config` built in code skips the checks loading does).
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The configured connection store is not usable (e.g. its DynamoDB tables are missing).
    #[error("connection store: {0}")]
    Store(String),
    /// The local Lambda runtime could not start (e.g. a function's build failed).
    #[error(transparent)]
    Functions(#[from] crate::local_lambda::FunctionsError),
}

/// Everything the host's tasks share.
#[derive(Debug)]
pub struct Host {
    /// The configuration the host runs with.
    pub config: Config,
    /// Connections held by this host.
    pub registry: Registry,
    /// Connection records and groups.
    pub store: Arc<dyn ConnectionStore>,
    /// Routes and the selection expression.
    pub routes: RouteTable,
    /// Connection and invocation tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when the host starts shutting down.
    pub shutdown: CancellationToken,
    /// WebSocket protocol limits derived from `config.limits`.
    pub ws_config: WebSocketConfig,
    /// Who this host is in the store (every record it writes names it).
    pub identity: Identity,
    /// Owner lookups and host-to-host calls; `None` when not clustered.
    pub cluster: Option<Cluster>,
    /// The functions this host runs itself (`[functions]`).
    pub functions: LocalFunctions,
    /// `server.static_dir`, ready to serve.
    pub static_files: Option<tower_http::services::ServeDir>,
    /// The authorizer the `$connect` route names, run before `$connect` on every connection attempt
    /// (set by `run`: `Host::new` leaves it `None`).
    pub authorizer: Option<crate::authorizer::Authorizer>,
    /// SigV4 verification of management and Invoke API calls; `None` when they are open.
    pub management_auth: Option<crate::management::auth::Verifier>,
    /// Abuse limits shared by every connection: origins, rates, per-IP and per-principal counts.
    pub limits: crate::limits::HostLimits,
}

impl Host {
    /// Builds the host's shared state: integrations, routes and the store; `functions` are the
    /// locally run functions that `lambda` integrations may resolve to.
    pub async fn new(
        config: Config,
        store: Arc<dyn ConnectionStore>,
        functions: LocalFunctions,
    ) -> Self {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .build()
            .expect("the HTTP client builds with static settings");
        let mut integrations = std::collections::HashMap::new();
        for (name, integration) in &config.integrations {
            integrations.insert(
                name.clone(),
                crate::integration::build(integration, &config.api, &http, &functions).await,
            );
        }
        let routes = config.routes.iter().map(|(key, route)| Route {
            key: key.clone(),
            integration: integrations[&route.integration].clone(),
            two_way: route.two_way,
            timeout: route.timeout,
        });
        let routes = RouteTable::new(config.api.route_selection_expression.clone(), routes);
        let limits = &config.limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(limits.read_buffer_size)
            .write_buffer_size(0)
            .max_write_buffer_size(limits.outbound_queue_bytes.max(limits.frame_size) * 2)
            .max_frame_size(Some(limits.frame_size))
            .max_message_size(Some(limits.message_size));
        let host_limits = crate::limits::HostLimits::new(&config.limits);
        let identity = Identity::new(&config.cluster);
        let static_files = config
            .server
            .static_dir
            .as_ref()
            .map(tower_http::services::ServeDir::new);
        // The same pooled keep-alive client as the integrations: forwarded calls reuse connections.
        let cluster = Cluster::new(&config.cluster, &identity, http);
        Self {
            config,
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
            authorizer: None,
            management_auth: None,
            limits: host_limits,
        }
    }
}

/// Accepts connections until shutdown, serving each in its own tracked task.
async fn accept_loop<F, Fut>(host: Arc<Host>, listener: TcpListener, serve: F)
where
    F: Fn(Arc<Host>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = host.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                host.tasks.spawn(serve(host.clone(), stream, peer));
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning while descriptors are exhausted.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the host with the store `config.store` selects until `shutdown` resolves, then drains.
/// A DynamoDB store's tables are checked first, so a missing table fails here rather than on the
/// first connect.
pub async fn run(
    config: Config,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    config.validate()?;
    let store: Arc<dyn ConnectionStore> = match config.store.kind {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Dynamodb => {
            let store = DynamoDbStore::from_env(&config).await;
            store
                .check_tables()
                .await
                .map_err(|e| RunError::Store(e.to_string()))?;
            tracing::info!(
                connections = %store.tables().connections,
                groups = %store.tables().groups,
                "DynamoDB connection store"
            );
            Arc::new(store)
        }
    };
    run_with_store(config, listeners, store, shutdown).await
}

/// Runs the host with a given store until `shutdown` resolves, then drains: stops accepting,
/// closes every connection with 1001, and waits up to `drain_timeout` for the `$disconnect`s.
pub async fn run_with_store(
    config: Config,
    listeners: impl Into<Listeners>,
    store: Arc<dyn ConnectionStore>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    config.validate()?;
    let listeners = listeners.into();
    let drain_timeout = config.server.drain_timeout;
    // Read here, at start: a certificate replaced later is picked up by a restart.
    let load = |tls: &Option<crate::config::TlsConfig>, field| {
        tls.as_ref()
            .map(|tls| crate::tls::acceptor(tls, field))
            .transpose()
    };
    let public_tls = load(&config.server.tls, "server.tls")?;
    let management_tls = load(&config.server.management_tls, "server.management_tls")?;
    let public_addr = listeners.public.local_addr()?;
    let (management_addr, management_is_tls) = match &listeners.management {
        Some(listener) => (listener.local_addr()?, management_tls.is_some()),
        None => (listeners.public.local_addr()?, public_tls.is_some()),
    };
    // Decided on the address actually bound, which is what clients reach.
    let management_auth = crate::management::auth::Verifier::from_config(
        &config.management.auth,
        &config.api.region,
        management_addr,
    )
    .map_err(|e| crate::config::ConfigError::Invalid {
        field: e.field,
        reason: e.reason,
    })?;
    let functions = LocalFunctions::start(
        &config.functions,
        &RuntimeSettings {
            region: config.api.region.clone(),
            account_id: config.api.account_id.clone(),
            credentials: management_auth.as_ref().map(|v| v.first_key().clone()),
            management_endpoint: management_endpoint(
                management_addr,
                management_is_tls,
                &config.api.stage,
            ),
        },
    )
    .await?;
    let mut host = Host::new(config, store, functions).await;
    // From here on, a failed start must not leave the functions' processes running.
    // Built here rather than in `Host::new`, as reading a JWT authorizer's keys can fail.
    match crate::authorizer::Authorizer::for_connect(&host.config, &host.functions).await {
        Ok(authorizer) => host.authorizer = authorizer,
        Err(e) => {
            host.functions.shutdown().await;
            return Err(e.into());
        }
    }
    if management_auth.is_none() {
        tracing::info!(addr = %management_addr, "management API open: no SigV4 required (loopback, or management.auth.mode = \"none\")");
    }
    host.management_auth = management_auth;
    let host = Arc::new(host);
    let separate_management = listeners.management.is_some();
    if host.cluster.is_some() {
        // Registered before the first connection, so no record ever names an unknown host.
        if let Err(e) = crate::cluster::liveness::register(&host).await {
            host.functions.shutdown().await;
            return Err(RunError::Store(format!("registering this host: {e}")));
        }
        tracing::info!(
            host_id = %host.identity.host_id,
            incarnation = %host.identity.incarnation,
            advertise_url = %host.identity.endpoint,
            "joined the cluster"
        );
        host.tasks
            .spawn(crate::cluster::liveness::run(host.clone()));
    }
    tracing::info!(
        listen = %public_addr,
        tls = public_tls.is_some(),
        stage = %host.config.api.stage,
        routes = host.config.routes.len(),
        "connection host listening"
    );
    let public = tokio::spawn(accept_loop(
        host.clone(),
        listeners.public,
        move |host, stream, peer| {
            let tls = public_tls.clone();
            crate::gateway::handle_tcp(host, stream, peer, !separate_management, tls)
        },
    ));
    let management = listeners.management.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listen = %addr, tls = management_tls.is_some(), "management API listening");
        }
        tokio::spawn(accept_loop(host.clone(), listener, move |host, stream, peer| {
            serve_management(host, stream, peer, management_tls.clone())
        }))
    });
    shutdown.await;
    tracing::info!(
        connections = host.registry.len(),
        "shutting down: closing connections with 1001"
    );
    host.shutdown.cancel();
    host.functions.stop_restarts();
    let _ = public.await;
    if let Some(m) = management {
        let _ = m.await;
    }
    host.tasks.close();
    if tokio::time::timeout(drain_timeout, host.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = host.tasks.len(),
            "drain timeout reached; some $disconnect invocations did not finish"
        );
    }
    // After the drain, so the functions could still handle the `$disconnect`s.
    host.functions.shutdown().await;
    if host.cluster.is_some() {
        // Drained: this host's records are gone, so others need not wait host_timeout to know.
        let identity = &host.identity;
        if let Err(e) = host
            .store
            .remove_host(&identity.host_id, &identity.incarnation)
            .await
        {
            tracing::warn!(error = %e, "liveness record not removed; other hosts will reap it");
        }
    }
    Ok(())
}

/// Serves a connection to the separate management listener, over TLS when `tls` is given.
async fn serve_management(
    host: Arc<Host>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<crate::tls::TlsAcceptor>,
) {
    let Some(acceptor) = tls else {
        return crate::management::serve_http(host, stream, true).await;
    };
    // hyper's header read timeout starts only after the handshake, which gets its own budget.
    let deadline = tokio::time::Instant::now() + host.config.server.handshake_timeout;
    if let Some(stream) =
        crate::tls::handshake(&acceptor, stream, peer, deadline, &host.shutdown).await
    {
        crate::management::serve_http(host, stream, true).await;
    }
}

/// The URL functions use to reach this host's `@connections` API: a wildcard listen address is
/// reached through loopback.
fn management_endpoint(addr: SocketAddr, tls: bool, stage: &str) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}/{stage}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_refuses_an_invalid_config_built_in_code() {
        let mut config = Config::default();
        config.routes.insert(
            "$default".into(),
            crate::config::RouteConfig {
                integration: "missing".into(),
                two_way: false,
                timeout: std::time::Duration::from_secs(1),
                authorizer: None,
            },
        );
        let listener = bind(([127, 0, 0, 1], 0).into(), 16).unwrap();
        let err = run(config, listener, std::future::pending())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("routes.\"$default\".integration"),
            "{err}"
        );
    }
}
