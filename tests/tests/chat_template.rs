//! The demo started from the SAM template (`functions/demo-template.toml` with `--template`): the
//! template's routes, integrations, authorizer and stage, served with the real `authorizer`,
//! `chat` and `echo` binaries under the host's local Lambda runtime, pass the same chat scenario
//! as the demo configured by hand (tests/tests/chat.rs), and the template's two-way route answers.

use e2e_tests::chat::{
    connect, demo_config, next_json, repo_root, send, three_clients_chat_across_rooms,
};
use serde_json::json;
use std::ffi::OsStr;
use test_kit::{TempDir, free_loopback_addrs, host_binary, start_host_with_args};

/// The template the host reads, relative to the repository: the SAM template that deploys the chat
/// to API Gateway and Lambda.
const TEMPLATE: &str = "infra/managed.yaml";

#[tokio::test]
async fn three_clients_chat_through_the_api_the_template_defines() {
    let dir = TempDir::new("chat-template");
    let addr = free_loopback_addrs(1)[0];
    let config = demo_config("functions/demo-template.toml", addr);
    assert!(
        !config.contains("[routes") && !config.contains("[authorizers"),
        "the API definition must come from the template alone"
    );
    let template = repo_root().join(TEMPLATE);
    let host = start_host_with_args(
        "template",
        dir.path(),
        addr,
        &config,
        &[OsStr::new("--template"), template.as_os_str()],
        &[],
    )
    .await;
    three_clients_chat_across_rooms(addr, &host).await;

    // The template's two-way echo route: the echo function posts the message back through the
    // @connections API and returns it as the route response, so it arrives twice.
    let mut dave = connect(addr, "dave").await.expect("dave");
    let message = json!({"action": "echo", "text": "twice"});
    send(&mut dave, message.clone()).await;
    assert_eq!(next_json(&mut dave).await, message);
    assert_eq!(next_json(&mut dave).await, message);
}

#[test]
fn config_check_lists_what_the_template_defines() {
    let dir = TempDir::new("chat-template-check");
    let file = dir.path().join("demo-template.toml");
    std::fs::write(
        &file,
        demo_config("functions/demo-template.toml", free_loopback_addrs(1)[0]),
    )
    .unwrap();
    let template = repo_root().join(TEMPLATE);
    let out = std::process::Command::new(host_binary())
        .args([OsStr::new("config"), OsStr::new("check"), file.as_os_str()])
        .args([OsStr::new("--template"), template.as_os_str()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok (4 routes, 2 integrations, stage dev)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route $connect -> ChatIntegration, authorizer GuestAuthorizer"),
        "{stdout}"
    );
    assert!(stdout.contains("-> local function chat"), "{stdout}");
    assert!(stdout.contains("-> local function authorizer"), "{stdout}");

    // The hand-written demo configuration defines routes too: refused, naming the section.
    let out = std::process::Command::new(host_binary())
        .args(["config", "check"])
        .arg(repo_root().join("functions/demo.toml"))
        .args([OsStr::new("--template"), template.as_os_str()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes: the template"), "{stderr}");
}
