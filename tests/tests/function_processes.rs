//! The local functions' processes never outlive their host: a host killed with SIGKILL takes them
//! with it (Linux's parent-death signal), and a host that is shutting down does not restart one
//! that exits.

use futures_util::StreamExt;
use std::path::Path;
use std::time::Duration;
use test_kit::{
    HostProcess, TempDir, eventually, free_loopback_addrs, process_running, start_host, ws_connect,
};

/// The PIDs the function's processes wrote, one line per start.
fn starts(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A function that never initializes: each process appends its PID to `starts` and waits.
fn idle_function(starts: &Path) -> String {
    format!(
        r#"
[functions.idle]
command = "sh"
args = ["-c", "echo $$ >> '{}' && exec sleep 600"]
"#,
        starts.display()
    )
}

/// Kills whatever a failed run left behind, so a failing test does not leak processes.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            if process_running(*pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

#[tokio::test]
async fn a_host_killed_with_sigkill_takes_its_function_processes_with_it() {
    let dir = TempDir::new("pdeathsig");
    let addr = free_loopback_addrs(1)[0];
    let file = dir.path().join("starts");
    let config = format!("[server]\nlisten = \"{addr}\"\n{}", idle_function(&file));
    let mut host = start_host("pdeathsig", dir.path(), addr, &config, &[]).await;
    eventually(
        "the function's process started",
        Duration::from_secs(30),
        || async { !starts(&file).is_empty() },
    )
    .await;
    let pid = starts(&file)[0];
    let _leftovers = KillOnDrop(vec![pid]);
    assert!(process_running(pid));
    // SIGKILL: no drain, no chance for the host to kill anything itself.
    host.kill();
    let took = eventually(
        "the function's process exited with its host",
        Duration::from_secs(10),
        || async { !process_running(pid) },
    )
    .await;
    println!("function process gone {took:?} after its host was SIGKILLed");
}

#[tokio::test]
async fn a_function_process_that_exits_during_shutdown_is_not_restarted() {
    let dir = TempDir::new("no-restart");
    let addr = free_loopback_addrs(1)[0];
    let file = dir.path().join("starts");
    // `$disconnect` goes to a handler that never answers, so the drain lasts `drain_timeout`:
    // the window in which a process that exits used to be restarted.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = hang.accept().await {
            sockets.push(socket);
        }
    });
    let config = format!(
        r#"
[server]
listen = "{addr}"
drain_timeout = "3s"

[routes."$disconnect"]
integration = "hang"

[integrations.hang]
type = "http"
url = "http://{hang_addr}/"
{}"#,
        idle_function(&file)
    );
    let mut host: HostProcess = start_host(
        "no-restart",
        dir.path(),
        addr,
        &config,
        &[("RUST_LOG", "info")],
    )
    .await;
    eventually(
        "the function's process started",
        Duration::from_secs(30),
        || async { !starts(&file).is_empty() },
    )
    .await;
    let first = starts(&file)[0];
    let mut leftovers = KillOnDrop(vec![first]);
    let mut ws = ws_connect(&format!("ws://{addr}/dev"))
        .await
        .expect("connect");
    signal(host.pid().expect("host runs"), "TERM");
    // The 1001 Close frame: the host is shutting down and draining.
    test_kit::within_for("the close frame", Duration::from_secs(10), async {
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    // The process exits while the host drains (as after a Ctrl-C to the whole process group).
    signal(first, "KILL");
    eventually("the host exited", Duration::from_secs(30), || {
        let exited = host.try_exit_status().is_some();
        async move { exited }
    })
    .await;
    held.abort();
    let pids = starts(&file);
    leftovers.0 = pids.clone();
    assert_eq!(
        pids.len(),
        1,
        "the function's process was restarted during shutdown: {pids:?}; host log:\n{}",
        host.log_text()
    );
}
