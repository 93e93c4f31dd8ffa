//! One function process and its supervisor: start it, stream its output into the host's log,
//! enforce each invocation's deadline (kill and restart), and restart it after a crash with
//! backoff.
//!
//! A process never outlives its host: the host kills it on shutdown and on a failed start, and
//! on Linux the kernel kills it when the host dies without either (SIGKILL, a crash): see
//! [`die_with_host`]. Once the host begins shutting down, a process that exits is not restarted.

use super::{Function, RuntimeSettings, env, runtime_api};
use crate::integration::IntegrationError;
use crate::metrics::FunctionOutcome;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// First delay before restarting a process that crashed; doubles per crash in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between restarts of a process that keeps crashing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The invocation a process is working on.
#[derive(Debug)]
pub(super) struct InFlight {
    /// Its `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// Where its result goes.
    pub reply: oneshot::Sender<Result<Bytes, IntegrationError>>,
}

/// What the Runtime API tells the supervisor.
#[derive(Debug)]
pub(super) enum SlotEvent {
    /// The process asked for its next invocation: it initialized.
    Ready,
    /// The process took an invocation: its deadline runs from now.
    Started,
    /// The process answered its invocation, with a result or an error.
    Finished {
        /// It answered with a result.
        ok: bool,
    },
    /// The process reported an initialization error.
    InitError(String),
}

/// State shared by one process's supervisor and its Runtime API server.
#[derive(Debug)]
pub(super) struct SlotState {
    pub function: Arc<Function>,
    pub current: Mutex<Option<InFlight>>,
    pub events: mpsc::UnboundedSender<SlotEvent>,
    /// Cancelled when the running process exits, so a `next` it left waiting hands out nothing.
    generation: Mutex<CancellationToken>,
}

impl SlotState {
    /// The token of the process running now.
    pub fn generation(&self) -> CancellationToken {
        self.generation.lock().expect("slot lock poisoned").clone()
    }

    /// Ends the current process's generation and fails the invocation it held, if any.
    fn process_ended(&self, error: impl FnOnce(&str) -> String) {
        let mut generation = self.generation.lock().expect("slot lock poisoned");
        generation.cancel();
        *generation = CancellationToken::new();
        drop(generation);
        let in_flight = self.current.lock().expect("slot lock poisoned").take();
        if let Some(in_flight) = in_flight {
            let message = error(&in_flight.request_id);
            let _ = in_flight
                .reply
                .send(Err(IntegrationError::Function(message)));
        }
    }
}

/// One of a function's `concurrency` processes, with its own Runtime API listener.
pub(super) struct Slot {
    state: Arc<SlotState>,
    events: mpsc::UnboundedReceiver<SlotEvent>,
    listener: TcpListener,
    index: usize,
}

impl Slot {
    /// Binds the process's Runtime API on a free loopback port (kept across restarts).
    pub async fn bind(function: Arc<Function>, index: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let (events, receiver) = mpsc::unbounded_channel();
        Ok(Self {
            state: Arc::new(SlotState {
                function,
                current: Mutex::new(None),
                events,
                generation: Mutex::new(CancellationToken::new()),
            }),
            events: receiver,
            listener,
            index,
        })
    }

    /// Serves the Runtime API and keeps a process running until `shutdown`. Once `stopping` is
    /// cancelled (the host is draining), a process that exits is not replaced; a running one
    /// keeps serving until `shutdown`.
    pub async fn supervise(
        mut self,
        settings: RuntimeSettings,
        stopping: CancellationToken,
        shutdown: CancellationToken,
    ) {
        let state = self.state.clone();
        let function = state.function.clone();
        let name = function.name.clone();
        let addr = match self.listener.local_addr() {
            Ok(addr) => addr,
            Err(e) => {
                tracing::error!(function = %name, error = %e, "Runtime API listener unusable");
                return;
            }
        };
        let server = axum::serve(self.listener, runtime_api::router(state.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });
        let command = env::expand(&function.config.command, |n| std::env::var(n).ok());
        let vars = env::variables(&function, &settings, addr, self.index);
        let mut crashes: u32 = 0;
        loop {
            if stopping.is_cancelled() {
                // The host is shutting down: a process started now would only be killed, and
                // a handler's initialization may have effects of its own.
                tracing::info!(function = %name, "host shutting down: the function's process is not restarted");
                function.fail_queued(&error_payload(
                    "Runtime.ExitError",
                    "the function's process exited while the host shuts down",
                ));
                break;
            }
            let outcome = match spawn(&command, &function.config.args, &vars, &name) {
                Ok(child) => run_once(&state, &mut self.events, child, &shutdown).await,
                Err(e) => {
                    let message = format!("could not start {command:?}: {e}");
                    tracing::error!(function = %name, "{message}");
                    Outcome::Failed {
                        initialized: false,
                        init_error: Some(message),
                    }
                }
            };
            match outcome {
                Outcome::Shutdown => break,
                Outcome::TimedOut => crashes = 0,
                Outcome::Failed {
                    initialized,
                    init_error,
                } => {
                    if !initialized {
                        let error = init_error.unwrap_or_else(|| {
                            "the function's process exited during initialization".into()
                        });
                        function.fail_queued(&error_payload("Runtime.InitError", &error));
                    }
                    let delay = FIRST_BACKOFF
                        .saturating_mul(2u32.saturating_pow(crashes))
                        .min(MAX_BACKOFF);
                    crashes = crashes.saturating_add(1);
                    tracing::info!(function = %name, delay = ?delay, "restarting the function's process");
                    tokio::select! {
                        _ = stopping.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Outcome::Healthy => crashes = 0,
            }
        }
        state.process_ended(|id| {
            error_payload(
                "Runtime.ExitError",
                &format!("RequestId: {id} Error: the host shut down"),
            )
        });
        let _ = server.await;
    }
}

/// How a process's life ended.
enum Outcome {
    /// The host is shutting down.
    Shutdown,
    /// Killed for overrunning an invocation's deadline; restart at once, as Lambda does.
    TimedOut,
    /// It exited by itself.
    Failed {
        /// Whether it reached the Runtime API's `next` before exiting.
        initialized: bool,
        /// What it reported through `/init/error`.
        init_error: Option<String>,
    },
    /// It exited by itself after answering invocations: restart without backoff.
    Healthy,
}

fn spawn(
    command: &str,
    args: &[String],
    vars: &[(String, String)],
    name: &str,
) -> std::io::Result<Child> {
    let mut command = Command::new(command);
    die_with_host(&mut command);
    let mut child = command
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(log_lines(out, name.to_string()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(log_lines(err, name.to_string()));
    }
    Ok(child)
}

/// Has the kernel SIGKILL the function's process when the host dies, so a host killed with
/// SIGKILL (or crashing) leaves no function processes behind. Linux delivers the signal when the
/// *thread* that spawned the child exits: processes are spawned from the runtime's worker
/// threads, which live as long as the host, never from a short-lived blocking thread.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_host(command: &mut Command) {
    // Read before the fork: in the child, a parent that already died shows as another PID.
    let host = libc::pid_t::try_from(std::process::id()).unwrap_or(libc::pid_t::MAX);
    // SAFETY: the closure runs in the forked child before `exec`, where only async-signal-safe
    // calls are allowed: it calls `prctl` and `getppid` (both are) and does not allocate (an
    // `io::Error` from a raw OS error code holds no heap data).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The host died between the fork and the prctl: the signal will never come.
            if libc::getppid() != host {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere the host kills its processes on shutdown and on a failed start, and `kill_on_drop`
/// covers a host that unwinds; a host killed outright leaves them running.
#[cfg(not(target_os = "linux"))]
fn die_with_host(_command: &mut Command) {}

/// Copies a function's output into the host's log line by line, named by the function, as
/// Lambda copies it into the function's log group.
async fn log_lines(stream: impl AsyncRead + Unpin, function: String) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "function", function = %function, "{line}");
    }
}

/// Supervises one process from start to exit.
async fn run_once(
    state: &SlotState,
    events: &mut mpsc::UnboundedReceiver<SlotEvent>,
    mut child: Child,
    shutdown: &CancellationToken,
) -> Outcome {
    let function = &state.function;
    let timeout = function.config.timeout;
    let mut deadline: Option<Instant> = None;
    let mut started = Instant::now();
    let metrics = &function.metrics;
    let mut initialized = false;
    let mut answered = false;
    let mut init_error = None;
    loop {
        tokio::select! {
            // Shutdown first: a process that exits as the host stops must not look like a crash.
            biased;
            _ = shutdown.cancelled() => {
                let _ = child.kill().await;
                return Outcome::Shutdown;
            }
            status = child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                tracing::warn!(function = %function.name, %status, "function process exited");
                state.process_ended(|id| error_payload(
                    "Runtime.ExitError",
                    &format!("RequestId: {id} Error: Runtime exited with error: {status}"),
                ));
                drain(events);
                if deadline.is_some() {
                    metrics.invoked(FunctionOutcome::Crash, started.elapsed());
                }
                return if answered && deadline.is_none() {
                    Outcome::Healthy
                } else {
                    metrics.crashes.increment(1);
                    Outcome::Failed { initialized, init_error }
                };
            }
            _ = sleep_until(deadline) => {
                tracing::warn!(
                    function = %function.name,
                    timeout = ?timeout,
                    "invocation timed out: killing and restarting the function's process"
                );
                let _ = child.kill().await;
                metrics.invoked(FunctionOutcome::Timeout, started.elapsed());
                state.process_ended(|id| error_payload(
                    "Sandbox.Timedout",
                    &format!("RequestId: {id} Error: Task timed out after {:.2} seconds", timeout.as_secs_f64()),
                ));
                drain(events);
                return Outcome::TimedOut;
            }
            event = events.recv() => match event {
                Some(SlotEvent::Ready) => {
                    if !initialized {
                        metrics.cold_starts.increment(1);
                    }
                    initialized = true;
                    *function.init_failure.lock().expect("function lock poisoned") = None;
                }
                Some(SlotEvent::Started) => {
                    started = Instant::now();
                    deadline = Some(started + timeout);
                }
                Some(SlotEvent::Finished { ok }) => {
                    let outcome = if ok { FunctionOutcome::Ok } else { FunctionOutcome::Error };
                    metrics.invoked(outcome, started.elapsed());
                    deadline = None;
                    answered = true;
                }
                Some(SlotEvent::InitError(e)) => init_error = Some(e),
                None => {}
            },
        }
    }
}

/// Drops events a dead process left behind so they do not leak into its successor's life.
fn drain(events: &mut mpsc::UnboundedReceiver<SlotEvent>) {
    while events.try_recv().is_ok() {}
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A function error payload in Lambda's shape.
pub(super) fn error_payload(error_type: &str, message: &str) -> String {
    serde_json::json!({"errorType": error_type, "errorMessage": message}).to_string()
}
