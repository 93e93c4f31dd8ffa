//! The connections this host holds, each with its bounded outbound queue; a reliable session's
//! connection also holds the session's state (its numbered frames, token, attachment), under the
//! same lock, so that a post, an acknowledgement and a resume never interleave halfway.

use crate::events::ConnectionContext;
use crate::sessions::envelope;
use crate::sessions::replay::{self, PostKey, PostKeys, Replay, ResumeError};
use crate::store::StoredFrame;
use bytes::Bytes;
use dashmap::DashMap;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

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
    /// The session is being taken over by this host and is not ready yet: wait for
    /// [`ConnectionHandle::installed`], then try again.
    NotReady,
    /// The session moved to another host: look its owner up again.
    Moved,
    /// The session already keeps this post, in frame `seq`: a post sent again with its key (or
    /// one whose forward to a host that was lost failed after that host had kept it). Answered
    /// 200 once that frame is kept, not kept twice.
    AlreadyKept(u64),
    /// The post's key was already used for a different body (answered 422, nothing kept).
    KeyReused,
    /// The store could not keep the frame (`durability = "store"`); it is still delivered if
    /// this host lives.
    Unavailable,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    bytes: usize,
    closing: bool,
    session: Option<Box<Session>>,
}

/// A reliable session's state (PROTOCOL.md), kept with its connection's queue.
#[derive(Debug)]
pub struct Session {
    /// The numbered, unacknowledged frames.
    pub replay: Replay,
    /// Hash of the current resume token.
    pub token_hash: String,
    /// Hash of the token the client last resumed with, accepted until it sends a frame on the
    /// resumed connection (see [`crate::store::SessionRecord::previous_token_hash`]).
    pub previous_token_hash: String,
    /// The authorizer's `principalId` at the start; empty without one.
    pub principal: String,
    /// Where its idempotency keys are claimed (see
    /// [`crate::store::SessionRecord::key_scope`]): empty for the session's own connection ID.
    pub key_scope: String,
    /// The connection serving the session; `None` while detached.
    attachment: Option<Attachment>,
    /// Counts attachments, so each connection's is told apart.
    attachments: u64,
    /// Epoch milliseconds of the last detach; 0 while attached.
    pub detached_at: i64,
    /// Counts detaches, so a window timer knows whether its detach is still the current one.
    detaches: u64,
    /// A post was refused while the client was away: its next resume cannot recover.
    pub overflowed: bool,
    /// Being taken over from another host; posts wait until it is installed.
    pub installing: bool,
    /// Handed over to another host; posts look its owner up again.
    moved: bool,
    /// The keys of the posts kept for the session (PostToConnection's `Idempotency-Key`, or the
    /// ID a host gave a post it forwarded), with those it took over from a previous owner: a
    /// post sent again with a key it remembers is not kept twice.
    pub post_keys: PostKeys,
    /// The number this host fenced when it took the session over (`durability = "store"`,
    /// STORE.md "Frames and fences"), or 0: while no frame of its own holds that number, the
    /// fence is still there, and a host the session is handed over to must replace it.
    pub fence: u64,
    /// Woken when an installing session becomes ready (separate from the queue's wakeup, which
    /// only the connection's task may take).
    ready: Arc<Notify>,
    /// Store writes (`durability = "store"`): every frame numbered here waits in `unstored` until
    /// it is written, and they are written one at a time, in sequence order, under `writes`.
    /// That order is what lets a host that takes the session over fence this one out with a
    /// single item (STORE.md, "Frames and fences").
    pub store: Option<StoreWrites>,
}

/// A store-durable session's frames on their way to the store (see [`Session::store`]).
#[derive(Debug, Default)]
pub struct StoreWrites {
    /// Numbered frames not yet written, in sequence order.
    unstored: VecDeque<(u64, Utf8Bytes)>,
    /// The unwritten frames of posts that carry a post ID: no frame from the first of them on
    /// is sent before it is written, so that a host that dies before writing it has not
    /// delivered it (its post is answered with an error and sent again, with the same ID, to
    /// the host that takes the session in, which must not have been outrun by the client).
    held: std::collections::BTreeSet<u64>,
    /// Held by whoever is writing the session's frames.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// A write found its number taken by another host: the session is no longer this host's.
    fenced: bool,
}

/// The next frame a store-durable session must write, as [`ConnectionHandle::next_unstored`]
/// finds it.
#[derive(Debug, PartialEq)]
pub enum Unstored {
    /// Every frame up to the one asked about is written.
    Done,
    /// Write this one first.
    Next(u64, Utf8Bytes),
    /// Another host took the session over: nothing more is written from here.
    Fenced,
}

impl Session {
    /// A session with `replay`, not yet attached to a connection.
    pub fn new(replay: Replay, token_hash: String, principal: String) -> Self {
        Self {
            replay,
            token_hash,
            previous_token_hash: String::new(),
            principal,
            key_scope: String::new(),
            attachment: None,
            attachments: 0,
            detached_at: 0,
            detaches: 0,
            overflowed: false,
            installing: false,
            moved: false,
            post_keys: PostKeys::new(DEFAULT_POST_KEY_WINDOW_MS),
            fence: 0,
            ready: Arc::new(Notify::new()),
            store: None,
        }
    }
}

/// How long a [`Session`] remembers a post key unless told otherwise: `dedup_window`'s default.
const DEFAULT_POST_KEY_WINDOW_MS: i64 = 10 * 60 * 1000;

/// A connection's hold on its session.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Cancelled when another connection (here or on another host) takes the session over.
    pub token: CancellationToken,
    /// Which attachment of the session this is.
    pub number: u64,
}

impl Session {
    /// Attaches a new connection, telling the previous one (if any) to go.
    fn attach(&mut self) -> Attachment {
        self.attachments += 1;
        let attachment = Attachment {
            token: CancellationToken::new(),
            number: self.attachments,
        };
        if let Some(previous) = self.attachment.replace(attachment.clone()) {
            previous.token.cancel();
        }
        self.detached_at = 0;
        attachment
    }
}

/// What a session's previous host gives the host that takes it over (see
/// [`ConnectionHandle::hand_over`]).
#[derive(Debug)]
pub struct HandedSession {
    /// The unacknowledged frames after the client's last sequence number, in order.
    pub frames: Vec<StoredFrame>,
    /// The sequence number the session's next frame gets.
    pub next_seq: u64,
    /// Posts were refused while the client was away.
    pub overflowed: bool,
    /// Its fence is still at `next_seq` (see [`Session::fence`]).
    pub fenced: bool,
    /// The post keys the session remembers, oldest first.
    pub post_keys: Vec<(String, PostKey)>,
}

/// Why a connection could not take its session over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// The session ended, or was never one.
    Gone,
    /// The session just moved to another host.
    Moved,
    /// The client's sequence number cannot continue the session's.
    Sequence(ResumeError),
    /// Posts were refused while it was away.
    Overflowed,
}

/// A live connection as the rest of the host sees it.
#[derive(Debug)]
pub struct ConnectionHandle {
    /// Fixed facts about the connection.
    pub context: Arc<ConnectionContext>,
    queue: Mutex<Queue>,
    notify: Notify,
    last_active_ms: AtomicI64,
    /// The groups this connection is in, as this host's index has it (see [`Registry::join`]),
    /// so that its entries go with it.
    groups: Mutex<HashSet<String>>,
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
            groups: Mutex::new(HashSet::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message unless the queue would exceed `limit` bytes. On a reliable session's
    /// connection a message is numbered and kept in the session instead (bounded by the
    /// session's buffer; see [`post_session`](Self::post_session)).
    pub fn post(&self, message: Outbound, limit: usize) -> Result<(), PostError> {
        {
            // One lock for a plain connection's post: a broadcast makes one per member.
            let mut q = self.lock();
            if q.session.is_none() {
                if q.closing {
                    return Err(PostError::Gone);
                }
                let len = message.len();
                if q.bytes + len > limit {
                    return Err(PostError::Full);
                }
                q.bytes += len;
                q.items.push_back(message);
                drop(q);
                self.notify.notify_one();
                return Ok(());
            }
        }
        match message {
            Outbound::Text(text) => self.post_session(text.as_bytes(), None).map(drop),
            Outbound::Binary(bytes) => self.post_session(&bytes, None).map(drop),
            Outbound::Close { code, reason } => {
                if self.close(code, reason) {
                    Ok(())
                } else {
                    Err(PostError::Gone)
                }
            }
        }
    }

    /// Queues a frame of the subprotocol that is not numbered (`welcome`, `error`, `pong`), bounded
    /// like a plain connection's queue.
    pub fn post_control(&self, frame: String, limit: usize) -> Result<(), PostError> {
        {
            let mut q = self.lock();
            if q.closing {
                return Err(PostError::Gone);
            }
            if q.bytes + frame.len() > limit {
                return Err(PostError::Full);
            }
            q.bytes += frame.len();
            q.items.push_back(Outbound::Text(frame.into()));
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

    /// Takes the next queued item: control frames and plain messages first, then a session's
    /// next numbered frame.
    pub fn pop(&self) -> Option<Outbound> {
        let mut q = self.lock();
        match q.items.pop_front() {
            Some(item) => {
                q.bytes -= item.len();
                Some(item)
            }
            None => q
                .session
                .as_deref_mut()
                .and_then(|s| {
                    let limit = match &s.store {
                        // Fenced out: what was not written is not this host's to deliver.
                        Some(store) if store.fenced => return None,
                        Some(store) => store.held.first().copied().unwrap_or(u64::MAX),
                        None => u64::MAX,
                    };
                    s.replay.next_unsent_below(limit)
                })
                .map(Outbound::Text),
        }
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

    /// A handle for a reliable session's connection.
    pub fn with_session(context: Arc<ConnectionContext>, session: Session) -> Self {
        let handle = Self::new(context);
        handle.lock().session = Some(Box::new(session));
        handle
    }

    /// The groups this connection is in, as this host's index has it.
    pub fn groups(&self) -> Vec<String> {
        lock(&self.groups).iter().cloned().collect()
    }

    /// Whether this is a reliable session's connection.
    pub fn is_session(&self) -> bool {
        self.lock().session.is_some()
    }

    /// Runs `f` on the session state, if this is a session.
    pub fn session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        self.lock().session.as_deref_mut().map(f)
    }

    /// Numbers and keeps a posted message for the session: a `msg` frame of `data`. Returns its
    /// number and the frame, for `durability = "store"`. A post refused for a full buffer while
    /// the client is away marks the session overflowed. A post with a `post_id` the session
    /// remembers is not kept again: [`PostError::AlreadyKept`] for the same body,
    /// [`PostError::KeyReused`] for another.
    pub fn post_session(
        &self,
        data: &[u8],
        post_id: Option<&str>,
    ) -> Result<(u64, Utf8Bytes), PostError> {
        // Escaped and hashed outside the lock: the lock only numbers and links the frame.
        let payload = envelope::payload_member(data);
        let key = post_id.map(|id| (id, replay::digest(data), crate::ids::now_ms()));
        self.push_sequenced(payload.len(), false, key, |seq| {
            envelope::msg(seq, post_id, &payload)
        })
    }

    /// Numbers and keeps the `reply` with `answer` (PROTOCOL.md section 6). Replies are not held
    /// to the buffer's bound: each answers a message the client sent, which the connection's
    /// in-flight limit bounds already, and dropping one would leave the client waiting.
    pub fn post_reply(&self, answer: &str) -> Result<(u64, Utf8Bytes), PostError> {
        self.push_sequenced(0, true, None, |seq| envelope::reply(seq, answer))
    }

    fn push_sequenced(
        &self,
        len: usize,
        unbounded: bool,
        key: Option<(&str, [u8; 16], i64)>,
        build: impl FnOnce(u64) -> String,
    ) -> Result<(u64, Utf8Bytes), PostError> {
        let frame = {
            let mut q = self.lock();
            if q.closing {
                return Err(PostError::Gone);
            }
            let Some(session) = q.session.as_deref_mut() else {
                return Err(PostError::Gone);
            };
            if session.moved {
                return Err(PostError::Moved);
            }
            if session.installing {
                return Err(PostError::NotReady);
            }
            if let Some((id, digest, now_ms)) = key
                && let Some(kept) = session.post_keys.get(id, now_ms)
            {
                return Err(if kept.digest == digest {
                    PostError::AlreadyKept(kept.seq)
                } else {
                    PostError::KeyReused
                });
            }
            match session.replay.push(if unbounded { 0 } else { len }, build) {
                Ok(numbered) => {
                    if let Some((id, digest, at_ms)) = key {
                        let seq = numbered.0;
                        let post = PostKey { digest, seq, at_ms };
                        session.post_keys.insert(id.to_string(), post, at_ms);
                        if let Some(store) = &mut session.store {
                            store.held.insert(seq);
                        }
                    }
                    if let Some(store) = &mut session.store {
                        store.unstored.push_back(numbered.clone());
                    }
                    numbered
                }
                Err(_) => {
                    if session.attachment.is_none() {
                        session.overflowed = true;
                    }
                    return Err(PostError::Full);
                }
            }
        };
        self.notify.notify_one();
        Ok(frame)
    }

    /// Takes back the session's frame `seq` if nothing was numbered after it and no connection was
    /// given it (see [`Replay::retract`]).
    pub fn retract(&self, seq: u64) -> bool {
        let mut q = self.lock();
        let Some(session) = q.session.as_deref_mut() else {
            return false;
        };
        if !session.replay.retract(seq) {
            return false;
        }
        session.post_keys.forget_seq(seq);
        if let Some(store) = &mut session.store
            && store.unstored.back().is_some_and(|(last, _)| *last == seq)
        {
            store.unstored.pop_back();
            store.held.remove(&seq);
        }
        true
    }

    /// The lock that orders a store-durable session's writes; `None` for any other connection.
    pub fn store_writes(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.lock()
            .session
            .as_deref()
            .and_then(|s| s.store.as_ref())
            .map(|w| w.writes.clone())
    }

    /// What must be written before frame `seq` of a store-durable session counts as written
    /// (call with [`store_writes`](Self::store_writes) held).
    pub fn next_unstored(&self, seq: u64) -> Unstored {
        let q = self.lock();
        match q.session.as_deref().and_then(|s| s.store.as_ref()) {
            Some(store) if store.fenced => Unstored::Fenced,
            Some(store) => match store.unstored.front() {
                Some((first, frame)) if *first <= seq => Unstored::Next(*first, frame.clone()),
                _ => Unstored::Done,
            },
            None => Unstored::Done,
        }
    }

    /// Frame `seq`, the first unstored one, is written.
    pub fn stored(&self, seq: u64) {
        self.release(seq, true);
    }

    /// Frame `seq` (held, see [`StoreWrites`]) may be sent although it is not written: its post
    /// was answered 200 without it (a store outage, after frames were numbered behind it).
    pub fn release_unstored(&self, seq: u64) {
        self.release(seq, false);
    }

    fn release(&self, seq: u64, written: bool) {
        let released = {
            let mut q = self.lock();
            let Some(store) = q.session.as_deref_mut().and_then(|s| s.store.as_mut()) else {
                return;
            };
            if written
                && store
                    .unstored
                    .front()
                    .is_some_and(|(first, _)| *first == seq)
            {
                store.unstored.pop_front();
            }
            store.held.remove(&seq)
        };
        if released {
            self.notify.notify_one();
        }
    }

    /// A write found its number taken: another host owns the session now. Nothing more is
    /// written from here, and the frames not written are dropped (their posts are answered by
    /// the new owner).
    pub fn fenced(&self) {
        let mut q = self.lock();
        if let Some(store) = q.session.as_deref_mut().and_then(|s| s.store.as_mut()) {
            store.fenced = true;
            store.unstored.clear();
            store.held.clear();
        }
    }

    /// The client sent a frame on its resumed connection, so it has the current token: the one
    /// it resumed with stops working. True if that changed anything (the record must follow).
    pub fn confirm_token(&self) -> bool {
        self.lock()
            .session
            .as_deref_mut()
            .is_some_and(|s| !std::mem::take(&mut s.previous_token_hash).is_empty())
    }

    /// Takes a client's cumulative acknowledgement; `false` when it acknowledges frames never sent.
    pub fn ack(&self, seq: u64) -> bool {
        self.lock()
            .session
            .as_deref_mut()
            .is_some_and(|s| s.replay.ack(seq))
    }

    /// Attaches a new connection to the session: the previous one (if still open) is told to go
    /// (its token cancelled), frames up to `last_seq` count as acknowledged, the control frames
    /// queued for the old connection are dropped, and `welcome(next_seq_base)` is queued first.
    /// Returns the new connection's attachment token.
    pub fn attach(
        &self,
        last_seq: u64,
        token_hash: String,
        previous_token_hash: String,
        welcome: String,
    ) -> Result<Attachment, AttachError> {
        let attachment;
        {
            let mut q = self.lock();
            if q.closing {
                return Err(AttachError::Gone);
            }
            let Some(session) = q.session.as_deref_mut() else {
                return Err(AttachError::Gone);
            };
            if session.moved {
                return Err(AttachError::Moved);
            }
            if session.overflowed {
                return Err(AttachError::Overflowed);
            }
            session
                .replay
                .rewind(last_seq)
                .map_err(AttachError::Sequence)?;
            attachment = session.attach();
            session.token_hash = token_hash;
            session.previous_token_hash = previous_token_hash;
            q.items.clear();
            q.bytes = welcome.len();
            q.items.push_back(Outbound::Text(welcome.into()));
        }
        self.notify.notify_one();
        Ok(attachment)
    }

    /// Attaches the first connection of a new session (or one just installed from another host),
    /// queueing `welcome` before anything else.
    pub fn attach_first(&self, welcome: String) -> Attachment {
        let attachment;
        {
            let mut q = self.lock();
            let session = q
                .session
                .as_deref_mut()
                .expect("attach_first is only called on a session's handle");
            attachment = session.attach();
            session.installing = false;
            q.bytes += welcome.len();
            q.items.push_front(Outbound::Text(welcome.into()));
        }
        self.notify.notify_one();
        // Posts that waited for the installation go on.
        if let Some(ready) = self.session(|s| s.ready.clone()) {
            ready.notify_waiters();
        }
        attachment
    }

    /// Detaches the connection holding `attachment` (it was lost), keeping the session; returns
    /// the detach's number for the window timer, or `None` when another connection had already
    /// taken the session over.
    pub fn detach(&self, attachment: &Attachment, now_ms: i64) -> Option<u64> {
        let mut q = self.lock();
        let session = q.session.as_deref_mut()?;
        if session
            .attachment
            .as_ref()
            .is_none_or(|a| a.number != attachment.number)
        {
            return None;
        }
        session.attachment = None;
        session.detached_at = now_ms;
        session.detaches += 1;
        Some(session.detaches)
    }

    /// Whether the session is still detached by detach number `detach` (its window has run out
    /// unless a connection resumed it since).
    pub fn still_detached(&self, detach: u64) -> bool {
        self.lock()
            .session
            .as_deref()
            .is_some_and(|s| s.attachment.is_none() && s.detaches == detach && !s.moved)
    }

    /// Bytes waiting in the outbound queue (a session's numbered frames not counted), and
    /// whether a connection serves it right now: what a metrics scrape reads.
    pub fn queue_state(&self) -> (usize, bool) {
        let q = self.lock();
        let attached = q.session.as_deref().is_none_or(|s| s.attachment.is_some());
        (q.bytes, attached)
    }

    /// Whether a connection serves the session right now.
    pub fn is_attached(&self) -> bool {
        self.lock()
            .session
            .as_deref()
            .is_none_or(|s| s.attachment.is_some())
    }

    /// Hands the session over to another host: later posts answer [`PostError::Moved`], the
    /// connection still attached (if any) is told to go, and the frames after `after_seq` are
    /// returned with the next sequence number.
    pub fn hand_over(&self, after_seq: u64) -> Option<HandedSession> {
        let mut q = self.lock();
        let session = q.session.as_deref_mut()?;
        if session.moved {
            return None;
        }
        session.moved = true;
        if let Some(attachment) = session.attachment.take() {
            attachment.token.cancel();
        }
        Some(HandedSession {
            frames: session.replay.after(after_seq),
            next_seq: session.replay.next_seq(),
            overflowed: session.overflowed,
            fenced: session.fence != 0 && session.fence == session.replay.next_seq(),
            post_keys: session.post_keys.all(),
        })
    }

    /// Finishes installing a session taken over with no connection (adopted from a host that is
    /// gone): it is ready for posts, and detached; returns the detach's number for the window
    /// timer.
    pub fn install_detached(&self, replay: Replay, now_ms: i64) -> u64 {
        let (ready, detach) = {
            let mut q = self.lock();
            let session = q
                .session
                .as_deref_mut()
                .expect("install_detached is only called on a session's handle");
            session.replay = replay;
            session.installing = false;
            session.detached_at = now_ms;
            session.detaches += 1;
            (session.ready.clone(), session.detaches)
        };
        ready.notify_waiters();
        detach
    }

    /// Resolves when a session being installed is ready for posts (or after a spurious wakeup:
    /// the caller tries again, within its own deadline).
    pub async fn installed(&self) {
        let Some(ready) = self.session(|s| s.ready.clone()) else {
            return;
        };
        let notified = ready.notified();
        if self.session(|s| !s.installing).unwrap_or(true) {
            return;
        }
        notified.await
    }
}

/// Connections held by this host, by connection ID, and their group memberships.
///
/// The memberships are an index of what the store holds for this host's connections: a join or
/// leave is served by the connection's owner, which writes both; a connection that leaves the
/// registry leaves the index with it; a session taken in from another host loads its memberships
/// from the store. A broadcast reads only this index.
#[derive(Debug, Default)]
pub struct Registry {
    map: DashMap<String, Arc<ConnectionHandle>>,
    /// Per group, its members held here.
    groups: DashMap<String, HashMap<String, Arc<ConnectionHandle>>>,
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

    /// Adds a connection unless one with its ID is registered already; true if added.
    pub fn insert_new(&self, handle: Arc<ConnectionHandle>) -> bool {
        match self.map.entry(handle.context.connection_id.clone()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(slot) => {
                slot.insert(handle);
                true
            }
        }
    }

    /// Looks a connection up.
    pub fn get(&self, connection_id: &str) -> Option<Arc<ConnectionHandle>> {
        self.map.get(connection_id).map(|e| e.value().clone())
    }

    /// Removes `handle` from the registry if it is still the one registered under
    /// `connection_id` (a session that moved here again has a new handle); true if removed.
    pub fn remove_if_same(&self, connection_id: &str, handle: &ConnectionHandle) -> bool {
        let removed = self
            .map
            .remove_if(connection_id, |_, h| std::ptr::eq(h.as_ref(), handle))
            .is_some();
        if removed {
            let groups = std::mem::take(&mut *lock(&handle.groups));
            for group in groups {
                self.remove_member(&group, handle);
            }
        }
        removed
    }

    /// Adds `handle`'s connection to `group` in the index; false, and nothing kept, when the
    /// connection is no longer registered with this handle (it ended meanwhile).
    pub fn join(&self, group: &str, handle: &Arc<ConnectionHandle>) -> bool {
        lock(&handle.groups).insert(group.to_string());
        self.groups
            .entry(group.to_string())
            .or_default()
            .insert(handle.context.connection_id.clone(), handle.clone());
        // Checked after both inserts: a removal that took the connection's groups before the
        // first one is seen here, and one after it takes this group too.
        let registered = self
            .map
            .get(&handle.context.connection_id)
            .is_some_and(|h| Arc::ptr_eq(h.value(), handle));
        if !registered {
            self.leave(group, handle);
        }
        registered
    }

    /// Takes `handle`'s connection out of `group` in the index.
    pub fn leave(&self, group: &str, handle: &ConnectionHandle) {
        lock(&handle.groups).remove(group);
        self.remove_member(group, handle);
    }

    fn remove_member(&self, group: &str, handle: &ConnectionHandle) {
        if let dashmap::Entry::Occupied(mut members) = self.groups.entry(group.to_string()) {
            let id = &handle.context.connection_id;
            if members
                .get()
                .get(id)
                .is_some_and(|h| std::ptr::eq(h.as_ref(), handle))
            {
                members.get_mut().remove(id);
            }
            if members.get().is_empty() {
                members.remove();
            }
        }
    }

    /// The members of `group` held here (none for an unknown group).
    pub fn members(&self, group: &str) -> Vec<Arc<ConnectionHandle>> {
        self.groups
            .get(group)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default()
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    #[test]
    fn a_connection_leaves_the_group_index_when_it_ends_or_leaves() {
        let registry = Registry::new();
        let member = |id: &str| {
            let mut context = (*testing::connection()).clone();
            context.connection_id = id.into();
            Arc::new(ConnectionHandle::new(Arc::new(context)))
        };
        let (a, b) = (member("a"), member("b"));
        registry.insert(a.clone());
        registry.insert(b.clone());
        assert!(registry.join("room", &a) && registry.join("room", &b));
        assert!(registry.join("other", &a));
        let ids = |group: &str| {
            let mut ids: Vec<String> = registry
                .members(group)
                .iter()
                .map(|h| h.context.connection_id.clone())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(ids("room"), ["a", "b"]);
        registry.leave("room", &b);
        assert_eq!(ids("room"), ["a"]);
        assert!(registry.remove_if_same("a", &a));
        assert!(ids("room").is_empty() && ids("other").is_empty());
        assert!(registry.groups.is_empty(), "empty groups are dropped");
        // A connection that ended before its join reached the index is not kept.
        assert!(!registry.join("room", &a));
        assert!(ids("room").is_empty());
    }

    #[test]
    fn a_store_durable_session_writes_its_frames_in_order_until_fenced() {
        let mut session = Session::new(Replay::new(1000), String::new(), String::new());
        session.store = Some(StoreWrites::default());
        let h = ConnectionHandle::with_session(testing::connection(), session);
        let first = h.post_session(b"one", None).unwrap();
        let second = h.post_reply("answer").unwrap();
        let third = h.post_session(b"three", None).unwrap();
        // Frame 2's post writes frame 1 first: the store never has a gap below a frame.
        assert_eq!(h.next_unstored(2), Unstored::Next(1, first.1));
        h.stored(1);
        assert_eq!(h.next_unstored(2), Unstored::Next(2, second.1));
        h.stored(2);
        assert_eq!(h.next_unstored(2), Unstored::Done);
        // A frame taken back is not written.
        assert!(h.retract(3));
        assert_eq!(h.next_unstored(3), Unstored::Done);
        let again = h.post_session(b"three again", None).unwrap();
        assert_eq!(again.0, third.0);
        assert_eq!(h.next_unstored(3), Unstored::Next(3, again.1));
        // Fenced out: nothing more is written, whatever was waiting.
        h.fenced();
        assert_eq!(h.next_unstored(3), Unstored::Fenced);
        // A session with memory durability writes nothing.
        let plain = ConnectionHandle::with_session(
            testing::connection(),
            Session::new(Replay::new(1000), String::new(), String::new()),
        );
        plain.post_session(b"x", None).unwrap();
        assert!(plain.store_writes().is_none());
        assert_eq!(plain.next_unstored(1), Unstored::Done);
    }

    #[test]
    fn a_stored_sessions_post_with_an_id_is_sent_only_once_written() {
        let mut session = Session::new(Replay::new(1000), String::new(), String::new());
        session.store = Some(StoreWrites::default());
        let h = ConnectionHandle::with_session(testing::connection(), session);
        let text = |o: Option<Outbound>| match o {
            Some(Outbound::Text(t)) => serde_json::from_str::<serde_json::Value>(&t).unwrap()["s"]
                .as_u64()
                .unwrap(),
            other => panic!("{other:?}"),
        };
        // A broadcast's frame (no post ID) goes at once.
        h.post_session(b"broadcast", None).unwrap();
        assert_eq!(text(h.pop()), 1);
        // A post's frame, and what is numbered behind it, waits for the post's write.
        h.post_session(b"post", Some("k1")).unwrap();
        h.post_reply(r#""id":"m1""#).unwrap();
        assert!(h.pop().is_none());
        h.stored(1);
        assert!(h.pop().is_none(), "frame 2 is not written yet");
        h.stored(2);
        assert_eq!((text(h.pop()), text(h.pop())), (2, 3));
        // Answered 200 without its write (a store outage): released all the same.
        h.post_session(b"again", Some("k2")).unwrap();
        assert!(h.pop().is_none());
        h.release_unstored(4);
        assert_eq!(text(h.pop()), 4);
        // Fenced out: nothing more is sent from here.
        h.post_session(b"late", None).unwrap();
        h.fenced();
        assert!(h.pop().is_none());
    }

    #[test]
    fn a_post_sent_again_with_its_key_is_not_kept_twice() {
        let h = ConnectionHandle::with_session(
            testing::connection(),
            Session::new(Replay::new(1000), String::new(), String::new()),
        );
        let (seq, frame) = h.post_session(b"new", Some("k1")).unwrap();
        assert_eq!(seq, 1);
        assert_eq!(frame.as_str(), r#"{"t":"msg","s":1,"p":"k1","d":"new"}"#);
        assert_eq!(
            h.post_session(b"new", Some("k1")),
            Err(PostError::AlreadyKept(1))
        );
        assert_eq!(
            h.post_session(b"other", Some("k1")),
            Err(PostError::KeyReused)
        );
        // Still remembered once the client acknowledged it.
        h.session(|s| {
            s.replay.next_unsent();
            assert!(s.replay.ack(1));
        });
        assert_eq!(
            h.post_session(b"new", Some("k1")),
            Err(PostError::AlreadyKept(1))
        );
        // Unkeyed posts are kept each time.
        assert_eq!(h.post_session(b"new", None).unwrap().0, 2);
        assert_eq!(h.post_session(b"new", None).unwrap().0, 3);
        // A post refused after all forgets its key: sent again, it is kept.
        let (four, _) = h.post_session(b"x", Some("k2")).unwrap();
        assert!(h.retract(four));
        assert_eq!(h.post_session(b"x", Some("k2")).unwrap().0, 4);
        // The previous host's keys go with the session.
        let handed = h.hand_over(0).unwrap();
        let keys: Vec<&str> = handed.post_keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["k1", "k2"]);
    }
}
