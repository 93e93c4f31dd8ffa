//! The local Lambda runtime: the host runs real handler binaries (`lambda_http`,
//! `lambda_runtime`) as Lambda would, so the same binaries deploy unchanged to AWS Lambda.
//!
//! Each function declared in `[functions]` gets `concurrency` processes. Every process has its
//! own Lambda Runtime API server on a loopback port ([`runtime_api`]), so the host always knows
//! which process holds which invocation and can enforce the function's deadline by killing exactly
//! that process ([`process`]). Invocations wait in one queue per function. The Lambda Invoke API
//! ([`invoke_api`]) and the `lambda` integration reach the same queue.

mod env;
pub mod invoke_api;
mod process;
mod runtime_api;

use crate::config::FunctionConfig;
use crate::integration::{IntegrationError, LambdaInvoker};
use crate::metrics::{FunctionMetrics, Metrics};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Invocations that may wait for a free process before new ones are refused as throttled.
const QUEUE_CAPACITY: usize = 1024;

/// What every function process is told about its surroundings.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Region reported as `AWS_REGION`.
    pub region: String,
    /// The host's own `@connections` endpoint including the stage, e.g. `http://127.0.0.1:8080/dev`,
    /// given to functions as `APIGW_MANAGEMENT_ENDPOINT` so they can push back without configuration.
    pub management_endpoint: String,
    /// The access key functions sign with when the management API requires SigV4 (the first
    /// configured key); `None` leaves them the host's own credentials, or placeholders.
    pub credentials: Option<crate::sigv4::AccessKey>,
}

/// Why the local runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    /// A `build` command failed or could not be started.
    #[error("functions.{function}.build: {reason}")]
    Build {
        /// The function whose build failed.
        function: String,
        /// What went wrong.
        reason: String,
    },
    /// A function's Runtime API listener could not be bound.
    #[error("functions.{function}: Runtime API listener: {source}")]
    Listener {
        /// The function.
        function: String,
        /// The bind error.
        source: std::io::Error,
    },
}

/// One queued invocation.
#[derive(Debug)]
struct Invocation {
    /// `Lambda-Runtime-Aws-Request-Id`.
    request_id: String,
    /// `Lambda-Runtime-Trace-Id`, which the runtime client exposes as `_X_AMZN_TRACE_ID`.
    trace_id: String,
    payload: Bytes,
    reply: oneshot::Sender<Result<Bytes, IntegrationError>>,
}

/// What the processes of one function share.
#[derive(Debug)]
struct Function {
    name: String,
    arn: String,
    config: FunctionConfig,
    queue: async_channel::Sender<Invocation>,
    pending: async_channel::Receiver<Invocation>,
    /// Processes currently waiting in `GET /invocation/next`.
    ready: AtomicUsize,
    /// The error payload of the last failed initialization, until a process initializes again:
    /// while set and no process is ready, invocations fail at once rather than wait in the queue
    /// through the restart backoff.
    init_failure: std::sync::Mutex<Option<String>>,
    /// Its invocations, durations, cold starts and crashes.
    metrics: FunctionMetrics,
}

impl Function {
    /// Fails every queued invocation at once: used when no process can take them (every one of
    /// them failed to start), so callers get the function error now instead of a timeout later.
    fn fail_queued(&self, error: &str) {
        *self.init_failure.lock().expect("function lock poisoned") = Some(error.to_string());
        if self.ready.load(Ordering::Acquire) > 0 {
            return;
        }
        while let Ok(invocation) = self.pending.try_recv() {
            let _ = invocation
                .reply
                .send(Err(IntegrationError::Function(error.to_string())));
        }
    }
}

/// A locally run function as a [`LambdaInvoker`].
#[derive(Debug, Clone)]
pub struct LocalFunction(Arc<Function>);

#[async_trait::async_trait]
impl LambdaInvoker for LocalFunction {
    async fn invoke(&self, payload: Bytes, trace_id: &str) -> Result<Bytes, IntegrationError> {
        if self.0.ready.load(Ordering::Acquire) == 0
            && let Some(error) = self
                .0
                .init_failure
                .lock()
                .expect("function lock poisoned")
                .clone()
        {
            self.0.metrics.refused();
            return Err(IntegrationError::Function(error));
        }
        let (reply, result) = oneshot::channel();
        let invocation = Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            trace_id: trace_id.to_string(),
            payload,
            reply,
        };
        self.0.queue.try_send(invocation).map_err(|_| {
            self.0.metrics.refused();
            IntegrationError::Unavailable(format!(
                "TooManyRequestsException: {QUEUE_CAPACITY} invocations of {} already waiting",
                self.0.name
            ))
        })?;
        // The sender is dropped unanswered only when the host shuts down.
        result.await.unwrap_or_else(|_| {
            Err(IntegrationError::Unavailable(format!(
                "{} stopped before answering",
                self.0.name
            )))
        })
    }
}

impl LocalFunction {
    /// The function's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

/// The functions this host runs; empty when `[functions]` is.
#[derive(Debug, Default)]
pub struct LocalFunctions {
    functions: HashMap<String, LocalFunction>,
    /// Cancelled when the host begins shutting down: processes that exit are not restarted.
    stopping: CancellationToken,
    /// Cancelled after the drain: every process is killed.
    shutdown: CancellationToken,
    processes: TaskTracker,
}

impl LocalFunctions {
    /// The functions `configs` declares, ready to take invocations but with no process yet:
    /// [`Self::start`] runs them. `region` and `account_id` make their ARNs; each function
    /// records on `metrics`.
    pub fn new(
        configs: &BTreeMap<String, FunctionConfig>,
        region: &str,
        account_id: &str,
        metrics: &Metrics,
    ) -> Self {
        let functions = configs
            .iter()
            .map(|(name, config)| {
                let (queue, pending) = async_channel::bounded(QUEUE_CAPACITY);
                let function = Arc::new(Function {
                    name: name.clone(),
                    arn: format!("arn:aws:lambda:{region}:{account_id}:function:{name}"),
                    config: config.clone(),
                    queue,
                    pending,
                    ready: AtomicUsize::new(0),
                    init_failure: std::sync::Mutex::new(None),
                    metrics: metrics.function(name),
                });
                (name.clone(), LocalFunction(function))
            })
            .collect();
        Self {
            functions,
            stopping: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            processes: TaskTracker::new(),
        }
    }

    /// Runs the `build` commands, then starts every function's processes. Processes that fail to
    /// start are retried with backoff in the background; a failed build or Runtime API listener
    /// stops the start, and then every process already started is killed before this returns.
    pub async fn start(&self, settings: &RuntimeSettings) -> Result<(), FunctionsError> {
        let configs: BTreeMap<String, FunctionConfig> = self
            .functions
            .iter()
            .map(|(name, f)| (name.clone(), f.0.config.clone()))
            .collect();
        run_builds(&configs).await?;
        if let Err(e) = self.spawn_all(settings).await {
            self.shutdown().await;
            return Err(e);
        }
        Ok(())
    }

    /// Starts every function's processes.
    async fn spawn_all(&self, settings: &RuntimeSettings) -> Result<(), FunctionsError> {
        for (name, function) in &self.functions {
            let config = &function.0.config;
            for index in 0..config.concurrency as usize {
                let slot = process::Slot::bind(function.0.clone(), index)
                    .await
                    .map_err(|source| FunctionsError::Listener {
                        function: name.clone(),
                        source,
                    })?;
                self.processes.spawn(slot.supervise(
                    settings.clone(),
                    self.stopping.clone(),
                    self.shutdown.clone(),
                ));
            }
            tracing::info!(
                function = %name,
                command = %env::expand(&config.command, |n| std::env::var(n).ok()),
                concurrency = config.concurrency,
                timeout = ?config.timeout,
                "local function started"
            );
        }
        Ok(())
    }

    /// The function called `name`, which may also be given as a function ARN (with or without a
    /// version qualifier), as the Lambda API accepts.
    pub fn function(&self, name: &str) -> Option<&LocalFunction> {
        let name = match name.strip_prefix("arn:") {
            // arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
            Some(rest) => rest.split(':').nth(5)?,
            None => name.split(':').next()?,
        };
        self.functions.get(name)
    }

    /// The function called `name` as an invoker (see [`Self::function`]).
    pub fn get(&self, name: &str) -> Option<Arc<dyn LambdaInvoker>> {
        self.function(name)
            .map(|f| Arc::new(f.clone()) as Arc<dyn LambdaInvoker>)
    }

    /// Called when the host begins shutting down: running processes keep serving (the drain's
    /// `$disconnect`s), but one that exits is no longer restarted.
    pub fn stop_restarts(&self) {
        self.stopping.cancel();
    }

    /// Stops every process and waits for them to exit; invocations still queued fail.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        self.shutdown.cancel();
        self.processes.close();
        self.processes.wait().await;
        for function in self.functions.values() {
            function.0.pending.close();
        }
    }
}

/// Runs each distinct `build` command once, in declaration order, with its output on the
/// host's own stdout and stderr so a first run shows the compiler's progress.
async fn run_builds(configs: &BTreeMap<String, FunctionConfig>) -> Result<(), FunctionsError> {
    let mut done: Vec<&Vec<String>> = Vec::new();
    for (name, config) in configs {
        if config.build.is_empty() || done.contains(&&config.build) {
            continue;
        }
        done.push(&config.build);
        let failed = |reason: String| FunctionsError::Build {
            function: name.clone(),
            reason,
        };
        tracing::info!(function = %name, command = ?config.build, "building");
        let status = tokio::process::Command::new(&config.build[0])
            .args(&config.build[1..])
            .stdin(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| failed(format!("could not run {:?}: {e}", config.build[0])))?;
        if !status.success() {
            return Err(failed(format!("{:?} exited with {status}", config.build)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn functions_are_found_by_name_or_arn() {
        let mut configs = BTreeMap::new();
        configs.insert(
            "chat".to_string(),
            FunctionConfig {
                command: "/nonexistent/chat".into(),
                ..FunctionConfig::default()
            },
        );
        let settings = RuntimeSettings {
            region: "us-east-1".into(),
            management_endpoint: "http://127.0.0.1:1/dev".into(),
            credentials: None,
        };
        let functions = LocalFunctions::new(
            &configs,
            "us-east-1",
            "000000000000",
            &Metrics::new("a", "dev"),
        );
        functions.start(&settings).await.unwrap();
        for name in [
            "chat",
            "chat:$LATEST",
            "arn:aws:lambda:us-east-1:000000000000:function:chat",
            "arn:aws:lambda:us-east-1:000000000000:function:chat:$LATEST",
        ] {
            assert_eq!(
                functions.function(name).map(LocalFunction::name),
                Some("chat"),
                "{name}"
            );
        }
        assert!(functions.function("other").is_none());
        assert!(functions.function("arn:aws:lambda:us-east-1").is_none());
        functions.shutdown().await;
    }

    #[tokio::test]
    async fn a_failed_build_stops_the_start_and_names_the_function() {
        let mut configs = BTreeMap::new();
        configs.insert(
            "chat".to_string(),
            FunctionConfig {
                command: "unused".into(),
                build: vec!["false".into()],
                ..FunctionConfig::default()
            },
        );
        let settings = RuntimeSettings {
            region: "us-east-1".into(),
            management_endpoint: String::new(),
            credentials: None,
        };
        let err = LocalFunctions::new(
            &configs,
            "us-east-1",
            "000000000000",
            &Metrics::new("a", "dev"),
        )
        .start(&settings)
        .await
        .unwrap_err();
        assert!(
            err.to_string().starts_with("functions.chat.build:"),
            "{err}"
        );
    }
}
