//! A self-hosted API Gateway WebSocket API: holds client WebSockets, posts every connection event
//! to handlers with exactly the event JSON API Gateway sends, and serves the `@connections`
//! management API wire-compatibly, so the official AWS SDK clients work unchanged.
//!
//! Start it with [`run`]; see `Config` for every setting.

pub mod authorizer;
pub mod cluster;
pub mod config;
pub mod events;
pub mod gateway;
pub mod host;
pub mod ids;
pub mod integration;
pub mod limits;
pub mod local_lambda;
pub mod management;
pub mod registry;
pub mod routing;
pub mod server;
pub mod store;
pub mod template;
pub mod tls;

pub use config::Config;
pub use host::{BuildError, Host};
pub use server::{Listeners, bind, run, run_with_store};
