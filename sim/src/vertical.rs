//! Runs a vertical scenario (ALGORITHMS.md section 3): the data set's columns split among
//! parties, the labels on the server, VerFedSV valuing the parties.
//!
//! [`prepare`] builds, deterministically from the seed, the server's labels (by sample id,
//! every id `0..N-1`), the held-out test ids, and one feature block per party in party
//! order: the split's blocks ([`fedval_core::vertical::ColumnSplit`]), then the noise
//! parties (seeded Gaussian columns with the mean and spread of the training features),
//! then the duplicates (copies of party 0's block). [`run`] creates the federation
//! (`FederationConfig.vertical`), enrolls one task per party in party order (each on its
//! own channel, running the SDK's [`run_vertical_node`] with a [`PartyTrainer`]), follows
//! the rounds on the Admin event stream, then reads the round records and contributions
//! and reports per party its columns, behaviour and VerFedSV value, and for the run the
//! batch loss, the balance figures and the vertical model's test accuracy next to a
//! logistic regression trained centrally on all columns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fedval_client::{
    PartyTrainer, TrainerError, VerticalClient, VerticalTrainer, connect, run_vertical_node,
};
use fedval_core::data::{self, Dataset, Standardizer, partition};
use fedval_core::model::{ModelSpec, TrainConfig};
use fedval_proto::v1 as pb;
use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::SimError;
use crate::metrics::RunMetrics;
use crate::report::{ClientRow, Report, VerticalOutcome};
use crate::runner::{
    Finished, Launch, ROUNDS_BAR, SimOptions, Target, Turn, Turns, finish, follow_rounds,
    progress_bar, round_row, target,
};
use crate::scenario::{PartyBehaviour, SimConfig, VerticalSim};

/// One party before it starts.
#[derive(Clone, Debug)]
pub struct PartyPlan {
    /// Display and enrollment name (`party-0`, ...).
    pub name: String,
    /// What it holds.
    pub behaviour: PartyBehaviour,
    /// A slow party's wait after each training step (`slow_delay_ms`).
    pub step_delay: Option<Duration>,
    /// Its feature block: row `i` is sample id `i`.
    pub block: Array2<f32>,
}

/// The data of a vertical run.
#[derive(Clone, Debug)]
pub struct VerticalPrepared {
    /// The parties in enrollment order.
    pub parties: Vec<PartyPlan>,
    /// The whole data set (standardised unless digits): the server's labels by id and
    /// the centralised baseline's features.
    pub data: Dataset,
    /// Ids the server trains on.
    pub train_ids: Vec<usize>,
    /// Ids held out for the evaluation pass.
    pub test_ids: Vec<usize>,
}

/// The `[vertical]` table of `config` (a [`SimError::Config`] when it has none).
fn section(config: &SimConfig) -> Result<&VerticalSim, SimError> {
    config
        .vertical
        .as_ref()
        .ok_or_else(|| SimError::Config("not a vertical scenario: no [vertical] table".into()))
}

/// Builds the labels, the train/test ids and every party's block (module docs).
pub fn prepare(config: &SimConfig) -> Result<VerticalPrepared, SimError> {
    config.validate().map_err(SimError::Config)?;
    let v = section(config)?;
    let mut full = data::builtin::by_name(&config.dataset)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (mut train_ids, mut test_ids) =
        partition::train_test_split(full.len(), config.test_fraction, &mut rng);
    train_ids.sort_unstable();
    test_ids.sort_unstable();
    // Standardise with statistics of the training rows only (digits are already in [0, 1]).
    if config.dataset != "digits" {
        Standardizer::fit(&full.subset(&train_ids)).apply(&mut full)?;
    }
    let split = v
        .column_split(full.num_features())
        .map_err(SimError::Config)?;
    let bad_split = |e: fedval_core::vertical::VerticalError| SimError::Config(e.to_string());
    let mut blocks = split.project_all(&full).map_err(bad_split)?;
    let first = blocks
        .first()
        .cloned()
        .ok_or_else(|| SimError::Config("the split has no party".into()))?;
    let train_values: Vec<f64> = train_ids
        .iter()
        .flat_map(|&i| full.features.row(i).to_vec())
        .map(f64::from)
        .collect();
    let count = train_values.len().max(1) as f64;
    let mean = train_values.iter().sum::<f64>() / count;
    let std = (train_values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / count).sqrt();
    let noise = Normal::new(mean, std.max(1e-6))
        .map_err(|e| SimError::Config(format!("noise distribution: {e}")))?;
    for _ in 0..v.noise_parties {
        blocks.push(Array2::from_shape_fn(first.dim(), |_| {
            noise.sample(&mut rng) as f32
        }));
    }
    for _ in 0..v.duplicate_parties + v.slow_parties {
        blocks.push(first.clone());
    }
    let parties = blocks
        .into_iter()
        .enumerate()
        .map(|(index, block)| PartyPlan {
            name: format!("party-{index}"),
            behaviour: v.behaviour(index, split.num_parties()),
            step_delay: (v.behaviour(index, split.num_parties()) == PartyBehaviour::Slow)
                .then(|| Duration::from_millis(v.slow_delay_ms)),
            block,
        })
        .collect();
    Ok(VerticalPrepared {
        parties,
        data: full,
        train_ids,
        test_ids,
    })
}

/// The federation a vertical scenario asks the server for.
pub fn federation_config(
    id: &str,
    secret: &str,
    config: &SimConfig,
    v: &VerticalSim,
    prepared: &VerticalPrepared,
) -> pb::FederationConfig {
    let ids = |ids: &[usize]| ids.iter().map(|&i| i as u32).collect::<Vec<u32>>();
    pb::FederationConfig {
        id: id.to_string(),
        enrollment_secret: secret.to_string(),
        rounds: config.rounds as u32,
        min_clients: prepared.parties.len() as u32,
        round_timeout_ms: config.round_timeout_ms,
        seed: config.seed,
        valuation: Some(pb::ValuationConfig {
            method: config.valuation.clone(),
            budget: config.valuation_budget,
            seed: config.seed,
            ..Default::default()
        }),
        vertical: Some(pb::VerticalConfig {
            objective: "classification".into(),
            num_classes: prepared.data.num_classes as u32,
            labels: prepared.data.labels.clone(),
            targets: Vec::new(),
            test_ids: ids(&prepared.test_ids),
            training: v.training.clone(),
            batch_size: v.batch_size,
            learning_rate: v.learning_rate,
            l2: v.l2,
            hidden: v.hidden,
            snapshot_every: if v.training == "async" {
                v.snapshot_every
            } else {
                0
            },
            completion_rank: v.completion_rank,
            completion_lambda: v.completion_lambda,
        }),
        ..Default::default()
    }
}

/// A slow party's trainer: waits `delay` after applying each step's gradients, so it
/// takes its next step (and communicates) less often than a twin without the wait.
struct Paced {
    inner: PartyTrainer,
    delay: Duration,
}

impl VerticalTrainer for Paced {
    fn embed(&mut self, sample_ids: &[u32]) -> Result<Array2<f32>, TrainerError> {
        self.inner.embed(sample_ids)
    }

    fn apply(
        &mut self,
        sample_ids: &[u32],
        gradients: ArrayView2<'_, f32>,
        lr: f32,
        l2: f32,
    ) -> Result<(), TrainerError> {
        self.inner.apply(sample_ids, gradients, lr, l2)?;
        // Runs on a blocking thread (VerticalTrainer's contract).
        std::thread::sleep(self.delay);
        Ok(())
    }
}

/// What one party's task returns.
struct PartyResult {
    index: usize,
    client_id: String,
    rounds_trained: u64,
}

/// Starts party `index`: enroll (in its turn) announcing its columns, run the vertical
/// task loop with a [`PartyTrainer`] over its block.
fn spawn_party(
    launch: &Launch,
    index: usize,
    plan: PartyPlan,
    turn: Turn,
) -> tokio::task::JoinHandle<Result<PartyResult, SimError>> {
    let Launch {
        url,
        federation_id,
        secret,
        run_opts,
    } = launch.clone();
    tokio::spawn(async move {
        let channel = connect(&url).await?;
        let columns = u32::try_from(plan.block.ncols())
            .map_err(|_| SimError::Config("too many columns for one party".into()))?;
        let mut client = turn
            .enroll(VerticalClient::enroll(
                channel,
                &federation_id,
                &secret,
                &plan.name,
                columns,
            ))
            .await?;
        let trainer = PartyTrainer::new(client.party(), plan.block)?;
        let summary = if let Some(delay) = plan.step_delay {
            let paced = Paced {
                inner: trainer,
                delay,
            };
            run_vertical_node(&mut client, paced, &run_opts).await?.1
        } else {
            run_vertical_node(&mut client, trainer, &run_opts).await?.1
        };
        Ok(PartyResult {
            index,
            client_id: client.client_id().to_string(),
            rounds_trained: summary.rounds_trained,
        })
    })
}

/// Test loss and accuracy of a logistic regression trained on all columns of the training
/// ids, and the epochs used: about as many samples as `rounds` batches of the vertical run.
fn centralised(
    config: &SimConfig,
    v: &VerticalSim,
    prepared: &VerticalPrepared,
) -> Result<(f64, f64, usize), SimError> {
    let train = prepared.data.subset(&prepared.train_ids);
    let test = prepared.data.subset(&prepared.test_ids);
    let seen = (config.rounds as f64) * f64::from(v.batch_size);
    let epochs = ((seen / train.len().max(1) as f64).round() as usize).max(1);
    let spec = ModelSpec::LogisticRegression {
        num_features: train.num_features(),
        num_classes: train.num_classes,
    };
    let mut params = spec.init_params(config.seed);
    let cfg = TrainConfig {
        epochs,
        batch_size: v.batch_size as usize,
        learning_rate: v.learning_rate,
        l2: v.l2,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    spec.train(&mut params, &train, &cfg, &mut rng)?;
    let m = spec.evaluate(&params, &test)?;
    Ok((m.loss, m.accuracy, epochs))
}

/// Metric `name` of a round record, NaN when absent.
fn metric(r: &pb::RoundRecord, name: &str) -> f64 {
    r.metrics
        .iter()
        .find(|m| m.name == name)
        .map_or(f64::NAN, |m| m.value)
}

/// Runs a vertical scenario and returns its report (files are written by the caller).
pub async fn run(opts: &SimOptions, started: Instant) -> Result<Report, SimError> {
    let config = &opts.config;
    let v = section(config)?;
    let prepared = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || prepare(&config))
            .await
            .map_err(|e| SimError::Client(format!("data preparation panicked: {e}")))??
    };
    let Target {
        embedded,
        launch,
        mut admin,
        mut events,
    } = target(opts, |id, secret| {
        federation_config(id, secret, config, v, &prepared)
    })
    .await?;
    let mut turns = Turns::default();
    let tasks: Vec<_> = prepared
        .parties
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, plan)| spawn_party(&launch, index, plan, turns.next()))
        .collect();

    let bar = progress_bar(opts.progress, config.rounds, ROUNDS_BAR);
    bar.set_message("waiting for parties");
    follow_rounds(&mut events, |r| {
        bar.set_position(r.round);
        bar.set_message(format!("batch loss {:.3}", metric(r, "loss")));
    })
    .await?;
    bar.finish_and_clear();

    let Finished {
        results,
        rounds,
        contributions,
        ..
    } = finish(
        tasks,
        "party",
        |r| r.index,
        &mut admin,
        &launch.federation_id,
        embedded,
    )
    .await?;

    let (centralised_test_loss, centralised_test_accuracy, centralised_epochs) = {
        let (config, v, prepared) = (config.clone(), v.clone(), prepared.clone());
        tokio::task::spawn_blocking(move || centralised(&config, &v, &prepared))
            .await
            .map_err(|e| SimError::Client(format!("centralised training panicked: {e}")))??
    };

    let names: HashMap<String, String> = results
        .iter()
        .filter_map(|r| {
            let plan = prepared.parties.get(r.index)?;
            Some((r.client_id.clone(), plan.name.clone()))
        })
        .collect();
    let round_rows = rounds
        .iter()
        .map(|r| {
            let mut row = round_row(r, &names);
            row.client_loss = metric(r, "loss");
            row
        })
        .collect();
    let clients: Vec<ClientRow> = results
        .iter()
        .filter_map(|r| {
            let plan = prepared.parties.get(r.index)?;
            let contribution = contributions.iter().find(|c| c.client_id == r.client_id);
            Some(ClientRow {
                name: plan.name.clone(),
                client_id: r.client_id.clone(),
                behaviour: plan.behaviour.as_str().to_string(),
                adversary: false,
                samples: plan.block.nrows(),
                shapley: contribution.map_or(0.0, |c| c.cumulative_value),
                rounds_participated: contribution
                    .map_or(r.rounds_trained, |c| c.rounds_participated),
                final_accuracy: f64::NAN,
                standalone_accuracy: f64::NAN,
                test_accuracy: f64::NAN,
                removal_round: None,
                columns: Some(plan.block.ncols()),
            })
        })
        .collect();

    let last = rounds.last();
    let last_metric = |name: &str| last.map_or(f64::NAN, |r| metric(r, name));
    let outcome = VerticalOutcome {
        split: v.split.clone(),
        training: v.training.clone(),
        first_batch_loss: rounds.first().map_or(f64::NAN, |r| metric(r, "loss")),
        final_batch_loss: last_metric("loss"),
        value_sum: last_metric("verfedsv_value_sum"),
        loss_decrease: last_metric("verfedsv_loss_decrease"),
        completion_rel_error: last_metric("verfedsv_completion_rel_error"),
        test_loss: last_metric("test_loss"),
        test_accuracy: last_metric("test_accuracy"),
        centralised_test_loss,
        centralised_test_accuracy,
        centralised_epochs,
    };
    Ok(Report {
        config: config.clone(),
        federation_id: launch.federation_id,
        server: launch.url,
        wall_time_s: started.elapsed().as_secs_f64(),
        final_test_accuracy: outcome.test_accuracy,
        final_test_loss: outcome.test_loss,
        rounds: round_rows,
        clients,
        metrics: RunMetrics {
            fairness: None,
            fairness_note: Some("not defined for a vertical federation".into()),
            fairness_basis: String::new(),
            honest_accuracy: outcome.test_accuracy,
            honest_accuracy_best: outcome.test_accuracy,
            attack_success_rate: None,
        },
        vertical: Some(outcome),
        fact: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> SimConfig {
        crate::scenario::shipped("vertical_digits").expect("shipped")
    }

    #[test]
    fn parties_hold_their_quadrant_noise_and_duplicates() {
        let config = digits();
        let p = prepare(&config).expect("prepare");
        let full = data::builtin::digits();
        assert_eq!(p.parties.len(), 5);
        assert_eq!(p.train_ids.len() + p.test_ids.len(), full.len());
        assert_eq!(p.test_ids.len(), (full.len() as f64 * 0.2).round() as usize);
        assert!(
            p.test_ids
                .iter()
                .all(|i| p.train_ids.binary_search(i).is_err())
        );
        let quadrants = fedval_core::vertical::ColumnSplit::digits_quadrants();
        for (plan, block) in p.parties.iter().zip(quadrants.blocks()) {
            assert_eq!(plan.behaviour, PartyBehaviour::Honest);
            let want = fedval_core::vertical::project(&full, block).expect("project");
            assert_eq!(plan.block, want, "{}", plan.name);
        }
        let noise = &p.parties[4];
        assert_eq!(
            (noise.behaviour, noise.block.dim()),
            (PartyBehaviour::Noise, (1797, 16))
        );
        assert!(noise.block.iter().all(|x| x.is_finite()));
        assert_ne!(noise.block, p.parties[0].block);
        assert_eq!(p.data.labels, full.labels, "labels by id");
        // Same seed, same noise; another seed, other noise.
        assert_eq!(
            prepare(&config).expect("prepare").parties[4].block,
            noise.block
        );
        let other = SimConfig { seed: 7, ..config };
        assert_ne!(
            prepare(&other).expect("prepare").parties[4].block,
            noise.block
        );
    }

    #[test]
    fn the_duplicate_holds_party_zeros_columns_and_the_config_carries_the_labels() {
        let config = crate::scenario::shipped("vertical_breast_cancer").expect("shipped");
        let p = prepare(&config).expect("prepare");
        assert_eq!(p.parties.len(), 4);
        assert_eq!(p.parties[3].behaviour, PartyBehaviour::Duplicate);
        assert_eq!(p.parties[3].block, p.parties[0].block);
        assert_eq!(p.parties[0].block.ncols(), 10);
        let v = config.vertical.clone().expect("vertical");
        let wire = federation_config("f", "s", &config, &v, &p);
        let vc = wire.vertical.expect("vertical config");
        assert_eq!(wire.min_clients, 4);
        assert_eq!(vc.labels, p.data.labels);
        assert_eq!(vc.num_classes, 2);
        assert_eq!(vc.test_ids.len(), p.test_ids.len());
        assert_eq!((vc.training.as_str(), vc.batch_size), ("sync", 32));
        assert!(wire.model.is_none() && wire.training.is_none());
    }

    #[test]
    fn the_centralised_baseline_learns_digits() {
        let config = SimConfig {
            rounds: 60,
            ..digits()
        };
        let p = prepare(&config).expect("prepare");
        let v = config.vertical.clone().expect("vertical");
        let (loss, accuracy, epochs) = centralised(&config, &v, &p).expect("trains");
        // 60 batches of 32 over 1438 training rows: about 1.3 epochs, rounded to 1.
        assert_eq!(epochs, 1);
        assert!(accuracy > 0.8 && loss.is_finite(), "{accuracy} {loss}");
    }
}
