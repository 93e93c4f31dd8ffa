//! One module per scenario (or family of scenarios sharing a loop).

mod baseline;
mod broadcast;
mod connect;
mod echo;
mod idle_memory;
mod post;
mod presence;
mod reliable;
mod scale;

pub(crate) use baseline::baseline;
pub(crate) use broadcast::{Target, broadcast};
pub(crate) use connect::{connect_rate, connect_rate_dynamodb};
pub(crate) use echo::{echo_http, echo_lambda};
pub(crate) use idle_memory::idle_memory;
pub(crate) use post::{post, post_cross_host, post_dynamodb};
pub(crate) use presence::presence_list;
pub(crate) use reliable::{reliable, reliable_store};
pub(crate) use scale::{Shape, default_dynalite, loader_main, scale, scale_broadcast};
