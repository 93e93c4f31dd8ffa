//! Several hosts sharing one DynamoDB store as one cluster: every connection record names its
//! owning host, and a management call for a connection held elsewhere is forwarded to the owner.
//! DynamoDB is the only shared state: liveness is a heartbeat record per host, and any host reaps
//! the records of a host whose heartbeat lapsed (see [`liveness`]).
//!
//! Host-to-host calls never carry `cluster.secret` itself: each one is signed with it (see
//! `peer_auth`), so an observer of the VPC traffic learns no secret, cannot alter a call, and
//! cannot replay one after the window.

mod cache;
pub mod liveness;
mod order;

use crate::config::ClusterConfig;
use crate::peer_auth::verify;
pub use crate::peer_auth::{
    DATE_HEADER, FORWARDED_HEADER, ForwardAuthError, SIGNATURE_HEADER, signature,
};
use crate::store::{ConnectionStore, HostRecord, StoreError};
use bytes::Bytes;
use cache::OwnerCache;
use http::{HeaderMap, HeaderValue, Method};
pub use order::Turn;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

/// The owning host's answer to a forwarded call, to be passed back as it is.
#[derive(Debug)]
pub struct Forwarded {
    /// Its status.
    pub status: http::StatusCode,
    /// The headers passed back ([`PASSED_HEADERS`]).
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// Response headers passed back from the owner besides the body and status.
const PASSED_HEADERS: [&str; 2] = ["x-amzn-ErrorType", "content-type"];
/// Upper bound for one host-to-host call (a post or a batch delivery is quick on a live host).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Who this host is in the store.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `cluster.host_id`, or a random ID when that is empty.
    pub host_id: String,
    /// Fresh at every start, so records of a previous run with the same `host_id` are told apart.
    pub incarnation: String,
    /// `cluster.advertise_url` without a trailing slash; empty when not clustered.
    pub endpoint: String,
}

impl Identity {
    /// The identity for `config`: its `host_id` (random when empty) and a new incarnation.
    pub fn new(config: &ClusterConfig) -> Self {
        let random = || uuid::Uuid::new_v4().simple().to_string();
        Self {
            host_id: if config.host_id.is_empty() {
                format!("host-{}", &random()[..12])
            } else {
                config.host_id.clone()
            },
            incarnation: random(),
            endpoint: config.advertise_url.trim_end_matches('/').to_string(),
        }
    }
}

/// Where a connection lives, as its record says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The owning host's ID.
    pub host_id: String,
    /// The owning host's incarnation when the connection was accepted.
    pub incarnation: String,
    /// The owning host's management base URL.
    pub endpoint: String,
}

/// One host-to-host delivery call's request body (`POST /{stage}/@internal/deliver`): a
/// broadcast for the receiving host's own members of `group`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DeliveryBatch {
    /// The group whose members held by the receiving host get the message.
    pub group: String,
    /// The message, base64.
    pub data: String,
    /// A connection left out (the sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
    /// Drop the message for a connection whose queue is full instead of closing it.
    #[serde(default)]
    pub volatile: bool,
}

/// What a broadcast did, member by member: the answer of `POST /{stage}/@groups/{group}` and of
/// each host-to-host delivery call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Queued for the member.
    pub delivered: usize,
    /// Not queued: a volatile broadcast found the member's queue full.
    pub dropped: usize,
    /// Not queued: the member's connection was closing (or, without `volatile`, was closed for
    /// its full queue). Members on a dead or unreachable host are in no count: a broadcast reads
    /// no membership, so it does not know them.
    pub gone: usize,
}

impl Delivered {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Delivered) {
        self.delivered += other.delivered;
        self.dropped += other.dropped;
        self.gone += other.gone;
    }

    /// The answer's JSON, with `failed` (dropped + gone) kept for callers of earlier releases.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "delivered": self.delivered,
            "dropped": self.dropped,
            "gone": self.gone,
            "failed": self.dropped + self.gone,
        })
    }

    /// Reads an answer; one from a host of an earlier release has only `failed`, counted as gone.
    pub fn from_answer(body: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let count = |key: &str| v[key].as_u64().map(|n| n as usize);
        let delivered = count("delivered")?;
        Some(match (count("dropped"), count("gone")) {
            (Some(dropped), Some(gone)) => Self {
                delivered,
                dropped,
                gone,
            },
            _ => Self {
                delivered,
                dropped: 0,
                gone: count("failed")?,
            },
        })
    }
}

/// The cluster side of a host: owner lookups, liveness view, host-to-host calls.
#[derive(Debug)]
pub struct Cluster {
    identity: Identity,
    secret: HeaderValue,
    host_timeout_ms: i64,
    http: reqwest::Client,
    owners: OwnerCache,
    /// Keeps the calls forwarded for one connection in their order of arrival.
    lines: order::Lines,
    /// The last liveness record seen per host (refreshed every heartbeat, and on demand).
    hosts: RwLock<HashMap<String, HostRecord>>,
}

impl Cluster {
    /// The cluster state of a clustered host; `None` when `config.advertise_url` is empty.
    pub fn new(config: &ClusterConfig, identity: &Identity, http: reqwest::Client) -> Option<Self> {
        if !config.enabled() {
            return None;
        }
        // Never silently unclustered: `Config::validate`, which every start runs first, refuses
        // a secret with control characters. Kept as a sensitive header value only so that
        // `{:?}` never prints it.
        let mut secret = HeaderValue::from_str(&config.secret)
            .expect("cluster.secret was validated: visible characters and spaces");
        secret.set_sensitive(true);
        Some(Self {
            identity: identity.clone(),
            secret,
            host_timeout_ms: i64::try_from(config.host_timeout.as_millis()).unwrap_or(i64::MAX),
            http,
            owners: OwnerCache::new(config.owner_cache_size),
            lines: order::Lines::default(),
            hosts: RwLock::new(HashMap::new()),
        })
    }

    /// Checks a host-to-host call: its signature (compared in constant time) over `method`,
    /// `path_and_query` as received, its date, its sender and `body`, and that its date is
    /// within [`FORWARD_WINDOW`] of `now_ms`.
    pub fn authenticate(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), ForwardAuthError> {
        verify(
            self.secret.as_bytes(),
            method,
            path_and_query,
            headers,
            body,
            now_ms,
        )
    }

    /// Adds this host's signature headers to a built host-to-host request, signing what it will
    /// send: its method, the path and query of its URL, and `body`.
    fn sign(&self, request: &mut reqwest::Request, body: &[u8]) {
        let url = request.url();
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let date = crate::ids::now_ms();
        let mac = signature(
            self.secret.as_bytes(),
            request.method(),
            &path_and_query,
            date,
            &self.identity.host_id,
            body,
        );
        let headers = request.headers_mut();
        let value =
            |s: &str| HeaderValue::from_str(s).expect("host IDs, digits and hex are header values");
        headers.insert(FORWARDED_HEADER, value(&self.identity.host_id));
        headers.insert(DATE_HEADER, value(&date.to_string()));
        headers.insert(SIGNATURE_HEADER, value(&mac));
    }

    /// Sends a signed host-to-host request built by `build` with `body`.
    async fn send_signed(
        &self,
        build: reqwest::RequestBuilder,
        body: Bytes,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut request = build.timeout(FORWARD_TIMEOUT).body(body.clone()).build()?;
        self.sign(&mut request, &body);
        self.http.execute(request).await
    }

    /// Waits until the calls for `connection_id` that reached this host earlier have been
    /// forwarded and answered; hold the turn over [`Cluster::locate`] and [`Cluster::forward`]
    /// so that the owner receives the calls in the order this host did. Calls for other
    /// connections never wait on it. Await it first thing on arrival: the place in line is taken
    /// at the first poll.
    ///
    /// `None` when the calls ahead took longer than [`FORWARD_TIMEOUT`]: a stalled owner keeps
    /// each of them up to that long, and a call is not left waiting behind all of them.
    pub async fn turn(&self, connection_id: &str) -> Option<Turn<'_>> {
        tokio::time::timeout(FORWARD_TIMEOUT, self.lines.turn(connection_id))
            .await
            .ok()
    }

    /// The owner of a connection that is not in the local registry: `None` when it does not
    /// exist, is this host's own (closing, or a previous run's), or its owner is dead.
    pub async fn locate(
        &self,
        store: &dyn ConnectionStore,
        connection_id: &str,
    ) -> Result<Option<Owner>, StoreError> {
        let owner = match self.owners.get(connection_id) {
            Some(owner) => owner,
            None => {
                let record = store.get_connection(connection_id).await?;
                let Some(record) = record else {
                    return Ok(None);
                };
                let owner = Owner {
                    host_id: record.owner_host,
                    incarnation: record.owner_incarnation,
                    endpoint: record.owner_endpoint,
                };
                if owner.host_id == self.identity.host_id || owner.endpoint.is_empty() {
                    return Ok(None);
                }
                // A connection never moves: the entry stays valid until the owner answers 410.
                self.owners.insert(connection_id.to_string(), owner.clone());
                owner
            }
        };
        if self.is_live(store, &owner).await? {
            Ok(Some(owner))
        } else {
            self.owners.remove(connection_id);
            Ok(None)
        }
    }

    /// Forgets a connection's owner (it answered 410).
    pub fn forget(&self, connection_id: &str) {
        self.owners.remove(connection_id);
    }

    /// This host's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether `owner`'s incarnation heartbeated within `host_timeout`. The local view answers
    /// when it says live; otherwise the store is asked, so a host that started a moment ago (or
    /// heartbeated since the view was refreshed) is not taken for dead.
    pub async fn is_live(
        &self,
        store: &dyn ConnectionStore,
        owner: &Owner,
    ) -> Result<bool, StoreError> {
        let now = crate::ids::now_ms();
        let fresh = |h: &HostRecord| {
            h.incarnation == owner.incarnation
                && !h.reaping
                && now - h.heartbeat_at <= self.host_timeout_ms
        };
        if self.view(|hosts| hosts.get(&owner.host_id).is_some_and(fresh)) {
            return Ok(true);
        }
        let record = store.get_host(&owner.host_id).await?;
        let live = record.as_ref().is_some_and(fresh);
        if let Some(record) = record {
            self.write_view(|hosts| {
                hosts.insert(record.host_id.clone(), record);
            });
        }
        Ok(live)
    }

    /// The other hosts of the liveness view (refreshed every heartbeat, and by a starting host's
    /// hello) whose heartbeat is within `host_timeout` and that no reaper has claimed: those a
    /// broadcast calls.
    pub fn live_peers(&self) -> Vec<HostRecord> {
        let now = crate::ids::now_ms();
        self.view(|hosts| {
            hosts
                .values()
                .filter(|h| {
                    h.host_id != self.identity.host_id
                        && !h.endpoint.is_empty()
                        && !h.reaping
                        && now - h.heartbeat_at <= self.host_timeout_ms
                })
                .cloned()
                .collect()
        })
    }

    /// Adds a host that said hello to the liveness view (replacing what it had of that host).
    pub fn note_host(&self, record: HostRecord) {
        self.write_view(|hosts| {
            hosts.insert(record.host_id.clone(), record);
        });
    }

    /// Tells the live hosts of `hosts` (this host's first listing) that this host, as `me`,
    /// has started, so that their broadcasts call it from now on rather than after their next
    /// heartbeat. Best effort: a host not reached learns of it at its next heartbeat.
    pub async fn announce(&self, stage: &str, me: &HostRecord, hosts: &[HostRecord]) {
        self.refresh_view(hosts);
        let body = Bytes::from(serde_json::to_vec(&Hello::from(me)).expect("strings serialize"));
        let calls = self.live_peers().into_iter().map(|peer| {
            let url = format!("{}/{stage}/@internal/hello", peer.endpoint);
            let build = self
                .http
                .post(url)
                .header(http::header::CONTENT_TYPE, "application/json");
            let call = self.send_signed(build, body.clone());
            async move {
                match tokio::time::timeout(HELLO_TIMEOUT, call).await {
                    Ok(Ok(r)) if r.status().is_success() => {}
                    other => {
                        tracing::info!(peer = %peer.host_id, answer = ?other.map(|r| r.map(|r| r.status())), "hello not answered; the peer lists this host at its next heartbeat")
                    }
                }
            }
        });
        futures_util::future::join_all(calls).await;
    }

    /// `cluster.host_timeout`: how long after its last heartbeat a host is judged dead.
    pub fn host_timeout(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.host_timeout_ms).unwrap_or(0))
    }

    /// Replaces the liveness view with a fresh listing of every host.
    pub fn refresh_view(&self, hosts: &[HostRecord]) {
        self.write_view(|view| {
            *view = hosts
                .iter()
                .map(|h| (h.host_id.clone(), h.clone()))
                .collect();
        });
    }

    /// The liveness view: every host's last record seen, ordered by host ID.
    pub fn hosts(&self) -> Vec<HostRecord> {
        let mut hosts: Vec<HostRecord> = self.view(|view| view.values().cloned().collect());
        hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        hosts
    }

    /// `cluster.host_timeout` in milliseconds: a heartbeat older than this has lapsed.
    pub fn host_timeout_ms(&self) -> i64 {
        self.host_timeout_ms
    }

    fn view<T>(&self, f: impl FnOnce(&HashMap<String, HostRecord>) -> T) -> T {
        f(&self.hosts.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn write_view(&self, f: impl FnOnce(&mut HashMap<String, HostRecord>)) {
        f(&mut self.hosts.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sends a management call to `owner` (same method, path and query) and passes its answer
    /// back. `None` when the owner cannot be reached (or its answer is cut short): it is dead,
    /// or its connections are unreachable, which the caller answers as 410.
    pub async fn forward(
        &self,
        owner: &Owner,
        connection_id: &str,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Option<Forwarded> {
        let url = format!("{}{path_and_query}", owner.endpoint);
        let sent = self
            .send_signed(self.http.request(method, &url), body)
            .await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(owner = %owner.host_id, error = %e, "owner unreachable; answering 410");
                return None;
            }
        };
        let status = answer.status();
        if status == http::StatusCode::GONE {
            self.forget(connection_id);
        }
        let mut headers = HeaderMap::new();
        for name in PASSED_HEADERS {
            if let Some(v) = answer.headers().get(name) {
                headers.insert(name, v.clone());
            }
        }
        let body = match answer.bytes().await {
            Ok(body) => body,
            Err(e) => {
                tracing::info!(owner = %owner.host_id, error = %e, "owner's answer cut short; answering 410");
                return None;
            }
        };
        Some(Forwarded {
            status,
            headers,
            body,
        })
    }

    /// Asks `owner` to deliver a broadcast to its members of the batch's group (one call per
    /// host per broadcast). `None` when the call fails or takes longer than `timeout`: the owner
    /// is unreachable. Not retried: a retry after a timeout could deliver twice.
    pub async fn deliver(
        &self,
        owner: &HostRecord,
        stage: &str,
        batch: &DeliveryBatch,
        timeout: Duration,
    ) -> Option<Delivered> {
        let url = format!("{}/{stage}/@internal/deliver", owner.endpoint);
        let body = serde_json::to_vec(batch).expect("a batch of strings serializes");
        let build = self
            .http
            .post(&url)
            .header(http::header::CONTENT_TYPE, "application/json");
        let call = async {
            let answer = self.send_signed(build, Bytes::from(body)).await?;
            let status = answer.status();
            answer.bytes().await.map(|body| (status, body))
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok((status, body))) if status.is_success() => {
                let counts = Delivered::from_answer(&body);
                if counts.is_none() {
                    tracing::warn!(owner = %owner.host_id, "batch delivery answered without counts");
                }
                counts
            }
            Ok(Ok((status, _))) => {
                tracing::warn!(owner = %owner.host_id, %status, "batch delivery refused");
                None
            }
            Ok(Err(e)) => {
                tracing::info!(owner = %owner.host_id, error = %e, "batch delivery failed");
                None
            }
            Err(_) => {
                tracing::info!(owner = %owner.host_id, ?timeout, "batch delivery timed out");
                None
            }
        }
    }

    /// Asks `owner` to hand over the reliable session of `connection_id` (PROTOCOL.md section 5):
    /// its frames after `after` and its next sequence number. `None` when the owner cannot be
    /// reached or no longer holds the session.
    pub async fn hand_over(
        &self,
        owner: &Owner,
        stage: &str,
        connection_id: &str,
        after: u64,
    ) -> Option<HandOver> {
        let url = format!("{}/{stage}/@internal/handover", owner.endpoint);
        let body = serde_json::json!({ "connectionId": connection_id, "after": after });
        let build = self
            .http
            .post(&url)
            .header(http::header::CONTENT_TYPE, "application/json");
        match self.send_signed(build, Bytes::from(body.to_string())).await {
            Ok(r) if r.status().is_success() => {
                let body = r.bytes().await.ok()?;
                serde_json::from_slice(&body)
                    .inspect_err(|e| tracing::warn!(owner = %owner.host_id, error = %e, "unreadable session handover"))
                    .ok()
            }
            Ok(r) => {
                tracing::info!(owner = %owner.host_id, status = %r.status(), "session not handed over");
                None
            }
            Err(e) => {
                tracing::info!(owner = %owner.host_id, error = %e, "session owner unreachable");
                None
            }
        }
    }
}

/// How long a starting host waits for each peer to answer its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// A starting host's liveness record, as its hello (`POST /{stage}/@internal/hello`) carries it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    /// `cluster.host_id`.
    #[serde(rename = "hostId")]
    pub host_id: String,
    /// Its incarnation.
    pub incarnation: String,
    /// Its management base URL.
    pub endpoint: String,
    /// Epoch milliseconds of its registration.
    #[serde(rename = "heartbeatAt")]
    pub heartbeat_at: i64,
}

impl From<&HostRecord> for Hello {
    fn from(h: &HostRecord) -> Self {
        Self {
            host_id: h.host_id.clone(),
            incarnation: h.incarnation.clone(),
            endpoint: h.endpoint.clone(),
            heartbeat_at: h.heartbeat_at,
        }
    }
}

impl From<Hello> for HostRecord {
    fn from(h: Hello) -> Self {
        Self {
            host_id: h.host_id,
            incarnation: h.incarnation,
            endpoint: h.endpoint,
            heartbeat_at: h.heartbeat_at,
            reaping: false,
        }
    }
}

/// A reliable session as its previous owner hands it over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandOver {
    /// The sequence number the session's next frame gets.
    #[serde(rename = "nextSeq")]
    pub next_seq: u64,
    /// Posts were refused while the client was away (the resume cannot recover).
    pub overflowed: bool,
    /// The unacknowledged frames after the client's last sequence number, in order.
    pub frames: Vec<HandedFrame>,
    /// The previous owner took the session over with a fence at `nextSeq` and has numbered
    /// nothing since: the next owner's first frame goes where that fence is, so it fences first
    /// (absent when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
    /// The post keys the session remembers, oldest first (absent from a host that predates
    /// them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub posts: Vec<HandedPost>,
}

/// One post key of a [`HandOver`] (see [`crate::sessions::replay::PostKeys`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedPost {
    /// The key.
    pub k: String,
    /// The post body's digest, in hex.
    pub h: String,
    /// The number of the frame that carried it.
    pub s: u64,
    /// Epoch milliseconds when it was kept.
    pub a: i64,
}

/// One frame of a [`HandOver`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedFrame {
    /// Its sequence number.
    pub s: u64,
    /// The frame as sent to the client.
    pub f: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_random_unless_fixed_and_incarnations_differ() {
        let mut config = ClusterConfig::default();
        let a = Identity::new(&config);
        let b = Identity::new(&config);
        assert_ne!(a.host_id, b.host_id);
        config.host_id = "fixed".into();
        config.advertise_url = "http://127.0.0.1:9080/".into();
        let c = Identity::new(&config);
        let d = Identity::new(&config);
        assert_eq!((c.host_id.as_str(), d.host_id.as_str()), ("fixed", "fixed"));
        assert_ne!(c.incarnation, d.incarnation);
        assert_eq!(c.endpoint, "http://127.0.0.1:9080");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_its_turn_at_most_the_forward_timeout() {
        let config = ClusterConfig {
            advertise_url: "http://127.0.0.1:9".into(),
            secret: "0123456789abcdef0123".into(),
            ..ClusterConfig::default()
        };
        let cluster = Cluster::new(&config, &Identity::new(&config), reqwest::Client::new())
            .expect("clustered");
        let first = cluster.turn("c").await.expect("an idle connection's turn");
        let started = tokio::time::Instant::now();
        assert!(
            cluster.turn("c").await.is_none(),
            "the owner stalls the first"
        );
        assert_eq!(started.elapsed(), FORWARD_TIMEOUT);
        drop(first);
        assert!(cluster.turn("c").await.is_some());
    }

    #[test]
    fn a_signed_call_checks_out_only_unchanged_and_in_time() {
        let config = ClusterConfig {
            host_id: "b".into(),
            advertise_url: "http://127.0.0.1:9".into(),
            secret: "0123456789abcdef0123".into(),
            ..ClusterConfig::default()
        };
        let cluster = Cluster::new(&config, &Identity::new(&config), reqwest::Client::new())
            .expect("clustered");
        let (post, path, now) = (Method::POST, "/dev/@connections/abc%3D", 1_700_000_000_000);
        let headers = |date: i64, body: &[u8]| {
            let mac = signature(config.secret.as_bytes(), &post, path, date, "a", body);
            let mut h = HeaderMap::new();
            h.insert(FORWARDED_HEADER, HeaderValue::from_static("a"));
            h.insert(
                DATE_HEADER,
                HeaderValue::from_str(&date.to_string()).unwrap(),
            );
            h.insert(SIGNATURE_HEADER, HeaderValue::from_str(&mac).unwrap());
            h
        };
        let check = |h: &HeaderMap, method: &Method, path: &str, body: &[u8], at: i64| {
            cluster.authenticate(method, path, h, body, at)
        };
        let good = headers(now, b"hi");
        assert_eq!(check(&good, &post, path, b"hi", now + 29_000), Ok(()));
        assert_eq!(
            check(&good, &post, path, b"ho", now),
            Err(ForwardAuthError::Mismatch)
        );
        assert_eq!(
            check(&good, &Method::DELETE, path, b"hi", now),
            Err(ForwardAuthError::Mismatch)
        );
        assert_eq!(
            check(&good, &post, "/dev/@connections/abd%3D", b"hi", now),
            Err(ForwardAuthError::Mismatch)
        );
        assert_eq!(
            check(&good, &post, path, b"hi", now + 31_000),
            Err(ForwardAuthError::OutsideWindow)
        );
        assert_eq!(
            check(&good, &post, path, b"hi", now - 31_000),
            Err(ForwardAuthError::OutsideWindow)
        );
        let mut other_sender = good.clone();
        other_sender.insert(FORWARDED_HEADER, HeaderValue::from_static("c"));
        assert_eq!(
            check(&other_sender, &post, path, b"hi", now),
            Err(ForwardAuthError::Mismatch)
        );
        let mut unsigned = good.clone();
        unsigned.remove(SIGNATURE_HEADER);
        assert_eq!(
            check(&unsigned, &post, path, b"hi", now),
            Err(ForwardAuthError::Missing(SIGNATURE_HEADER))
        );
    }
}
