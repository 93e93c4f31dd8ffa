//! Test doubles for unit-testing handlers without AWS or a connection host.
//!
//! Build the request from an event's JSON with [`lambda_http::request::from_str`], give the
//! handler logic a [`Recorder`] where it would post through the management API (and a
//! [`crate::rooms::memory::MemoryRooms`] on top of it for rooms), then assert on what was posted.

use crate::management::{ManagementError, PostToConnection};
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::Mutex;

/// A [`PostToConnection`] that records every post instead of sending it, and answers Gone for
/// the connections marked with [`Recorder::set_gone`].
#[derive(Debug, Default)]
pub struct Recorder {
    posts: Mutex<Vec<(String, Vec<u8>)>>,
    gone: Mutex<HashSet<String>>,
}

impl Recorder {
    /// From now on, posts to `connection_id` fail with [`ManagementError::Gone`].
    pub fn set_gone(&self, connection_id: &str) {
        lock(&self.gone).insert(connection_id.to_string());
    }

    /// Every successful post so far, in order: (connection ID, data).
    pub fn posts(&self) -> Vec<(String, Vec<u8>)> {
        lock(&self.posts).clone()
    }

    /// Every successful post so far whose data is JSON, parsed: (connection ID, value).
    pub fn json_posts(&self) -> Vec<(String, serde_json::Value)> {
        self.posts()
            .into_iter()
            .filter_map(|(id, data)| Some((id, serde_json::from_slice(&data).ok()?)))
            .collect()
    }

    /// The JSON values posted to `connection_id`, in order.
    pub fn json_posts_to(&self, connection_id: &str) -> Vec<serde_json::Value> {
        self.json_posts()
            .into_iter()
            .filter(|(id, _)| id == connection_id)
            .map(|(_, value)| value)
            .collect()
    }

    /// Forgets the posts recorded so far.
    pub fn clear(&self) {
        lock(&self.posts).clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl PostToConnection for Recorder {
    async fn post_to_connection(
        &self,
        connection_id: &str,
        data: &[u8],
    ) -> Result<(), ManagementError> {
        if lock(&self.gone).contains(connection_id) {
            return Err(ManagementError::Gone);
        }
        lock(&self.posts).push((connection_id.to_string(), data.to_vec()));
        Ok(())
    }
}

/// The request for one of the captured events in `tests/fixtures/`.
#[cfg(test)]
pub(crate) fn fixture_request(name: &str) -> lambda_http::Request {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    lambda_http::request::from_str(&json).unwrap_or_else(|e| panic!("{path}: {e}"))
}
