//! In-process reference training loops for vertical FL, synchronous and (deterministically
//! simulated) asynchronous. No networking: they fix the semantics the server follows and
//! record the embedding histories VerFedSV (ALGORITHMS.md section 3) values.
//!
//! Inputs are the parties' column blocks (`parties[m]` is `[N x d_m]`, row `i` is sample id
//! `i`, e.g. from [`super::ColumnSplit::project_all`]) and the label holder's
//! [`Objective`] over the same `N` ids. Every party starts from [`PartyModel::new`] with the
//! same `seed` (linear models start at zero; parties with identical columns therefore stay
//! identical, as VerFedSV's symmetry property assumes); the server bias starts at zero.
//!
//! - [`train_sync`]: in round `t` the label holder draws a seeded mini-batch `B_t`; every
//!   party embeds it with its current model (before the round's update); `z = sum_m h^m + b`;
//!   the objective returns per-sample gradients `g`; every party applies them to its batch
//!   rows and the bias moves by `-eta * mean_k g_k` (unless frozen). Each [`SyncRound`]
//!   records the batch, each party's batch embeddings (row block `t` of VerFedSV's `H^m`),
//!   the mean batch loss and the bias used.
//! - [`train_async`]: time advances in ticks; party `m` takes a step every `periods[m]`
//!   ticks (parties in index order within a tick). A step draws the party's own batch, embeds
//!   it, writes the embeddings into the server's table (the latest embedding of every sample
//!   per party), combines them with the table's latest embeddings of the other parties,
//!   gets the gradients and updates the party (and the bias). The whole table is
//!   snapshotted at tick 0 and every `snapshot_interval` ticks (and at the last tick).
//!
//! Every random draw comes from `ChaCha8Rng::seed_from_u64(seed)` (stream 0 for the
//! synchronous label holder, stream `m + 1` for party `m`'s asynchronous batches), so runs
//! are reproducible bit for bit.

use ndarray::{Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand::seq::index;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::party::check_step;
use super::{Objective, PartyModel, PartyModelSpec, VerticalError, check_finite, check_shape};
use crate::model::argmax;

/// Which embedding model every party runs (dimensions come from the data and objective).
/// Serialised with a `kind` tag: `{"kind": "linear"}`, `{"kind": "mlp", "hidden": 16}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelKind {
    /// `h = W x` ([`PartyModelSpec::Linear`]).
    Linear,
    /// One hidden ReLU layer ([`PartyModelSpec::Mlp`]).
    Mlp {
        /// Hidden units.
        hidden: usize,
    },
}

/// Hyperparameters shared by both training loops. Missing fields take the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerticalConfig {
    /// Step size `eta` of the parties and of the bias.
    pub learning_rate: f32,
    /// Weight decay `lambda` of the parties' weights: `W <- (1 - eta lambda) W - ...`.
    pub l2: f32,
    /// Samples per mini-batch (capped at the number of samples).
    pub batch_size: usize,
    /// Synchronous rounds (ignored by [`train_async`], which runs [`AsyncConfig::ticks`]).
    pub rounds: usize,
    /// Seed of every random draw (batches, MLP initialisation).
    pub seed: u64,
    /// The parties' embedding model.
    pub model: ModelKind,
    /// Whether the server bias is trained (`false` keeps it at zero).
    pub train_bias: bool,
    /// Synchronous only: also record every sample's embeddings per party in every round
    /// ([`SyncRound::full_embeddings`]), the ground truth matrix completion estimates.
    pub record_full_embeddings: bool,
}

impl Default for VerticalConfig {
    /// Learning rate 0.1, no weight decay, batches of 32, 100 rounds, seed 0, linear
    /// parties, trained bias, no full-embedding recording.
    fn default() -> Self {
        Self {
            learning_rate: 0.1,
            l2: 0.0,
            batch_size: 32,
            rounds: 100,
            seed: 0,
            model: ModelKind::Linear,
            train_bias: true,
            record_full_embeddings: false,
        }
    }
}

impl VerticalConfig {
    /// Rejects batch size 0, a non-positive or non-finite learning rate, a negative or
    /// non-finite `l2` and an MLP with 0 hidden units.
    pub fn validate(&self) -> Result<(), VerticalError> {
        check_step(self.learning_rate, self.l2)?;
        if self.batch_size == 0 {
            return Err(VerticalError::InvalidConfig {
                reason: "batch_size must be at least 1".into(),
            });
        }
        if self.model == (ModelKind::Mlp { hidden: 0 }) {
            return Err(VerticalError::InvalidConfig {
                reason: "mlp hidden must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The spec of a party with `num_features` columns and `output_dim` outputs.
    pub fn party_spec(&self, num_features: usize, output_dim: usize) -> PartyModelSpec {
        match self.model {
            ModelKind::Linear => PartyModelSpec::Linear {
                num_features,
                output_dim,
            },
            ModelKind::Mlp { hidden } => PartyModelSpec::Mlp {
                num_features,
                hidden,
                output_dim,
            },
        }
    }
}

/// The asynchronous simulation's clock. Missing fields take the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AsyncConfig {
    /// Ticks to simulate.
    pub ticks: usize,
    /// Party `m` steps at every tick divisible by `periods[m]` (>= 1); empty means every
    /// party steps every tick.
    pub periods: Vec<usize>,
    /// The server snapshots its embedding table every this many ticks (>= 1).
    pub snapshot_interval: usize,
}

impl Default for AsyncConfig {
    /// 300 ticks, every party every tick, a snapshot every 10 ticks.
    fn default() -> Self {
        Self {
            ticks: 300,
            periods: Vec::new(),
            snapshot_interval: 10,
        }
    }
}

/// What one synchronous round observed.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncRound {
    /// The mini-batch's sample ids, ascending, distinct.
    pub batch: Vec<usize>,
    /// Per party, the `[batch x C]` embeddings of the batch (row `k` is sample `batch[k]`),
    /// computed before this round's update.
    pub embeddings: Vec<Array2<f32>>,
    /// With [`VerticalConfig::record_full_embeddings`], per party the `[N x C]` embeddings
    /// of every sample with the same (pre-update) models.
    pub full_embeddings: Option<Vec<Array2<f32>>>,
    /// Mean objective loss on the batch (before the update).
    pub loss: f64,
    /// The server bias used in this round (before its update).
    pub bias: Vec<f32>,
}

/// A finished synchronous run.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncRun {
    /// One record per round.
    pub rounds: Vec<SyncRound>,
    /// The parties' final models.
    pub models: Vec<PartyModel>,
    /// The final server bias.
    pub bias: Vec<f32>,
}

/// One snapshot of the server's embedding table in the asynchronous simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Tick at which it was taken (after that tick's steps).
    pub tick: usize,
    /// Per party, the latest `[N x C]` embedding of every sample.
    pub embeddings: Vec<Array2<f32>>,
    /// The server bias at that tick.
    pub bias: Vec<f32>,
}

/// A finished asynchronous simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncRun {
    /// Snapshots at tick 0, every `snapshot_interval` ticks and the last tick, in order.
    pub snapshots: Vec<Snapshot>,
    /// Steps each party took (its communication count).
    pub steps: Vec<usize>,
    /// The parties' final models.
    pub models: Vec<PartyModel>,
    /// The final server bias.
    pub bias: Vec<f32>,
}

/// Full-data loss and (classification only) accuracy of combined embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerticalMetrics {
    /// Mean objective loss over all samples.
    pub loss: f64,
    /// Fraction of samples whose arg-max output is the label; `None` for regression.
    pub accuracy: Option<f64>,
}

/// Trains fresh party models synchronously for `cfg.rounds` rounds (module docs).
///
/// Fails on an invalid config, no parties, a party whose row count differs from the
/// objective's sample count, non-finite features, or divergence
/// ([`VerticalError::Diverged`] with the round).
pub fn train_sync(
    parties: &[Array2<f32>],
    objective: &Objective,
    cfg: &VerticalConfig,
) -> Result<SyncRun, VerticalError> {
    let mut models = init_models(parties, objective, cfg)?;
    let n = objective.num_samples();
    let mut bias = vec![0.0f32; objective.output_dim()];
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut rounds = Vec::with_capacity(cfg.rounds);
    for round in 0..cfg.rounds {
        let batch = draw_batch(&mut rng, n, cfg.batch_size);
        let full_embeddings = if cfg.record_full_embeddings {
            Some(full_embeddings(&models, parties)?)
        } else {
            None
        };
        let xs: Vec<Array2<f32>> = parties.iter().map(|x| x.select(Axis(0), &batch)).collect();
        let embeddings = models
            .iter()
            .zip(&xs)
            .map(|(m, x)| m.embed(x.view()))
            .collect::<Result<Vec<_>, _>>()?;
        let z = combine(&embeddings, &bias)?;
        let (loss, g) = objective.loss_and_grad(z.view(), &batch)?;
        for (model, x) in models.iter_mut().zip(&xs) {
            update_party(model, x.view(), g.view(), cfg, round)?;
        }
        let used_bias = bias.clone();
        update_bias(&mut bias, g.view(), cfg, round)?;
        rounds.push(SyncRound {
            batch,
            embeddings,
            full_embeddings,
            loss,
            bias: used_bias,
        });
    }
    Ok(SyncRun {
        rounds,
        models,
        bias,
    })
}

/// Simulates asynchronous training of fresh party models for `clock.ticks` ticks (module
/// docs); `cfg.rounds` and `cfg.record_full_embeddings` are not used.
///
/// Fails like [`train_sync`], and on `periods` of the wrong length or containing 0, or a
/// `snapshot_interval` of 0 (divergence reports the tick).
pub fn train_async(
    parties: &[Array2<f32>],
    objective: &Objective,
    cfg: &VerticalConfig,
    clock: &AsyncConfig,
) -> Result<AsyncRun, VerticalError> {
    let mut models = init_models(parties, objective, cfg)?;
    let periods = if clock.periods.is_empty() {
        vec![1; parties.len()]
    } else {
        clock.periods.clone()
    };
    if periods.len() != parties.len() || periods.contains(&0) {
        return Err(VerticalError::InvalidConfig {
            reason: format!(
                "periods must hold one value >= 1 per party ({} parties), got {:?}",
                parties.len(),
                clock.periods
            ),
        });
    }
    if clock.snapshot_interval == 0 {
        return Err(VerticalError::InvalidConfig {
            reason: "snapshot_interval must be at least 1".into(),
        });
    }
    let n = objective.num_samples();
    let mut bias = vec![0.0f32; objective.output_dim()];
    let mut rngs: Vec<ChaCha8Rng> = (0..parties.len())
        .map(|m| {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            rng.set_stream(m as u64 + 1);
            rng
        })
        .collect();
    // The parties' initial upload of every sample's embedding.
    let mut table = full_embeddings(&models, parties)?;
    let mut snapshots = vec![Snapshot {
        tick: 0,
        embeddings: table.clone(),
        bias: bias.clone(),
    }];
    let mut steps = vec![0usize; parties.len()];
    for tick in 1..=clock.ticks {
        for m in 0..parties.len() {
            if tick % periods[m] != 0 {
                continue;
            }
            let batch = draw_batch(&mut rngs[m], n, cfg.batch_size);
            let x = parties[m].select(Axis(0), &batch);
            let h = models[m].embed(x.view())?;
            for (k, &i) in batch.iter().enumerate() {
                table[m].row_mut(i).assign(&h.row(k));
            }
            let latest: Vec<Array2<f32>> =
                table.iter().map(|t| t.select(Axis(0), &batch)).collect();
            let z = combine(&latest, &bias)?;
            let (_, g) = objective.loss_and_grad(z.view(), &batch)?;
            update_party(&mut models[m], x.view(), g.view(), cfg, tick)?;
            update_bias(&mut bias, g.view(), cfg, tick)?;
            steps[m] += 1;
        }
        if tick % clock.snapshot_interval == 0 || tick == clock.ticks {
            snapshots.push(Snapshot {
                tick,
                embeddings: table.clone(),
                bias: bias.clone(),
            });
        }
    }
    Ok(AsyncRun {
        snapshots,
        steps,
        models,
        bias,
    })
}

/// Every sample's embedding per party (`[N x C]` each) for the given models and column
/// blocks; fails if the counts differ or a block does not fit its model.
pub fn full_embeddings(
    models: &[PartyModel],
    parties: &[Array2<f32>],
) -> Result<Vec<Array2<f32>>, VerticalError> {
    if models.len() != parties.len() {
        return Err(VerticalError::InvalidConfig {
            reason: format!(
                "{} party models but {} feature blocks",
                models.len(),
                parties.len()
            ),
        });
    }
    models
        .iter()
        .zip(parties)
        .map(|(m, x)| m.embed(x.view()))
        .collect()
}

/// The combined output `z = sum_m embeddings[m] + bias` (bias added to every row); fails on
/// no embeddings or on shapes that disagree with the first embedding and the bias.
pub fn combine(embeddings: &[Array2<f32>], bias: &[f32]) -> Result<Array2<f32>, VerticalError> {
    let first = embeddings.first().ok_or(VerticalError::EmptyBatch {
        what: "embedding list",
    })?;
    let (rows, cols) = first.dim();
    if bias.len() != cols {
        return Err(VerticalError::ShapeMismatch {
            what: "bias",
            rows: 1,
            cols: bias.len(),
            expected_rows: 1,
            expected_cols: cols,
        });
    }
    let mut z = Array2::from_shape_fn((rows, cols), |(_, c)| bias.get(c).copied().unwrap_or(0.0));
    for h in embeddings {
        check_shape("party embedding", h.view(), rows, cols)?;
        z += h;
    }
    Ok(z)
}

/// Loss and accuracy over all samples of the combined final embeddings: `models` embed
/// `parties`, plus `bias`, against `objective` (e.g. the test split's labels).
pub fn evaluate(
    models: &[PartyModel],
    parties: &[Array2<f32>],
    bias: &[f32],
    objective: &Objective,
) -> Result<VerticalMetrics, VerticalError> {
    let z = combine(&full_embeddings(models, parties)?, bias)?;
    let rows: Vec<usize> = (0..objective.num_samples()).collect();
    score(objective, z.view(), &rows)
}

/// Mean loss and (classification only) accuracy of combined outputs `z` whose row `k` is
/// sample `rows[k]`: the one scoring of [`evaluate`] and of the server's evaluation pass.
/// Fails like [`Objective::mean_loss`] (no rows, shapes, ids out of range).
pub fn score(
    objective: &Objective,
    z: ArrayView2<f32>,
    rows: &[usize],
) -> Result<VerticalMetrics, VerticalError> {
    let loss = objective.mean_loss(z, rows)?;
    let accuracy = match objective {
        Objective::Classification { labels, .. } => {
            let correct = z
                .rows()
                .into_iter()
                .zip(rows)
                .filter(|(row, i)| labels.get(**i).is_some_and(|&l| argmax(*row) == l as usize))
                .count();
            Some(correct as f64 / rows.len() as f64)
        }
        Objective::Regression { .. } => None,
    };
    Ok(VerticalMetrics { loss, accuracy })
}

/// Validates the inputs and builds every party's fresh model.
fn init_models(
    parties: &[Array2<f32>],
    objective: &Objective,
    cfg: &VerticalConfig,
) -> Result<Vec<PartyModel>, VerticalError> {
    cfg.validate()?;
    objective.validate()?;
    if parties.is_empty() {
        return Err(VerticalError::InvalidConfig {
            reason: "at least one party is needed".into(),
        });
    }
    let n = objective.num_samples();
    parties
        .iter()
        .map(|x| {
            check_shape("party features", x.view(), n, x.ncols())?;
            check_finite("party features", x.view())?;
            PartyModel::new(cfg.party_spec(x.ncols(), objective.output_dim()), cfg.seed)
        })
        .collect()
}

/// `min(batch_size, n)` distinct ids from `0..n`, ascending.
fn draw_batch(rng: &mut ChaCha8Rng, n: usize, batch_size: usize) -> Vec<usize> {
    let mut batch = index::sample(rng, n, batch_size.min(n)).into_vec();
    batch.sort_unstable();
    batch
}

/// Applies a party step, reporting divergence with the round or tick.
fn update_party(
    model: &mut PartyModel,
    x: ArrayView2<f32>,
    g: ArrayView2<f32>,
    cfg: &VerticalConfig,
    step: usize,
) -> Result<(), VerticalError> {
    match model.apply_gradients(x, g, cfg.learning_rate, cfg.l2) {
        Err(VerticalError::UpdateDiverged { .. }) => Err(VerticalError::Diverged { step }),
        other => other,
    }
}

/// `b <- b - eta * mean_k g_k` if the bias is trained; fails if it becomes non-finite.
fn update_bias(
    bias: &mut [f32],
    g: ArrayView2<f32>,
    cfg: &VerticalConfig,
    step: usize,
) -> Result<(), VerticalError> {
    if !cfg.train_bias || g.nrows() == 0 {
        return Ok(());
    }
    let rows = g.nrows() as f32;
    for (b, col) in bias.iter_mut().zip(g.columns()) {
        *b -= cfg.learning_rate * col.sum() / rows;
    }
    if bias.iter().any(|b| !b.is_finite()) {
        return Err(VerticalError::Diverged { step });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, builtin, partition};
    use crate::model::{ModelSpec, TrainConfig};
    use crate::vertical::ColumnSplit;
    use ndarray::array;
    use rand::Rng;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// A small random 3-class problem split into parties of 2, 3 and 1 columns.
    fn toy(n: usize, seed: u64) -> (Vec<Array2<f32>>, Objective) {
        let mut r = rng(seed);
        let x = Array2::from_shape_fn((n, 6), |_| r.random_range(-1.0f32..1.0));
        // Labels depend on columns from different parties, so everyone is useful.
        let labels = x
            .rows()
            .into_iter()
            .map(|row| u32::from(row[0] + row[3] > 0.0) + u32::from(row[5] > 0.5))
            .collect();
        let split = ColumnSplit::contiguous(6, 3).unwrap();
        let split =
            ColumnSplit::new(6, vec![split.blocks()[0].clone(), vec![2, 3, 4], vec![5]]).unwrap();
        let data = Dataset::new(x, labels, 3).unwrap();
        let parties = split.project_all(&data).unwrap();
        (
            parties,
            Objective::new_classification(data.labels, 3).unwrap(),
        )
    }

    #[test]
    fn sync_rounds_record_pre_update_embeddings() {
        let (parties, obj) = toy(40, 1);
        let cfg = VerticalConfig {
            rounds: 6,
            batch_size: 8,
            learning_rate: 0.5,
            l2: 0.01,
            record_full_embeddings: true,
            ..VerticalConfig::default()
        };
        let run = train_sync(&parties, &obj, &cfg).unwrap();
        assert_eq!(run.rounds.len(), 6);
        let first = &run.rounds[0];
        // Linear parties start at zero and the bias at zero: uniform softmax, loss ln 3.
        assert!(first.embeddings.iter().all(|h| h.iter().all(|&v| v == 0.0)));
        assert!((first.loss - 3f64.ln()).abs() < 1e-6);
        assert_eq!(first.bias, vec![0.0; 3]);
        for (t, round) in run.rounds.iter().enumerate() {
            assert_eq!(round.batch.len(), 8);
            assert!(
                round.batch.windows(2).all(|w| w[0] < w[1]),
                "sorted, distinct"
            );
            let full = round.full_embeddings.as_ref().unwrap();
            for (h, f) in round.embeddings.iter().zip(full) {
                assert_eq!(h.dim(), (8, 3));
                assert_eq!(f.dim(), (40, 3));
                assert_eq!(*h, f.select(Axis(0), &round.batch), "round {t}");
            }
            let z = combine(&round.embeddings, &round.bias).unwrap();
            let loss = obj.mean_loss(z.view(), &round.batch).unwrap();
            assert!((loss - round.loss).abs() < 1e-5, "round {t}");
            if t > 0 {
                assert_ne!(round.bias, run.rounds[t - 1].bias, "bias is trained");
                assert_ne!(round.embeddings[0], Array2::<f32>::zeros((8, 3)));
            }
        }
        // The final models are one update past the last recorded state.
        let last = run.rounds.last().unwrap().full_embeddings.as_ref().unwrap();
        assert_ne!(&full_embeddings(&run.models, &parties).unwrap(), last);
    }

    #[test]
    fn sync_is_reproducible_and_seeded() {
        let (parties, obj) = toy(50, 2);
        let cfg = VerticalConfig {
            rounds: 20,
            batch_size: 10,
            model: ModelKind::Mlp { hidden: 4 },
            ..VerticalConfig::default()
        };
        let a = train_sync(&parties, &obj, &cfg).unwrap();
        let b = train_sync(&parties, &obj, &cfg).unwrap();
        assert_eq!(a, b);
        let c = train_sync(&parties, &obj, &VerticalConfig { seed: 1, ..cfg }).unwrap();
        assert_ne!(a.rounds[0].batch, c.rounds[0].batch);
        assert_ne!(a.models, c.models);
    }

    #[test]
    fn frozen_bias_stays_zero_and_twins_stay_identical() {
        let (mut parties, obj) = toy(30, 3);
        // Party 2 becomes a twin of party 0.
        parties[2] = parties[0].clone();
        let cfg = VerticalConfig {
            rounds: 10,
            batch_size: 5,
            train_bias: false,
            ..VerticalConfig::default()
        };
        let run = train_sync(&parties, &obj, &cfg).unwrap();
        assert_eq!(run.bias, vec![0.0; 3]);
        assert!(run.rounds.iter().all(|r| r.bias == vec![0.0; 3]));
        assert_eq!(run.models[0], run.models[2]);
        assert_ne!(run.models[0].params(), &[0.0f32; 6][..]);
    }

    #[test]
    fn regression_training_reduces_squared_error() {
        let mut r = rng(4);
        let x = Array2::from_shape_fn((60, 3), |_| r.random_range(-1.0f32..1.0));
        let y: Vec<f32> = x
            .rows()
            .into_iter()
            .map(|v| 2.0 * v[0] - v[2] + 0.5)
            .collect();
        let parties = vec![x.select(Axis(1), &[0, 1]), x.select(Axis(1), &[2])];
        let obj = Objective::new_regression(y).unwrap();
        let cfg = VerticalConfig {
            rounds: 400,
            batch_size: 16,
            ..VerticalConfig::default()
        };
        let run = train_sync(&parties, &obj, &cfg).unwrap();
        let m = evaluate(&run.models, &parties, &run.bias, &obj).unwrap();
        assert_eq!(m.accuracy, None);
        assert!(m.loss < 1e-3, "loss {}", m.loss);
        assert!((run.bias[0] - 0.5).abs() < 0.05, "bias {:?}", run.bias);
    }

    #[test]
    fn async_steps_follow_periods_and_snapshots_the_interval() {
        let (parties, obj) = toy(40, 5);
        let cfg = VerticalConfig {
            batch_size: 4,
            learning_rate: 0.5,
            ..VerticalConfig::default()
        };
        let clock = AsyncConfig {
            ticks: 25,
            periods: vec![1, 3, 30],
            snapshot_interval: 10,
        };
        let run = train_async(&parties, &obj, &cfg, &clock).unwrap();
        assert_eq!(run.steps, vec![25, 8, 0]);
        let ticks: Vec<usize> = run.snapshots.iter().map(|s| s.tick).collect();
        assert_eq!(ticks, vec![0, 10, 20, 25]);
        for s in &run.snapshots {
            assert_eq!(s.embeddings.len(), 3);
            assert!(s.embeddings.iter().all(|e| e.dim() == (40, 3)));
        }
        // Party 2 never stepped: its table column stays at the zero initial embedding.
        let last = run.snapshots.last().unwrap();
        assert!(last.embeddings[2].iter().all(|&v| v == 0.0));
        assert_eq!(run.models[2].params(), &[0.0f32; 3][..]);
        assert_eq!(last.bias, run.bias);
        // Snapshot 0 is the initial table: all zeros, bias zero.
        assert!(
            run.snapshots[0]
                .embeddings
                .iter()
                .all(|e| e.iter().all(|&v| v == 0.0))
        );
        // Training lowers the full-data loss of the snapshot table (with the final bias).
        let loss_at = |s: &Snapshot| {
            let z = combine(&s.embeddings, &run.bias).unwrap();
            obj.mean_loss(z.view(), &(0..40).collect::<Vec<_>>())
                .unwrap()
        };
        assert!(loss_at(last) < loss_at(&run.snapshots[0]));
        // Reproducible bit for bit.
        assert_eq!(run, train_async(&parties, &obj, &cfg, &clock).unwrap());
    }

    #[test]
    fn async_table_holds_the_latest_uploaded_embeddings() {
        // With one party there is no staleness from others: after a step the table rows of
        // the batch equal the embeddings the party uploaded, i.e. its model before the step.
        let (parties, obj) = toy(20, 6);
        let parties = vec![parties[0].clone()];
        let cfg = VerticalConfig {
            batch_size: 20,
            ..VerticalConfig::default()
        };
        let clock = AsyncConfig {
            ticks: 2,
            periods: vec![1],
            snapshot_interval: 1,
        };
        let one = train_async(
            &parties,
            &obj,
            &cfg,
            &AsyncConfig {
                ticks: 1,
                ..clock.clone()
            },
        )
        .unwrap();
        let two = train_async(&parties, &obj, &cfg, &clock).unwrap();
        // The batch is everything, so at tick 2 the table is the tick-1 model's embedding.
        assert_eq!(
            two.snapshots[2].embeddings,
            full_embeddings(&one.models, &parties).unwrap()
        );
    }

    #[test]
    fn invalid_inputs_are_rejected() {
        let (parties, obj) = toy(10, 7);
        let cfg = VerticalConfig::default();
        let bad_cfgs = [
            VerticalConfig {
                batch_size: 0,
                ..cfg.clone()
            },
            VerticalConfig {
                learning_rate: -0.1,
                ..cfg.clone()
            },
            VerticalConfig {
                l2: f32::NAN,
                ..cfg.clone()
            },
            VerticalConfig {
                model: ModelKind::Mlp { hidden: 0 },
                ..cfg.clone()
            },
        ];
        for bad in bad_cfgs {
            assert!(
                matches!(
                    train_sync(&parties, &obj, &bad),
                    Err(VerticalError::InvalidConfig { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(train_sync(&[], &obj, &cfg).is_err());
        let short = vec![parties[0].slice(ndarray::s![..9, ..]).to_owned()];
        assert!(matches!(
            train_sync(&short, &obj, &cfg),
            Err(VerticalError::ShapeMismatch {
                rows: 9,
                expected_rows: 10,
                ..
            })
        ));
        let mut nan = parties.clone();
        nan[1][[4, 0]] = f32::NAN;
        assert!(matches!(
            train_sync(&nan, &obj, &cfg),
            Err(VerticalError::NonFinite { row: 4, col: 0, .. })
        ));
        for clock in [
            AsyncConfig {
                periods: vec![1, 1],
                ..AsyncConfig::default()
            },
            AsyncConfig {
                periods: vec![1, 0, 1],
                ..AsyncConfig::default()
            },
            AsyncConfig {
                snapshot_interval: 0,
                ..AsyncConfig::default()
            },
        ] {
            assert!(
                matches!(
                    train_async(&parties, &obj, &cfg, &clock),
                    Err(VerticalError::InvalidConfig { .. })
                ),
                "{clock:?}"
            );
        }
        let huge = VerticalConfig {
            learning_rate: 1e38,
            rounds: 50,
            ..cfg.clone()
        };
        assert!(matches!(
            train_sync(&parties, &obj, &huge),
            Err(VerticalError::Diverged { .. })
        ));
        assert!(matches!(
            combine(&[Array2::zeros((2, 3))], &[0.0, 0.0]),
            Err(VerticalError::ShapeMismatch { what: "bias", .. })
        ));
        assert!(combine(&[Array2::zeros((2, 3)), Array2::zeros((2, 2))], &[0.0; 3]).is_err());
        assert!(combine(&[], &[]).is_err());
        assert_eq!(
            combine(
                &[array![[1.0f32, 2.0]], array![[0.5f32, -1.0]]],
                &[1.0, 0.0]
            )
            .unwrap(),
            array![[2.5f32, 1.0]]
        );
    }

    #[test]
    fn config_serde_defaults() {
        let cfg: VerticalConfig =
            serde_json::from_str(r#"{"rounds": 7, "model": {"kind": "mlp", "hidden": 8}}"#)
                .unwrap();
        assert_eq!(
            cfg,
            VerticalConfig {
                rounds: 7,
                model: ModelKind::Mlp { hidden: 8 },
                ..VerticalConfig::default()
            }
        );
        let clock: AsyncConfig = serde_json::from_str(r#"{"periods": [1, 2]}"#).unwrap();
        assert_eq!((clock.ticks, clock.snapshot_interval), (300, 10));
    }

    /// Test accuracy of vertical training on digits with the four quadrant parties and of a
    /// centralised logistic regression on all 64 columns, on the same seeded 80/20 split,
    /// both with batches of 32, learning rate 0.1, no L2 and 20 epochs' worth of steps.
    fn digits_vertical_vs_centralised() -> (f64, f64) {
        let data = builtin::digits();
        let (train, test) = partition::train_test_split(data.len(), 0.2, &mut rng(42));
        let (train, test) = (data.subset(&train), data.subset(&test));
        let split = ColumnSplit::digits_quadrants();
        let (train_parts, test_parts) = (
            split.project_all(&train).unwrap(),
            split.project_all(&test).unwrap(),
        );
        let epochs = 20;
        let batch_size = 32;
        let steps_per_epoch = train.len().div_ceil(batch_size);
        let cfg = VerticalConfig {
            learning_rate: 0.1,
            l2: 0.0,
            batch_size,
            rounds: epochs * steps_per_epoch,
            seed: 8,
            model: ModelKind::Linear,
            train_bias: true,
            record_full_embeddings: false,
        };
        let train_obj = Objective::new_classification(train.labels.clone(), 10).unwrap();
        let test_obj = Objective::new_classification(test.labels.clone(), 10).unwrap();
        let run = train_sync(&train_parts, &train_obj, &cfg).unwrap();
        let vertical = evaluate(&run.models, &test_parts, &run.bias, &test_obj).unwrap();

        let spec = ModelSpec::LogisticRegression {
            num_features: 64,
            num_classes: 10,
        };
        let mut params = spec.init_params(0);
        let tcfg = TrainConfig {
            epochs,
            batch_size,
            learning_rate: 0.1,
            l2: 0.0,
        };
        spec.train(&mut params, &train, &tcfg, &mut rng(8)).unwrap();
        let central = spec.evaluate(&params, &test).unwrap();
        eprintln!(
            "digits: vertical {} rounds {vertical:?}; centralised {central:?}",
            cfg.rounds
        );
        (vertical.accuracy.unwrap_or(0.0), central.accuracy)
    }

    #[test]
    fn digits_quadrants_match_centralised_accuracy() {
        let (vertical, central) = digits_vertical_vs_centralised();
        assert!(vertical >= 0.92, "vertical test accuracy {vertical}");
        assert!(
            (vertical - central).abs() <= 0.03,
            "vertical {vertical} vs centralised {central}"
        );
    }
}
