//! `baseline`: the same echo loop against a bare tokio-tungstenite server, for reference.

use crate::*;

/// A bare tokio-tungstenite echo server in this process (no gateway semantics); returns its port.
async fn start_echo_server() -> Res<u16> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(4096)?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let config = WebSocketConfig::default().read_buffer_size(4096);
                let Ok(mut ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

pub(crate) async fn baseline(o: &Opts) -> Res<Vec<Row>> {
    let port = start_echo_server().await?;
    let mut rows = Vec::new();
    for conns in [100, 1] {
        let figures = echo_loop(port, "/", conns, o.duration).await?;
        let row = echo_row(
            "baseline",
            "closed-loop echo, bare tokio-tungstenite echo server (in-process, reference)",
            conns,
            figures,
            None,
        );
        rows.push(row);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
