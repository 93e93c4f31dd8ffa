//! The logic of the example functions in `src/bin/`, kept here so it can be unit-tested with
//! captured events and test doubles; the binaries only read their configuration and start the
//! Lambda runtime.

pub mod authorizer;
pub mod chat;
pub mod echo;
