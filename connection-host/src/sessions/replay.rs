//! A session's outbound sequence: numbers every `msg` and `reply`, keeps each until the client
//! acknowledges it (bounded in bytes), and replays from the client's last sequence number on
//! resume (PROTOCOL.md section 5). Plain data, no I/O: the connection's handle holds it under its
//! lock.

use sha2::Digest as _;
use std::collections::{HashMap, VecDeque};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A numbered frame as kept for replay, and as handed from one host to another (and, with
/// `durability = "store"`, written to the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFrame {
    /// Its sequence number in the session.
    pub seq: u64,
    /// The complete envelope as sent to the client (a `msg` or `reply` frame).
    pub frame: String,
}

/// Why a frame was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Why a resume cannot continue from the client's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// The client claims frames the host never numbered.
    Ahead,
    /// Frames the client has not received were already dropped (it acknowledged them, or lied).
    Missing,
}

/// The numbered, unacknowledged frames of one session.
#[derive(Debug)]
pub struct Replay {
    /// The sequence number the next frame gets.
    next_seq: u64,
    /// Unacknowledged frames, in sequence order, gap-free.
    frames: VecDeque<(u64, Utf8Bytes)>,
    /// Their total size.
    bytes: usize,
    /// The highest sequence number handed to the current connection.
    sent: u64,
    /// The highest sequence number the client acknowledged.
    acked: u64,
    /// Bound on `bytes`.
    limit: usize,
}

impl Replay {
    /// An empty sequence starting at 1, holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self::resumed(limit, 0, Vec::new())
    }

    /// The sequence of a session taken over from elsewhere: `acked` is the client's last sequence
    /// number, `frames` the unacknowledged ones after it (in order, gap-free).
    pub fn resumed(limit: usize, acked: u64, frames: Vec<StoredFrame>) -> Self {
        let mut replay = Self {
            next_seq: acked + 1,
            frames: VecDeque::with_capacity(frames.len()),
            bytes: 0,
            sent: acked,
            acked,
            limit,
        };
        for f in frames.into_iter().filter(|f| f.seq > acked) {
            if f.seq != replay.next_seq {
                break;
            }
            replay.bytes += f.frame.len();
            replay.frames.push_back((f.seq, Utf8Bytes::from(f.frame)));
            replay.next_seq += 1;
        }
        replay
    }

    /// Numbers a frame built by `build(seq)` and keeps it, returning its number and a shared
    /// copy; [`Full`] when it would take the kept frames past the limit (nothing is numbered then).
    pub fn push(
        &mut self,
        len_hint: usize,
        build: impl FnOnce(u64) -> String,
    ) -> Result<(u64, Utf8Bytes), Full> {
        if self.bytes + len_hint > self.limit {
            return Err(Full);
        }
        let seq = self.next_seq;
        let frame = Utf8Bytes::from(build(seq));
        self.bytes += frame.len();
        self.frames.push_back((seq, frame.clone()));
        self.next_seq += 1;
        Ok((seq, frame))
    }

    /// Takes back frame `seq` if it is the last one numbered and no connection was given it yet
    /// (its post failed after all); true if taken back, and then the number is free again.
    pub fn retract(&mut self, seq: u64) -> bool {
        match self.frames.back() {
            Some((last, frame)) if *last == seq && seq > self.sent => {
                self.bytes -= frame.len();
                self.frames.pop_back();
                self.next_seq -= 1;
                true
            }
            _ => false,
        }
    }

    /// The next frame the current connection has not been given, if any.
    pub fn next_unsent(&mut self) -> Option<Utf8Bytes> {
        let first = self.frames.front()?.0;
        let index = usize::try_from(self.sent + 1 - first).ok()?;
        let (seq, frame) = self.frames.get(index)?;
        self.sent = *seq;
        Some(frame.clone())
    }

    /// Like [`next_unsent`](Self::next_unsent), but only a frame numbered below `limit`.
    pub fn next_unsent_below(&mut self, limit: u64) -> Option<Utf8Bytes> {
        if self.sent + 1 >= limit {
            return None;
        }
        self.next_unsent()
    }

    /// Drops every frame up to `seq`; `false` (and nothing dropped) when `seq` was never sent.
    pub fn ack(&mut self, seq: u64) -> bool {
        if seq > self.sent {
            return false;
        }
        while let Some((s, frame)) = self.frames.front() {
            if *s > seq {
                break;
            }
            self.bytes -= frame.len();
            self.frames.pop_front();
        }
        self.acked = self.acked.max(seq);
        true
    }

    /// Prepares a new connection of the session: frames up to `last_seq` count as acknowledged,
    /// and the next one sent is `last_seq + 1`.
    pub fn rewind(&mut self, last_seq: u64) -> Result<(), ResumeError> {
        if last_seq >= self.next_seq {
            return Err(ResumeError::Ahead);
        }
        if last_seq < self.acked && self.frames.front().is_none_or(|(s, _)| *s > last_seq + 1) {
            return Err(ResumeError::Missing);
        }
        self.sent = last_seq;
        while let Some((s, frame)) = self.frames.front() {
            if *s > last_seq {
                break;
            }
            self.bytes -= frame.len();
            self.frames.pop_front();
        }
        self.acked = self.acked.max(last_seq);
        Ok(())
    }

    /// The kept frames after `seq`, for a host taking the session over.
    pub fn after(&self, seq: u64) -> Vec<StoredFrame> {
        self.frames
            .iter()
            .filter(|(s, _)| *s > seq)
            .map(|(s, f)| StoredFrame {
                seq: *s,
                frame: f.as_str().to_string(),
            })
            .collect()
    }

    /// The sequence number the next frame gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes of unacknowledged frames.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// How many post keys a session remembers at most (the oldest are forgotten first).
pub const POST_KEYS: usize = 1024;

/// What a session remembers of a post that carried a key (PostToConnection's `Idempotency-Key`,
/// or the ID a host gives a post it forwards): a post sent again with the same key is not kept
/// twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostKey {
    /// [`digest`] of the post's body, to tell a retry from a key reused for another body.
    pub digest: [u8; 16],
    /// The number of the frame that carried it.
    pub seq: u64,
    /// Epoch milliseconds when it was kept (or learnt from another host, which counts as kept).
    pub at_ms: i64,
}

/// The post keys a session remembers, each for `window_ms` after it was kept and at most the
/// newest [`POST_KEYS`], whether or not the client has acknowledged the frame since.
#[derive(Debug, Clone)]
pub struct PostKeys {
    keys: HashMap<String, PostKey>,
    /// Keys in the order they were kept, oldest first (a forgotten key may linger here).
    order: VecDeque<String>,
    window_ms: i64,
}

impl PostKeys {
    /// No keys, each to be remembered for `window_ms`.
    pub fn new(window_ms: i64) -> Self {
        Self {
            keys: HashMap::new(),
            order: VecDeque::new(),
            window_ms,
        }
    }

    /// What is remembered of `key` at `now_ms`, if it is still remembered.
    pub fn get(&self, key: &str, now_ms: i64) -> Option<PostKey> {
        self.keys
            .get(key)
            .filter(|k| now_ms - k.at_ms <= self.window_ms)
            .copied()
    }

    /// Remembers `key`, forgetting those past the window or the bound.
    pub fn insert(&mut self, key: String, post: PostKey, now_ms: i64) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .keys
                .get(oldest)
                .is_none_or(|k| now_ms - k.at_ms > self.window_ms);
            if !expired && self.keys.len() < POST_KEYS {
                break;
            }
            if let Some(oldest) = self.order.pop_front() {
                self.keys.remove(&oldest);
            }
        }
        if self.keys.insert(key.clone(), post).is_none() {
            self.order.push_back(key);
        }
    }

    /// Forgets the key of frame `seq` (the last one kept: its post was refused after all).
    pub fn forget_seq(&mut self, seq: u64) {
        if let Some(last) = self.order.back()
            && self.keys.get(last).is_some_and(|k| k.seq == seq)
        {
            self.keys.remove(last);
            self.order.pop_back();
        }
    }

    /// Every remembered key, oldest first, for a host taking the session over.
    pub fn all(&self) -> Vec<(String, PostKey)> {
        self.order
            .iter()
            .filter_map(|k| self.keys.get(k).map(|p| (k.clone(), *p)))
            .collect()
    }
}

/// The digest a [`PostKey`] keeps of a post's body: the first 128 bits of its SHA-256.
pub fn digest(data: &[u8]) -> [u8; 16] {
    let full = sha2::Sha256::digest(data);
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> String {
        format!("{{\"t\":\"msg\",\"s\":{seq},\"d\":\"x\"}}")
    }

    fn drain(r: &mut Replay) -> Vec<u64> {
        std::iter::from_fn(|| r.next_unsent())
            .map(|f| {
                serde_json::from_str::<serde_json::Value>(&f).unwrap()["s"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn numbers_gap_free_keeps_until_acked_and_replays_after_the_clients_last() {
        let mut r = Replay::new(1000);
        for _ in 0..5 {
            r.push(30, frame).unwrap();
        }
        assert_eq!(drain(&mut r), vec![1, 2, 3, 4, 5]);
        assert!(r.ack(2));
        assert!(!r.ack(6), "6 was never sent");
        r.push(30, frame).unwrap();
        // The connection drops; the client had received up to 4.
        r.rewind(4).unwrap();
        assert_eq!(drain(&mut r), vec![5, 6]);
        assert_eq!(r.after(4).len(), 2);
        assert_eq!(r.rewind(9), Err(ResumeError::Ahead));
        // Frame 6 was sent: it cannot be taken back; an unsent last one can.
        assert!(!r.retract(6));
        let (seven, _) = r.push(30, frame).unwrap();
        assert!(!r.retract(6), "only the last one");
        assert!(r.retract(seven));
        assert_eq!(r.next_seq(), 7);
        assert_eq!(r.rewind(1), Err(ResumeError::Missing));
    }

    #[test]
    fn is_bounded_in_bytes_and_frees_on_ack() {
        let mut r = Replay::new(100);
        r.push(60, |s| {
            format!("{{\"s\":{s},\"d\":\"{}\"}}", "a".repeat(40))
        })
        .unwrap();
        assert_eq!(r.push(60, |_| unreachable!()), Err(Full));
        assert_eq!(r.next_seq(), 2, "a refused frame takes no number");
        drain(&mut r);
        assert!(r.ack(1));
        assert_eq!(r.bytes(), 0);
        r.push(60, frame).unwrap();
    }

    #[test]
    fn a_taken_over_sequence_continues_from_the_frames_it_got() {
        let frames = (3..=5)
            .map(|seq| StoredFrame {
                seq,
                frame: frame(seq),
            })
            .collect();
        let mut r = Replay::resumed(1000, 2, frames);
        assert_eq!(r.next_seq(), 6);
        r.push(30, frame).unwrap();
        assert_eq!(drain(&mut r), vec![3, 4, 5, 6]);
    }

    #[test]
    fn post_keys_are_remembered_for_their_window_and_up_to_the_bound() {
        let post = |seq, at_ms| PostKey {
            digest: digest(b"x"),
            seq,
            at_ms,
        };
        let mut keys = PostKeys::new(1000);
        keys.insert("a".into(), post(1, 0), 0);
        assert_eq!(keys.get("a", 1000), Some(post(1, 0)));
        assert_eq!(keys.get("a", 1001), None, "past the window");
        keys.insert("b".into(), post(2, 1500), 1500);
        assert_eq!(keys.all().len(), 1, "the expired key is forgotten");
        keys.forget_seq(1);
        assert!(keys.get("b", 1500).is_some(), "only the last kept one");
        keys.forget_seq(2);
        assert_eq!(keys.get("b", 1500), None);
        for n in 0..=POST_KEYS as u64 {
            keys.insert(format!("k{n}"), post(n + 3, 2000), 2000);
        }
        assert_eq!(keys.all().len(), POST_KEYS);
        assert_eq!(keys.get("k0", 2000), None, "the oldest goes first");
        assert!(keys.get(&format!("k{POST_KEYS}"), 2000).is_some());
        assert_ne!(digest(b"x"), digest(b"y"));
    }
}
