//! fedval-server: the federated-learning coordinator.
//!
//! One server hosts many federations. Clients talk to the `Coordinator` service
//! (enroll, pull a task, download the global model, upload an update); operators talk
//! to the `Admin` service (create, inspect and stop federations; read rounds and
//! contributions; watch events). Each federation's round loop selects clients,
//! collects updates until a deadline, aggregates them with the configured aggregator
//! (FedAvg by default) and commits the round atomically to the store; its valuation
//! worker then values the participants (Shapley value estimators) behind training.
//!
//! # Layout
//! - [`config`]: the federation configuration (TOML/JSON/proto) and its validation.
//! - [`convert`]: wire <-> domain conversions of the configuration.
//! - [`auth`]: bearer tokens (stored hashed, compared in constant time), admin token.
//! - [`store`]: durable state behind one `Store` (redb default, sled optional, memory).
//! - [`federation`]: one federation's state and the operations handlers call.
//! - `round_loop`: the horizontal round state machine.
//! - [`round_close`]: aggregation and validation metrics of a closed round (and the RFFL
//!   round).
//! - [`fair_reward`]: the fair yet asymptotically equal reward policy's round: who
//!   receives the newest global model.
//! - [`round_value`]: valuation of a committed round (the estimator the config picks).
//! - `valuation_worker`: values committed rounds behind the round loop.
//! - [`vertical`]: vertical federations (the server holds the labels, parties exchange
//!   embeddings for gradients): settings, round arithmetic, the pass driver, VerFedSV.
//! - [`bandit`]: bandit federations (federated LinUCB with Truth-FedBan payments): the
//!   protocol, its round arithmetic, the submissions and the driver.
//! - [`registry`]: the federations of a server and their loops.
//! - [`coordinator`], [`admin`]: the gRPC services.
//! - [`error`]: domain errors and their one mapping onto gRPC statuses.
//!
//! [`run`] serves everything on a listener until a shutdown future resolves; the
//! `fedval-server` binary, the simulator and the tests all go through it.

pub mod admin;
pub mod auth;
pub mod bandit;
pub mod config;
pub mod convert;
pub mod coordinator;
pub mod error;
pub mod fact;
pub mod fair_reward;
pub mod federation;
pub mod registry;
pub mod round_close;
mod round_loop;
pub mod round_value;
pub mod store;
mod valuation_worker;
pub mod vertical;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fedval_proto::v1 as pb;
use fedval_proto::v1::admin_server::AdminServer;
use fedval_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;

use crate::admin::{AdminService, admin_interceptor};
use crate::auth::AdminToken;
use crate::config::FederationConfig;
use crate::coordinator::CoordinatorService;
use crate::error::ServiceError;
use crate::registry::Registry;
use crate::store::Store;

/// Largest gRPC message the Coordinator accepts (tensor chunks are ~1 MiB).
pub const MAX_COORDINATOR_MESSAGE: usize = 8 << 20;
/// Largest gRPC message the Admin service accepts (a config carries its validation set).
pub const MAX_ADMIN_MESSAGE: usize = 256 << 20;

/// Everything a server needs besides its listener.
#[derive(Debug)]
pub struct ServerSettings {
    /// Where state lives.
    pub store: Store,
    /// The admin token (plain; only its hash is kept in memory).
    pub admin_token: String,
    /// Federations to create at start when they do not exist yet.
    pub federations: Vec<FederationConfig>,
    /// Size of the chunks models are streamed in.
    pub chunk_bytes: usize,
}

impl ServerSettings {
    /// Settings with the default chunk size and no federations to create.
    pub fn new(store: Store, admin_token: impl Into<String>) -> Self {
        ServerSettings {
            store,
            admin_token: admin_token.into(),
            federations: Vec::new(),
            chunk_bytes: fedval_core::tensor::DEFAULT_CHUNK_BYTES,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Restoring or creating federations failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The gRPC transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Building the reflection service failed.
    #[error("reflection service: {0}")]
    Reflection(String),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves the Coordinator, Admin, health and reflection services on `listener` until
/// `shutdown` resolves. Federations in the store are restored and resume at their last
/// committed round.
pub async fn run(
    listener: TcpListener,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let registry = Registry::open(settings.store)?;
    for config in settings.federations {
        if registry.get(&config.id).is_err() {
            registry.create(config)?;
        }
    }
    let admin_token = Arc::new(AdminToken::new(&settings.admin_token));

    let coordinator = CoordinatorServer::new(CoordinatorService::new(
        registry.clone(),
        settings.chunk_bytes,
    ))
    .max_decoding_message_size(MAX_COORDINATOR_MESSAGE)
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Zstd);
    let admin = AdminServer::new(AdminService::new(registry.clone()))
        .max_decoding_message_size(MAX_ADMIN_MESSAGE)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
    let admin = InterceptedService::new(admin, admin_interceptor(admin_token));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "fedval server listening");
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_adaptive_window(Some(true))
        .max_frame_size(Some(1 << 20))
        .concurrency_limit_per_connection(256)
        .add_service(health)
        .add_service(reflection)
        .add_service(coordinator)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await;
    registry.shutdown();
    tracing::info!("fedval server stopped");
    Ok(result?)
}

/// A server running on a task of the current runtime (simulator and tests).
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Binds `addr` (port 0 picks a free port) and serves on a new task.
    pub async fn start(addr: SocketAddr, settings: ServerSettings) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(run(listener, settings, async {
            let _ = rx.await;
        }));
        Ok(RunningServer {
            addr,
            shutdown: Some(tx),
            handle,
        })
    }

    /// `http://addr`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown: stops accepting, lets in-flight calls finish, stops the loops.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(Duration::from_secs(10), &mut self.handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ServerError::Service(ServiceError::Internal(
                join.to_string(),
            ))),
            Err(_) => {
                self.handle.abort();
                Ok(())
            }
        }
    }
}
