//! Federated linear bandits with Truth-FedBan incentives over gRPC (a scenario's `[bandit]`
//! table, ALGORITHMS.md section 7).
//!
//! Every client runs the client SDK's bandit node on its own environment
//! ([`fedval_core::incentive::environment`]: a synthetic linear bandit or the digits
//! contextual bandit) with a seeded cost model: its true cost of each communication round is
//! uniform in `[cost_low, cost_high]` and it reports that cost times its factor (1 when
//! truthful). The server schedules the active client, opens a communication round when a
//! trigger fires, selects and pays participants and records the payments in its ledger.
//!
//! # Layout
//! - [`config`]: the `[bandit]` table ([`BanditSim`]), environments and true costs.
//! - [`analysis`]: per-client costs, payments and utilities, the regret curve, invariants.
//! - [`replay`]: the run replayed with fedval-core: the server's selections and payments
//!   checked, and the per-round truthfulness check of a focal client.
//! - [`sweep`]: the misreport sweep's tables.
//! - [`report`]: [`BanditReport`], its text tables and files.
//! - [`runner`]: the gRPC run ([`run`]) and the misreport sweep ([`runner::sweep`]).

pub mod analysis;
pub mod config;
pub mod replay;
pub mod report;
pub mod runner;
pub mod sweep;

pub use config::{BanditEnv, BanditSim, Misreport, SweepSpec};
pub use report::BanditReport;
pub use runner::run;
