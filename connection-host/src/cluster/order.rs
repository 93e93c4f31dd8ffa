//! One line per connection for the calls a host forwards, so that they reach the owner in the
//! order this host received them.
//!
//! Without it, two posts for one connection that arrive a moment apart race: the first waits on
//! the store for the owner while the second, also missing the cache, may finish its own read
//! first, and two forwards in flight on different pooled connections may be served by the owner
//! in either order. A line covers the owner lookup and the forward up to the owner's answer, so
//! the owner has queued one call's message before it receives the next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The lines of the connections with calls in flight; a connection without any has no entry, so
/// the map holds at most one entry per call in flight.
#[derive(Debug, Default)]
pub(super) struct Lines {
    lines: Mutex<HashMap<String, Line>>,
}

#[derive(Debug)]
struct Line {
    /// Fair: waiters get it in the order they first polled `lock`.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The calls holding a [`Place`] in this line (waiting or served); the entry goes at zero.
    places: usize,
}

/// A call's turn for its connection: the next call for that connection waits until it is dropped.
#[derive(Debug)]
pub struct Turn<'a> {
    // Fields drop in order: the turn is passed on before the place is given up, so a call that
    // joined meanwhile still finds the line it queued in.
    _served: tokio::sync::OwnedMutexGuard<()>,
    _place: Place<'a>,
}

/// A call's membership of a line, waiting or served; dropping it (also when a waiting call is
/// cancelled) removes the line once no call is left in it.
#[derive(Debug)]
struct Place<'a> {
    lines: &'a Lines,
    id: String,
}

impl Lines {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Line>> {
        // Each update leaves the map consistent, so a panic elsewhere does not poison it.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for `connection_id`'s turn after every call for it that got here first. The place
    /// in line is taken at the first poll, so await this before anything else the call awaits:
    /// the order of those first polls is the order of arrival.
    pub(super) async fn turn(&self, connection_id: &str) -> Turn<'_> {
        let (place, turn) = {
            let mut lines = self.lock();
            let line = lines
                .entry(connection_id.to_string())
                .or_insert_with(|| Line {
                    turn: Arc::default(),
                    places: 0,
                });
            line.places += 1;
            let place = Place {
                lines: self,
                id: connection_id.to_string(),
            };
            (place, line.turn.clone())
        };
        Turn {
            _served: turn.lock_owned().await,
            _place: place,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut lines = self.lines.lock();
        if let Some(line) = lines.get_mut(&self.id) {
            line.places -= 1;
            if line.places == 0 {
                lines.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn calls_for_one_connection_are_served_in_arrival_order() {
        let lines = Arc::new(Lines::default());
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for n in 0..20u64 {
            let (lines, served) = (lines.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = lines.turn("c").await;
                // Later arrivals finish their work sooner: only the line keeps them in order.
                tokio::time::sleep(Duration::from_millis(20 - n)).await;
                served.lock().unwrap().push(n);
            }));
            // Let the task take its place before the next one is spawned.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*served.lock().unwrap(), (0..20).collect::<Vec<_>>());
        assert_eq!(lines.len(), 0, "an idle connection leaves no line behind");
    }

    #[tokio::test(start_paused = true)]
    async fn other_connections_do_not_wait_and_a_cancelled_call_leaves_its_line() {
        let lines = Lines::default();
        let held = lines.turn("a").await;
        // Another connection is served at once while "a" is busy.
        let other = tokio::time::timeout(Duration::from_millis(1), lines.turn("b")).await;
        assert!(other.is_ok(), "connection b waited on connection a");
        drop(other);
        // A call for "a" gives up while waiting (its request was dropped) ...
        let waiting = tokio::time::timeout(Duration::from_millis(1), lines.turn("a")).await;
        assert!(waiting.is_err(), "the second call for a must wait");
        assert_eq!(lines.len(), 1);
        // ... and the next one is served as soon as the first is done.
        drop(held);
        let next = tokio::time::timeout(Duration::from_millis(1), lines.turn("a")).await;
        assert!(next.is_ok(), "the cancelled call blocked the line");
        drop(next);
        assert_eq!(lines.len(), 0);
    }
}
