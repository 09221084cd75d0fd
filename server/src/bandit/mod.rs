//! Bandit federations (ALGORITHMS.md section 7): federated linear bandits with
//! Truth-FedBan incentives.

pub mod settings;

pub use settings::{BanditMechanism, BanditSettings};
