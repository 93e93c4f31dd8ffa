//! TLS on the listeners: a rustls server configuration from PEM files (`server.tls`,
//! `server.management_tls`) and the server side of the handshake on each accepted connection.
//!
//! Only TLS 1.2 and 1.3 are offered (API Gateway's minimum is 1.2 too), and ALPN offers only
//! `http/1.1`: WebSockets over HTTP/2 (RFC 8441) are not served, so a client must not pick `h2`.

use crate::config::{ConfigError, TlsConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

pub use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::server::TlsStream;

/// The first byte of every TLS handshake record; anything else on a TLS listener is not TLS.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Reads `tls`'s PEM files into an acceptor. `field` is the setting's path (`server.tls`), so
/// errors name the file field at fault.
pub fn acceptor(tls: &TlsConfig, field: &str) -> Result<TlsAcceptor, ConfigError> {
    let invalid = |name: &str, reason: String| ConfigError::Invalid {
        field: format!("{field}.{name}"),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|sections| sections.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("cert_file", unreadable(&tls.cert_file, &e)))?;
    if certs.is_empty() {
        return Err(invalid(
            "cert_file",
            format!("{} holds no CERTIFICATE section", tls.cert_file.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(
            "key_file",
            format!(
                "{} holds no PRIVATE KEY section (PKCS#8, RSA or EC)",
                tls.key_file.display()
            ),
        ),
        e => invalid("key_file", unreadable(&tls.key_file, &e)),
    })?;
    // Explicit provider: the crate features of the dependency graph must not decide which one.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => {
                invalid("cert_file", format!("certificate not usable: {e}"))
            }
            rustls::Error::InconsistentKeys(_) => invalid(
                "key_file",
                format!(
                    "does not belong to the certificate in {}",
                    tls.cert_file.display()
                ),
            ),
            e => invalid("key_file", format!("key not usable: {e}")),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn unreadable(path: &Path, e: &pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read {}: {e}", path.display()),
        pem::Error::NoItemsFound => format!("{} holds no PEM section", path.display()),
        e => format!("{} is not valid PEM: {e}", path.display()),
    }
}

/// What arrived on a TLS listener.
#[derive(Debug)]
pub enum Accepted {
    /// A completed TLS handshake.
    Tls(Box<TlsStream<TcpStream>>),
    /// A client speaking plain text (HTTP, most likely): the caller answers it with a plain 400
    /// telling it to use TLS, rather than a bare reset.
    PlainText(TcpStream),
}

/// The body of the 400 a plain-text client on a TLS listener gets.
pub const PLAIN_TEXT_REFUSAL: &[u8] =
    b"{\"message\":\"This port expects TLS: use wss:// or https://\"}";

/// Runs the server side of the TLS handshake by `deadline`. `None` when it fails (logged at debug:
/// scanners and misconfigured clients are routine), times out, or the host shuts down first.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Option<Accepted> {
    let handshake = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 1 && first[0] != HANDSHAKE_RECORD {
            tracing::debug!(%peer, "plain-text request on a TLS listener");
            return Ok(Accepted::PlainText(stream));
        }
        acceptor
            .accept(stream)
            .await
            .map(|tls| Accepted::Tls(Box::new(tls)))
    };
    tokio::select! {
        done = tokio::time::timeout_at(deadline, handshake) => match done {
            Ok(Ok(accepted)) => Some(accepted),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not completed within handshake_timeout");
                None
            }
        },
        // Like an unfinished request head, an unfinished handshake must not hold the drain up.
        _ = shutdown.cancelled() => None,
    }
}
