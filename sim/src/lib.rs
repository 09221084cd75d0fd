//! fedval-sim: spawns many clients against an embedded or remote fedval server and
//! reports what each one contributed.
//!
//! # Layout
//! - [`scenario`]: [`SimConfig`], the clients' behaviours, partitions and models.
//! - [`setup`]: turns a config into a test set, a validation set and client data.
//! - [`adversary`]: the attacks that alter uploads, as a [`fedval_client::Trainer`] wrapper.
//! - [`defense`]: the aggregator or RFFL setting a federation defends itself with.
//! - [`attack_table`]: every shipped attack scenario against every defence, over seeds.
//! - [`metrics`]: standalone accuracy, fairness, honest accuracy, attack success.
//! - [`runner`]: starts the server, creates the federation, runs the clients.
//! - [`vertical`]: the same for a vertical scenario (a `[vertical]` table): column
//!   split, parties, VerFedSV values, vertical vs centralised test accuracy.
//! - [`fact`]: a FACT scenario (a `[fact]` table): clients' true and reported costs,
//!   free riders and shirkers, and each client's penalties, prizes and net from the ledger.
//! - [`report`]: the final table and the files: JSON, CSV and `report.html`.
//! - [`plot`]: the inline SVG line and bar charts of `report.html`.
//! - [`export`]: the scenario's data as CSV files plus a server settings file, to run
//!   the same federation as separate processes.
//! - [`bandit`]: a federated linear bandit with Truth-FedBan incentives (a `[bandit]`
//!   table): environments, costs and misreports, regret, payments and the misreport sweep.

pub mod adversary;
pub mod attack_table;
pub mod bandit;
pub mod defense;
pub mod export;
pub mod fact;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod setup;
pub mod vertical;

pub use report::Report;
pub use runner::{SimOptions, run};
pub use scenario::{Adversaries, Behaviour, PartyBehaviour, SimConfig, VerticalSim};

use std::path::PathBuf;

/// Why a simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is inconsistent.
    #[error("invalid simulation config: {0}")]
    Config(String),
    /// Loading or partitioning data failed.
    #[error(transparent)]
    Data(#[from] fedval_core::data::DataError),
    /// Evaluating the final model failed.
    #[error(transparent)]
    Model(#[from] fedval_core::model::ModelError),
    /// The embedded server failed.
    #[error(transparent)]
    Server(#[from] fedval_server::ServerError),
    /// A client failed.
    #[error("client: {0}")]
    ClientSdk(#[from] fedval_client::ClientError),
    /// A client task failed in another way.
    #[error("{0}")]
    Client(String),
    /// An Admin call failed.
    #[error("admin call failed: {}: {}", .0.code(), .0.message())]
    Admin(#[from] tonic::Status),
    /// Writing the report failed.
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}
