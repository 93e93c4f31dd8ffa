//! `[server]`: listeners, TLS and process behaviour.

use super::*;

/// Listeners and process behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for client WebSockets and, unless `management_listen` is set, the `@connections` API.
    pub listen: SocketAddr,
    /// Optional separate (internal) listener for the `@connections` API and `/health`; when set, the
    /// public listener no longer serves the management API.
    pub management_listen: Option<SocketAddr>,
    /// TCP listen backlog; bursts of connects overflow small backlogs.
    pub backlog: u32,
    /// How long a client may take to send its HTTP request head, counted from the TCP accept (so
    /// the TLS handshake on a TLS listener is part of it).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// On shutdown, how long to wait for connections to close and `$disconnect`s to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Optional folder of files served to plain HTTP `GET`s on the public listener outside the
    /// stage's paths (`/` serves its `index.html`), e.g. the demo chat page.
    pub static_dir: Option<std::path::PathBuf>,
    /// Certificate and key for the public listener: when set it speaks only TLS (`wss://`, and
    /// `https://` for the management API and static files it serves).
    pub tls: Option<TlsConfig>,
    /// Certificate and key for the separate `management_listen` listener; unset, it stays plain
    /// HTTP (fine on a private network or loopback, where the local functions reach it too).
    pub management_tls: Option<TlsConfig>,
}

/// A listener's TLS identity, from PEM files read at start (TLS 1.2 and 1.3, ALPN `http/1.1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain: the server's certificate first, then intermediates.
    pub cert_file: std::path::PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: std::path::PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            management_listen: None,
            backlog: 4096,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            static_dir: None,
            tls: None,
            management_tls: None,
        }
    }
}
