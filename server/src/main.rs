//! `fedval-server`: the coordinator binary. Parses flags and an optional TOML file,
//! sets up tracing, opens the store, and calls `fedval_server::run` until Ctrl-C or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use fedval_server::config::{StoreKind, load_server_file};
use fedval_server::store::Store;
use fedval_server::{ServerSettings, run};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreArg {
    Redb,
    Sled,
    Memory,
}

#[derive(Debug, Parser)]
#[command(
    name = "fedval-server",
    version,
    about = "fedval federated-learning coordinator"
)]
struct Args {
    /// Settings file (TOML; JSON if it ends in .json). Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory, created on first start [default: ./fedval-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Storage backend [default: redb].
    #[arg(long, value_enum)]
    store: Option<StoreArg>,
    /// Admin token for the Admin service.
    #[arg(long, env = "FEDVAL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match serve(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fedval-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Some(load_server_file(path)?),
        None => None,
    };
    let listen: SocketAddr = match (args.listen, file.as_ref().and_then(|f| f.listen.as_deref())) {
        (Some(addr), _) => addr,
        (None, Some(text)) => text
            .parse()
            .with_context(|| format!("config file: bad listen address {text:?}"))?,
        (None, None) => ([127, 0, 0, 1], 50051).into(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.data_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("fedval-data"));
    let kind = match args.store {
        Some(StoreArg::Redb) => StoreKind::Redb,
        Some(StoreArg::Sled) => StoreKind::Sled,
        Some(StoreArg::Memory) => StoreKind::Memory,
        None => file.as_ref().and_then(|f| f.store).unwrap_or_default(),
    };
    let Some(admin_token) = args
        .admin_token
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.admin_token.clone()))
    else {
        bail!(
            "no admin token: pass --admin-token, set FEDVAL_ADMIN_TOKEN, or put admin_token in the config file"
        );
    };
    let federations = match &file {
        Some(f) => f.resolve_federations()?,
        None => Vec::new(),
    };
    let store = Store::open(kind, &data_dir)
        .with_context(|| format!("opening the {kind:?} store in {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, data_dir = %data_dir.display(), store = ?kind, "starting");
    let mut settings = ServerSettings::new(store, admin_token);
    settings.federations = federations;
    run(listener, settings, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}
