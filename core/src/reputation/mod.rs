//! Reputation and reward mechanisms that need no validation set.
//!
//! Two mechanisms live here, both pure functions or pure state machines (data in, data
//! out) so the server can persist their state per round and the simulator can replay them:
//!
//! - [`rffl`]: RFFL (Xu & Lyu 2021): client-side clipping, cosine-similarity reputations
//!   with a moving average, a removal threshold after a warm-up, and the per-client
//!   reward fraction `q`; [`sparsify`] turns `q` into each client's sparsified download.
//! - [`asymptotic`]: fair yet asymptotically equal rewards (Lin et al. 2023): gradient
//!   contribution estimates while exploring, a stationarity test ([`stats`]) to stop
//!   exploring, then softmax-probability selection of who receives the newest model.

pub mod asymptotic;
pub mod rffl;
pub mod sparsify;
pub mod stats;

pub use asymptotic::{
    FairRewardConfig, FairRewardState, Phase, round_contributions, select_recipients,
    selection_probabilities,
};
pub use rffl::{RfflConfig, RfflState, RoundOutcome, clip};
pub use sparsify::{reward_counts, sparsified_reward};
pub use stats::{HotellingTest, hotelling_one_sample};

/// Errors from the reputation and reward mechanisms.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReputationError {
    /// A configuration value is out of range.
    #[error("invalid {name}: {value} ({reason})")]
    InvalidConfig {
        /// Setting name.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// The allowed range.
        reason: &'static str,
    },
    /// There are no clients at all.
    #[error("a federation needs at least one client")]
    NoClients,
    /// A per-client slice has the wrong number of entries.
    #[error("{what} has {got} entries but there are {expected} clients")]
    ClientCount {
        /// Which argument.
        what: &'static str,
        /// Number of clients.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// Two updates (or an update and the model) differ in length.
    #[error("update of client {client} has {got} values but {expected} were expected")]
    LengthMismatch {
        /// Client index.
        client: usize,
        /// Expected length.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// An update or estimate holds NaN or infinity.
    #[error("{what} of client {client} holds a NaN or infinite value")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Client index.
        client: usize,
    },
    /// A removed client was marked as participating.
    #[error("client {client} was removed in round {round} and cannot take part")]
    RemovedClient {
        /// Client index.
        client: usize,
        /// Round of its removal.
        round: u64,
    },
    /// No remaining client took part in the round.
    #[error("no remaining client took part in round {round}")]
    NoParticipants {
        /// The round.
        round: u64,
    },
    /// A layer reaches past the end of the parameter vector.
    #[error("layer {name} ({offset}..{offset}+{len}) does not fit a vector of {total} values")]
    LayerOutOfBounds {
        /// Layer name.
        name: &'static str,
        /// Layer start.
        offset: usize,
        /// Layer length.
        len: usize,
        /// Vector length.
        total: usize,
    },
    /// A statistical test cannot be computed on the samples given.
    #[error("stationarity test needs {needed} samples of dimension {dim}, got {got}")]
    TooFewSamples {
        /// Samples needed.
        needed: usize,
        /// Samples given.
        got: usize,
        /// Dimension of each sample.
        dim: usize,
    },
}

/// Cosine similarity of two vectors in f64; 0 when either has zero norm (an empty or
/// all-zero update carries no direction, so it neither agrees nor disagrees).
pub(crate) fn cosine<A: Copy + Into<f64>>(a: &[A], b: &[f64]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let x: f64 = x.into();
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na > 0.0 && nb > 0.0 {
        (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

/// Checks that every present update is finite and as long as the first one; returns
/// that common length (0 if none is present).
pub(crate) fn common_length(
    updates: &[&[f32]],
    present: impl Fn(usize) -> bool,
) -> Result<usize, ReputationError> {
    let mut len = None;
    for (client, update) in updates.iter().enumerate() {
        if !present(client) {
            continue;
        }
        let expected = *len.get_or_insert(update.len());
        if update.len() != expected {
            return Err(ReputationError::LengthMismatch {
                client,
                expected,
                got: update.len(),
            });
        }
        if update.iter().any(|x| !x.is_finite()) {
            return Err(ReputationError::NonFinite {
                what: "update",
                client,
            });
        }
    }
    Ok(len.unwrap_or(0))
}
