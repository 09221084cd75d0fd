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
//! - FACT federations: [`FederationClient::enroll_with_cost`] reports the node's cost per
//!   data point; [`ModelTrainer`] trains on the required points of each task
//!   ([`Contribution`] makes a simulated node train on less).
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
//! - [`vertical`]: [`VerticalClient`], a party of a vertical federation, and the checked
//!   embedding/gradient exchange.
//! - [`party`]: the [`VerticalTrainer`] hook, [`PartyTrainer`] and the party CSV reader.
//! - [`vertical_run`]: the vertical task loop [`run_vertical_node`].
//! - [`bandit`]: [`BanditClient`], a client of a bandit federation, and its answers.
//! - [`bandit_run`]: the bandit task loop [`run_bandit_node`], the [`CostModel`] hook and
//!   the [`BanditTrace`] it returns.
//!
//! # Vertical federations
//! A vertical party holds some feature columns of samples whose labels only the server
//! holds (ALGORITHMS.md section 3). It enrolls with [`VerticalClient::enroll`] (announcing
//! its column count), builds a [`PartyTrainer`] over its block (row `i` is sample id `i`)
//! and runs [`run_vertical_node`]: embed the ids each task names, exchange the embeddings
//! for the gradients of the loss, apply them.
//! ```no_run
//! use fedval_client::{PartyTrainer, RunOptions, VerticalClient, connect, run_vertical_node};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let block = fedval_client::party::load_party_csv("party.csv".as_ref())?;
//! let channel = connect("http://127.0.0.1:50051").await?;
//! let mut client =
//!     VerticalClient::enroll(channel, "bank", "secret", "party-a", block.ncols() as u32).await?;
//! let trainer = PartyTrainer::new(client.party(), block)?;
//! let (trainer, summary) = run_vertical_node(&mut client, trainer, &RunOptions::default()).await?;
//! println!("{} rounds, last loss {:?}", summary.rounds_trained, summary.last_loss);
//! # let _ = trainer;
//! # Ok(())
//! # }
//! ```
//!
//! # Bandit federations
//! A bandit client runs LinUCB on its own contexts (ALGORITHMS.md section 7). It enrolls
//! with [`BanditClient::enroll`], then [`run_bandit_node`] plays the steps the server
//! schedules on the client's [`Environment`](fedval_core::incentive::environment::Environment),
//! reports the cost its [`CostModel`] gives when a communication round opens, uploads its
//! statistics when selected and downloads every aggregate; payments come back with them.
//! ```no_run
//! use fedval_client::{BanditClient, FixedCost, RunOptions, connect, run_bandit_node};
//! use fedval_core::incentive::environment::LinearEnvironment;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = connect("http://127.0.0.1:50051").await?;
//! let mut client = BanditClient::enroll(channel, "ads", "secret", "shop-a").await?;
//! let mut env = LinearEnvironment::new(client.agent().dim, 10, 0.1, 7, 0)?;
//! let mut costs = FixedCost { true_cost: 1.0, report_factor: 1.0 };
//! let trace = run_bandit_node(&mut client, &mut env, &mut costs, &RunOptions::default()).await?;
//! println!("{} steps, paid {:?}", trace.steps.len(), trace.rounds.iter().map(|r| r.payment).sum::<f64>());
//! # Ok(())
//! # }
//! ```

pub mod bandit;
pub mod bandit_run;
pub mod client;
pub mod connection;
pub mod error;
#[cfg(test)]
mod fake;
pub mod party;
pub mod run;
pub mod task;
pub mod trainer;
pub mod vertical;
pub mod vertical_run;

pub use bandit::{BanditAgentSettings, BanditAnswer, BanditClient};
pub use bandit_run::{
    BanditTrace, CostModel, FixedCost, RoundCost, RoundLog, StepLog, run_bandit_node,
};
pub use client::{FederationClient, Heartbeat, UploadAck};
pub use connection::connect;
pub use error::ClientError;
pub use party::{PartyTrainer, VerticalTrainer};
pub use run::{EventHook, NodeEvent, RunOptions, RunSummary, run_node};
pub use task::{BanditSync, BanditTask, EmbedTask, Task, TrainParams, TrainTask, VerticalTask};
pub use trainer::{Claim, Contribution, ModelTrainer, Points, TrainOutput, Trainer, TrainerError};
pub use vertical::{Gradients, VerticalClient, VerticalParty, VerticalTraining};
pub use vertical_run::{VerticalSummary, run_vertical_node};
