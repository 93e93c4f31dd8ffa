//! The workspace's `connection-host` binary as real processes, each with its own configuration
//! file and log, and what they need: free ports, temporary directories, other workspace binaries.

use crate::eventually_some;
use std::ffi::OsStr;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The `connection-host` binary the process tests start: `$CONNECTION_HOST_BIN` when set (e.g. a
/// release build, which the chaos step of tests/run.sh uses for its scale), else the workspace
/// build's (see [`workspace_binary`]).
pub fn host_binary() -> PathBuf {
    match std::env::var_os("CONNECTION_HOST_BIN").filter(|bin| !bin.is_empty()) {
        Some(bin) => {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "CONNECTION_HOST_BIN={bin:?} is not a file");
            bin
        }
        None => workspace_binary("connection-host"),
    }
}

/// A binary of the workspace build, e.g. a function such as `chat`: next to the `deps/` directory
/// holding the running test binary (`<target>/debug/deps/…` → `<target>/debug/{name}`), else
/// `$CARGO_TARGET_DIR/debug/{name}`. Panics, saying how to build it, when neither exists.
pub fn workspace_binary(name: &str) -> PathBuf {
    let name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(profile_dir.join(&name));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        candidates.push(PathBuf::from(target).join("debug").join(&name));
    }
    match candidates.iter().find(|c| c.is_file()) {
        Some(found) => found.clone(),
        None => panic!(
            "the {name} binary is missing (looked at {candidates:?}): build the workspace \
             first with `cargo build --workspace --all-targets` (tests/run.sh does)"
        ),
    }
}

/// `n` distinct free loopback addresses. The sockets are held until all `n` are found, then
/// closed, so another process could take one before the host binds it (unlikely on loopback).
pub fn free_loopback_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// A fresh directory under the system temporary directory, removed on drop unless the thread is
/// panicking (then its path is printed, for the logs inside).
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/{prefix}-{random}`.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A `Command` for the host binary with a clean environment for it: no inherited
/// `CONNECTION_HOST_*` or `AWS_*` variables, then `env` (e.g. the endpoint and credentials).
pub fn host_command(config: &Path, env: &[(&str, &str)]) -> Command {
    host_command_with_args(config, &[], env)
}

/// [`host_command`] with more arguments after `--config {config}`, e.g. `--template FILE`.
pub fn host_command_with_args(config: &Path, args: &[&OsStr], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(host_binary());
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CONNECTION_HOST_") || k.starts_with("AWS_") {
            command.env_remove(&key);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// A host process, killed (SIGKILL) on drop, also when a test panics; its stdout and stderr go to
/// a log file, which is printed when the test panics.
pub struct HostProcess {
    /// Name used in messages, e.g. `host-a`.
    pub name: String,
    /// The configuration file it was started with.
    pub config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl HostProcess {
    /// Starts `connection-host --config {config}` with `env` (see [`host_command`]), logging to
    /// `{log}`; appends to the log, so a restart keeps the previous run's lines.
    pub fn spawn(name: &str, config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_with_args(name, config, &[], log, env)
    }

    /// [`HostProcess::spawn`] with more command-line arguments (see [`host_command_with_args`]).
    pub fn spawn_with_args(
        name: &str,
        config: &Path,
        args: &[&OsStr],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the host's log file");
        let err = out.try_clone().unwrap();
        let child = host_command_with_args(config, args, env)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: could not start the host binary: {e}"));
        Self {
            name: name.to_string(),
            config: config.to_path_buf(),
            log: log.to_path_buf(),
            child: Some(child),
        }
    }

    /// The process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Polls `GET {health_url}` until it answers 200, for at most `bound`; panics (and prints the
    /// log) when the process exits first or the bound passes.
    pub async fn wait_healthy(&mut self, health_url: &str, bound: Duration) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let name = self.name.clone();
        let exited = eventually_some(
            &format!("{name}: {health_url} to answer 200"),
            bound,
            async || {
                if let Ok(r) = http.get(health_url).send().await
                    && r.status() == 200
                {
                    return Some(None);
                }
                self.try_exit_status().map(Some)
            },
        )
        .await;
        // On either panic, `Drop` prints the process's log.
        if let Some(status) = exited {
            panic!("{name} exited with {status} before {health_url} answered");
        }
    }

    /// The exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Kills the process (SIGKILL on Unix: no drain, no Close frames, no goodbye to the store)
    /// and reaps it; returns its exit status. A no-op returning `None` once killed.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Everything the process (and earlier runs with the same log) wrote.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Writes `config` into `dir`, starts a host with it (see [`HostProcess::spawn`]) and waits until
/// `http://{addr}/health` answers.
pub async fn start_host(
    name: &str,
    dir: &Path,
    addr: SocketAddr,
    config: &str,
    env: &[(&str, &str)],
) -> HostProcess {
    start_host_with_args(name, dir, addr, config, &[], env).await
}

/// [`start_host`] with more command-line arguments, e.g. `--template FILE`.
pub async fn start_host_with_args(
    name: &str,
    dir: &Path,
    addr: SocketAddr,
    config: &str,
    args: &[&OsStr],
    env: &[(&str, &str)],
) -> HostProcess {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, config).expect("write the host's configuration");
    let mut host =
        HostProcess::spawn_with_args(name, &file, args, &dir.join(format!("{name}.log")), env);
    host.wait_healthy(&format!("http://{addr}/health"), Duration::from_secs(30))
        .await;
    host
}

/// Whether `pid` is a running process (a zombie is not: it has exited, only unreaped).
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (COMMAND) STATE …": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
