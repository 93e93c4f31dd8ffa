//! TLS on the listeners (`server.tls`, `server.management_tls`): wss:// and https:// with a
//! self-signed certificate made in the test, clients that must be refused (TLS 1.1, plain text,
//! silent), and the configuration errors for unusable PEM files.

mod common;

use aws_sdk_apigatewaymanagement as mgmt;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files into a fresh
/// directory (removed on drop).
struct TestCert {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl TestCert {
    fn new() -> Self {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("generate a certificate");
        let dir =
            std::env::temp_dir().join(format!("connection-host-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert_pem = generated.cert.pem();
        std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem()).unwrap();
        Self {
            dir,
            cert_pem,
            cert_der: generated.cert.der().clone(),
        }
    }

    fn cert_file(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    fn key_file(&self) -> String {
        self.dir.join("key.pem").display().to_string()
    }

    /// A `[server.tls]`-style table body naming the files.
    fn files_toml(&self) -> String {
        format!(
            "cert_file = {:?}\nkey_file = {:?}\n",
            self.cert_file(),
            self.key_file()
        )
    }

    /// A rustls client trusting only this certificate, offering `versions` and ALPN http/1.1.
    fn connector(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// The official management SDK client for `https://localhost:PORT/dev`, trusting this
    /// certificate.
    fn mgmt_client(&self, port: u16) -> mgmt::Client {
        use aws_smithy_http_client::tls;
        let trust = tls::TrustStore::empty()
            .with_native_roots(false)
            .with_pem_certificate(self.cert_pem.as_bytes());
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(
                tls::TlsContext::builder()
                    .with_trust_store(trust)
                    .build()
                    .unwrap(),
            )
            .build_https();
        let config = mgmt::Config::builder()
            .behavior_version(mgmt::config::BehaviorVersion::latest())
            .region(mgmt::config::Region::new("us-east-1"))
            .endpoint_url(format!("https://localhost:{port}/dev"))
            .credentials_provider(mgmt::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .retry_config(mgmt::config::retry::RetryConfig::disabled())
            .http_client(http_client)
            .build();
        mgmt::Client::from_conf(config)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type TlsWs = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// TLS (with `versions`) to `addr` as `localhost`; the handshake's error when it fails.
async fn tls_connect(
    cert: &TestCert,
    addr: SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    within("TLS handshake", cert.connector(versions).connect(name, tcp)).await
}

/// A WebSocket over TLS 1.3 to `wss://localhost:PORT/dev`.
async fn wss_connect(cert: &TestCert, addr: SocketAddr) -> TlsWs {
    let tls = tls_connect(cert, addr, &[&rustls::version::TLS13])
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let url = format!("wss://localhost:{}/dev", addr.port());
    let (ws, _) = within("wss handshake", tokio_tungstenite::client_async(url, tls))
        .await
        .expect("wss handshake");
    ws
}

async fn next_text_tls(ws: &mut TlsWs) -> String {
    within("a message over wss", async {
        loop {
            match ws.next().await.expect("open").expect("no error") {
                Message::Text(t) => return t.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    })
    .await
}

const ECHO: &str = r#"
[routes."$default"]
integration = "echo"
two_way = true
[integrations.echo]
type = "mock"
response_template = "echo: $input.body"
"#;

#[tokio::test]
async fn wss_two_way_route_and_https_management_with_the_sdk() {
    let cert = TestCert::new();
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let host = TestHost::start(&format!(
        "[server.tls]\n{}{ECHO}{WHOAMI}\n[routes.\"$connect\"]\nintegration = \"recorder\"\n[integrations.recorder]\ntype = \"http\"\nurl = \"{}\"\n",
        cert.files_toml(),
        handler.url
    ))
    .await;

    let mut ws = wss_connect(&cert, host.addr).await;
    let connect = handler.wait_route("$connect", None).await;
    assert_eq!(connect["headers"]["X-Forwarded-Proto"], "https");
    assert_eq!(
        connect["headers"]["X-Forwarded-Port"],
        host.addr.port().to_string()
    );

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text_tls(&mut ws).await, "echo: hello");
    ws.send(Message::text(r#"{"action":"whoami"}"#))
        .await
        .unwrap();
    let whoami: serde_json::Value = serde_json::from_str(&next_text_tls(&mut ws).await).unwrap();
    let id = whoami["connectionId"].as_str().unwrap().to_string();

    let client = cert.mgmt_client(host.addr.port());
    within(
        "PostToConnection over https",
        client
            .post_to_connection()
            .connection_id(&id)
            .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
                "pushed",
            ))
            .send(),
    )
    .await
    .expect("PostToConnection");
    assert_eq!(next_text_tls(&mut ws).await, "pushed");
    let info = within(
        "GetConnection over https",
        client.get_connection().connection_id(&id).send(),
    )
    .await
    .expect("GetConnection");
    assert!(info.connected_at().is_some());
    within(
        "DeleteConnection over https",
        client.delete_connection().connection_id(&id).send(),
    )
    .await
    .expect("DeleteConnection");
    let closed = within("close after DeleteConnection", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await;
    assert_eq!(closed, Some(1000));
}

/// A TLS 1.1 ClientHello (no `supported_versions` extension), as an old client sends it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([0x5a; 32]); // random
    body.push(0); // no session ID
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, RSA-AES128-SHA
    body.extend([0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((body.len() as u16).to_be_bytes());
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Everything the host sends until it closes.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    within("the host to close the connection", async {
        let _ = stream.read_to_end(&mut out).await;
    })
    .await;
    out
}

#[tokio::test]
async fn refuses_old_plain_and_silent_clients_while_serving_others() {
    let cert = TestCert::new();
    let host = TestHost::start(&format!(
        "[server]\nhandshake_timeout = \"500ms\"\n[server.tls]\n{}{ECHO}",
        cert.files_toml()
    ))
    .await;

    // Connected first and silent: its handshake must neither block the others nor live on.
    let mut silent = TcpStream::connect(host.addr).await.unwrap();
    let mut ws = wss_connect(&cert, host.addr).await;

    let mut old = TcpStream::connect(host.addr).await.unwrap();
    old.write_all(&tls11_client_hello()).await.unwrap();
    let answer = read_until_closed(&mut old).await;
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "a TLS 1.1 hello gets an alert record, not a ServerHello: {answer:?}"
    );

    let mut plain = TcpStream::connect(host.addr).await.unwrap();
    plain
        .write_all(upgrade_request(host.addr, "/dev", "").as_bytes())
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut plain).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("wss://"), "{answer}");

    // TLS 1.2 is still offered.
    let tls12 = tls_connect(&cert, host.addr, &[&rustls::version::TLS12])
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    assert!(
        read_until_closed(&mut silent).await.is_empty(),
        "a silent client is dropped after handshake_timeout without a response"
    );
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_text_tls(&mut ws).await, "echo: still here");
}

#[tokio::test]
async fn management_listener_with_its_own_tls_beside_a_plain_public_listener() {
    init_env();
    let cert = TestCert::new();
    let public = connection_host::bind(([127, 0, 0, 1], 0).into(), 16).unwrap();
    let management = connection_host::bind(([127, 0, 0, 1], 0).into(), 16).unwrap();
    let public_addr = public.local_addr().unwrap();
    let management_addr = management.local_addr().unwrap();
    let config = connection_host::Config::from_toml(&format!(
        "[server]\nmanagement_listen = \"{management_addr}\"\n[server.management_tls]\n{}{WHOAMI}",
        cert.files_toml()
    ))
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(connection_host::run(
        config,
        connection_host::Listeners {
            public,
            management: Some(management),
        },
        async move {
            let _ = stopped.await;
        },
    ));

    let mut ws = connect(public_addr).await;
    send_text(&mut ws, r#"{"action":"whoami"}"#).await;
    let whoami: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    let id = whoami["connectionId"].as_str().unwrap().to_string();
    within(
        "PostToConnection over https",
        cert.mgmt_client(management_addr.port())
            .post_to_connection()
            .connection_id(&id)
            .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
                "via tls",
            ))
            .send(),
    )
    .await
    .expect("PostToConnection");
    assert_eq!(next_text(&mut ws).await, "via tls");
    // The plain SDK client cannot talk to the TLS management listener.
    assert!(
        within(
            "plain GetConnection",
            mgmt_client(management_addr)
                .get_connection()
                .connection_id(&id)
                .send()
        )
        .await
        .is_err()
    );

    let _ = stop.send(());
    within("run to return", run).await.unwrap().unwrap();
}

#[tokio::test]
async fn unusable_pem_files_are_refused_naming_the_field() {
    let cert = TestCert::new();
    let other = TestCert::new();
    let missing = cert.dir.join("missing.pem").display().to_string();
    let not_pem = cert.dir.join("not.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let not_pem = not_pem.display().to_string();
    let table = |cert_file: &str, key_file: &str| {
        format!("[server.tls]\ncert_file = {cert_file:?}\nkey_file = {key_file:?}\n")
    };
    let cases = [
        (
            table(&missing, &cert.key_file()),
            "server.tls.cert_file",
            "cannot read",
        ),
        (
            table(&not_pem, &cert.key_file()),
            "server.tls.cert_file",
            "no CERTIFICATE",
        ),
        (
            table(&cert.cert_file(), &missing),
            "server.tls.key_file",
            "cannot read",
        ),
        (
            table(&cert.cert_file(), &cert.cert_file()),
            "server.tls.key_file",
            "no PRIVATE KEY",
        ),
        (
            table(&cert.cert_file(), &other.key_file()),
            "server.tls.key_file",
            "does not belong",
        ),
        (
            format!("[server.management_tls]\n{}", cert.files_toml()),
            "server.management_tls",
            "management_listen",
        ),
        (
            format!(
                "[server]\nmanagement_listen = \"127.0.0.1:9\"\n[server.management_tls]\ncert_file = {missing:?}\nkey_file = {:?}\n",
                cert.key_file()
            ),
            "server.management_tls.cert_file",
            "cannot read",
        ),
    ];
    let build = |toml: String| async move {
        let config = connection_host::Config::from_toml(&toml)?;
        let store = std::sync::Arc::new(connection_host::store::MemoryStore::new());
        connection_host::Host::build(config, store).await
    };
    for (toml, field, reason) in cases {
        let err = build(toml).await.unwrap_err().to_string();
        assert!(
            err.contains(field) && err.contains(reason),
            "{err} should name {field} and say {reason}"
        );
    }
    let host = build(table(&cert.cert_file(), &cert.key_file()))
        .await
        .expect("a matching pair loads");
    assert!(host.config().server.tls.is_some());
}
