//! The local functions' processes when a start fails after they were spawned: every one of them
//! is killed before `run` returns, so a failed start leaves nothing running.

use connection_host::store::{
    Claim, ConnectionRecord, ConnectionStore, HostRecord, KeyClaim, Member, MembersPage,
    RecordsPage, SessionRecord, StoreError, StoredFrame,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use test_kit::process_running;

/// A store whose host registration fails, once the function's process has written its PID: the
/// start fails after the processes were spawned and running. Nothing else is reached.
#[derive(Debug)]
struct RegistrationFails {
    pid_file: PathBuf,
}

fn unreachable_store() -> StoreError {
    StoreError::Unavailable("this test's store answers nothing".into())
}

#[async_trait::async_trait]
impl ConnectionStore for RegistrationFails {
    async fn put_connection(&self, _: ConnectionRecord) -> Result<(), StoreError> {
        Err(unreachable_store())
    }
    async fn get_connection(&self, _: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        Err(unreachable_store())
    }
    async fn delete_connection(&self, _: &str) -> Result<Vec<String>, StoreError> {
        Err(unreachable_store())
    }
    async fn add_to_group(&self, _: &str, _: &Member) -> Result<bool, StoreError> {
        Err(unreachable_store())
    }
    async fn remove_from_group(&self, _: &str, _: &str) -> Result<Option<Member>, StoreError> {
        Err(unreachable_store())
    }
    async fn group_members(
        &self,
        _: &str,
        _: Option<&str>,
        _: usize,
    ) -> Result<MembersPage, StoreError> {
        Err(unreachable_store())
    }
    async fn group_count(&self, _: &str) -> Result<u64, StoreError> {
        Err(unreachable_store())
    }
    async fn groups_of(&self, _: &str) -> Result<Vec<String>, StoreError> {
        Err(unreachable_store())
    }
    async fn connections_of_host(
        &self,
        _: &str,
        _: Option<&str>,
        _: usize,
    ) -> Result<RecordsPage, StoreError> {
        Err(unreachable_store())
    }
    async fn register_host(&self, _: &HostRecord) -> Result<(), StoreError> {
        let started = Instant::now();
        while read_pid(&self.pid_file).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the function's process did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(unreachable_store())
    }
    async fn heartbeat(&self, _: &str, _: &str, _: i64) -> Result<bool, StoreError> {
        Err(unreachable_store())
    }
    async fn get_host(&self, _: &str) -> Result<Option<HostRecord>, StoreError> {
        Err(unreachable_store())
    }
    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        Err(unreachable_store())
    }
    async fn begin_reap(&self, _: &HostRecord) -> Result<bool, StoreError> {
        Err(unreachable_store())
    }
    async fn remove_host(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(unreachable_store())
    }
    async fn take_over(&self, _: &ConnectionRecord, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(unreachable_store())
    }
    async fn rotate_token(
        &self,
        _: &ConnectionRecord,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<bool, StoreError> {
        Err(unreachable_store())
    }
    async fn claim_key(&self, _: &str, _: &str, _: &Claim, _: i64) -> Result<KeyClaim, StoreError> {
        Err(unreachable_store())
    }
    async fn reclaim_key(
        &self,
        _: &str,
        _: &str,
        _: &Claim,
        _: &Claim,
        _: i64,
    ) -> Result<bool, StoreError> {
        Err(unreachable_store())
    }
    async fn release_key(&self, _: &str, _: &str, _: &Claim) -> Result<(), StoreError> {
        Err(unreachable_store())
    }
    async fn complete_key(&self, _: &str, _: &str, _: &str, _: i64) -> Result<(), StoreError> {
        Err(unreachable_store())
    }
    async fn append_frame(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &StoredFrame,
        _: i64,
    ) -> Result<bool, StoreError> {
        Err(unreachable_store())
    }
    async fn fence_frames(
        &self,
        _: &str,
        _: u64,
        _: &str,
        _: &str,
        _: i64,
    ) -> Result<bool, StoreError> {
        Err(unreachable_store())
    }
    async fn frames_after(&self, _: &str, _: u64) -> Result<Vec<StoredFrame>, StoreError> {
        Err(unreachable_store())
    }
    async fn newest_frames_start(
        &self,
        _: &str,
        _: &mut (dyn for<'f> FnMut(&'f StoredFrame) -> bool + Send),
    ) -> Result<u64, StoreError> {
        Err(unreachable_store())
    }
    async fn keep_ended_session(
        &self,
        _: &str,
        _: &SessionRecord,
        _: i64,
    ) -> Result<(), StoreError> {
        Err(unreachable_store())
    }
    async fn ended_session(&self, _: &str) -> Result<Option<SessionRecord>, StoreError> {
        Err(unreachable_store())
    }
}

fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn a_start_that_fails_after_spawning_functions_leaves_no_process() {
    let dir = std::env::temp_dir().join(format!("ch-failed-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let _ = std::fs::remove_file(&pid_file);
    // A function process that never initializes: it records its PID and waits.
    let config = format!(
        r#"
[store]
kind = "dynamodb"

[cluster]
advertise_url = "http://127.0.0.1:9"
secret = "0123456789abcdef0123"

[functions.idle]
command = "sh"
args = ["-c", "echo $$ > '{pid}.tmp' && mv '{pid}.tmp' '{pid}' && exec sleep 600"]
"#,
        pid = pid_file.display()
    );
    let config = connection_host::Config::from_toml(&config).expect("test config is valid");
    let listener = connection_host::bind(([127, 0, 0, 1], 0).into(), 16).expect("bind");
    let store = std::sync::Arc::new(RegistrationFails {
        pid_file: pid_file.clone(),
    });
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        connection_host::run_with_store(config, listener, store, std::future::pending()),
    )
    .await
    .expect("a failed registration ends the start");
    let error = result.expect_err("registration failed, so the start fails");
    assert!(
        error.to_string().contains("registering this host"),
        "{error}"
    );
    let pid = read_pid(&pid_file).expect("the function's process wrote its PID");
    // Killed and reaped before `run` returned; a generous bound covers a loaded machine.
    let started = Instant::now();
    while process_running(pid) {
        if started.elapsed() > Duration::from_secs(10) {
            // Clean up what the old behaviour leaves behind, then fail.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("function process {pid} still runs after the failed start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
