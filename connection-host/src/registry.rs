//! The connections this host holds, each with its bounded outbound queue.

use crate::events::ConnectionContext;
use bytes::Bytes;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Something for a connection's task to send.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// Close the connection with this code; `reason` is what `$disconnect` reports.
    Close {
        /// Close code sent to the client and reported as `disconnectStatusCode`.
        code: u16,
        /// Reported as `disconnectReason`.
        reason: &'static str,
    },
}

impl Outbound {
    /// A message for `data`: text when it is valid UTF-8, binary otherwise.
    pub fn data(data: Bytes) -> Self {
        if std::str::from_utf8(&data).is_ok() {
            Outbound::Text(Utf8Bytes::try_from(data).expect("validated as UTF-8 above"))
        } else {
            Outbound::Binary(data)
        }
    }

    fn len(&self) -> usize {
        match self {
            Outbound::Text(t) => t.len(),
            Outbound::Binary(b) => b.len(),
            Outbound::Close { .. } => 0,
        }
    }
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    /// The connection is closing or closed.
    Gone,
    /// The outbound queue is full (answered as 429 LimitExceededException).
    Full,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    bytes: usize,
    closing: bool,
}

/// A live connection as the rest of the host sees it.
#[derive(Debug)]
pub struct ConnectionHandle {
    /// Fixed facts about the connection.
    pub context: Arc<ConnectionContext>,
    queue: Mutex<Queue>,
    notify: Notify,
    last_active_ms: AtomicI64,
}

impl ConnectionHandle {
    /// A handle for a connection accepted now.
    pub fn new(context: Arc<ConnectionContext>) -> Self {
        let connected_at = context.connected_at;
        Self {
            context,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            last_active_ms: AtomicI64::new(connected_at),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message unless the queue would exceed `limit` bytes.
    pub fn post(&self, message: Outbound, limit: usize) -> Result<(), PostError> {
        {
            let mut q = self.lock();
            if q.closing {
                return Err(PostError::Gone);
            }
            let len = message.len();
            if q.bytes + len > limit {
                return Err(PostError::Full);
            }
            q.bytes += len;
            q.items.push_back(message);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Asks the connection to close; later posts answer Gone. False if it was already closing.
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        {
            let mut q = self.lock();
            if q.closing {
                return false;
            }
            q.closing = true;
            q.items.push_back(Outbound::Close { code, reason });
        }
        self.notify.notify_one();
        true
    }

    /// Marks the connection closed so that posts answer Gone from now on.
    pub fn mark_closed(&self) {
        let mut q = self.lock();
        q.closing = true;
        q.items.clear();
        q.bytes = 0;
    }

    /// Takes the next queued item.
    pub fn pop(&self) -> Option<Outbound> {
        let mut q = self.lock();
        let item = q.items.pop_front()?;
        q.bytes -= item.len();
        Some(item)
    }

    /// Resolves when something was queued since the last `pop` that emptied the queue.
    pub async fn queued(&self) {
        self.notify.notified().await
    }

    /// Records data-message activity (either direction), for `lastActiveAt`.
    pub fn touch(&self, now_ms: i64) {
        self.last_active_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Epoch milliseconds of the last data message in either direction.
    pub fn last_active_ms(&self) -> i64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }
}

/// Connections held by this host, by connection ID.
#[derive(Debug, Default)]
pub struct Registry {
    map: DashMap<String, Arc<ConnectionHandle>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection once its 101 has been sent.
    pub fn insert(&self, handle: Arc<ConnectionHandle>) {
        self.map
            .insert(handle.context.connection_id.clone(), handle);
    }

    /// Looks a connection up.
    pub fn get(&self, connection_id: &str) -> Option<Arc<ConnectionHandle>> {
        self.map.get(connection_id).map(|e| e.value().clone())
    }

    /// Removes a connection when it closes.
    pub fn remove(&self, connection_id: &str) -> Option<Arc<ConnectionHandle>> {
        self.map.remove(connection_id).map(|(_, h)| h)
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Every open connection (for shutdown).
    pub fn all(&self) -> Vec<Arc<ConnectionHandle>> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing;

    #[test]
    fn queue_is_bounded_by_bytes_and_refuses_after_close() {
        let h = ConnectionHandle::new(testing::connection());
        assert!(matches!(
            Outbound::data(Bytes::from_static(b"hi")),
            Outbound::Text(_)
        ));
        assert!(matches!(
            Outbound::data(Bytes::from_static(&[0xff, 0])),
            Outbound::Binary(_)
        ));
        h.post(Outbound::data(Bytes::from(vec![b'a'; 60])), 100)
            .unwrap();
        assert_eq!(
            h.post(Outbound::data(Bytes::from(vec![b'a'; 60])), 100),
            Err(PostError::Full)
        );
        assert!(h.pop().is_some());
        h.post(Outbound::data(Bytes::from(vec![b'a'; 60])), 100)
            .unwrap();
        assert!(h.close(1000, "Connection Closed Normally"));
        assert!(!h.close(1000, "Connection Closed Normally"));
        assert_eq!(
            h.post(Outbound::data(Bytes::from_static(b"x")), 100),
            Err(PostError::Gone)
        );
        assert!(matches!(h.pop(), Some(Outbound::Text(_))));
        assert!(matches!(h.pop(), Some(Outbound::Close { code: 1000, .. })));
    }
}
