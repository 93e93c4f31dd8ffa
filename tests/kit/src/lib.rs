//! The one test harness of the workspace, used by connection-host's integration tests, ws-handler's
//! tests and the end-to-end tests in `tests/tests/`.
//!
//! - Waiting: [`within`] and [`within_for`] bound a future; [`eventually`] and [`eventually_some`]
//!   poll a condition until it holds, so a test waits for the event itself instead of sleeping.
//! - DynamoDB: [`dynamodb_test_endpoint`] (`DYNAMODB_TEST_ENDPOINT`, moto under `tests/run.sh`),
//!   [`dynamodb_client`], [`unique_table`] and [`TestTables`] (a host's two tables, created and
//!   deleted per test); [`proxy::FaultProxy`] makes that endpoint unreachable or slow on demand.
//! - Hosts: [`TestHost`] runs `connection_host` in the test process on a loopback port from a TOML
//!   configuration; [`HostProcess`] and [`start_host`] run the workspace's `connection-host`
//!   binary as a process with its own configuration file.
//! - Handlers: [`Handler`], an HTTP integration on a loopback port that records every event and
//!   answers with a [`Reply`].
//! - Clients: WebSocket ([`connect`], [`try_connect`], [`next_text`], [`expect_close`], …), raw
//!   TCP for exact request heads and frames ([`raw_exchange`], [`raw_upgrade`], [`client_frame`]),
//!   and the official SDK clients ([`mgmt_client`], [`lambda_client`]).
//! - Reliable sessions: [`reliable_connect`], [`next_frame`], [`send_frame`], [`resume_offer`]
//!   speak the `ch-reliable.v1` subprotocol with raw frames.
//! - Metrics: [`scrape`] and [`metric`] read a host's `GET /metrics` ([`Exposition`]).
//! - Network faults: [`chaos::ChaosProxy`], a loopback TCP proxy in front of one or more hosts
//!   that adds latency, jitter and bandwidth caps and resets, black-holes or half-opens
//!   connections, on demand or on a random schedule (the `fault-proxy` binary runs one by hand).
//!
//! Everything is exported at the root, so a suite's `mod common` can be `pub use test_kit::*;`.

pub mod chaos;
mod dynamodb;
mod handler;
mod host;
mod metrics;
mod process;
pub mod proxy;
mod reliable;
mod sdk;
mod wait;
mod ws;

pub use dynamodb::*;
pub use handler::*;
pub use host::*;
pub use metrics::*;
pub use process::*;
pub use reliable::*;
pub use sdk::*;
pub use wait::*;
pub use ws::*;

/// A `whoami` route (a mock integration) that tells a client its connection ID: add it to a host's
/// configuration and send `{"action":"whoami"}`.
pub const WHOAMI: &str = r#"
[routes.whoami]
integration = "whoami"
two_way = true
[integrations.whoami]
type = "mock"
response_template = '{"connectionId":"$context.connectionId"}'
"#;
