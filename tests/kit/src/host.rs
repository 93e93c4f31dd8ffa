//! The host in the test process, on a loopback port.

use connection_host::server::RunError;
use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Credentials for the AWS SDK clients inside the host (moto and local endpoints accept any), set
/// once before any host starts. [`TestHost`] and [`crate::TestTables`] call it themselves.
pub fn init_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: every test calls this (through `TestHost::start`) before starting anything that
        // reads the environment, and `Once` makes the others wait until it has returned.
        #[expect(unsafe_code, reason = "std::env::set_var is unsafe since edition 2024")]
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
}

/// A listener on a free loopback port, for [`TestHost::start_on`] when something must know the
/// host's address before it starts (e.g. a handler that calls back into it).
pub fn loopback_listener() -> tokio::net::TcpListener {
    connection_host::bind(([127, 0, 0, 1], 0).into(), 128).expect("bind 127.0.0.1:0")
}

/// A host running in the test process (`connection_host::run`), shut down on drop.
pub struct TestHost {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), RunError>>>,
}

impl TestHost {
    /// Starts a host on a free loopback port with a configuration given as TOML (on top of the
    /// defaults).
    pub async fn start(toml: &str) -> Self {
        Self::start_on(loopback_listener(), toml).await
    }

    /// [`TestHost::start`] on `listener`.
    pub async fn start_on(listener: tokio::net::TcpListener, toml: &str) -> Self {
        init_env();
        let config = connection_host::Config::from_toml(toml).expect("test config is valid");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(connection_host::run(config, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    /// Starts a host on `store` (`connection_host::run_with_store`), e.g. a store whose calls a
    /// test makes fail.
    pub async fn start_with_store(
        toml: &str,
        store: Arc<dyn connection_host::store::ConnectionStore>,
    ) -> Self {
        init_env();
        let config = connection_host::Config::from_toml(toml).expect("test config is valid");
        let listener = loopback_listener();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(connection_host::run_with_store(
            config,
            listener,
            store,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    /// `http://ADDR{path}`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Fires the shutdown signal without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (at most 15 s) for the host to return after [`TestHost::trigger_shutdown`].
    pub async fn join(&mut self) -> Result<(), RunError> {
        let join = self.join.take().expect("joined once");
        tokio::time::timeout(Duration::from_secs(15), join)
            .await
            .expect("run returns after shutdown")
            .expect("run does not panic")
    }
}
