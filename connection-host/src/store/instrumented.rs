//! [`Instrumented`]: any [`ConnectionStore`] with every call counted and timed
//! (`connection_host_store_calls`, `connection_host_store_latency_seconds`), labelled by the
//! DynamoDB operation the call makes (the first, for a call that makes several).

use super::{
    Claim, ConnectionRecord, ConnectionStore, HostRecord, KeyClaim, Member, MembersPage,
    RecordsPage, SessionRecord, StoreError, StoredFrame,
};
use crate::metrics::{Metrics, StoreOperation};
use std::sync::Arc;
use std::time::Instant;

/// A store whose calls are recorded on a host's [`Metrics`]; the host wraps the store it is
/// given in one, whatever its backend.
#[derive(Debug)]
pub struct Instrumented {
    inner: Arc<dyn ConnectionStore>,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    /// Wraps `inner`, recording on `metrics`.
    pub fn new(inner: Arc<dyn ConnectionStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn call<T>(
        &self,
        operation: StoreOperation,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        // A write refused because the record exists, or a caller's bad page token, is the store
        // answering, not failing.
        let ok = matches!(
            result,
            Ok(_) | Err(StoreError::AlreadyExists(_) | StoreError::InvalidToken(_))
        );
        self.metrics.store_call(operation, started.elapsed(), ok);
        result
    }
}

#[async_trait::async_trait]
impl ConnectionStore for Instrumented {
    async fn put_connection(&self, record: ConnectionRecord) -> Result<(), StoreError> {
        self.call(StoreOperation::PutItem, self.inner.put_connection(record))
            .await
    }

    async fn get_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        self.call(
            StoreOperation::GetItem,
            self.inner.get_connection(connection_id),
        )
        .await
    }

    async fn delete_connection(&self, connection_id: &str) -> Result<Vec<String>, StoreError> {
        let call = self.inner.delete_connection(connection_id);
        self.call(StoreOperation::DeleteItem, call).await
    }

    async fn add_to_group(&self, group: &str, member: &Member) -> Result<bool, StoreError> {
        let call = self.inner.add_to_group(group, member);
        self.call(StoreOperation::PutItem, call).await
    }

    async fn remove_from_group(
        &self,
        group: &str,
        connection_id: &str,
    ) -> Result<Option<Member>, StoreError> {
        let call = self.inner.remove_from_group(group, connection_id);
        self.call(StoreOperation::DeleteItem, call).await
    }

    async fn groups_of(&self, connection_id: &str) -> Result<Vec<String>, StoreError> {
        let call = self.inner.groups_of(connection_id);
        self.call(StoreOperation::Query, call).await
    }

    async fn group_members(
        &self,
        group: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError> {
        let call = self.inner.group_members(group, next_token, limit);
        self.call(StoreOperation::Query, call).await
    }

    async fn group_count(&self, group: &str) -> Result<u64, StoreError> {
        self.call(StoreOperation::Query, self.inner.group_count(group))
            .await
    }

    async fn connections_of_host(
        &self,
        host_id: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError> {
        let call = self.inner.connections_of_host(host_id, next_token, limit);
        self.call(StoreOperation::Query, call).await
    }

    async fn register_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.call(StoreOperation::PutItem, self.inner.register_host(host))
            .await
    }

    async fn heartbeat(
        &self,
        host_id: &str,
        incarnation: &str,
        heartbeat_at: i64,
    ) -> Result<bool, StoreError> {
        let call = self.inner.heartbeat(host_id, incarnation, heartbeat_at);
        self.call(StoreOperation::UpdateItem, call).await
    }

    async fn get_host(&self, host_id: &str) -> Result<Option<HostRecord>, StoreError> {
        self.call(StoreOperation::GetItem, self.inner.get_host(host_id))
            .await
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.call(StoreOperation::Query, self.inner.hosts()).await
    }

    async fn begin_reap(&self, host: &HostRecord) -> Result<bool, StoreError> {
        self.call(StoreOperation::UpdateItem, self.inner.begin_reap(host))
            .await
    }

    async fn remove_host(&self, host_id: &str, incarnation: &str) -> Result<(), StoreError> {
        let call = self.inner.remove_host(host_id, incarnation);
        self.call(StoreOperation::DeleteItem, call).await
    }

    async fn take_over(
        &self,
        record: &ConnectionRecord,
        expected_host: &str,
        expected_incarnation: &str,
    ) -> Result<bool, StoreError> {
        let call = self
            .inner
            .take_over(record, expected_host, expected_incarnation);
        self.call(StoreOperation::PutItem, call).await
    }

    async fn rotate_token(
        &self,
        record: &ConnectionRecord,
        expected_host: &str,
        expected_incarnation: &str,
        expected_token_hash: &str,
    ) -> Result<bool, StoreError> {
        let call = self.inner.rotate_token(
            record,
            expected_host,
            expected_incarnation,
            expected_token_hash,
        );
        self.call(StoreOperation::PutItem, call).await
    }

    async fn claim_key(
        &self,
        connection_id: &str,
        key: &str,
        claim: &Claim,
        expires_at_ms: i64,
    ) -> Result<KeyClaim, StoreError> {
        let call = self
            .inner
            .claim_key(connection_id, key, claim, expires_at_ms);
        self.call(StoreOperation::PutItem, call).await
    }

    async fn reclaim_key(
        &self,
        connection_id: &str,
        key: &str,
        lost: &Claim,
        claim: &Claim,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let call = self
            .inner
            .reclaim_key(connection_id, key, lost, claim, expires_at_ms);
        self.call(StoreOperation::PutItem, call).await
    }

    async fn release_key(
        &self,
        connection_id: &str,
        key: &str,
        claim: &Claim,
    ) -> Result<(), StoreError> {
        let call = self.inner.release_key(connection_id, key, claim);
        self.call(StoreOperation::DeleteItem, call).await
    }

    async fn complete_key(
        &self,
        connection_id: &str,
        key: &str,
        answer: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let call = self
            .inner
            .complete_key(connection_id, key, answer, expires_at_ms);
        self.call(StoreOperation::PutItem, call).await
    }

    async fn keep_ended_session(
        &self,
        connection_id: &str,
        session: &SessionRecord,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let call = self
            .inner
            .keep_ended_session(connection_id, session, expires_at_ms);
        self.call(StoreOperation::PutItem, call).await
    }

    async fn ended_session(
        &self,
        connection_id: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let call = self.inner.ended_session(connection_id);
        self.call(StoreOperation::GetItem, call).await
    }

    async fn append_frame(
        &self,
        connection_id: &str,
        owner_host: &str,
        owner_incarnation: &str,
        frame: &StoredFrame,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let call = self.inner.append_frame(
            connection_id,
            owner_host,
            owner_incarnation,
            frame,
            expires_at_ms,
        );
        self.call(StoreOperation::PutItem, call).await
    }

    async fn fence_frames(
        &self,
        connection_id: &str,
        seq: u64,
        owner_host: &str,
        owner_incarnation: &str,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let call = self.inner.fence_frames(
            connection_id,
            seq,
            owner_host,
            owner_incarnation,
            expires_at_ms,
        );
        self.call(StoreOperation::PutItem, call).await
    }

    async fn frames_after(
        &self,
        connection_id: &str,
        after_seq: u64,
    ) -> Result<Vec<StoredFrame>, StoreError> {
        let call = self.inner.frames_after(connection_id, after_seq);
        self.call(StoreOperation::Query, call).await
    }

    async fn newest_frames_start(
        &self,
        connection_id: &str,
        enough: &mut (dyn for<'f> FnMut(&'f StoredFrame) -> bool + Send),
    ) -> Result<u64, StoreError> {
        let call = self.inner.newest_frames_start(connection_id, enough);
        self.call(StoreOperation::Query, call).await
    }
}
