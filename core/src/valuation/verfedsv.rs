//! VerFedSV (Fan et al., ICLR 2024; ALGORITHMS.md section 3): Shapley values of the
//! parties of a vertical federation, from the history of their embeddings.
//!
//! Party `m` maps sample `i` to an embedding `h_i^m(t)` in `R^C` at each step
//! `t = 0..T`; the label holder scores `z_i = sum_m h_i^m + b` with the [`Objective`].
//! With the server bias `b` held FIXED, round `t` (`1..=T`) is the game
//!
//! ```text
//! U_t(S) = (1/N) sum_i [ l(sum_m h_i^m(t-1) + b, y_i)
//!                      - l(sum_{m in S} h_i^m(t) + sum_{m not in S} h_i^m(t-1) + b, y_i) ]
//! ```
//!
//! (the loss decrease if only the parties in `S` move to their step-`t` embeddings;
//! `U_t(empty) = 0`), and party `m`'s value is the SUM over rounds of its Shapley value in
//! `U_t`. Since `U_t(all) = L(t-1) - L(t)`, the values sum to `L(0) - L(T)` (balance);
//! this needs the same `b` in every round, which is why the bias is an input and not
//! part of the history (the reference code uses the final bias for every round).
//!
//! [`VerticalRoundGame`] is `U_t` as a [`Game`], so every estimator of the valuation
//! engine applies; [`verfedsv`] runs exact Shapley for up to
//! [`MAX_AUTO_EXACT_PARTIES`] parties and a Monte Carlo [`EstimatorSpec`] beyond (or the
//! one the settings name). Unlike the reference code's exact routine, the empty coalition
//! and the `1/M` weight are included, so the values are true Shapley values.
//!
//! Where the embeddings come from:
//! - asynchronous training: snapshots of the server's whole embedding table
//!   ([`verfedsv_from_snapshots`]; `U_k` compares snapshots `k-1` and `k` exactly);
//! - synchronous training: only the mini-batch rows are observed per round, and
//!   [`complete_synchronous`] fills the rest by low-rank matrix completion
//!   ([`super::completion`]) before valuing.

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::completion::{CompletionError, CompletionSettings, Observation, complete};
use super::{
    Coalition, EstimatorSpec, Game, IncrementalGame, Method, ValuationError, exact_shapley,
    exact_shapley_batched,
};
use crate::vertical::{Objective, VerticalError};

/// Up to this many parties [`verfedsv`] computes exact Shapley values unless told
/// otherwise (`2^10` coalitions per round).
pub const MAX_AUTO_EXACT_PARTIES: usize = 10;

/// How [`verfedsv`] computes each round's Shapley values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerFedSvSettings {
    /// The estimator for every round. `None` (default): exact Shapley for at most
    /// [`MAX_AUTO_EXACT_PARTIES`] parties, antithetic permutation sampling beyond.
    pub estimator: Option<EstimatorSpec>,
    /// Utility evaluations per round for a Monte Carlo estimator (ignored by exact).
    /// `None` (default): `10 M (M + 1)`, enough for the reference code's `10 M` random
    /// permutations.
    pub budget_per_round: Option<u64>,
    /// Seed of the estimator RNG: one ChaCha8 stream used by the rounds in order.
    pub seed: u64,
    /// Threads over which a batch of coalition evaluations is spread (`>= 1`; default 1).
    /// With more than one, exact Shapley fills its table in parallel batches instead of
    /// the (sequential, incremental) Gray-code sweep.
    pub threads: usize,
}

impl Default for VerFedSvSettings {
    fn default() -> Self {
        Self {
            estimator: None,
            budget_per_round: None,
            seed: 0,
            threads: 1,
        }
    }
}

impl VerFedSvSettings {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), VerFedSvError> {
        if self.threads == 0 {
            return Err(VerFedSvError::InvalidSetting {
                setting: "threads",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        if self.budget_per_round == Some(0) {
            return Err(VerFedSvError::InvalidSetting {
                setting: "budget_per_round",
                value: "0".into(),
                expected: "at least 1 utility evaluation",
            });
        }
        Ok(())
    }

    /// The estimator used for `parties` parties.
    pub fn estimator_for(&self, parties: usize) -> EstimatorSpec {
        match &self.estimator {
            Some(spec) => spec.clone(),
            None if parties <= MAX_AUTO_EXACT_PARTIES => EstimatorSpec::Exact,
            None => EstimatorSpec::Permutation { antithetic: true },
        }
    }

    /// The per-round budget used for `parties` parties.
    pub fn budget_for(&self, parties: usize) -> u64 {
        let m = parties as u64;
        self.budget_per_round
            .unwrap_or_else(|| 10u64.saturating_mul(m).saturating_mul(m + 1))
    }
}

/// VerFedSV values and the figures that check them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerFedSvValues {
    /// Value of each party: the sum over rounds of its per-round Shapley value.
    pub values: Vec<f64>,
    /// `per_round[k][m]`: party `m`'s Shapley value in round `k + 1` (the game between
    /// steps `k` and `k + 1`); `T` entries.
    pub per_round: Vec<Vec<f64>>,
    /// `L(t)` for `t = 0..=T`: the mean loss of `sum_m h^m(t) + b` with the fixed bias.
    pub round_losses: Vec<f64>,
    /// `sum_m values[m]`.
    pub value_sum: f64,
    /// `L(0) - L(T)`, which `value_sum` equals (balance) for efficient estimators.
    pub loss_decrease: f64,
    /// Utility evaluations spent over all rounds.
    pub evaluations: u64,
    /// The estimator that produced the values.
    pub method: Method,
}

impl VerFedSvValues {
    /// `value_sum - loss_decrease`: zero up to rounding for exact Shapley and the other
    /// efficient estimators.
    pub fn balance_error(&self) -> f64 {
        self.value_sum - self.loss_decrease
    }
}

/// Errors of VerFedSV: inconsistent histories, batches or settings, and the errors of
/// the objective, the estimators and the completion, each naming the offending input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum VerFedSvError {
    /// There are no parties.
    #[error("no parties to value")]
    NoParties,
    /// Fewer than two steps: there is no round to value.
    #[error("need embeddings at 2 or more steps (t = 0..T with T >= 1), got {steps}")]
    TooFewSteps {
        /// Steps given.
        steps: usize,
    },
    /// Parties' histories differ in length.
    #[error("party {party} has embeddings at {steps} steps, party 0 at {expected}")]
    StepCount {
        /// The party.
        party: usize,
        /// Its steps.
        steps: usize,
        /// Party 0's steps.
        expected: usize,
    },
    /// A snapshot holds the wrong number of parties.
    #[error("snapshot {snapshot} holds {parties} parties, snapshot 0 holds {expected}")]
    PartyCount {
        /// The snapshot.
        snapshot: usize,
        /// Parties in it.
        parties: usize,
        /// Parties in snapshot 0.
        expected: usize,
    },
    /// An embedding matrix has the wrong shape.
    #[error(
        "embeddings of party {party} at step {step} are {rows} x {cols}, expected \
         {expected_rows} x {expected_cols} (samples x outputs)"
    )]
    EmbeddingShape {
        /// The party.
        party: usize,
        /// The step (round or snapshot).
        step: usize,
        /// Rows given.
        rows: usize,
        /// Columns given.
        cols: usize,
        /// Rows expected.
        expected_rows: usize,
        /// Columns expected.
        expected_cols: usize,
    },
    /// An embedding is NaN or infinite.
    #[error(
        "embeddings of party {party} at step {step} hold {value} at row {row}, output {output}: \
         embeddings must be finite"
    )]
    NonFiniteEmbedding {
        /// The party.
        party: usize,
        /// The step.
        step: usize,
        /// Row of the matrix.
        row: usize,
        /// Output (column).
        output: usize,
        /// The value.
        value: f32,
    },
    /// The bias has the wrong length.
    #[error("the server bias has {got} values but the objective has {expected} outputs")]
    BiasLength {
        /// Values given.
        got: usize,
        /// The objective's output dimension.
        expected: usize,
    },
    /// The bias is NaN or infinite.
    #[error("the server bias holds {value} at output {output}: the bias must be finite")]
    NonFiniteBias {
        /// Output index.
        output: usize,
        /// The value.
        value: f32,
    },
    /// A setting is out of range.
    #[error("invalid verfedsv setting {setting} = {value}: expected {expected}")]
    InvalidSetting {
        /// The setting's field name.
        setting: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        expected: &'static str,
    },
    /// Party sent embeddings for a different number of rounds than there are batches.
    #[error("party {party} sent embeddings for {rounds} rounds but there are {batches} batches")]
    RoundCount {
        /// The party.
        party: usize,
        /// Rounds it sent.
        rounds: usize,
        /// Batches given.
        batches: usize,
    },
    /// A batch names a sample that does not exist.
    #[error("batch of round {round} names sample {sample}, but there are {num_samples} samples")]
    SampleOutOfRange {
        /// The round.
        round: usize,
        /// The sample id.
        sample: usize,
        /// Number of samples.
        num_samples: usize,
    },
    /// A batch names a sample twice.
    #[error("batch of round {round} names sample {sample} twice")]
    DuplicateSample {
        /// The round.
        round: usize,
        /// The sample id.
        sample: usize,
    },
    /// A size of the synchronous completion is zero.
    #[error("{what} must be at least 1")]
    Empty {
        /// Which size.
        what: &'static str,
    },
    /// The completion of a party's embedding matrix failed.
    #[error("completing the embedding matrix of party {party}: {source}")]
    Completion {
        /// The party.
        party: usize,
        /// Why.
        source: CompletionError,
    },
    /// The objective refused an input.
    #[error(transparent)]
    Objective(#[from] VerticalError),
    /// An estimator failed.
    #[error(transparent)]
    Valuation(#[from] ValuationError),
}

/// What every evaluation of a round game reads (shared by all threads).
#[derive(Debug)]
struct RoundInputs<'a> {
    objective: &'a Objective,
    rows: Vec<usize>,
    /// `b + sum_m h^m(t-1)`, summed in f64 in party order.
    previous: Array2<f64>,
    /// `b + sum_m h^m(t)`, summed the same way.
    current: Array2<f64>,
    /// `h^m(t) - h^m(t-1)` per party.
    deltas: Vec<Array2<f64>>,
    /// `L(t-1)`, the loss of `previous`.
    previous_loss: f64,
    /// `L(t)`, the loss of `current`.
    current_loss: f64,
}

impl RoundInputs<'_> {
    /// Mean loss of `z` (rounded to f32, the objective's input type) using `scratch`.
    /// Returns NaN if the objective refuses (a non-finite sum), which the meter rejects.
    fn loss(&self, z: &Array2<f64>, scratch: &mut Array2<f32>) -> f64 {
        scratch.zip_mut_with(z, |s, v| *s = *v as f32);
        self.objective
            .mean_loss(scratch.view(), &self.rows)
            .unwrap_or(f64::NAN)
    }

    /// `U_t(coalition)` from scratch in `O(min(|S|, M - |S|) N C)`: from `previous`
    /// adding the members' deltas, or from `current` removing the others'. The empty and
    /// the grand coalition read the per-round losses, so `U_t(all) = L(t-1) - L(t)` holds
    /// to the bit and the values telescope.
    fn value(&self, coalition: &Coalition, z: &mut Array2<f64>, scratch: &mut Array2<f32>) -> f64 {
        let m = self.deltas.len();
        let size = coalition.len();
        if size == 0 {
            return 0.0;
        }
        if size == m {
            return self.previous_loss - self.current_loss;
        }
        if 2 * size <= m {
            z.assign(&self.previous);
            for delta in self.deltas_of(coalition, true) {
                *z += delta;
            }
        } else {
            z.assign(&self.current);
            for delta in self.deltas_of(coalition, false) {
                *z -= delta;
            }
        }
        self.previous_loss - self.loss(z, scratch)
    }

    /// The deltas of the members (`inside`) or of the non-members of `coalition`.
    fn deltas_of<'s>(
        &'s self,
        coalition: &'s Coalition,
        inside: bool,
    ) -> impl Iterator<Item = &'s Array2<f64>> + 's {
        self.deltas
            .iter()
            .enumerate()
            .filter(move |(m, _)| coalition.contains(*m) == inside)
            .map(|(_, delta)| delta)
    }
}

/// The round game `U_t` of VerFedSV (see the module docs) between two steps of the
/// parties' embeddings, as a [`Game`] and an [`IncrementalGame`].
///
/// Construction precomputes, per party, the difference `h^m(t) - h^m(t-1)` and the two
/// combined outputs, so an evaluation costs `O(N C)` (one add or remove on the
/// incremental path; `min(|S|, M - |S|)` of them from scratch) plus one loss. Sums are
/// kept in f64 and rounded to f32 for the objective. A batch of coalitions
/// ([`Game::values`]) is spread over `threads` scoped threads.
#[derive(Debug)]
pub struct VerticalRoundGame<'a> {
    inputs: RoundInputs<'a>,
    /// The incremental path's current `z` and coalition.
    z: Array2<f64>,
    members: Coalition,
    scratch: Array2<f32>,
    threads: usize,
}

impl<'a> VerticalRoundGame<'a> {
    /// The game between `previous[m] = h^m(t-1)` and `current[m] = h^m(t)` (each
    /// `N x C`, `N = objective.num_samples()`, `C = objective.output_dim()`) with the fixed
    /// server bias `bias` (`C` values). `step` only labels errors (the index of `current`).
    pub fn new(
        objective: &'a Objective,
        bias: &[f32],
        previous: &[ArrayView2<f32>],
        current: &[ArrayView2<f32>],
        step: usize,
    ) -> Result<Self, VerFedSvError> {
        objective.validate()?;
        if previous.is_empty() {
            return Err(VerFedSvError::NoParties);
        }
        if previous.len() != current.len() {
            return Err(VerFedSvError::PartyCount {
                snapshot: step,
                parties: current.len(),
                expected: previous.len(),
            });
        }
        let shape = (objective.num_samples(), objective.output_dim());
        check_bias(bias, shape.1)?;
        let mut previous_sum = bias_matrix(bias, shape);
        let mut current_sum = previous_sum.clone();
        let mut deltas = Vec::with_capacity(previous.len());
        for (party, (before, after)) in previous.iter().zip(current).enumerate() {
            check_embeddings(*before, party, step.saturating_sub(1), shape)?;
            check_embeddings(*after, party, step, shape)?;
            let before = before.mapv(f64::from);
            let after = after.mapv(f64::from);
            previous_sum += &before;
            current_sum += &after;
            deltas.push(after - before);
        }
        let mut scratch = Array2::zeros(shape);
        let mut inputs = RoundInputs {
            objective,
            rows: (0..shape.0).collect(),
            previous: previous_sum,
            current: current_sum,
            deltas,
            previous_loss: 0.0,
            current_loss: 0.0,
        };
        inputs.previous_loss = round_loss(&inputs, &inputs.previous, &mut scratch)?;
        inputs.current_loss = round_loss(&inputs, &inputs.current, &mut scratch)?;
        Ok(Self {
            z: inputs.previous.clone(),
            members: Coalition::empty(previous.len()),
            inputs,
            scratch,
            threads: 1,
        })
    }

    /// Evaluates batches of coalitions on up to `threads` threads (at least 1).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// `L(t-1)`: the mean loss before the round (all parties at step `t-1`).
    pub fn previous_loss(&self) -> f64 {
        self.inputs.previous_loss
    }

    /// `L(t)`: the mean loss after the round (all parties at step `t`).
    pub fn current_loss(&self) -> f64 {
        self.inputs.current_loss
    }
}

/// The loss of a combined output, as a typed error if the objective refuses it.
fn round_loss(
    inputs: &RoundInputs<'_>,
    z: &Array2<f64>,
    scratch: &mut Array2<f32>,
) -> Result<f64, VerFedSvError> {
    scratch.zip_mut_with(z, |s, v| *s = *v as f32);
    Ok(inputs.objective.mean_loss(scratch.view(), &inputs.rows)?)
}

impl Game for VerticalRoundGame<'_> {
    fn n_players(&self) -> usize {
        self.inputs.deltas.len()
    }

    fn value(&mut self, coalition: &Coalition) -> f64 {
        let mut z = Array2::zeros(self.scratch.dim());
        self.inputs.value(coalition, &mut z, &mut self.scratch)
    }

    fn values(&mut self, coalitions: &[Coalition], out: &mut [f64]) {
        let threads = self.threads.min(coalitions.len());
        let shape = self.scratch.dim();
        let per_thread = coalitions.len().div_ceil(threads.max(1)).max(1);
        let inputs = &self.inputs;
        let run = |chunk: &[Coalition], slots: &mut [f64]| {
            let mut z = Array2::zeros(shape);
            let mut scratch = Array2::zeros(shape);
            for (c, slot) in chunk.iter().zip(slots.iter_mut()) {
                *slot = inputs.value(c, &mut z, &mut scratch);
            }
        };
        if threads <= 1 {
            run(coalitions, out);
            return;
        }
        std::thread::scope(|scope| {
            for (chunk, slots) in coalitions
                .chunks(per_thread)
                .zip(out.chunks_mut(per_thread))
            {
                scope.spawn(move || run(chunk, slots));
            }
        });
    }
}

impl IncrementalGame for VerticalRoundGame<'_> {
    fn reset(&mut self) {
        self.z.assign(&self.inputs.previous);
        self.members.clear();
    }

    fn add(&mut self, player: usize) {
        if let Some(delta) = self.inputs.deltas.get(player)
            && self.members.insert(player)
        {
            self.z += delta;
        }
    }

    fn remove(&mut self, player: usize) {
        if let Some(delta) = self.inputs.deltas.get(player)
            && self.members.remove(player)
        {
            self.z -= delta;
        }
    }

    /// Like [`Game::value`], the empty and the grand coalition read the per-round losses.
    /// Adds and removes accumulate in f64 (drift ~`2^M` ulps over a Gray-code sweep).
    fn current_value(&mut self) -> f64 {
        let size = self.members.len();
        if size == 0 {
            0.0
        } else if size == self.inputs.deltas.len() {
            self.inputs.previous_loss - self.inputs.current_loss
        } else {
            self.inputs.previous_loss - self.inputs.loss(&self.z, &mut self.scratch)
        }
    }
}

/// VerFedSV values from every party's embedding history: `histories[m][t]` is party
/// `m`'s `N x C` embedding matrix at step `t = 0..=T` (row `i` = sample `i`), full (exact,
/// or completed by [`complete_synchronous`]). `bias` is the fixed server bias.
pub fn verfedsv(
    histories: &[Vec<Array2<f32>>],
    objective: &Objective,
    bias: &[f32],
    settings: &VerFedSvSettings,
) -> Result<VerFedSvValues, VerFedSvError> {
    let steps = histories.first().ok_or(VerFedSvError::NoParties)?.len();
    if let Some((party, h)) = histories.iter().enumerate().find(|(_, h)| h.len() != steps) {
        return Err(VerFedSvError::StepCount {
            party,
            steps: h.len(),
            expected: steps,
        });
    }
    value_rounds(histories.len(), steps, objective, bias, settings, |m, t| {
        histories.get(m).and_then(|h| h.get(t)).map(Array2::view)
    })
}

/// VerFedSV values of an asynchronous run from snapshots of the server's embedding
/// table: `snapshots[k][m]` is party `m`'s `N x C` embeddings (the latest the server
/// holds for every sample) at snapshot `k`; `U_k` compares snapshots `k-1` and `k`.
pub fn verfedsv_from_snapshots(
    snapshots: &[Vec<Array2<f32>>],
    objective: &Objective,
    bias: &[f32],
    settings: &VerFedSvSettings,
) -> Result<VerFedSvValues, VerFedSvError> {
    let parties = snapshots
        .first()
        .ok_or(VerFedSvError::TooFewSteps { steps: 0 })?
        .len();
    if let Some((snapshot, s)) = snapshots
        .iter()
        .enumerate()
        .find(|(_, s)| s.len() != parties)
    {
        return Err(VerFedSvError::PartyCount {
            snapshot,
            parties: s.len(),
            expected: parties,
        });
    }
    value_rounds(
        parties,
        snapshots.len(),
        objective,
        bias,
        settings,
        |m, t| snapshots.get(t).and_then(|s| s.get(m)).map(Array2::view),
    )
}

/// The rounds `1..steps` valued one after the other; `embeddings(m, t)` is party `m` at
/// step `t`.
fn value_rounds<'h>(
    parties: usize,
    steps: usize,
    objective: &Objective,
    bias: &[f32],
    settings: &VerFedSvSettings,
    embeddings: impl Fn(usize, usize) -> Option<ArrayView2<'h, f32>>,
) -> Result<VerFedSvValues, VerFedSvError> {
    settings.validate()?;
    if parties == 0 {
        return Err(VerFedSvError::NoParties);
    }
    if steps < 2 {
        return Err(VerFedSvError::TooFewSteps { steps });
    }
    let spec = settings.estimator_for(parties);
    let budget = settings.budget_for(parties);
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let step = |t: usize| -> Result<Vec<ArrayView2<'h, f32>>, VerFedSvError> {
        (0..parties)
            .map(|m| {
                embeddings(m, t).ok_or(VerFedSvError::StepCount {
                    party: m,
                    steps: t,
                    expected: steps,
                })
            })
            .collect()
    };
    let mut per_round = Vec::with_capacity(steps - 1);
    let mut round_losses = Vec::with_capacity(steps);
    let mut evaluations = 0;
    let mut method = Method::Exact;
    let mut previous = step(0)?;
    for t in 1..steps {
        let current = step(t)?;
        let mut game = VerticalRoundGame::new(objective, bias, &previous, &current, t)?
            .with_threads(settings.threads);
        if t == 1 {
            round_losses.push(game.previous_loss());
        }
        round_losses.push(game.current_loss());
        let valuation = match spec {
            EstimatorSpec::Exact if settings.threads > 1 => exact_shapley_batched(&mut game)?,
            EstimatorSpec::Exact => exact_shapley(&mut game)?,
            _ => spec.estimate(budget, &mut game, &mut rng)?,
        };
        evaluations += valuation.evaluations;
        method = valuation.method;
        per_round.push(valuation.values);
        previous = current;
    }
    let values: Vec<f64> = (0..parties)
        .map(|m| per_round.iter().filter_map(|r| r.get(m)).sum())
        .collect();
    let first = round_losses.first().copied().unwrap_or(0.0);
    let last = round_losses.last().copied().unwrap_or(0.0);
    Ok(VerFedSvValues {
        value_sum: values.iter().sum(),
        values,
        per_round,
        round_losses,
        loss_decrease: first - last,
        evaluations,
        method,
    })
}

/// Fills the embeddings a synchronous run never observed, per party, by low-rank matrix
/// completion, and returns full histories for [`verfedsv`]: `[m][t]`, each
/// `num_samples x output_dim`.
///
/// Inputs: `batches[t]` is round `t`'s mini-batch `B_t` (distinct sample ids) and
/// `sent[m][t]` the `|B_t| x C` embeddings party `m` sent in round `t` (row `k` = sample
/// `batches[t][k]`), computed BEFORE that round's update; so step `t` of the result is
/// the party's model after `t` updates and `U_t` compares steps `t-1` and `t`.
///
/// Layout of the matrix completed for party `m` (as in the reference code):
/// `H^m` has `K C` rows (`K = batches.len()` rounds; row `t C + c` is output `c` at
/// round `t`) and `N` columns (samples), `H^m[t C + c, i] = h_i^m(t)[c]`, observed where
/// `i` is in `B_t`. For a linear party `h_i(t) = W(t) x_i`, so `H^m = [W(0); ...] X^T`
/// has rank at most the party's feature count: low rank is the model, not an accident.
/// The result is the low-rank estimate `X Y^T` everywhere (observed entries included,
/// like the reference), so consecutive steps differ smoothly.
pub fn complete_synchronous(
    num_samples: usize,
    output_dim: usize,
    batches: &[Vec<usize>],
    sent: &[Vec<Array2<f32>>],
    settings: &CompletionSettings,
) -> Result<Vec<Vec<Array2<f32>>>, VerFedSvError> {
    if num_samples == 0 {
        return Err(VerFedSvError::Empty {
            what: "the number of samples",
        });
    }
    if output_dim == 0 {
        return Err(VerFedSvError::Empty {
            what: "the output dimension",
        });
    }
    if sent.is_empty() {
        return Err(VerFedSvError::NoParties);
    }
    check_batches(num_samples, batches)?;
    let rounds = batches.len();
    let mut histories = Vec::with_capacity(sent.len());
    for (party, rounds_sent) in sent.iter().enumerate() {
        if rounds_sent.len() != rounds {
            return Err(VerFedSvError::RoundCount {
                party,
                rounds: rounds_sent.len(),
                batches: rounds,
            });
        }
        let mut observed = Vec::new();
        for (t, (batch, block)) in batches.iter().zip(rounds_sent).enumerate() {
            check_embeddings(block.view(), party, t, (batch.len(), output_dim))?;
            for (k, &i) in batch.iter().enumerate() {
                for c in 0..output_dim {
                    observed.push(Observation {
                        row: t * output_dim + c,
                        col: i,
                        value: f64::from(block[[k, c]]),
                    });
                }
            }
        }
        let completion = complete(rounds * output_dim, num_samples, &observed, settings)
            .map_err(|source| VerFedSvError::Completion { party, source })?;
        let h = &completion.matrix;
        histories.push(
            (0..rounds)
                .map(|t| {
                    Array2::from_shape_fn((num_samples, output_dim), |(i, c)| {
                        h[[t * output_dim + c, i]] as f32
                    })
                })
                .collect(),
        );
    }
    Ok(histories)
}

/// Sample ids in range and distinct within each batch.
fn check_batches(num_samples: usize, batches: &[Vec<usize>]) -> Result<(), VerFedSvError> {
    let mut seen = vec![usize::MAX; num_samples];
    for (round, batch) in batches.iter().enumerate() {
        for &sample in batch {
            match seen.get_mut(sample) {
                None => {
                    return Err(VerFedSvError::SampleOutOfRange {
                        round,
                        sample,
                        num_samples,
                    });
                }
                Some(last) if *last == round => {
                    return Err(VerFedSvError::DuplicateSample { round, sample });
                }
                Some(last) => *last = round,
            }
        }
    }
    Ok(())
}

/// The bias must have `outputs` finite values.
fn check_bias(bias: &[f32], outputs: usize) -> Result<(), VerFedSvError> {
    if bias.len() != outputs {
        return Err(VerFedSvError::BiasLength {
            got: bias.len(),
            expected: outputs,
        });
    }
    match bias.iter().enumerate().find(|(_, b)| !b.is_finite()) {
        Some((output, &value)) => Err(VerFedSvError::NonFiniteBias { output, value }),
        None => Ok(()),
    }
}

/// `N x C` copies of the bias, in f64.
fn bias_matrix(bias: &[f32], shape: (usize, usize)) -> Array2<f64> {
    Array2::from_shape_fn(shape, |(_, c)| bias.get(c).copied().map_or(0.0, f64::from))
}

/// An embedding matrix must have `shape` and finite entries.
fn check_embeddings(
    h: ArrayView2<f32>,
    party: usize,
    step: usize,
    shape: (usize, usize),
) -> Result<(), VerFedSvError> {
    if h.dim() != shape {
        return Err(VerFedSvError::EmbeddingShape {
            party,
            step,
            rows: h.nrows(),
            cols: h.ncols(),
            expected_rows: shape.0,
            expected_cols: shape.1,
        });
    }
    match h.indexed_iter().find(|(_, v)| !v.is_finite()) {
        Some(((row, output), &value)) => Err(VerFedSvError::NonFiniteEmbedding {
            party,
            step,
            row,
            output,
            value,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::utility_table_naive;
    use rand::Rng;
    use rand_distr::{Distribution, StandardNormal};

    type Histories = Vec<Vec<Array2<f32>>>;

    /// `n x c` standard normal entries times `scale`.
    fn gaussian(rng: &mut ChaCha8Rng, shape: (usize, usize), scale: f32) -> Array2<f32> {
        Array2::from_shape_simple_fn(shape, || {
            let v: f32 = StandardNormal.sample(&mut *rng);
            v * scale
        })
    }

    /// `onehot(y_i) - 1/C` per sample: the direction that lowers every sample's loss.
    fn label_direction(labels: &[u32], classes: usize) -> Array2<f32> {
        Array2::from_shape_fn((labels.len(), classes), |(i, c)| {
            f32::from(u8::from(labels[i] as usize == c)) - 1.0 / classes as f32
        })
    }

    /// A random classification instance: party `m` moves towards the labels with
    /// strength `strengths[m]` per step (plus fresh noise of size `jitter` at every step)
    /// from a random start; `steps` steps `0..steps`.
    fn instance(
        strengths: &[f32],
        classes: usize,
        samples: usize,
        steps: usize,
        jitter: f32,
        seed: u64,
    ) -> (Histories, Objective, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let labels: Vec<u32> = (0..samples)
            .map(|_| rng.random_range(0..classes as u32))
            .collect();
        let direction = label_direction(&labels, classes);
        let histories = strengths
            .iter()
            .map(|&strength| {
                let start = gaussian(&mut rng, (samples, classes), 0.5);
                (0..steps)
                    .map(|t| {
                        &start
                            + &(&direction * (strength * t as f32))
                            + gaussian(&mut rng, (samples, classes), jitter)
                    })
                    .collect()
            })
            .collect();
        let bias = (0..classes).map(|c| 0.1 * c as f32 - 0.1).collect();
        let objective = Objective::new_classification(labels, classes).unwrap();
        (histories, objective, bias)
    }

    /// `L(t)` computed independently: f64 sum in party order, rounded to f32.
    fn loss_at(histories: &Histories, t: usize, objective: &Objective, bias: &[f32]) -> f64 {
        let shape = histories[0][t].dim();
        let mut z = bias_matrix(bias, shape);
        for h in histories {
            z += &h[t].mapv(f64::from);
        }
        let rows: Vec<usize> = (0..shape.0).collect();
        objective
            .mean_loss(z.mapv(|v| v as f32).view(), &rows)
            .unwrap()
    }

    fn exact() -> VerFedSvSettings {
        VerFedSvSettings::default()
    }

    #[test]
    fn balance_holds_to_rounding_with_exact_shapley() {
        // M = 4, C = 3, N = 50, T = 5 (6 steps), random embeddings.
        let (histories, objective, bias) = instance(&[0.3, 0.1, 0.0, 0.2], 3, 50, 6, 0.2, 1);
        let v = verfedsv(&histories, &objective, &bias, &exact()).unwrap();
        assert_eq!(v.method, Method::Exact);
        assert_eq!(v.evaluations, 5 * 16);
        assert_eq!((v.per_round.len(), v.round_losses.len()), (5, 6));
        for (t, &loss) in v.round_losses.iter().enumerate() {
            assert_eq!(loss, loss_at(&histories, t, &objective, &bias), "L({t})");
        }
        let decrease = v.round_losses[0] - v.round_losses[5];
        assert_eq!(v.loss_decrease, decrease);
        assert!(decrease > 0.1, "the instance learns: {decrease}");
        let relative = v.balance_error().abs() / decrease;
        eprintln!(
            "balance: sum {} vs L(0) - L(T) {}, relative error {relative:e}",
            v.value_sum, decrease
        );
        assert!(relative < 1e-9, "relative balance error {relative:e}");
        // Every round balances on its own, and the values are the sums of the rounds.
        for (t, round) in v.per_round.iter().enumerate() {
            let step = v.round_losses[t] - v.round_losses[t + 1];
            assert!((round.iter().sum::<f64>() - step).abs() < 1e-12);
        }
        for (m, value) in v.values.iter().enumerate() {
            let sum: f64 = v.per_round.iter().map(|r| r[m]).sum();
            assert_eq!(*value, sum);
        }
        // Parallel batches of the exact table give the same values.
        let parallel = VerFedSvSettings {
            threads: 3,
            ..exact()
        };
        let p = verfedsv(&histories, &objective, &bias, &parallel).unwrap();
        for (a, b) in p.values.iter().zip(&v.values) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert!(p.balance_error().abs() / decrease < 1e-9);
    }

    #[test]
    fn identical_histories_get_equal_values() {
        let (mut histories, objective, bias) = instance(&[0.3, 0.2, 0.05], 3, 40, 5, 0.1, 2);
        histories[2] = histories[1].clone();
        let v = verfedsv(&histories, &objective, &bias, &exact()).unwrap();
        assert!((v.values[1] - v.values[2]).abs() < 1e-12, "{:?}", v.values);
        assert!((v.values[0] - v.values[1]).abs() > 1e-3, "{:?}", v.values);
        for round in &v.per_round {
            assert!((round[1] - round[2]).abs() < 1e-12, "{round:?}");
        }
    }

    #[test]
    fn a_party_that_never_moves_gets_zero() {
        let (mut histories, objective, bias) = instance(&[0.3, 0.2, 0.1], 3, 40, 5, 0.1, 3);
        let frozen = histories[1][0].clone();
        histories[1] = vec![frozen; 5];
        let v = verfedsv(&histories, &objective, &bias, &exact()).unwrap();
        assert!(v.values[1].abs() < 1e-12, "{:?}", v.values);
        assert!(v.per_round.iter().all(|r| r[1].abs() < 1e-12));
        assert!(v.values[0].abs() > 1e-2 && v.values[2].abs() > 1e-3);
    }

    #[test]
    fn a_noise_party_gets_the_lowest_value() {
        // Parties 0-2 descend the loss (little jitter); party 3's embeddings jump around
        // at random (no drift) while their size stays the same.
        let (mut histories, objective, bias) = instance(&[0.25, 0.15, 0.1, 0.0], 4, 60, 8, 0.02, 4);
        let mut rng = ChaCha8Rng::seed_from_u64(40);
        histories[3] = (0..8).map(|_| gaussian(&mut rng, (60, 4), 0.5)).collect();
        let v = verfedsv(&histories, &objective, &bias, &exact()).unwrap();
        eprintln!("noise instance values {:?}", v.values);
        let lowest = v
            .values
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(m, _)| m);
        assert_eq!(lowest, Some(3), "{:?}", v.values);
        // Swapping one random draw for another changes the loss by zero in expectation:
        // the noise party's value is small next to every informative party's.
        assert!(v.values[3].abs() < 0.25 * v.values[2], "{:?}", v.values);
        assert!(v.values[..3].iter().all(|s| *s > 0.0), "{:?}", v.values);
        // The stronger a descending party moves, the more it earns.
        assert!(v.values[0] > v.values[1] && v.values[1] > v.values[2]);
    }

    #[test]
    fn round_game_paths_agree() {
        let (histories, objective, bias) = instance(&[0.3, 0.1, 0.2, 0.05, 0.15], 3, 30, 2, 0.2, 5);
        let previous: Vec<_> = histories.iter().map(|h| h[0].view()).collect();
        let current: Vec<_> = histories.iter().map(|h| h[1].view()).collect();
        let mut game = VerticalRoundGame::new(&objective, &bias, &previous, &current, 1).unwrap();
        let naive = utility_table_naive(&mut game).unwrap();
        assert_eq!(naive[0], 0.0, "U(empty) = 0");
        assert_eq!(naive[31], game.previous_loss() - game.current_loss());
        // Batches on threads compute the same utilities bit for bit.
        let all: Vec<Coalition> = (0..32u64).map(|m| Coalition::from_mask(5, m)).collect();
        let mut out = vec![0.0; 32];
        let mut parallel = VerticalRoundGame::new(&objective, &bias, &previous, &current, 1)
            .unwrap()
            .with_threads(4);
        parallel.values(&all, &mut out);
        assert_eq!(out, naive);
        // Each utility equals its definition: only S moves to step t.
        for (mask, &u) in naive.iter().enumerate() {
            let mixed: Histories = (0..5)
                .map(|m| {
                    let h = &histories[m];
                    let step = if mask >> m & 1 == 1 { 1 } else { 0 };
                    vec![h[0].clone(), h[step].clone()]
                })
                .collect();
            let direct =
                loss_at(&mixed, 0, &objective, &bias) - loss_at(&mixed, 1, &objective, &bias);
            assert!((u - direct).abs() < 1e-12, "mask {mask}: {u} vs {direct}");
        }
        // The incremental path (adds and removes) agrees with the table.
        game.reset();
        for (player, expected) in [(2, 4), (0, 5), (4, 21), (2, 17)] {
            if expected & (1 << player) != 0 {
                game.add(player);
            } else {
                game.remove(player);
            }
            assert!((game.current_value() - naive[expected]).abs() < 1e-12);
        }
    }

    #[test]
    fn beyond_ten_parties_a_monte_carlo_estimator_keeps_the_balance() {
        let strengths: Vec<f32> = (0..12).map(|m| 0.02 * m as f32).collect();
        let (histories, objective, bias) = instance(&strengths, 2, 20, 3, 0.05, 6);
        let settings = VerFedSvSettings {
            seed: 9,
            ..VerFedSvSettings::default()
        };
        let v = verfedsv(&histories, &objective, &bias, &settings).unwrap();
        assert_eq!(v.method, Method::Permutation);
        let budget = settings.budget_for(12);
        assert_eq!(budget, 10 * 12 * 13);
        assert!(v.evaluations <= 2 * budget, "{}", v.evaluations);
        // Permutation sampling is efficient sample by sample.
        assert!(v.balance_error().abs() < 1e-9 * v.loss_decrease.abs().max(1e-3));
        // Same seed, same values; and the exact values are close.
        assert_eq!(
            verfedsv(&histories, &objective, &bias, &settings).unwrap(),
            v
        );
        let exact = VerFedSvSettings {
            estimator: Some(EstimatorSpec::Exact),
            ..settings
        };
        let e = verfedsv(&histories, &objective, &bias, &exact).unwrap();
        assert_eq!((e.method, e.evaluations), (Method::Exact, 2 * 4096));
        let scale = e.values.iter().map(|s| s.abs()).fold(0.0, f64::max);
        for (a, b) in v.values.iter().zip(&e.values) {
            assert!(
                (a - b).abs() < 0.25 * scale,
                "{:?} vs {:?}",
                v.values,
                e.values
            );
        }
    }

    #[test]
    fn snapshots_value_like_histories_and_the_faster_twin_earns_more() {
        // Twins follow the same path towards the labels; the slow one takes a step only
        // at every third snapshot (three at once), ending where the fast one ends.
        let samples = 60;
        let classes = 3;
        let snapshots = 10;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let labels: Vec<u32> = (0..samples)
            .map(|_| rng.random_range(0..classes as u32))
            .collect();
        let direction = label_direction(&labels, classes);
        let start = gaussian(&mut rng, (samples, classes), 0.3);
        let other = gaussian(&mut rng, (samples, classes), 0.3);
        let at = |s: usize| &start + &(&direction * (0.2 * s as f32));
        let table: Histories = (0..snapshots)
            .map(|k| {
                vec![
                    at(k),
                    at(k / 3 * 3),
                    &other + &(&direction * (0.05 * k as f32)),
                ]
            })
            .collect();
        let objective = Objective::new_classification(labels, classes).unwrap();
        let bias = vec![0.0; classes];
        let v = verfedsv_from_snapshots(&table, &objective, &bias, &exact()).unwrap();
        eprintln!("async twins: fast {}, slow {}", v.values[0], v.values[1]);
        assert!(v.values[0] > v.values[1], "{:?}", v.values);
        assert!(v.balance_error().abs() < 1e-9 * v.loss_decrease);
        let histories: Histories = (0..3)
            .map(|m| table.iter().map(|s| s[m].clone()).collect())
            .collect();
        assert_eq!(
            verfedsv(&histories, &objective, &bias, &exact()).unwrap(),
            v
        );
    }

    /// A synchronous vertical run of linear parties (`d` features each, so every
    /// `H^m` has rank at most `d`): per round the batch's embeddings (before the
    /// update) and every sample's true embeddings at every step.
    struct SyncRun {
        objective: Objective,
        batches: Vec<Vec<usize>>,
        sent: Histories,
        truth: Histories,
    }

    fn sync_run(parties: usize, d: usize, samples: usize, rounds: usize, batch: usize) -> SyncRun {
        let classes = 3;
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let features: Vec<Array2<f32>> = (0..parties)
            .map(|_| gaussian(&mut rng, (samples, d), 1.0))
            .collect();
        // Labels from a linear teacher on all features.
        let mut scores = Array2::<f32>::zeros((samples, classes));
        for x in &features {
            scores += &x.dot(&gaussian(&mut rng, (d, classes), 1.0));
        }
        let labels: Vec<u32> = scores
            .rows()
            .into_iter()
            .map(|r| crate::model::argmax(r) as u32)
            .collect();
        let objective = Objective::new_classification(labels, classes).unwrap();
        let mut weights: Vec<Array2<f32>> = (0..parties)
            .map(|_| gaussian(&mut rng, (d, classes), 0.05))
            .collect();
        let (mut batches, mut sent, mut truth) = (
            Vec::new(),
            vec![Vec::new(); parties],
            vec![Vec::new(); parties],
        );
        for _ in 0..rounds {
            let mut ids: Vec<usize> = (0..samples).collect();
            for k in 0..batch {
                let j = rng.random_range(k..samples);
                ids.swap(k, j);
            }
            ids.truncate(batch);
            let mut z = Array2::<f32>::zeros((batch, classes));
            for m in 0..parties {
                let all = features[m].dot(&weights[m]);
                let rows = all.select(ndarray::Axis(0), &ids);
                z += &rows;
                sent[m].push(rows);
                truth[m].push(all);
            }
            let (_, g) = objective.loss_and_grad(z.view(), &ids).unwrap();
            for m in 0..parties {
                let x = features[m].select(ndarray::Axis(0), &ids);
                weights[m] -= &(x.t().dot(&g) * (0.5 / batch as f32));
            }
            batches.push(ids);
        }
        SyncRun {
            objective,
            batches,
            sent,
            truth,
        }
    }

    #[test]
    fn synchronous_completion_balances_within_the_completion_error() {
        // 3 linear parties with 3 features each (rank of H^m <= 3 = the completion rank),
        // N = 200, 40 rounds, batches of 40: each H^m (120 x 200) is 20% observed.
        let run = sync_run(3, 3, 200, 40, 40);
        let bias = vec![0.0; 3];
        let settings = CompletionSettings {
            lambda: 1e-3,
            ..CompletionSettings::default()
        };
        let completed = complete_synchronous(200, 3, &run.batches, &run.sent, &settings).unwrap();
        // Completion error per party over the whole history.
        let mut worst = 0.0f64;
        for (c, t) in completed.iter().zip(&run.truth) {
            let (mut diff, mut norm) = (0.0f64, 0.0f64);
            for (a, b) in c.iter().zip(t) {
                diff += (a - b).mapv(|v| f64::from(v).powi(2)).sum();
                norm += b.mapv(|v| f64::from(v).powi(2)).sum();
            }
            worst = worst.max((diff / norm).sqrt());
        }
        let v = verfedsv(&completed, &run.objective, &bias, &exact()).unwrap();
        let truth = verfedsv(&run.truth, &run.objective, &bias, &exact()).unwrap();
        // Balance is exact on the completed embeddings ...
        assert!(v.balance_error().abs() < 1e-9 * v.loss_decrease.abs());
        // ... and against the true loss decrease it is off by at most the completion
        // error: softmax cross-entropy is sqrt(2)-Lipschitz in z (|softmax - onehot| <=
        // sqrt 2), so |L_completed(t) - L_true(t)| <= sqrt(2/N) |Z_completed(t) - Z_true(t)|_F
        // at t = 0 and t = T, where Z(t) = sum_m H^m(t) + b.
        let z_error = |t: usize| -> f64 {
            let mut dz = Array2::<f64>::zeros((200, 3));
            for (c, tr) in completed.iter().zip(&run.truth) {
                dz += &(&c[t] - &tr[t]).mapv(f64::from);
            }
            dz.mapv(|x| x * x).sum().sqrt()
        };
        let last = run.batches.len() - 1;
        let bound = (2.0f64 / 200.0).sqrt() * (z_error(0) + z_error(last)) + 1e-6;
        let gap = (v.value_sum - truth.loss_decrease).abs();
        eprintln!(
            "sync completion: worst relative history error {worst:.2e}, value sum {:.6}, true \
             L(0) - L(T) {:.6}, gap {gap:.2e} (bound {bound:.2e}), relative gap {:.2e}; \
             values {:?} vs exact-history values {:?}",
            v.value_sum,
            truth.loss_decrease,
            gap / truth.loss_decrease,
            v.values,
            truth.values
        );
        assert!(worst < 0.02, "completion error {worst}");
        assert!(truth.loss_decrease > 0.1, "{}", truth.loss_decrease);
        assert!(gap <= bound, "gap {gap} above the completion bound {bound}");
        assert!(gap < 0.02 * truth.loss_decrease);
        // The values themselves are close to those of the exact history.
        for (a, b) in v.values.iter().zip(&truth.values) {
            assert!((a - b).abs() < 0.01 * truth.loss_decrease, "{a} vs {b}");
        }
        // The reference code's lambda = 0.1 is biased but still within the bound.
        let default =
            complete_synchronous(200, 3, &run.batches, &run.sent, &Default::default()).unwrap();
        let d = verfedsv(&default, &run.objective, &bias, &exact()).unwrap();
        let default_gap = (d.value_sum - truth.loss_decrease).abs();
        eprintln!(
            "sync completion with lambda 0.1: gap {default_gap:.2e}, values {:?}",
            d.values
        );
    }

    #[test]
    fn synchronous_layout_is_round_major_and_exact_when_fully_observed() {
        // Every sample in every batch: the completion of a rank <= 2 history is exact,
        // and step t, sample i, output c lands where it was sent.
        let run = sync_run(2, 2, 30, 6, 30);
        let settings = CompletionSettings {
            lambda: 1e-10,
            tolerance: 1e-14,
            ..CompletionSettings::default()
        };
        let completed = complete_synchronous(30, 3, &run.batches, &run.sent, &settings).unwrap();
        assert_eq!((completed.len(), completed[0].len()), (2, 6));
        for (c, t) in completed.iter().zip(&run.truth) {
            for (a, b) in c.iter().zip(t) {
                assert_eq!(a.dim(), (30, 3));
                let err = (a - b).mapv(f32::abs).fold(0.0f32, |x, y| x.max(*y));
                assert!(err < 1e-4, "max error {err}");
            }
        }
    }

    #[test]
    fn invalid_inputs_are_refused_with_the_offender() {
        let (histories, objective, bias) = instance(&[0.1, 0.2], 3, 10, 3, 0.1, 9);
        let run = |h: &Histories, b: &[f32], s: &VerFedSvSettings| verfedsv(h, &objective, b, s);
        assert_eq!(run(&vec![], &bias, &exact()), Err(VerFedSvError::NoParties));
        let short: Histories = histories.iter().map(|h| h[..1].to_vec()).collect();
        assert_eq!(
            run(&short, &bias, &exact()),
            Err(VerFedSvError::TooFewSteps { steps: 1 })
        );
        let mut ragged = histories.clone();
        ragged[1].pop();
        assert_eq!(
            run(&ragged, &bias, &exact()),
            Err(VerFedSvError::StepCount {
                party: 1,
                steps: 2,
                expected: 3
            })
        );
        let mut wrong = histories.clone();
        wrong[1][2] = Array2::zeros((10, 2));
        let err = run(&wrong, &bias, &exact()).unwrap_err();
        assert_eq!(
            err,
            VerFedSvError::EmbeddingShape {
                party: 1,
                step: 2,
                rows: 10,
                cols: 2,
                expected_rows: 10,
                expected_cols: 3
            }
        );
        assert!(err.to_string().contains("10 x 2"), "{err}");
        let mut nan = histories.clone();
        nan[0][1][[4, 2]] = f32::NAN;
        assert!(matches!(
            run(&nan, &bias, &exact()),
            Err(VerFedSvError::NonFiniteEmbedding {
                party: 0,
                step: 1,
                row: 4,
                output: 2,
                ..
            })
        ));
        assert_eq!(
            run(&histories, &[0.0; 2], &exact()),
            Err(VerFedSvError::BiasLength {
                got: 2,
                expected: 3
            })
        );
        assert!(matches!(
            run(&histories, &[0.0, f32::INFINITY, 0.0], &exact()),
            Err(VerFedSvError::NonFiniteBias { output: 1, .. })
        ));
        let zero_threads = VerFedSvSettings {
            threads: 0,
            ..exact()
        };
        assert!(matches!(
            run(&histories, &bias, &zero_threads),
            Err(VerFedSvError::InvalidSetting {
                setting: "threads",
                ..
            })
        ));
        let zero_budget = VerFedSvSettings {
            budget_per_round: Some(0),
            ..exact()
        };
        assert!(matches!(
            run(&histories, &bias, &zero_budget),
            Err(VerFedSvError::InvalidSetting {
                setting: "budget_per_round",
                ..
            })
        ));
        // An objective for other samples does not fit the embeddings.
        let other = Objective::new_classification(vec![0; 11], 3).unwrap();
        assert!(matches!(
            verfedsv(&histories, &other, &bias, &exact()),
            Err(VerFedSvError::EmbeddingShape {
                expected_rows: 11,
                ..
            })
        ));
        // Snapshots with a missing party.
        let mut table: Histories = (0..3)
            .map(|k| histories.iter().map(|h| h[k].clone()).collect())
            .collect();
        table[2].pop();
        assert_eq!(
            verfedsv_from_snapshots(&table, &objective, &bias, &exact()),
            Err(VerFedSvError::PartyCount {
                snapshot: 2,
                parties: 1,
                expected: 2
            })
        );

        // Synchronous completion inputs.
        let block = |rows: usize| Array2::<f32>::zeros((rows, 3));
        let sent = vec![vec![block(2), block(1)]];
        let ok = CompletionSettings::default();
        let batches = vec![vec![0, 1], vec![2]];
        assert!(complete_synchronous(3, 3, &batches, &sent, &ok).is_ok());
        assert_eq!(
            complete_synchronous(3, 3, &[vec![0, 3], vec![2]], &sent, &ok),
            Err(VerFedSvError::SampleOutOfRange {
                round: 0,
                sample: 3,
                num_samples: 3
            })
        );
        assert_eq!(
            complete_synchronous(3, 3, &[vec![1, 1], vec![2]], &sent, &ok),
            Err(VerFedSvError::DuplicateSample {
                round: 0,
                sample: 1
            })
        );
        assert_eq!(
            complete_synchronous(3, 3, &batches[..1], &sent, &ok),
            Err(VerFedSvError::RoundCount {
                party: 0,
                rounds: 2,
                batches: 1
            })
        );
        assert!(matches!(
            complete_synchronous(3, 3, &[vec![0], vec![2]], &sent, &ok),
            Err(VerFedSvError::EmbeddingShape {
                party: 0,
                step: 0,
                rows: 2,
                expected_rows: 1,
                ..
            })
        ));
        let rank0 = CompletionSettings { rank: 0, ..ok };
        assert!(matches!(
            complete_synchronous(3, 3, &batches, &sent, &rank0),
            Err(VerFedSvError::Completion { party: 0, .. })
        ));
        assert_eq!(
            complete_synchronous(0, 3, &batches, &sent, &CompletionSettings::default()),
            Err(VerFedSvError::Empty {
                what: "the number of samples"
            })
        );
        assert_eq!(
            complete_synchronous(3, 3, &batches, &[], &CompletionSettings::default()),
            Err(VerFedSvError::NoParties)
        );
    }
}
