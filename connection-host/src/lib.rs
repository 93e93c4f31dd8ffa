//! A self-hosted API Gateway WebSocket API: holds client WebSockets, posts every connection event
//! to handlers with exactly the event JSON API Gateway sends, and serves the `@connections`
//! management API wire-compatibly, so the official AWS SDK clients work unchanged.
//!
//! Start it with [`run`]; see `Config` for every setting.
//!
//! # Public API
//!
//! What a program embedding the host or a test needs is public: [`config`], [`host`]
//! ([`Host::build`]), [`server`] ([`run`], [`run_with_store`], [`Listeners`]), [`store`] (the
//! [`store::ConnectionStore`] trait and its in-memory and DynamoDB implementations), the wire
//! formats ([`events`], [`ids`], [`routing`]'s route selection expressions, [`sigv4`]), the
//! [`integration::Integration`] trait, [`management::path`], and [`metrics`] (the Prometheus
//! series and their read-back). Everything else (gateway,
//! cluster, authorizers, the local Lambda runtime, limits, TLS, the template loader) is private
//! to the crate, so it can change without breaking anyone.
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
//! 3      host routing::table ending sessions      | Host::build(&Config): the one compile step,
//!                                                 |   the route table it compiles, how a
//!                                                 |   connection ends, reliable sessions
//! 2      store integration local_lambda           | adapters: each has from_config and its own error
//!        authorizer limits tls registry           |   type
//!        cluster template access_keys metrics     |
//!        emf access_log                           |
//! 1      config                                   | plain data: serde types, defaults, doc comments
//! 0      ids events routing authorizer::identity  | formats and parsers, no I/O (routing: the route
//!        sigv4 peer_auth sessions::envelope       |   expressions; the reliable subprotocol's
//!        sessions::token sessions::replay         |   frames, tokens and sequence)
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

pub(crate) mod access_keys;
pub(crate) mod access_log;
pub(crate) mod authorizer;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod emf;
pub(crate) mod ending;
pub mod events;
pub(crate) mod gateway;
pub mod host;
pub mod ids;
pub mod integration;
pub(crate) mod limits;
pub(crate) mod local_lambda;
pub mod management;
pub mod metrics;
pub mod peer_auth;
pub(crate) mod registry;
pub mod routing;
pub mod server;
pub(crate) mod sessions;
pub mod sigv4;
pub mod store;
pub(crate) mod template;
pub(crate) mod tls;

pub use config::Config;
pub use host::{BuildError, Host};
pub use server::{Listeners, bind, run, run_with_store};
