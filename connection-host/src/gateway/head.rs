//! Reading and parsing an HTTP/1.1 request head, keeping header names as the client spelled them
//! (API Gateway passes the client's casing through to `$connect`).

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head accepted; the URL alone may be 4096 bytes on API Gateway.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    /// Request method.
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether this asks for a WebSocket upgrade.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
    }
}

/// Why no head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The peer closed or the socket failed before a full head arrived.
    #[error("connection closed before a complete request head: {0}")]
    Io(#[from] std::io::Error),
    /// More than `MAX_HEAD_BYTES`.
    #[error("request head too large")]
    TooLarge,
    /// More than `MAX_HEADERS` header lines.
    #[error("too many header lines")]
    TooManyHeaders,
    /// Not HTTP/1.1 syntax.
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
}

/// Reads from `stream` into `buf` until a complete head is there; returns it and its length.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(Head, usize), HeadError> {
    loop {
        if !buf.is_empty()
            && let Some(parsed) = parse(buf)?
        {
            return Ok(parsed);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(HeadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn parse(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let head = Head {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            if req.version != Some(1) {
                return Err(HeadError::Malformed(httparse::Error::Version));
            }
            Ok(Some((head, len)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(e) => Err(HeadError::Malformed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_header_case_and_reports_length() {
        let raw = b"GET /dev?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nX-Mixed-Case: v\r\n\r\nEXTRA";
        let mut buf = BytesMut::new();
        let (head, len) = read_head(&mut &raw[..], &mut buf).await.unwrap();
        assert_eq!(head.target, "/dev?x=1");
        assert_eq!(head.headers[2].0, "X-Mixed-Case");
        assert!(head.is_websocket_upgrade());
        assert_eq!(&buf[len..], b"EXTRA");
    }

    #[tokio::test]
    async fn rejects_oversized_and_malformed_heads() {
        let mut big = b"GET /".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_head(&mut &big[..], &mut buf).await,
            Err(HeadError::TooLarge)
        ));
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_head(&mut &b"NOT A REQUEST\r\n\r\n"[..], &mut buf).await,
            Err(HeadError::Malformed(_))
        ));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("h{i}: v\r\n").bytes());
        }
        many.extend(b"\r\n");
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_head(&mut &many[..], &mut buf).await,
            Err(HeadError::TooManyHeaders)
        ));
    }
}
