//! A session's outbound sequence: numbers every `msg` and `reply`, keeps each until the client
//! acknowledges it (bounded in bytes), and replays from the client's last sequence number on
//! resume (PROTOCOL.md section 5). Plain data, no I/O: the connection's handle holds it under its
//! lock.

use std::collections::VecDeque;
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
}
