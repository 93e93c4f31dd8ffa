//! `fault-proxy`: the test kit's network fault proxy ([`test_kit::chaos`]) run by hand, in front
//! of one or more hosts on loopback. It prints its address (`fault-proxy listening on ADDR`),
//! runs until `--duration` is over or Ctrl-C, and prints its counters as it ends.
//!
//! ```text
//! fault-proxy --listen 127.0.0.1:9000 --upstream 127.0.0.1:8080 --upstream 127.0.0.1:8081 \
//!     --latency 20ms --jitter 10ms --bandwidth 1000000 \
//!     --chaos 500ms..3s --faults reset=1,blackhole=1,halfopen=0 --duration 5m
//! ```

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;
use test_kit::chaos::{ChaosConfig, ChaosProxy, ChaosSchedule, FaultWeights, Policy, Shaping};

/// A loopback TCP proxy that adds latency, jitter and a bandwidth cap, and breaks connections
/// (reset, black hole, half-open) on a random schedule.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Where clients connect (a loopback address; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A host to forward to (loopback); repeat for several.
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<SocketAddr>,
    /// How each new connection picks its upstream: round-robin or random.
    #[arg(long, default_value = "round-robin")]
    policy: Policy,
    /// Latency added each way (e.g. 20ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    latency: Duration,
    /// Up to this much more per chunk, each way, never reordering bytes (e.g. 10ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    jitter: Duration,
    /// Bytes per second at most, each way.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    bandwidth: Option<u64>,
    /// Each connection lives a random time in MIN..MAX (e.g. 500ms..3s), then a fault hits it.
    #[arg(long, value_parser = parse_range)]
    chaos: Option<(Duration, Duration)>,
    /// The weights of the faults that --chaos picks from.
    #[arg(long, default_value = "reset=1,blackhole=1,halfopen=0")]
    faults: FaultWeights,
    /// How long black-holed and half-open connections are held before they are closed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    max_hold: Duration,
    /// When the proxy stops by itself.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    duration: Duration,
}

/// `MIN..MAX`, two durations.
fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not MIN..MAX (e.g. 500ms..3s)"))?;
    let parse = |d: &str| humantime::parse_duration(d.trim()).map_err(|e| format!("{d:?}: {e}"));
    let (min, max) = (parse(min)?, parse(max)?);
    if min > max {
        return Err(format!("{s:?}: MIN is above MAX"));
    }
    Ok((min, max))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let shaping = Shaping {
        latency: args.latency,
        jitter: args.jitter,
        bandwidth: args.bandwidth,
    };
    let config = ChaosConfig {
        listen: args.listen,
        upstreams: args.upstreams,
        policy: args.policy,
        to_upstream: shaping,
        to_client: shaping,
        chaos: args.chaos.map(|(min, max)| ChaosSchedule {
            min,
            max,
            weights: args.faults,
        }),
        lifetime: args.duration,
        max_hold: args.max_hold,
        ..ChaosConfig::default()
    };
    let proxy = ChaosProxy::start(config)
        .await
        .context("starting the fault proxy")?;
    println!("fault-proxy listening on {}", proxy.addr());
    let interrupted = tokio::select! {
        () = proxy.finished() => false,
        signal = tokio::signal::ctrl_c() => {
            signal.context("waiting for Ctrl-C")?;
            true
        }
    };
    let stats = if interrupted {
        proxy.shutdown().await
    } else {
        proxy.stats()
    };
    println!("fault-proxy stopped: {stats}");
    Ok(())
}
