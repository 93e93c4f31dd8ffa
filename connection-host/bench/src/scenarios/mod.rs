//! One module per scenario (or family of scenarios sharing a loop).

mod baseline;
mod connect;
mod echo;
mod idle_memory;
mod post;
mod presence;
mod reliable;

pub(crate) use baseline::baseline;
pub(crate) use connect::{connect_rate, connect_rate_dynamodb};
pub(crate) use echo::{echo_http, echo_lambda};
pub(crate) use idle_memory::idle_memory;
pub(crate) use post::{post, post_cross_host, post_dynamodb};
pub(crate) use presence::{presence_list, presence_list_dynamodb};
pub(crate) use reliable::{reliable, reliable_store};
