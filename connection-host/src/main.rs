//! The `connection-host` binary: parses the command line and calls `connection_host::run`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use connection_host::Host;
use connection_host::config::{Config, DEFAULT_CONFIG_TOML, Overrides, StoreKind};
use connection_host::store::{DynamoDbStore, MemoryStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Self-hosted API Gateway WebSocket APIs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); `connection-host config default` prints a complete one.
    #[arg(long, short, global = true, env = "CONNECTION_HOST_CONFIG")]
    config: Option<PathBuf>,
    /// Address for client WebSockets (and the management API unless --management-listen is set).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Separate address for the management API and /health.
    #[arg(long)]
    management_listen: Option<SocketAddr>,
    /// Stage name (the first path segment of every URL); wins over a template's stage.
    #[arg(long, global = true)]
    stage: Option<String>,
    /// CloudFormation/SAM template (YAML or JSON) whose AWS::ApiGatewayV2 resources define the
    /// routes, integrations, authorizers and stage, overriding `[template] file`.
    #[arg(long, global = true)]
    template: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Work with the connection store configured in `[store]`.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Create the DynamoDB tables named in `[store]` (on-demand capacity, TTL on `ttl`); tables
    /// that already exist are left as they are. Uses `[store] endpoint_url`, else the standard AWS
    /// configuration (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials).
    Init,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the complete, commented default configuration.
    Default,
    /// Check a configuration file (and its template, if any) and report the first problem with
    /// its field, or what the template defines.
    Check {
        /// The file to check; without it, the one `--config` or `CONNECTION_HOST_CONFIG` names,
        /// so the check reads exactly what a start would.
        file: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        management_listen: cli.management_listen,
        stage: cli.stage.clone(),
        template: cli.template.clone(),
    };
    match cli.command {
        Some(Command::Config {
            action: ConfigAction::Default,
        }) => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(())
        }
        Some(Command::Config {
            action: ConfigAction::Check { file },
        }) => {
            let Some(file) = file.or(cli.config) else {
                eprintln!(
                    "config check: name the file to check (FILE, --config or CONNECTION_HOST_CONFIG)"
                );
                std::process::exit(2);
            };
            check(&file, &overrides)
        }
        Some(Command::Store {
            action: StoreAction::Init,
        }) => {
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            config.validate()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(store_init(&config))
        }
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                // Colour codes only for a terminal; log files and collectors get plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .init();
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let listeners = connection_host::Listeners::bind(&config)
                    .with_context(|| format!("could not listen on {}", config.server.listen))?;
                connection_host::run(config, listeners, shutdown_signal()).await?;
                Ok(())
            })
        }
    }
}

/// `config check`: loads `file` and builds the host from it as a start does (template, keys,
/// certificates, secrets; no socket, process or store call), and prints what it defines or the
/// first problem, with its field; a problem exits 1.
fn check(file: &Path, overrides: &Overrides) -> anyhow::Result<()> {
    let built = Config::load(Some(file), overrides)
        .map_err(connection_host::BuildError::from)
        .and_then(|config| {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime starts");
            // Building calls no store, so the in-memory one stands in for any.
            runtime.block_on(Host::build(config, Arc::new(MemoryStore::new())))
        });
    match built {
        Ok(host) => {
            let (config, definition) = (host.config(), host.definition());
            println!(
                "{}: ok ({} routes, {} integrations, stage {})",
                file.display(),
                config.routes.len(),
                config.integrations.len(),
                config.api.stage
            );
            for line in definition.iter().flat_map(|d| d.summary()) {
                println!("{line}");
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            std::process::exit(1);
        }
    }
}

/// `store init`: creates the DynamoDB tables whatever `store.kind` says, so the tables can be
/// prepared before the hosts are switched over.
async fn store_init(config: &Config) -> anyhow::Result<()> {
    if config.store.kind != StoreKind::Dynamodb {
        println!("note: [store] kind is not \"dynamodb\"; creating the tables anyway");
    }
    let store = DynamoDbStore::from_env(config).await;
    let report = store
        .create_tables()
        .await
        .context("could not create the DynamoDB tables")?;
    for line in report {
        println!("{line}");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
