//! `run(config, listeners, shutdown)`: the whole host as one function, so tests start it on port 0.

use crate::config::{Config, StoreKind};
use crate::emf::Emf;
use crate::host::Host;
use crate::local_lambda::RuntimeSettings;
use crate::metrics::Exposition;
use crate::store::{ConnectionStore, DynamoDbStore, MemoryStore};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

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
    /// The configuration does not make a host.
    #[error("invalid configuration: {0}")]
    Build(#[from] crate::host::BuildError),
    /// The configured connection store is not usable (e.g. its DynamoDB tables are missing).
    #[error("connection store: {0}")]
    Store(String),
    /// The local Lambda runtime could not start (e.g. a function's build failed).
    #[error(transparent)]
    Functions(#[from] crate::local_lambda::FunctionsError),
    /// The access log's destination could not be opened.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
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
/// A DynamoDB store's tables are checked once the configuration has built, so a missing table
/// fails here rather than on the first connect.
pub async fn run(
    config: Config,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let host = match config.store.kind {
        StoreKind::Memory => Host::build(config, Arc::new(MemoryStore::new())).await?,
        StoreKind::Dynamodb => {
            let store = Arc::new(DynamoDbStore::from_env(&config).await);
            let host = Host::build(config, store.clone()).await?;
            store
                .check_tables()
                .await
                .map_err(|e| RunError::Store(e.to_string()))?;
            if host.config().extensions.sessions.enabled {
                store
                    .check_sessions_table()
                    .await
                    .map_err(|e| RunError::Store(e.to_string()))?;
            }
            tracing::info!(
                connections = %store.tables().connections,
                groups = %store.tables().groups,
                "DynamoDB connection store"
            );
            host
        }
    };
    serve(host, listeners.into(), shutdown).await
}

/// Runs the host with a given store until `shutdown` resolves, then drains (see [`run`]).
pub async fn run_with_store(
    config: Config,
    listeners: impl Into<Listeners>,
    store: Arc<dyn ConnectionStore>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    serve(
        Host::build(config, store).await?,
        listeners.into(),
        shutdown,
    )
    .await
}

/// Serves a built host on `listeners` until `shutdown` resolves, then drains: stops accepting,
/// closes every connection with 1001, and waits up to `drain_timeout` for the `$disconnect`s.
async fn serve(
    mut host: Host,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let drain_timeout = host.config.server.drain_timeout;
    if let Some(definition) = &host.definition {
        tracing::info!(
            template = %definition.path.display(),
            api = %definition.api,
            routes = definition.routes.len(),
            "API definition read from the template"
        );
    }
    // Read before the functions start: from there on, a failed start must stop them.
    let public_addr = listeners.public.local_addr()?;
    let (management_addr, management_is_tls) = match &listeners.management {
        Some(listener) => (listener.local_addr()?, host.management_tls.is_some()),
        None => (listeners.public.local_addr()?, host.tls.is_some()),
    };
    // The host decided on the configured address; a listener bound elsewhere must not leave
    // open an API that its own address would have guarded.
    if host.management_auth.is_none()
        && crate::access_keys::required(&host.config.management.auth, management_addr)
    {
        return Err(RunError::Build(
            crate::config::ConfigError::Invalid {
                field: "server.listen".into(),
                reason: format!(
                    "the management API is served at {management_addr}, which requires SigV4, but the configured address does not; configure the address the listener is bound to"
                ),
            }
            .into(),
        ));
    }
    let access_log = host
        .access_log
        .as_ref()
        .map(crate::access_log::AccessLog::start)
        .transpose()
        .map_err(RunError::AccessLog)?;
    host.functions
        .start(&RuntimeSettings {
            region: host.config.api.region.clone(),
            credentials: host.management_auth.as_ref().map(|v| v.first_key().clone()),
            management_endpoint: management_endpoint(
                management_addr,
                management_is_tls,
                &host.config.api.stage,
            ),
        })
        .await?;
    if host.management_auth.is_none() {
        tracing::info!(addr = %management_addr, "management API open: no SigV4 required (loopback, or management.auth.mode = \"none\")");
    }
    if host.config.extensions.groups.presence != crate::config::Presence::Off {
        host.on_leave = Some(crate::management::announce_departure);
    }
    let host = Arc::new(host);
    host.tasks.spawn(metrics_upkeep(host.clone()));
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
    // Started last, so no early return above leaves it running; stopped after the drain, so
    // its last lines count the `$disconnect`s.
    let emf = host.config.metrics.emf.then(|| {
        let stop = CancellationToken::new();
        let task = tokio::spawn(emf_writer(host.clone(), stop.clone()));
        (stop, task)
    });
    tracing::info!(
        listen = %public_addr,
        tls = host.tls.is_some(),
        stage = %host.config.api.stage,
        routes = host.config.routes.len(),
        "connection host listening"
    );
    let public = tokio::spawn(accept_loop(
        host.clone(),
        listeners.public,
        move |host, stream, peer| {
            let tls = host.tls.clone();
            crate::gateway::handle_tcp(host, stream, peer, !separate_management, tls)
        },
    ));
    let management = listeners.management.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listen = %addr, tls = host.management_tls.is_some(), "management API listening");
        }
        tokio::spawn(accept_loop(host.clone(), listener, serve_management))
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
    // After the drain: the `$disconnect`s of the closed connections have their lines.
    if let Some(writer) = access_log {
        writer.finish().await;
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
    if let Some((stop, task)) = emf {
        stop.cancel();
        let _ = task.await;
    }
    Ok(())
}

/// Folds histogram samples into their buckets every [`crate::metrics::UPKEEP_INTERVAL`] until
/// the host shuts down, so an unscraped host's samples do not pile up.
async fn metrics_upkeep(host: Arc<Host>) {
    let mut interval = tokio::time::interval(crate::metrics::UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => host.metrics.upkeep(),
            _ = host.shutdown.cancelled() => return,
        }
    }
}

/// Writes the host's metrics to stdout as EMF lines (`metrics.emf`) every
/// `metrics.emf_interval`, and once more when `stop` is cancelled: every interval's counts are
/// written, the last one's included.
async fn emf_writer(host: Arc<Host>, stop: CancellationToken) {
    let api = &host.config.api;
    let mut emf = Emf::new(
        &host.config.metrics,
        &api.api_id,
        &api.stage,
        &host.identity.host_id,
    );
    let period = host.config.metrics.emf_interval;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // A late tick (a stalled runtime) starts the next interval then; a delta never gets lost.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = interval.tick() => false,
            _ = stop.cancelled() => true,
        };
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let lines = emf.lines(&Exposition::parse(&host.metrics_text()), timestamp_ms);
        // Under stdout's lock, which the log lines take too: none can split an EMF line.
        let mut stdout = std::io::stdout().lock();
        for line in lines {
            if let Err(e) = stdout
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| stdout.flush())
            {
                tracing::warn!(error = %e, "could not write the EMF metrics to stdout");
                break;
            }
        }
        if last {
            return;
        }
    }
}

/// Serves a connection to the separate management listener, over TLS when
/// `server.management_tls` is set.
async fn serve_management(host: Arc<Host>, stream: TcpStream, peer: SocketAddr) {
    let Some(acceptor) = host.management_tls.clone() else {
        return crate::management::serve_http(host, stream, true).await;
    };
    // hyper's header read timeout starts only after the handshake, which gets its own budget.
    let deadline = tokio::time::Instant::now() + host.config.server.handshake_timeout;
    match crate::tls::handshake(&acceptor, stream, peer, deadline, &host.shutdown).await {
        Some(crate::tls::Accepted::Tls(stream)) => {
            crate::management::serve_http(host, stream, true).await;
        }
        Some(crate::tls::Accepted::PlainText(mut stream)) => {
            crate::gateway::refuse_plain_text(&mut stream).await;
        }
        None => {}
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
                throttling_rate_limit: None,
                throttling_burst_limit: None,
                ordered: false,
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
