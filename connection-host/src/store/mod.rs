//! The connection store: connection records and group memberships, shared by every host that uses it.
//!
//! The in-memory implementation is the embedded default; the DynamoDB implementation sits behind the
//! same trait for hosts that share connections (`[store] kind = "dynamodb"`).

pub mod dynamodb;
mod instrumented;
mod memory;
mod page_token;

pub use dynamodb::{DynamoDbStore, DynamoDbTables};
pub use instrumented::Instrumented;
pub use memory::MemoryStore;

/// A connection's durable record, written before the 101 and deleted when it closes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectionRecord {
    /// `connectionId`.
    pub connection_id: String,
    /// Epoch milliseconds of the connect.
    pub connected_at: i64,
    /// `identity.sourceIp`.
    pub source_ip: String,
    /// `identity.userAgent`.
    pub user_agent: Option<String>,
    /// ID of the host that holds the connection (`cluster.host_id`).
    pub owner_host: String,
    /// The owner's incarnation (one per start), so a restarted host's old records are told apart.
    pub owner_incarnation: String,
    /// The owner's `cluster.advertise_url`; empty when the owner is not clustered.
    pub owner_endpoint: String,
    /// `requestContext.authorizer`: the claims or context the authorizer granted, as every event
    /// of the connection carries it; `None` when the API has no authorizer. GetConnection does
    /// not return it (API Gateway's response has no such field); it is kept so that operators and
    /// other hosts reading the table can tell who a connection belongs to.
    pub authorizer: Option<serde_json::Map<String, serde_json::Value>>,
    /// The reliable-delivery session the connection belongs to (`[extensions.sessions]`, see
    /// PROTOCOL.md); `None` for a plain connection. Boxed: a plain connection's record (which
    /// the memory store keeps for every open connection) stays as small as before.
    pub session: Option<Box<SessionRecord>>,
}

/// What a host needs to resume a reliable session it did not hold: kept on the connection record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    /// SHA-256 (hex) of the session's current resume token; the token itself is never stored.
    pub token_hash: String,
    /// SHA-256 of the token the client resumed with last, still accepted until the client shows
    /// it has the current one (it sends a frame on the resumed connection): a welcome lost in a
    /// drop does not lose the session. Empty when none.
    pub previous_token_hash: String,
    /// The authorizer's `principalId` when the session started; empty without one.
    pub principal: String,
    /// Epoch milliseconds since when the session has had no connection (0 while one is open):
    /// with `resume_window`, when it ends.
    pub detached_at: i64,
    /// The connection ID under which the session's idempotency keys are claimed: empty for its
    /// own, or that of an earlier session of the same client, which a resume that could not
    /// recover it carried on (PROTOCOL.md section 6.7).
    pub key_scope: String,
}

pub use crate::sessions::replay::StoredFrame;

/// The state of an idempotency key (PROTOCOL.md, section 6) as [`ConnectionStore::claim_key`]
/// found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key was free and is now claimed by the caller: invoke, then
    /// [`ConnectionStore::complete_key`].
    Claimed,
    /// Another attempt claimed it and has not completed.
    Pending(Claim),
    /// An attempt completed with this answer (the `reply` frame without its sequence number).
    Done(String),
}

/// Who claimed an idempotency key, and when: a claim whose host the cluster has judged dead can
/// be taken over ([`ConnectionStore::reclaim_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Epoch milliseconds of the claim.
    pub claimed_at: i64,
    /// `cluster.host_id` of the claiming host.
    pub host_id: String,
    /// The claiming host's incarnation.
    pub incarnation: String,
    /// The attempt that made the claim (random, one per processing of a message, kept across
    /// its tries): a claim read back with the caller's `attempt` is its own, whose write landed
    /// although its answer was lost, not another attempt's.
    pub attempt: String,
}

/// A host's liveness record, rewritten every `cluster.heartbeat_interval`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostRecord {
    /// `cluster.host_id`.
    pub host_id: String,
    /// The host's current incarnation.
    pub incarnation: String,
    /// `cluster.advertise_url`.
    pub endpoint: String,
    /// Epoch milliseconds of the last heartbeat (the writing host's clock).
    pub heartbeat_at: i64,
    /// A reaper declared the host dead and is removing its records; its heartbeats now fail.
    pub reaping: bool,
}

/// One page of connection records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordsPage {
    /// Records, ordered by connection ID.
    pub records: Vec<ConnectionRecord>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// A store operation that failed; the caller decides whether to refuse (503) or retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record with that connection ID already exists.
    #[error("connection {0} already exists")]
    AlreadyExists(String),
    /// The backend could not be reached or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A page token that no listing of this store returned (the caller's mistake, not the
    /// store's).
    #[error("invalid nextToken: {0}")]
    InvalidToken(String),
}

/// A connection's membership of a group: who joined, and when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    /// `connectionId` of the member.
    pub connection_id: String,
    /// The authorizer's `principalId` of the connection; empty when the API has no authorizer.
    pub principal: String,
    /// Epoch milliseconds of the join.
    pub joined_at: i64,
}

/// One page of a group's members.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MembersPage {
    /// Members, in an order that is stable while the group does not change.
    pub members: Vec<Member>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// Connection records and group memberships.
#[async_trait::async_trait]
pub trait ConnectionStore: Send + Sync + std::fmt::Debug {
    /// Writes a new record; fails with `AlreadyExists` rather than overwrite another writer's.
    /// Idempotent for its writer: a record with the same `owner_host` and `owner_incarnation`
    /// (both non-empty) is replaced, so a retried write that had landed succeeds.
    async fn put_connection(&self, record: ConnectionRecord) -> Result<(), StoreError>;
    /// Reads a record.
    async fn get_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError>;
    /// Deletes a record and every group membership of the connection; returns the groups it
    /// left (so that their members can be told).
    async fn delete_connection(&self, connection_id: &str) -> Result<Vec<String>, StoreError>;
    /// Adds a connection to a group. Idempotent: joining again keeps the first membership (its
    /// `joined_at`) and returns `false`; `true` when the connection joined now.
    async fn add_to_group(&self, group: &str, member: &Member) -> Result<bool, StoreError>;
    /// Removes a connection from a group (idempotent); the membership it ended, `None` when the
    /// connection was no member.
    async fn remove_from_group(
        &self,
        group: &str,
        connection_id: &str,
    ) -> Result<Option<Member>, StoreError>;
    /// The groups a connection is in (read from an eventually consistent index on DynamoDB): a
    /// host taking a reliable session in loads them into its own index.
    async fn groups_of(&self, connection_id: &str) -> Result<Vec<String>, StoreError>;
    /// Lists a group's members, `limit` at a time, starting after `next_token` (a token an
    /// earlier page returned; anything else fails with `InvalidToken`). An unknown group is one
    /// empty page.
    async fn group_members(
        &self,
        group: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError>;
    /// How many members a group has (0 for an unknown group), without listing them.
    async fn group_count(&self, group: &str) -> Result<u64, StoreError>;
    /// Lists the records owned by `host_id` (every incarnation), `limit` at a time, starting after
    /// `next_token`; the reaper and a restarting host use it.
    async fn connections_of_host(
        &self,
        host_id: &str,
        next_token: Option<&str>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError>;
    /// Writes a host's liveness record, replacing any earlier incarnation's (a host starting).
    async fn register_host(&self, host: &HostRecord) -> Result<(), StoreError>;
    /// Sets the heartbeat of `host_id` to `heartbeat_at` if its record still names `incarnation`
    /// and no reaper has claimed it; `false` means the host was reaped or replaced and must not
    /// carry on as if nothing happened.
    async fn heartbeat(
        &self,
        host_id: &str,
        incarnation: &str,
        heartbeat_at: i64,
    ) -> Result<bool, StoreError>;
    /// Reads one host's liveness record (strongly consistent).
    async fn get_host(&self, host_id: &str) -> Result<Option<HostRecord>, StoreError>;
    /// Every host's liveness record, live or dead (the caller compares `heartbeat_at`).
    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError>;
    /// Claims a dead host for reaping: marks it `reaping` if its record still has the incarnation
    /// and heartbeat the caller saw. `false` means it heartbeated since (it is alive) or restarted.
    async fn begin_reap(&self, host: &HostRecord) -> Result<bool, StoreError>;
    /// Deletes a host's liveness record if it still names `incarnation` (a restarted host's new
    /// record is kept).
    async fn remove_host(&self, host_id: &str, incarnation: &str) -> Result<(), StoreError>;

    // Reliable-delivery sessions (`[extensions.sessions]`, PROTOCOL.md).

    /// Replaces the record of `record.connection_id` with `record` if the stored one still names
    /// `expected_host` and `expected_incarnation` as its owner (a session moving to another host,
    /// or a new resume token). `false` when it does not (another host took it, or it is gone);
    /// group memberships are untouched either way.
    async fn take_over(
        &self,
        record: &ConnectionRecord,
        expected_host: &str,
        expected_incarnation: &str,
    ) -> Result<bool, StoreError>;
    /// Like [`ConnectionStore::take_over`], and only if the stored session's current token is
    /// still `expected_token_hash`: a new resume token replaces only the one it was issued
    /// against, so that of two resumes racing for a session, the token the client got from the
    /// one that won is the one the record keeps.
    async fn rotate_token(
        &self,
        record: &ConnectionRecord,
        expected_host: &str,
        expected_incarnation: &str,
        expected_token_hash: &str,
    ) -> Result<bool, StoreError>;
    /// Claims idempotency key `key` of a connection's session as `claim` says, unless it is
    /// already claimed (then says by whom and how far it got). The claim and its answer expire at
    /// `expires_at_ms` (epoch milliseconds), after which the key is free again.
    async fn claim_key(
        &self,
        connection_id: &str,
        key: &str,
        claim: &Claim,
        expires_at_ms: i64,
    ) -> Result<KeyClaim, StoreError>;
    /// Replaces the pending claim `lost` of `key` (its host died before completing it) with
    /// `claim`, atomically: `false`, and nothing written, when the key is no longer claimed by
    /// `lost` (completed, or reclaimed by another attempt first).
    async fn reclaim_key(
        &self,
        connection_id: &str,
        key: &str,
        lost: &Claim,
        claim: &Claim,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Frees `key` if it is still pending under `claim`'s attempt (which will not invoke it: its
    /// claim's write landed although the caller saw it fail), so that a resend claims it rather
    /// than wait for an attempt that never runs. Nothing changes otherwise.
    async fn release_key(
        &self,
        connection_id: &str,
        key: &str,
        claim: &Claim,
    ) -> Result<(), StoreError>;
    /// Records the answer of a claimed key (idempotent), keeping it until `expires_at_ms`.
    async fn complete_key(
        &self,
        connection_id: &str,
        key: &str,
        answer: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Keeps `session`, the proof of a resume token of the ended session `connection_id`
    /// (token hashes, principal, key scope), until `expires_at_ms`:
    /// a resume with that token can then carry the session's idempotency keys on into the
    /// client's next session (PROTOCOL.md section 6.7). Replaces what was kept before.
    async fn keep_ended_session(
        &self,
        connection_id: &str,
        session: &SessionRecord,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// What [`keep_ended_session`](Self::keep_ended_session) kept of `connection_id`, unless it
    /// expired.
    async fn ended_session(&self, connection_id: &str)
    -> Result<Option<SessionRecord>, StoreError>;
    /// Keeps `frame` for replay under its sequence number (`durability = "store"`), written by
    /// `owner_host`/`owner_incarnation`, unless that number is taken by another writer: a frame
    /// another host wrote, or a fence ([`fence_frames`](Self::fence_frames)) a new owner of the
    /// session put there. `false`, and nothing written, in that case: the writer has lost the
    /// session. Rewriting its own frame (a retried write) succeeds. Expires at `expires_at_ms`;
    /// an expired item takes no number.
    async fn append_frame(
        &self,
        connection_id: &str,
        owner_host: &str,
        owner_incarnation: &str,
        frame: &StoredFrame,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Takes sequence number `seq` of a connection's session for `owner_host`/`owner_incarnation`
    /// without a frame, so that nobody else's [`append_frame`](Self::append_frame) can write it:
    /// a host taking a session over puts it at the number its first frame will have (see
    /// SESSIONS.md, STORE.md). `false` when a frame already has that number; another fence there
    /// is replaced. The fence itself is never read back as a frame; the owner's own frame
    /// replaces it.
    async fn fence_frames(
        &self,
        connection_id: &str,
        seq: u64,
        owner_host: &str,
        owner_incarnation: &str,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError>;
    /// The kept frames of a connection with sequence numbers above `after_seq`, in order (read
    /// strongly consistent, after a [`take_over`](Self::take_over)).
    async fn frames_after(
        &self,
        connection_id: &str,
        after_seq: u64,
    ) -> Result<Vec<StoredFrame>, StoreError>;
    /// Walks the kept frames of a connection newest first (read strongly consistent), handing
    /// each to `enough` until it answers true, and returns the sequence number just below that
    /// frame: [`frames_after`](Self::frames_after) it reads the frames walked. 0 when `enough`
    /// never answers true. Fences and expired frames are not handed over.
    async fn newest_frames_start(
        &self,
        connection_id: &str,
        enough: &mut (dyn for<'f> FnMut(&'f StoredFrame) -> bool + Send),
    ) -> Result<u64, StoreError>;
}
