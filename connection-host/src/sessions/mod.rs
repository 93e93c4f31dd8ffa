//! Reliable-delivery sessions (`[extensions.sessions]`, specified in PROTOCOL.md): a session
//! outlives a lost connection for `resume_window`, numbers what the host sends, and moves to
//! whichever host the client resumes on.
//!
//! A session lives in its connection's registry handle ([`crate::registry::Session`]): the
//! gateway attaches each connection of the session to it, and when a connection is lost without a
//! Close frame the session is [`detach`]ed instead of ended. Only [`end`] runs `$disconnect`: when
//! the client closes, when DeleteConnection is called, or when the window runs out.
//!
//! Resuming on another host ([`resume`]): the new host registers the session as installing (posts
//! arriving meanwhile wait), takes the store record over with a conditional write, fetches the
//! unacknowledged frames (from the previous owner, or from the store with
//! `durability = "store"`), and attaches the connection. The previous owner, asked to hand the
//! session over, lets go of it: its later posts look the owner up again.
//!
//! A resume that cannot recover its session but proves it comes from the session's client (a
//! token the session accepts, the same principal) starts the fresh session in the old one's key
//! scope (PROTOCOL.md section 6.7): its idempotency keys are claimed under the connection ID the
//! old session's were, so a message sent again is not invoked twice. A session that ends leaves
//! that proof in the store for `dedup_window` ([`end`], and [`crate::ending::finish`]).

pub mod envelope;
pub mod replay;
pub mod token;

use crate::cluster::{HandOver, HandedFrame, HandedPost, Owner};
use crate::config::Durability;
use crate::events::ConnectionContext;
use crate::host::Host;
use crate::ids;
use crate::registry::{
    AttachError, Attachment, ConnectionHandle, PostError, Session, StoreWrites, Unstored,
};
use crate::store::{SessionRecord, StoreError, StoredFrame};
use replay::{PostKey, PostKeys, Replay};
use std::sync::Arc;
use std::time::Duration;

/// How long a post waits for a session being taken over by this host to become ready.
const INSTALL_WAIT: Duration = Duration::from_secs(10);

/// The authorizer's `principalId`, the identity a resume must match; empty without one.
pub(crate) fn principal(claims: Option<&serde_json::Map<String, serde_json::Value>>) -> String {
    claims
        .and_then(|c| c.get("principalId"))
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_string()
}

/// A new session for a fresh connection: its handle (not yet registered), its store record's
/// session part, and the token to give the client. `key_scope` is where its idempotency keys
/// are claimed: empty for its own connection ID, or the scope of the previous session of the
/// client that a resume proved but could not recover (PROTOCOL.md section 6.7).
pub(crate) fn start(
    host: &Host,
    context: Arc<ConnectionContext>,
    key_scope: String,
) -> (ConnectionHandle, SessionRecord, String) {
    let (token, token_hash) = token::issue(&context.connection_id);
    let principal = principal(context.authorizer.as_ref());
    let limit = host.config.extensions.sessions.session_buffer_bytes;
    let mut session = new_session(host, Replay::new(limit), token_hash, principal);
    session.key_scope = key_scope;
    let record = record_of(&session);
    (
        ConnectionHandle::with_session(context, session),
        record,
        token,
    )
}

/// The store record's part of `session`.
pub(crate) fn record_of(session: &Session) -> SessionRecord {
    SessionRecord {
        token_hash: session.token_hash.clone(),
        previous_token_hash: session.previous_token_hash.clone(),
        principal: session.principal.clone(),
        detached_at: session.detached_at,
        key_scope: session.key_scope.clone(),
    }
}

/// The connection ID under which the keys of the session `connection_id` are claimed, given its
/// record's `key_scope`.
pub(crate) fn scope_of(connection_id: &str, key_scope: &str) -> String {
    if key_scope.is_empty() {
        connection_id
    } else {
        key_scope
    }
    .to_string()
}

/// A session's state, with its frames' way to the store when `durability = "store"`.
fn new_session(host: &Host, replay: Replay, token_hash: String, principal: String) -> Session {
    let mut session = Session::new(replay, token_hash, principal);
    session.post_keys = PostKeys::new(post_key_window(host));
    if host.config.extensions.sessions.durability == Durability::Store {
        session.store = Some(StoreWrites::default());
    }
    session
}

/// How long a session remembers a post key: `dedup_window`, as for the client's own keys.
fn post_key_window(host: &Host) -> i64 {
    i64::try_from(host.config.extensions.sessions.dedup_window.as_millis()).unwrap_or(i64::MAX)
}

/// The post keys of a session taken over from another host: those `handed` over by it, then
/// those of the `frames` read (handed over, or from the store) that it did not name, counted as
/// kept now.
fn taken_post_keys<'f>(
    host: &Host,
    handed: &[HandedPost],
    frames: impl Iterator<Item = (u64, &'f str)>,
) -> PostKeys {
    let now = ids::now_ms();
    let mut keys = PostKeys::new(post_key_window(host));
    for post in handed {
        let mut digest = [0; 16];
        if hex::decode_to_slice(&post.h, &mut digest).is_ok() {
            let kept = PostKey {
                digest,
                seq: post.s,
                at_ms: post.a,
            };
            keys.insert(post.k.clone(), kept, now);
        }
    }
    for (seq, frame) in frames {
        if let Some((key, data)) = envelope::post_of(frame)
            && keys.get(&key, now).is_none()
        {
            let digest = replay::digest(&data);
            keys.insert(
                key,
                PostKey {
                    digest,
                    seq,
                    at_ms: now,
                },
                now,
            );
        }
    }
    keys
}

/// The `welcome` frame for a connection of the session `connection_id`.
pub(crate) fn welcome(
    host: &Host,
    connection_id: &str,
    token: &str,
    recovered: bool,
    seq: u64,
    protocol: Option<&str>,
    reason: Option<&str>,
) -> String {
    let sessions = &host.config.extensions.sessions;
    envelope::welcome(&envelope::Welcome {
        connection_id,
        resume_token: token,
        recovered,
        seq,
        protocol,
        reason,
        resume_window_ms: u64::try_from(sessions.resume_window.as_millis()).unwrap_or(u64::MAX),
        buffer_bytes: sessions.session_buffer_bytes,
    })
}

/// A resumed session, ready for its new connection.
pub(crate) struct Resumed {
    /// The session's handle, registered and attached.
    pub handle: Arc<ConnectionHandle>,
    /// The connection's hold on the session.
    pub attachment: Attachment,
}

/// A resume that did not recover its session.
pub(crate) struct NotResumed {
    /// The `reason` the fresh session's welcome reports, or [`UNAVAILABLE`].
    pub reason: &'static str,
    /// The key scope the fresh session carries on: the previous session's, when the resume
    /// proved it comes from that session's client (a token the session accepts, the same
    /// principal); `None` otherwise (PROTOCOL.md section 6.7).
    pub key_scope: Option<String>,
}

/// Resumes the session `resume` names for a client the authorizer identified as `principal`,
/// on this host.
pub(crate) async fn resume(
    host: &Arc<Host>,
    resume: &token::Resume,
    principal: &str,
    context: &ConnectionContext,
    protocol: Option<&str>,
) -> Result<Resumed, NotResumed> {
    let mut proven = None;
    let reason = match resume_racing(host, resume, principal, context, protocol, &mut proven).await
    {
        Ok(resumed) => return Ok(resumed),
        Err(reason) => reason,
    };
    Err(NotResumed {
        reason,
        key_scope: proven.filter(|_| reason != UNAVAILABLE),
    })
}

/// [`resume`]'s attempts; sets `proven` to the session's key scope once a token and principal
/// are found to be the session's.
async fn resume_racing(
    host: &Arc<Host>,
    resume: &token::Resume,
    principal: &str,
    context: &ConnectionContext,
    protocol: Option<&str>,
    proven: &mut Option<String>,
) -> Result<Resumed, &'static str> {
    // A client that gave up on an attempt (its handshake stalled) may already be trying again,
    // here or on another host, while the first attempt still runs: the attempts race for the
    // session's record. The loser looks again once the winner is through (the session then is
    // where the winner put it) instead of giving the client a fresh session.
    let mut kept = None;
    for attempt in 1..=RESUME_ATTEMPTS {
        let held = host.registry.get(&resume.connection_id);
        // Still held here after two lost races: another host took the record but never asked for
        // the session (it died in between). This host's frames go with the resume, as a
        // handover would have brought them.
        if held.is_some() && attempt > 2 {
            kept = hand_over(host, &resume.connection_id, resume.last_seq);
        }
        let result = match held.filter(|_| kept.is_none()) {
            Some(handle) => {
                if handle.session(|s| s.installing) == Some(true) {
                    let _ = tokio::time::timeout(INSTALL_WAIT, handle.installed()).await;
                }
                resume_here(host, handle, resume, principal, protocol, proven).await
            }
            None => {
                let kept = kept.take();
                resume_from_elsewhere(host, resume, principal, context, protocol, kept, proven)
                    .await
            }
        };
        match result {
            Err(RACE) if attempt < RESUME_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            // Still racing (attempts of the client's that keep overlapping): it tries again.
            Err(RACE) => return Err(UNAVAILABLE),
            other => return other,
        }
    }
    Err(UNAVAILABLE)
}

/// The `reason` of a resume refused for a store error (internal): the handshake answers 503 and
/// the client tries again with the same token, rather than losing its session to a store hiccup.
pub(crate) const UNAVAILABLE: &str = "unavailable";

/// How many times a resume that lost a race for its session's record looks again.
const RESUME_ATTEMPTS: u32 = 4;
/// A resume that lost a race to another attempt for the same session (internal; see [`resume`]).
const RACE: &str = "race";

/// Resumes a session this host holds (detached, or still attached to a connection that has not
/// noticed it is gone).
async fn resume_here(
    host: &Arc<Host>,
    handle: Arc<ConnectionHandle>,
    resume: &token::Resume,
    principal: &str,
    protocol: Option<&str>,
    proven: &mut Option<String>,
) -> Result<Resumed, &'static str> {
    let checked = handle.session(|s| {
        if !token::accepted(&resume.token, &s.token_hash, &s.previous_token_hash) {
            Err("unknown")
        } else if s.principal != principal {
            Err("principal")
        } else {
            Ok((
                s.token_hash.clone(),
                token::unconfirmed(
                    &token::hash(&resume.token),
                    &s.token_hash,
                    &s.previous_token_hash,
                ),
                s.key_scope.clone(),
            ))
        }
    });
    let (current, unconfirmed, key_scope) = match checked.unwrap_or(Err("unknown")) {
        Ok(tokens) => tokens,
        Err(reason) => {
            tracing::info!(
                reason,
                cause = "token or principal of the session held here",
                "session not resumed"
            );
            return Err(reason);
        }
    };
    *proven = Some(scope_of(&resume.connection_id, &key_scope));
    let (new_token, new_hash) = token::issue(&resume.connection_id);
    // The new token is written before the client gets it, so a resume with it on another host
    // finds it; the record must still be this host's, with the token this resume replaces
    // (another resume of the session, here or elsewhere, may have replaced it meanwhile).
    let record = SessionRecord {
        token_hash: new_hash.clone(),
        previous_token_hash: unconfirmed.clone(),
        principal: principal.to_string(),
        detached_at: 0,
        key_scope,
    };
    let record = host.record(&handle.context, Some(record));
    match host
        .store
        .rotate_token(
            &record,
            &host.identity.host_id,
            &host.identity.incarnation,
            &current,
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(
                cause = "record no longer this host's, or its token replaced",
                "session not resumed"
            );
            return Err(RACE);
        }
        Err(e) => {
            tracing::warn!(error = %e, "session token not stored; resume refused");
            return Err(UNAVAILABLE);
        }
    }
    let welcome = welcome(
        host,
        &resume.connection_id,
        &new_token,
        true,
        resume.last_seq,
        protocol,
        None,
    );
    match handle.attach(resume.last_seq, new_hash, unconfirmed, welcome) {
        Ok(attachment) => {
            // The frames after the client's last one are sent again on the new connection.
            let next = handle.session(|s| s.replay.next_seq()).unwrap_or(0);
            let replayed = next.saturating_sub(resume.last_seq.saturating_add(1));
            host.metrics.replayed_frames.increment(replayed);
            Ok(Resumed { handle, attachment })
        }
        Err(e) => Err(attach_reason(e)),
    }
}

fn attach_reason(e: AttachError) -> &'static str {
    match e {
        AttachError::Gone => "expired",
        AttachError::Moved => RACE,
        AttachError::Overflowed => "overflow",
        AttachError::Sequence(_) => "sequence",
    }
}

/// Takes over a session another host (or this host's previous run) holds, as the module docs
/// describe.
async fn resume_from_elsewhere(
    host: &Arc<Host>,
    resume: &token::Resume,
    principal: &str,
    context: &ConnectionContext,
    protocol: Option<&str>,
    kept: Option<HandOver>,
    proven: &mut Option<String>,
) -> Result<Resumed, &'static str> {
    let sessions = &host.config.extensions.sessions;
    let record = match host.store.get_connection(&resume.connection_id).await {
        Ok(Some(record)) => record,
        Ok(None) => return Err(resume_ended(host, resume, principal, proven).await),
        Err(e) => {
            tracing::warn!(error = %e, "session record not read; resume refused");
            return Err(UNAVAILABLE);
        }
    };
    let Some(session) = record.session.clone() else {
        tracing::info!(cause = "record has no session", "session not resumed");
        return Err("unknown");
    };
    if !token::accepted(
        &resume.token,
        &session.token_hash,
        &session.previous_token_hash,
    ) {
        tracing::info!(
            session = %resume.connection_id,
            owner = %record.owner_host,
            cause = "token does not match the record",
            "session not resumed"
        );
        return Err("unknown");
    }
    if session.principal != principal {
        return Err("principal");
    }
    *proven = Some(scope_of(&resume.connection_id, &session.key_scope));
    let window = i64::try_from(sessions.resume_window.as_millis()).unwrap_or(i64::MAX);
    if session.detached_at != 0 && ids::now_ms() - session.detached_at > window {
        return Err("expired");
    }
    let previous = Owner {
        host_id: record.owner_host.clone(),
        incarnation: record.owner_incarnation.clone(),
        endpoint: record.owner_endpoint.clone(),
    };
    // The session's identity is the one it started with; the stage and domain are this request's.
    let context = Arc::new(ConnectionContext {
        connection_id: record.connection_id.clone(),
        connected_at: record.connected_at,
        source_ip: record.source_ip.clone(),
        user_agent: record.user_agent.clone(),
        authorizer: context.authorizer.clone().or(record.authorizer.clone()),
        ..context.clone()
    });
    let (new_token, new_hash) = token::issue(&resume.connection_id);
    let mut installing = new_session(
        host,
        Replay::new(sessions.session_buffer_bytes),
        new_hash.clone(),
        principal.to_string(),
    );
    installing.installing = true;
    installing.key_scope = session.key_scope.clone();
    let unconfirmed = token::unconfirmed(
        &token::hash(&resume.token),
        &session.token_hash,
        &session.previous_token_hash,
    );
    installing.previous_token_hash = unconfirmed.clone();
    let handle = Arc::new(ConnectionHandle::with_session(context.clone(), installing));
    // Registered first, so posts that reach this host once the record names it wait for the
    // session instead of being answered 410.
    if !host.registry.insert_new(handle.clone()) {
        tracing::info!(cause = "taken in here meanwhile", "session not resumed");
        return Err(RACE);
    }
    let abandon = |host: &Host| {
        host.registry.remove_if_same(&resume.connection_id, &handle);
        handle.mark_closed();
    };
    let taken = SessionRecord {
        token_hash: new_hash.clone(),
        previous_token_hash: unconfirmed.clone(),
        principal: principal.to_string(),
        detached_at: 0,
        key_scope: session.key_scope.clone(),
    };
    let taken = host.record(&context, Some(taken));
    match host
        .store
        .rotate_token(
            &taken,
            &previous.host_id,
            &previous.incarnation,
            &session.token_hash,
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            abandon(host);
            tracing::info!(
                cause = "record changed before the take-over",
                "session not resumed"
            );
            return Err(RACE);
        }
        Err(e) => {
            tracing::warn!(error = %e, "session not taken over; resume refused");
            abandon(host);
            return Err(UNAVAILABLE);
        }
    }
    let fetched = fetch(
        host,
        &previous,
        &resume.connection_id,
        resume.last_seq,
        kept,
    )
    .await;
    let Fetched {
        replay,
        post_keys,
        fence,
    } = match fetched {
        Ok(fetched) => fetched,
        Err(reason) => {
            // This host owns the record now; the session it could not recover ends here, once.
            abandon(host);
            let host = host.clone();
            let tasks = host.tasks.clone();
            tasks.spawn(async move {
                let (code, reason) = (1006, "Connection closed abnormally");
                crate::ending::finish(&host, &context, Some(*session), code, reason).await;
            });
            return Err(reason);
        }
    };
    load_memberships(host, &handle).await;
    let seq = resume.last_seq;
    handle.session(|s| {
        s.replay = replay;
        s.post_keys = post_keys;
        s.fence = fence;
    });
    let welcome = welcome(
        host,
        &resume.connection_id,
        &new_token,
        true,
        seq,
        protocol,
        None,
    );
    let attachment = handle.attach_first(welcome);
    tracing::info!(from = %previous.host_id, "session resumed from another host");
    Ok(Resumed { handle, attachment })
}

/// The `reason` of a resume whose session's record is gone (the session ended): `expired`,
/// having set `proven` to the ended session's key scope when what is kept of it
/// ([`crate::store::ConnectionStore::keep_ended_session`]) accepts the token and principal.
async fn resume_ended(
    host: &Host,
    resume: &token::Resume,
    principal: &str,
    proven: &mut Option<String>,
) -> &'static str {
    match host.store.ended_session(&resume.connection_id).await {
        Ok(Some(ended))
            if token::accepted(&resume.token, &ended.token_hash, &ended.previous_token_hash)
                && ended.principal == principal =>
        {
            *proven = Some(scope_of(&resume.connection_id, &ended.key_scope));
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "ended session not read; resume refused");
            return UNAVAILABLE;
        }
    }
    "expired"
}

/// Loads the memberships of a reliable session this host has just taken in (from a host that
/// handed it over or is gone) into its index, so its broadcasts reach it.
async fn load_memberships(host: &Host, handle: &Arc<ConnectionHandle>) {
    if !host.config.extensions.groups.enabled {
        return;
    }
    let id = &handle.context.connection_id;
    match host.store.groups_of(id).await {
        Ok(groups) => {
            for group in groups {
                host.registry.join(&group, handle);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "memberships of a session taken in not read; broadcasts miss it until it joins again")
        }
    }
}

/// With `durability = "store"`, takes over the session of `connection_id` when the host that
/// held it is gone (unreachable, or dead by its heartbeat), so that posts keep being kept for the
/// client, which resumes wherever it reconnects. The session stays detached here, its window
/// running from now. `None` when it is not such a session, or another host took it first.
pub(crate) async fn adopt(host: &Arc<Host>, connection_id: &str) -> Adoption {
    match adopt_if_gone(host, connection_id).await {
        Ok(handle) => Adoption::Adopted(handle),
        Err(adoption) => adoption,
    }
}

/// What [`adopt`] did.
pub(crate) enum Adoption {
    /// The session is served here now.
    Adopted(Arc<ConnectionHandle>),
    /// A store-durable session whose host is not answering but not known dead yet: try again
    /// once the cluster has judged it (`cluster.host_timeout`).
    NotYet,
    /// Not a session this host can take in.
    No,
}

async fn adopt_if_gone(
    host: &Arc<Host>,
    connection_id: &str,
) -> Result<Arc<ConnectionHandle>, Adoption> {
    let no = || Adoption::No;
    let sessions = &host.config.extensions.sessions;
    if !sessions.enabled || sessions.durability != Durability::Store {
        return Err(no());
    }
    let record = host
        .store
        .get_connection(connection_id)
        .await
        .ok()
        .flatten()
        .ok_or_else(no)?;
    let mut session = record.session.clone().ok_or_else(no)?;
    let window = i64::try_from(sessions.resume_window.as_millis()).unwrap_or(i64::MAX);
    let now = ids::now_ms();
    if session.detached_at != 0 && now - session.detached_at > window {
        return Err(no());
    }
    if record.owner_host == host.identity.host_id
        && record.owner_incarnation == host.identity.incarnation
    {
        // Ours, and not in the registry: it ended here.
        return Err(no());
    }
    // Only from a host that is gone: one that is alive but slow or cut off from this host still
    // holds the session, and taking it from under it would split it in two.
    let owner = Owner {
        host_id: record.owner_host.clone(),
        incarnation: record.owner_incarnation.clone(),
        endpoint: record.owner_endpoint.clone(),
    };
    let cluster = host.cluster.as_ref().ok_or_else(no)?;
    if cluster
        .is_live(host.store.as_ref(), &owner)
        .await
        .unwrap_or(true)
    {
        return Err(Adoption::NotYet);
    }
    let context = Arc::new(ConnectionContext {
        connection_id: record.connection_id.clone(),
        connected_at: record.connected_at,
        source_ip: record.source_ip.clone(),
        user_agent: record.user_agent.clone(),
        domain_name: host.config.api.domain_name.clone(),
        host: String::new(),
        stage: host.config.api.stage.as_str().into(),
        api_id: host.config.api.api_id.as_str().into(),
        authorizer: record.authorizer.clone(),
        trace: None,
    });
    let mut installing = new_session(
        host,
        Replay::new(sessions.session_buffer_bytes),
        session.token_hash.clone(),
        session.principal.clone(),
    );
    installing.installing = true;
    installing.key_scope = session.key_scope.clone();
    let handle = Arc::new(ConnectionHandle::with_session(context.clone(), installing));
    if !host.registry.insert_new(handle.clone()) {
        return Err(no());
    }
    let abandon = || {
        host.registry.remove_if_same(connection_id, &handle);
        handle.mark_closed();
    };
    session.detached_at = now;
    let taken = host.record(&context, Some(*session));
    if !matches!(
        host.store
            .take_over(&taken, &record.owner_host, &record.owner_incarnation)
            .await,
        Ok(true)
    ) {
        abandon();
        return Err(no());
    }
    // The client's position is not known until it resumes: every frame it can still need, and
    // those whose post keys a session remembers, are read.
    let mut kept = std::collections::BTreeMap::new();
    let read = async {
        let start = adoption_start(host, connection_id).await?;
        let next = fence(host, connection_id, start.read_after, 1, &mut kept, true).await?;
        Ok::<_, StoreError>((start, next))
    };
    let (start, next) = match read.await {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!(error = %e, "adopted session's frames not read; it ends");
            abandon();
            return Err(no());
        }
    };
    let frames: Vec<StoredFrame> = kept
        .into_iter()
        .map(|(seq, frame)| StoredFrame { seq, frame })
        .collect();
    let first = frames.first().map_or(next, |f| f.seq);
    let acked = start.replay_from.map_or(first, |seq| seq.max(first)) - 1;
    // Its posts' keys, so that a post sent again (its first attempt's answer lost with the host)
    // is not kept twice.
    let post_keys = taken_post_keys(host, &[], frames.iter().map(|f| (f.seq, f.frame.as_str())));
    handle.session(|s| {
        s.post_keys = post_keys;
        s.fence = next;
    });
    let replay = Replay::resumed(sessions.session_buffer_bytes, acked, frames);
    if replay.next_seq() != next {
        // A gap: the frames after it could not be replayed in order, and this host's own would
        // collide with them.
        tracing::warn!(
            got = replay.next_seq(),
            expected = next,
            "adopted session's frames have a gap; it ends"
        );
        abandon();
        return Err(no());
    }
    load_memberships(host, &handle).await;
    let detach = handle.install_detached(replay, now);
    tracing::info!(from = %record.owner_host, "adopted a session whose host is gone");
    let window = sessions.resume_window;
    let (host, timer_handle) = (host.clone(), handle.clone());
    let tasks = host.tasks.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(window) => {}
            _ = host.shutdown.cancelled() => {}
        }
        if timer_handle.still_detached(detach) {
            end(&host, &timer_handle, 1006, "Connection closed abnormally").await;
        }
    });
    Ok(handle)
}

/// Where [`adopt_if_gone`] reads a session's frames from.
struct AdoptionStart {
    /// The number after which the frames are read.
    read_after: u64,
    /// The first frame the replay keeps, when not the first read.
    replay_from: Option<u64>,
}

/// Where the frames of a session adopted without its client's position start to matter.
///
/// Its previous owner numbered a `msg` frame only while the frames the client had not
/// acknowledged, and the new one, came to at most `session_buffer_bytes` (replies pass that
/// bound, see [`ConnectionHandle::post_reply`]), and a resuming client has acknowledged at least
/// what that owner dropped. So the frames older than the newest `msg` that the client can still
/// need add up to at most that many bytes: the replay keeps the frames from the newest `msg` on,
/// and those before it back to where they add up to more. Reading goes back to the newest
/// [`replay::POST_KEYS`] frames at least, for the post keys a session remembers. Either way, what
/// is read does not grow with the session's age.
async fn adoption_start(host: &Host, connection_id: &str) -> Result<AdoptionStart, StoreError> {
    let limit = host.config.extensions.sessions.session_buffer_bytes;
    let (mut walked, mut bytes, mut past_msg, mut replay_from) = (0, 0, false, None);
    let read_after = host
        .store
        .newest_frames_start(connection_id, &mut |f| {
            walked += 1;
            if past_msg {
                bytes += f.frame.len();
                if bytes > limit && replay_from.is_none() {
                    replay_from = Some(f.seq);
                }
            } else {
                past_msg = !envelope::is_reply(&f.frame);
            }
            walked >= replay::POST_KEYS && replay_from.is_some()
        })
        .await?;
    Ok(AdoptionStart {
        read_after,
        replay_from,
    })
}

/// What [`fetch`] got of a session taken over.
struct Fetched {
    /// Its frames after the client's last sequence number.
    replay: Replay,
    /// The post keys it remembers.
    post_keys: PostKeys,
    /// The number this host fenced (its first frame's), or 0.
    fence: u64,
}

/// The frames of a session after `last_seq`, from where its durability keeps them, and the post
/// keys it remembers.
async fn fetch(
    host: &Host,
    previous: &Owner,
    connection_id: &str,
    last_seq: u64,
    kept: Option<HandOver>,
) -> Result<Fetched, &'static str> {
    let sessions = &host.config.extensions.sessions;
    let limit = sessions.session_buffer_bytes;
    let stage = &host.config.api.stage;
    let handed = match &host.cluster {
        Some(cluster)
            if !previous.endpoint.is_empty() && previous.host_id != host.identity.host_id =>
        {
            cluster
                .hand_over(previous, stage, connection_id, last_seq)
                .await
        }
        _ => None,
    }
    .or(kept);
    match sessions.durability {
        Durability::Memory => {
            let Some(handed) = handed else {
                return Err("lost");
            };
            if handed.overflowed {
                return Err("overflow");
            }
            if last_seq >= handed.next_seq {
                return Err("sequence");
            }
            let handed_frames = handed.frames.iter().map(|f| (f.s, f.f.as_str()));
            let post_keys = taken_post_keys(host, &handed.posts, handed_frames);
            let frames: Vec<StoredFrame> = handed
                .frames
                .into_iter()
                .map(|f| StoredFrame {
                    seq: f.s,
                    frame: f.f,
                })
                .collect();
            Ok(Fetched {
                replay: complete(limit, last_seq, frames, handed.next_seq)?,
                post_keys,
                fence: 0,
            })
        }
        Durability::Store => {
            if handed.as_ref().is_some_and(|h| h.overflowed) {
                return Err("overflow");
            }
            // The previous owner's memory has every frame it numbered, including any it has not
            // written yet; the store has the frames of a host that is gone.
            let mut frames = std::collections::BTreeMap::new();
            let mut at_least = last_seq + 1;
            // A previous owner that handed the session over numbers nothing more: every frame it
            // will still write is below `nextSeq`, so it needs no fence; unless it took the
            // session over without a hand-over itself and left its fence at `nextSeq`, where this
            // host's first frame goes: a frame does not replace another host's fence, a fence does.
            let fenced = handed.as_ref().is_none_or(|h| h.fenced);
            // Without a hand-over, the keys of the posts the client already acknowledged are
            // only in the store's frames: those of the newest `POST_KEYS` frames it acknowledged
            // are read, as many as a session remembers keys. Reading every frame the store keeps
            // would make a take-over's cost grow with the session's age, for keys a retry (sent
            // within moments of the failure it retries) no longer needs.
            let mut read_after = last_seq.saturating_sub(replay::POST_KEYS as u64);
            let mut handed_posts = Vec::new();
            if let Some(handed) = handed {
                at_least = at_least.max(handed.next_seq);
                frames.extend(handed.frames.into_iter().map(|f| (f.s, f.f)));
                handed_posts = handed.posts;
                read_after = last_seq;
            }
            let next = fence(
                host,
                connection_id,
                read_after,
                at_least,
                &mut frames,
                fenced,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "session frames not read");
                "lost"
            })?;
            if last_seq >= next {
                return Err("sequence");
            }
            let read = frames.iter().map(|(seq, frame)| (*seq, frame.as_str()));
            let post_keys = taken_post_keys(host, &handed_posts, read);
            let frames = frames
                .into_iter()
                .map(|(seq, frame)| StoredFrame { seq, frame })
                .collect();
            Ok(Fetched {
                replay: complete(limit, last_seq, frames, next)?,
                post_keys,
                fence: if fenced { next } else { 0 },
            })
        }
    }
}

/// How many times a host taking a session over reads the frames again when the previous owner
/// wrote the number it wanted to fence, before it gives up.
const FENCE_ROUNDS: u32 = 16;

/// Reads the store's frames after `after` into `frames` (where they do not replace frames
/// already there) for a session this host has just taken over (its record names this host), and
/// with `fenced` fences it against the previous owner's later writes. Returns the sequence
/// number of this host's first frame (the fence's): at least `at_least` and above every frame
/// read.
///
/// The previous owner writes its frames one at a time in sequence order, so its next write, if
/// any, is at the number right after the last one this host read: the fence's. If the fence
/// lands first, that write fails and the previous owner knows it lost the session; if the write
/// lands first, the fence fails, and this host reads again and fences the next number.
async fn fence(
    host: &Host,
    connection_id: &str,
    after: u64,
    at_least: u64,
    frames: &mut std::collections::BTreeMap<u64, String>,
    fenced: bool,
) -> Result<u64, StoreError> {
    let expires = frame_expiry(host);
    let (me, incarnation) = (&host.identity.host_id, &host.identity.incarnation);
    let mut read_after = after;
    for _ in 0..FENCE_ROUNDS {
        for f in host.store.frames_after(connection_id, read_after).await? {
            frames.entry(f.seq).or_insert(f.frame);
        }
        let next = frames
            .last_key_value()
            .map_or(at_least, |(seq, _)| (seq + 1).max(at_least));
        if !fenced
            || host
                .store
                .fence_frames(connection_id, next, me, incarnation, expires)
                .await?
        {
            return Ok(next);
        }
        read_after = next - 1;
    }
    Err(StoreError::Unavailable(format!(
        "the previous owner of {connection_id} kept writing over {FENCE_ROUNDS} fences"
    )))
}

/// When a frame (or fence) written now expires: the longest a session can last, plus its window.
fn frame_expiry(host: &Host) -> i64 {
    let lifetime =
        host.config.limits.max_connection_duration + host.config.extensions.sessions.resume_window;
    ids::now_ms() + i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The replay of a taken-over session, if `frames` are every frame from `last_seq + 1` to
/// `next_seq - 1`.
fn complete(
    limit: usize,
    last_seq: u64,
    frames: Vec<StoredFrame>,
    next_seq: u64,
) -> Result<Replay, &'static str> {
    let replay = Replay::resumed(limit, last_seq, frames);
    if replay.next_seq() == next_seq {
        Ok(replay)
    } else {
        tracing::warn!(
            got = replay.next_seq(),
            expected = next_seq,
            "session frames missing; not recovered"
        );
        Err("lost")
    }
}

/// The client sent its first frame on a resumed connection: the token it resumed with stops
/// working, here and (written in the background) in the store.
pub(crate) fn confirm_token(host: &Arc<Host>, handle: &Arc<ConnectionHandle>) {
    if !handle.confirm_token() {
        return;
    }
    let Some(session) = handle.session(|s| SessionRecord {
        previous_token_hash: String::new(),
        ..record_of(s)
    }) else {
        return;
    };
    let record = host.record(&handle.context, Some(session));
    let host = host.clone();
    let tasks = host.tasks.clone();
    tasks.spawn(async move {
        let (me, incarnation) = (&host.identity.host_id, &host.identity.incarnation);
        // Only over the token it confirms: a resume since then keeps the tokens it accepts.
        let token_hash = record.session.as_ref().map(|s| s.token_hash.clone());
        let token_hash = token_hash.unwrap_or_default();
        if let Err(e) = host
            .store
            .rotate_token(&record, me, incarnation, &token_hash)
            .await
        {
            tracing::debug!(error = %e, "confirmed token not written; the previous one lasts until the next resume");
        }
    });
}

/// Keeps the session after its connection (holding `attachment`) was lost: it ends when
/// `resume_window` passes without a resume, reporting `code` and `reason`.
pub(crate) fn detach(
    host: &Arc<Host>,
    handle: &Arc<ConnectionHandle>,
    attachment: &Attachment,
    code: u16,
    reason: String,
) {
    let Some(detach) = handle.detach(attachment, ids::now_ms()) else {
        return;
    };
    tracing::debug!(code, "connection lost; session kept for resume_window");
    let window = host.config.extensions.sessions.resume_window;
    let (host, handle) = (host.clone(), handle.clone());
    let tasks = host.tasks.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(window) => {}
            _ = host.shutdown.cancelled() => {}
        }
        if handle.still_detached(detach) {
            tracing::debug!("resume window passed; session ended");
            end(&host, &handle, code, &reason).await;
        }
    });
}

/// Ends a session (or any connection) that no connection task serves: out of the registry, its
/// record deleted, `$disconnect` run once.
pub(crate) async fn end(host: &Arc<Host>, handle: &Arc<ConnectionHandle>, code: u16, reason: &str) {
    let removed = host
        .registry
        .remove_if_same(&handle.context.connection_id, handle);
    handle.mark_closed();
    if removed {
        let ended = handle.session(|s| record_of(s));
        crate::ending::finish(host, &handle.context, ended, code, reason).await;
    }
}

/// This host's side of a handover: lets go of the session and answers with its frames after
/// `after`; `None` when it does not hold the session.
pub(crate) fn hand_over(host: &Host, connection_id: &str, after: u64) -> Option<HandOver> {
    let handle = host.registry.get(connection_id)?;
    let handed = handle.hand_over(after)?;
    host.registry.remove_if_same(connection_id, &handle);
    tracing::info!(connection_id, "session handed over to another host");
    Some(HandOver {
        next_seq: handed.next_seq,
        overflowed: handed.overflowed,
        fenced: handed.fenced,
        frames: handed
            .frames
            .into_iter()
            .map(|f| HandedFrame {
                s: f.seq,
                f: f.frame,
            })
            .collect(),
        posts: handed
            .post_keys
            .into_iter()
            .map(|(k, p)| HandedPost {
                k,
                h: hex::encode(p.digest),
                s: p.seq,
                a: p.at_ms,
            })
            .collect(),
    })
}

/// Delivers a post to a session this host holds, waiting while it is being installed, and with
/// `durability = "store"` writing the frame to the store before answering. A post whose
/// `post_id` the session remembers for the same body is answered as its first attempt was
/// (once that attempt's frame is kept), and not kept again.
pub(crate) async fn post(
    host: &Host,
    handle: &ConnectionHandle,
    data: &[u8],
    post_id: Option<&str>,
) -> Result<(), PostError> {
    let deadline = tokio::time::Instant::now() + INSTALL_WAIT;
    let frame = loop {
        match handle.post_session(data, post_id) {
            Err(PostError::AlreadyKept(seq)) => {
                return kept_before(host, handle, seq, post_id).await;
            }
            Err(PostError::NotReady) => {
                if tokio::time::timeout_at(deadline, handle.installed())
                    .await
                    .is_err()
                {
                    return Err(PostError::Gone);
                }
            }
            other => break other?,
        }
    };
    // A call given up on during the write (its caller went away) must not leave the frame held
    // back from the client, with every frame behind it: it is released, and written with the
    // session's next frame, as one answered during a store outage.
    let held = Held(handle, frame.0);
    let kept = keep(host, handle, frame.0).await;
    std::mem::forget(held);
    match kept {
        // Not kept by the store: refused (503) if it can still be taken back; a frame already on
        // its way to the client (or with others numbered after it) stays, answered 200, kept in
        // this host's memory and written before the next frame.
        Err(PostError::Unavailable) if handle.retract(frame.0) => Err(PostError::Unavailable),
        Err(PostError::Unavailable) => {
            handle.release_unstored(frame.0);
            Ok(())
        }
        // Another host took the session over without a handover, and fenced this one out: the
        // frame is not delivered from here; the post goes to the new owner.
        other => other,
    }
}

/// Releases a post's frame held back from the client (see [`ConnectionHandle::release_unstored`])
/// when dropped.
struct Held<'a>(&'a ConnectionHandle, u64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.release_unstored(self.1);
    }
}

/// The answer to a post sent again whose frame `seq` the session already has: 200 once that
/// frame is in the store (its first attempt may still be writing it), and the first attempt's
/// answer if that attempt was refused meanwhile (its frame taken back, its key forgotten).
async fn kept_before(
    host: &Host,
    handle: &ConnectionHandle,
    seq: u64,
    post_id: Option<&str>,
) -> Result<(), PostError> {
    keep(host, handle, seq).await?;
    let still = post_id.and_then(|id| handle.session(|s| s.post_keys.get(id, ids::now_ms())));
    match still.flatten() {
        Some(kept) if kept.seq == seq => Ok(()),
        _ => Err(PostError::Unavailable),
    }
}

/// With `durability = "store"`, writes the session's frames up to `seq` to the store, one at a
/// time in sequence order (earlier frames that are not written yet first); otherwise nothing to
/// do. [`PostError::Moved`] when another host took the session over and fenced this one out
/// (the session is let go of here); [`PostError::Unavailable`] when the store failed (the frames
/// stay to be written by the next call).
pub(crate) async fn keep(
    host: &Host,
    handle: &ConnectionHandle,
    seq: u64,
) -> Result<(), PostError> {
    let Some(writes) = handle.store_writes() else {
        return Ok(());
    };
    let _writing = writes.lock().await;
    let connection_id = &handle.context.connection_id;
    loop {
        let (next, frame) = match handle.next_unstored(seq) {
            Unstored::Done => return Ok(()),
            Unstored::Fenced => return Err(PostError::Moved),
            Unstored::Next(next, frame) => (next, frame),
        };
        let frame = StoredFrame {
            seq: next,
            frame: frame.as_str().to_string(),
        };
        match host
            .store
            .append_frame(
                connection_id,
                &host.identity.host_id,
                &host.identity.incarnation,
                &frame,
                frame_expiry(host),
            )
            .await
        {
            Ok(true) => handle.stored(next),
            Ok(false) => {
                tracing::info!(
                    connection_id,
                    seq = next,
                    "session frame's number taken by the session's new owner; letting go"
                );
                handle.fenced();
                // As if handed over: the connection still attached here (if any) is told to go,
                // and later posts look the owner up again.
                handle.hand_over(u64::MAX);
                host.registry.remove_if_same(connection_id, handle);
                return Err(PostError::Moved);
            }
            Err(e) => {
                tracing::warn!(error = %e, "session frame not written to the store");
                return Err(PostError::Unavailable);
            }
        }
    }
}
