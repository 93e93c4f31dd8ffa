//! A self-hosted API Gateway WebSocket API: holds client WebSockets, posts every connection event
//! to handlers with exactly the event JSON API Gateway sends, and serves the `@connections`
//! management API wire-compatibly, so the official AWS SDK clients work unchanged.
//!
//! Start it with [`run`]; see `Config` for every setting.
//!
//! # Layers
//!
//! A module imports only modules in lower layers, so the crate has no import cycle and each layer
//! can be read, tested and changed without the ones above it. A unit is a module with everything
//! under it, except a submodule listed on its own row (`cluster::liveness` sits above `cluster`).
//!
//! ```text
//! layer  units                                    | role
//! 5      server                                   | server::run: wires listeners, host and shutdown
//! 4      gateway management cluster::liveness     | front ends: sockets and HTTP in, calls into the host
//! 3      host routing::table                      | Host::build(&Config): the one compile step,
//!                                                 |   and the route table it compiles
//! 2      store integration local_lambda           | adapters: each has from_config and its own error
//!        authorizer limits tls registry           |   type
//!        cluster template access_keys             |
//! 1      config                                   | plain data: serde types, defaults, doc comments
//! 0      ids events routing authorizer::identity  | formats and parsers, no I/O (routing: the route
//!        sigv4                                    |   expressions)
//! ```
//!
//! The test `tests/tests/layering.rs` reads this table and fails on any reference to a unit in a
//! higher layer (`use crate::…`, `crate::…` paths, `super::` paths), and on an import cycle within
//! a layer. The edges the code still has against this order are listed, each with its reason, in
//! `connection-host/layering-allow.txt`; that list only shrinks, since an entry whose edge is gone
//! fails the test too.

// No unsafe code in the library but one documented site: setting the parent-death signal of a
// function's process before `exec` (`local_lambda::process::die_with_host`), which no safe API
// offers. Every other use fails the build.
#![deny(unsafe_code)]

pub mod access_keys;
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
pub mod sigv4;
pub mod store;
pub mod template;
pub mod tls;

pub use config::Config;
pub use host::{BuildError, Host};
pub use server::{Listeners, bind, run, run_with_store};
