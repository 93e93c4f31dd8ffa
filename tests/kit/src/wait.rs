//! Bounded waits: on a future, or on a condition polled until it holds.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// The default bound of every wait in the tests: long enough for a loaded 2-core machine, short
/// enough that a test that hangs fails quickly.
pub const WAIT: Duration = Duration::from_secs(5);

/// How often [`eventually`] and [`eventually_some`] look again.
const POLL: Duration = Duration::from_millis(50);

/// Awaits `f` for at most [`WAIT`], panicking with `what` otherwise.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    within_for(what, WAIT, f).await
}

/// Awaits `f` for at most `bound`, panicking with `what` otherwise.
pub async fn within_for<T>(what: &str, bound: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(bound, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {bound:?} waiting for {what}"),
    }
}

/// Polls `check` (every 50 ms) until it holds, for at most `bound` in all, and returns how long
/// that took. Panics with `what` when the bound passes. Use it instead of a sleep followed by an
/// assertion: the test goes on as soon as the event has happened, however slow the machine.
pub async fn eventually(
    what: &str,
    bound: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    eventually_some(what, bound, async || check().await.then_some(())).await;
    started.elapsed()
}

/// Polls `check` (every 50 ms) until it returns `Some`, for at most `bound` in all, and returns
/// the value (e.g. the connection that a refilled rate limit finally admits). Panics with `what`
/// when the bound passes.
pub async fn eventually_some<T>(
    what: &str,
    bound: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    within_for(what, bound, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}
