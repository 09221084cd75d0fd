//! Vertical federations (ALGORITHMS.md section 3): the server is the label holder, each
//! party holds a block of feature columns of the same `N` aligned samples.
//!
//! Synchronous training. Round `t` draws a mini-batch of training ids ([`round`]); every
//! party pulls an `EmbedTask`, embeds the batch with its local model and calls
//! `ExchangeEmbeddings`; the embeddings are made durable ([`Store::put_embeddings`]) before
//! they count, and the call waits until the round closes. The driver (`driver.rs`) alone
//! closes a round, once: when every party's embeddings are in or the deadline passed (a
//! missing party contributes zeros and is recorded as a straggler), it computes
//! `z = sum_m h^m + b`, the loss, the per-sample gradients and the new bias, and commits
//! the round record, the bias (as model version `t`) and the gradients atomically
//! ([`Store::commit_vertical_round`]). Every waiting exchange then streams the gradients
//! back; repeating the exchange of a committed round returns the stored gradients.
//! After the last round one evaluation pass (round `rounds + 1`, `evaluate_only`)
//! embeds the test ids; its loss and accuracy are added to the last round's metrics.
//! Finally [`value`] computes VerFedSV and finishes the federation.
//!
//! **Invariants.** Only the driver opens, closes and commits passes. Embeddings are
//! acknowledged (answered) only after they are durable. A round's batch is a pure
//! function of the configuration's seed and the round number, so a restarted server
//! redraws it, reloads the stored embeddings of the open round, and answers the parties
//! that already sent them once the round closes. The valuation overwrites (never adds
//! to) the round records and finishes the federation in the same batch, so a restart
//! during it re-runs it with nothing lost and nothing counted twice.
//!
//! Private set intersection is out of scope: the operator aligns the sample ids.

pub(crate) mod driver;
pub(crate) mod exchange;
pub mod round;
pub mod settings;
pub mod steps;
pub mod value;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use fedval_core::vertical::Objective;
use tokio::time::Instant;

use crate::config::{ConfigError, FederationConfig, ValuationMethod};
use crate::error::{ServiceError, ServiceResult};
use crate::federation::{FedState, NextTask, now_ms};
use crate::store::FederationStatus;
#[cfg(doc)]
use crate::store::Store;

pub use exchange::{Admission, EmbeddingClaim};
pub use settings::VerticalSettings;

/// Largest absolute embedding value accepted: with at most
/// [`settings::MAX_VERTICAL_PARTIES`] parties the combined output stays far from f32
/// overflow, so closing a round cannot fail on a party's input.
pub const MAX_EMBEDDING_ABS: f32 = 1.0e6;

/// What a vertical federation derives once from its configuration.
#[derive(Debug)]
pub struct VerticalSpec {
    /// The label holder's objective over all `N` samples.
    pub objective: Objective,
    /// The ids batches are drawn from (`0..N` without the test ids), ascending.
    pub train_ids: Vec<u32>,
    /// The held-out ids of the evaluation pass, in configuration order.
    pub test_ids: Arc<Vec<u32>>,
    /// Width of every embedding.
    pub output_dim: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Learning rate of the bias.
    pub learning_rate: f32,
    /// Asynchronous training (`training = "async"`, [`steps`]).
    pub asynchronous: bool,
    /// Asynchronous training: party steps per snapshot round.
    pub snapshot_every: u64,
}

impl VerticalSpec {
    /// Builds the objective and the id lists of validated settings.
    pub fn new(settings: &VerticalSettings) -> Result<Self, ConfigError> {
        Ok(Self {
            objective: settings.objective()?,
            train_ids: settings.train_ids(),
            test_ids: Arc::new(settings.test_ids.clone()),
            output_dim: settings.output_dim(),
            batch_size: settings.batch_size as usize,
            learning_rate: settings.learning_rate,
            asynchronous: settings.training == settings::VerticalTraining::Async,
            snapshot_every: u64::from(settings.snapshot_every.max(1)),
        })
    }

    /// The batch of training round `round` (see [`round::draw_batch`]).
    pub fn batch(&self, seed: u64, round: u64) -> Vec<u32> {
        round::draw_batch(seed, round, &self.train_ids, self.batch_size)
    }

    /// The size of every batch, [`Self::batch`] and [`Self::step_batch`] alike:
    /// `min(batch_size, train_ids.len())`, known without drawing one.
    pub fn batch_len(&self) -> usize {
        self.batch_size.min(self.train_ids.len())
    }

    /// The batch of party `party`'s asynchronous step `step` (see
    /// [`round::draw_step_batch`]).
    pub fn step_batch(&self, seed: u64, party: usize, step: u64) -> Vec<u32> {
        round::draw_step_batch(seed, party, step, &self.train_ids, self.batch_size)
    }

    /// The round number of the evaluation pass: `rounds + 1` in synchronous training,
    /// `rounds x snapshot_every + 1` in asynchronous training (above every step number,
    /// so an exchange's round is never ambiguous).
    pub fn evaluation_round(&self, rounds: u64) -> u64 {
        if self.asynchronous {
            rounds.saturating_mul(self.snapshot_every).saturating_add(1)
        } else {
            rounds.saturating_add(1)
        }
    }

    /// Whether the run is valued: a valuation method is configured and there are at
    /// least two steps to compare (synchronous: two rounds; asynchronous: snapshot 0 and
    /// one more).
    pub fn valued(&self, config: &FederationConfig) -> bool {
        let least = if self.asynchronous { 1 } else { 2 };
        config.valuation.method != ValuationMethod::None && config.rounds >= least
    }
}

/// A pass collecting embeddings: a training round, or the evaluation pass.
#[derive(Debug)]
pub(crate) struct OpenPass {
    /// The round (`rounds + 1` for the evaluation pass).
    pub round: u64,
    /// True for the evaluation pass.
    pub evaluate: bool,
    /// The sample ids every party embeds, in order.
    pub ids: Arc<Vec<u32>>,
    /// Durable embeddings by client id.
    pub received: BTreeMap<String, Arc<Vec<f32>>>,
    /// When the pass closes without the missing parties.
    pub deadline: Instant,
    /// The same deadline on the wall clock (for `deadline_ms`).
    pub deadline_wall_ms: u64,
    /// Set when the driver starts closing it: later embeddings are refused.
    pub closed: bool,
}

/// The answer to the exchanges of a closed pass.
#[derive(Debug)]
pub struct GradientReply {
    /// The pass's round.
    pub round: u64,
    /// Rows of gradients (0 after the evaluation pass).
    pub rows: u32,
    /// Outputs per row.
    pub output_dim: u32,
    /// Mean loss of the batch (the test loss after the evaluation pass).
    pub loss: f64,
    /// The gradients as little-endian f32 bytes.
    pub bytes: Bytes,
    /// Hex SHA-256 of `bytes`.
    pub sha256: String,
    /// Parties whose embeddings did not count (they get no gradients).
    pub stragglers: Vec<String>,
}

impl GradientReply {
    /// Encodes `gradients` (row-major, `rows x output_dim`) once.
    pub fn new(
        round: u64,
        output_dim: usize,
        loss: f64,
        gradients: &[f32],
        stragglers: Vec<String>,
    ) -> Self {
        let bytes = Bytes::from(fedval_core::tensor::to_le_bytes(gradients));
        let sha256 = fedval_core::tensor::sha256_hex(&bytes);
        let rows = gradients.len().checked_div(output_dim).unwrap_or(0);
        Self {
            round,
            rows: u32::try_from(rows).unwrap_or(u32::MAX),
            output_dim: u32::try_from(output_dim).unwrap_or(u32::MAX),
            loss,
            bytes,
            sha256,
            stragglers,
        }
    }
}

/// A vertical federation's in-memory state (inside the federation's state lock).
#[derive(Debug, Default)]
pub(crate) struct VerticalState {
    /// The pass collecting embeddings, if any.
    pub open: Option<OpenPass>,
    /// The answer of the last committed training round.
    pub last: Option<Arc<GradientReply>>,
    /// The answer of the evaluation pass once it closed (rows = 0, the test loss).
    pub evaluated: Option<Arc<GradientReply>>,
    /// Whether the driver has loaded the stored progress (after a start or restart).
    pub restored: bool,
    /// Asynchronous training: the run, once every party enrolled.
    pub steps: Option<steps::AsyncState>,
}

/// Enrollment rules of a vertical federation, checked under the state lock: a party
/// declares its columns, and no party joins once all are in or round 1 has opened.
pub(crate) fn check_enrollment(
    config: &FederationConfig,
    st: &FedState,
    num_features: u32,
) -> ServiceResult<()> {
    if num_features == 0 {
        return Err(ServiceError::InvalidArgument(format!(
            "federation `{}` is vertical: enroll with num_features > 0, the number of feature columns this party holds",
            config.id
        )));
    }
    if st.vertical.open.is_some() || st.vertical.steps.is_some() || st.record.committed_rounds > 0 {
        return Err(ServiceError::FailedPrecondition(format!(
            "vertical federation `{}` takes no new parties once round 1 has opened",
            config.id
        )));
    }
    if st.clients.len() >= config.min_clients {
        return Err(ServiceError::FailedPrecondition(format!(
            "vertical federation `{}` has all its {} parties (min_clients); it takes no more",
            config.id, config.min_clients
        )));
    }
    Ok(())
}

/// What a party of a vertical federation should do now (the federation is neither
/// finished nor stopped).
pub(crate) fn next_task(
    config: &FederationConfig,
    spec: &VerticalSpec,
    st: &FedState,
    client_id: &str,
) -> NextTask {
    // Asynchronous training: the party's next step, at once.
    if let (None, Some(run)) = (&st.vertical.open, &st.vertical.steps)
        && st.record.committed_rounds < config.rounds
        && st.record.status == FederationStatus::Running
        && let Ok(m) = steps::party_index(st, client_id)
    {
        let step = run.steps.get(m).copied().unwrap_or(0).saturating_add(1);
        return NextTask::Embed {
            round: step,
            sample_ids: Arc::new(spec.step_batch(config.seed, m, step)),
            evaluate_only: false,
            deadline_ms: config.round_timeout_ms,
        };
    }
    let reason = match &st.vertical.open {
        Some(p) if !p.closed && !p.received.contains_key(client_id) => {
            return NextTask::Embed {
                round: p.round,
                sample_ids: p.ids.clone(),
                evaluate_only: p.evaluate,
                deadline_ms: p.deadline_wall_ms.saturating_sub(now_ms()),
            };
        }
        Some(p) => format!(
            "embeddings for round {} received; waiting for the round to close",
            p.round
        ),
        None if st.clients.len() < config.min_clients => format!(
            "waiting for parties: {} of {} enrolled",
            st.clients.len(),
            config.min_clients
        ),
        None if st.record.committed_rounds >= config.rounds => {
            "training is over; waiting for the evaluation and the valuation".into()
        }
        None if spec.asynchronous => "waiting for the asynchronous run to start".into(),
        None => "waiting for the next round to open".into(),
    };
    let reason = match (&st.loop_error, st.record.status) {
        (Some(e), FederationStatus::Waiting | FederationStatus::Running) => {
            format!("{reason}; the coordinator is retrying after an error: {e}")
        }
        _ => reason,
    };
    NextTask::Wait { reason }
}

#[cfg(test)]
mod tests;
