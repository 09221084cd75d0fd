//! fedval-client: the SDK an organisation uses to run a federated node, and the
//! `fedval-client` binary built on it.
//!
//! A node enrolls in a federation, then loops: pull a task, download the global model, train
//! on data that never leaves the machine, upload the update, until the federation is done.
//!
//! # Brief overview
//! - [`connect`] opens a gRPC channel with fedval's transport settings.
//! - [`FederationClient`] is one node's identity (client id + bearer token) and the
//!   Coordinator calls made as that node: [`enroll`](FederationClient::enroll),
//!   [`pull_task`](FederationClient::pull_task),
//!   [`download_model`](FederationClient::download_model),
//!   [`upload_update`](FederationClient::upload_update),
//!   [`heartbeat`](FederationClient::heartbeat).
//! - [`Trainer`] is the hook for local training (two methods, Flower-style);
//!   [`ModelTrainer`] implements it with fedval-core's built-in models.
//! - [`run_node`] is the task loop that ties them together, configured by [`RunOptions`]
//!   and observed through [`NodeEvent`]s; it returns a [`RunSummary`].
//! - [`ClientError`] turns every gRPC status back into a typed error;
//!   [`ClientError::is_retryable`] tells transient failures apart.
//!
//! # Example
//! ```no_run
//! use fedval_client::{FederationClient, ModelTrainer, RunOptions, connect, run_node};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let data = fedval_core::data::load_csv("local.csv".as_ref())?;
//! let channel = connect("http://127.0.0.1:50051").await?;
//! let mut client =
//!     FederationClient::enroll(channel, "demo", "secret", "node-a", data.len() as u64).await?;
//! let trainer = ModelTrainer::new(client.model().clone(), data, 7)?;
//! let summary = run_node(&mut client, trainer, &RunOptions::default()).await?;
//! println!("final model v{}: {:?}", summary.final_model_version, summary.final_metrics);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`error`]: [`ClientError`] and the status mapping.
//! - [`connection`]: [`connect`] and the transport settings.
//! - [`client`]: [`FederationClient`], bearer metadata, chunked and checked tensor transfer.
//! - [`task`]: typed [`Task`]s and the proto conversions.
//! - [`trainer`]: the [`Trainer`] hook and [`ModelTrainer`].
//! - [`run`]: the task loop [`run_node`].

pub mod client;
pub mod connection;
pub mod error;
#[cfg(test)]
mod fake;
pub mod run;
pub mod task;
pub mod trainer;

pub use client::{FederationClient, Heartbeat, UploadAck};
pub use connection::connect;
pub use error::ClientError;
pub use run::{EventHook, NodeEvent, RunOptions, RunSummary, run_node};
pub use task::{Task, TrainParams, TrainTask};
pub use trainer::{ModelTrainer, TrainOutput, Trainer, TrainerError};
