//! Federation-level tests of vertical mode: in-process parties (core `PartyModel`s over
//! the digits quadrants plus a pure-noise party) drive the federation through its
//! handlers' methods (`next_task`, `admit_embeddings`, `accept_embeddings`,
//! `gradient_reply`) while the registry runs the driver.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fedval_core::data::builtin;
use fedval_core::tensor;
use fedval_core::vertical::{ColumnSplit, PartyModel, PartyModelSpec, combine};
use ndarray::{Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::federation::Federation;
use crate::registry::Registry;
use crate::store::{RoundRecord, Store, ValuationStatus};

const ROUNDS: u64 = 100;
const LR: f32 = 0.5;

/// Three parties over digits: the left half (top-left and bottom-left quadrants), the
/// right half, and 16 columns of uniform noise; every fifth sample is held out.
fn digits_parties() -> (Vec<Array2<f32>>, Vec<u32>) {
    let data = builtin::digits();
    let q = ColumnSplit::digits_quadrants();
    let blocks = q.blocks();
    let split = ColumnSplit::new(
        64,
        vec![
            [blocks[0].clone(), blocks[2].clone()].concat(),
            [blocks[1].clone(), blocks[3].clone()].concat(),
        ],
    )
    .expect("split");
    let mut parties = split.project_all(&data).expect("projects");
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    parties.push(Array2::from_shape_fn((data.len(), 16), |_| {
        rng.random_range(0.0f32..1.0)
    }));
    (parties, data.labels)
}

fn config(id: &str, labels: Vec<u32>) -> FederationConfig {
    let n = labels.len() as u32;
    let mut cfg: FederationConfig = toml::from_str(&format!(
        r#"
        id = "{id}"
        enrollment_secret = "s"
        rounds = {ROUNDS}
        min_clients = 3
        round_timeout_ms = 600000
        seed = 5
        "#
    ))
    .expect("parses");
    cfg.vertical = Some(VerticalSettings {
        test_ids: (0..n).filter(|i| i % 5 == 0).collect(),
        batch_size: 64,
        learning_rate: LR,
        completion_rank: 10,
        ..VerticalSettings::classification(10, labels)
    });
    cfg.validate().expect("valid");
    cfg
}

/// What a party does besides following its tasks.
#[derive(Clone, Copy, Default)]
struct Plan {
    /// Count every accepted training step of this party here.
    count: Option<&'static AtomicU64>,
    /// A slow party's pacing, by steps rather than by the clock (no timing in tests): before
    /// its k-th training step it waits until the counter shows `k * ratio` steps of the
    /// others (or stops moving: training is over).
    follow: Option<(&'static AtomicU64, u64)>,
    /// Stop after the answer of this training round.
    stop_after: Option<u64>,
    /// In this round, make the embeddings durable and stop without waiting for the
    /// answer (a party that lost its connection).
    send_and_leave: Option<u64>,
}

impl Plan {
    /// Stops after the answer of training round `round`.
    fn stop_after(round: u64) -> Self {
        Self {
            stop_after: Some(round),
            ..Self::default()
        }
    }

    /// Makes round `round`'s embeddings durable, then leaves without the answer.
    fn send_and_leave(round: u64) -> Self {
        Self {
            send_and_leave: Some(round),
            ..Self::default()
        }
    }
}

/// A party's model and its copies taken just before embedding rounds 1 and `ROUNDS`.
struct Party {
    model: PartyModel,
    before: BTreeMap<u64, PartyModel>,
}

/// Follows the federation's tasks with a linear party model until Done (or the plan
/// says stop).
async fn run_party(
    fed: Arc<Federation>,
    client_id: String,
    x: Arc<Array2<f32>>,
    mut party: Party,
    plan: Plan,
) -> Party {
    let mut changes = fed.subscribe_changes();
    let mut steps = 0u64;
    loop {
        match fed.next_task(&client_id).await {
            NextTask::Embed {
                round,
                sample_ids,
                evaluate_only,
                ..
            } => {
                if round == 1 || round == ROUNDS {
                    party.before.insert(round, party.model.clone());
                }
                let step = Step::embed(&party.model, &x, &sample_ids, &client_id, round);
                if let (Some((counter, ratio)), false) = (plan.follow, evaluate_only) {
                    steps += 1;
                    wait_for_steps(counter, steps * ratio).await;
                }
                // An asynchronous step can be refused because training just ended.
                let accepted = match fed.admit_embeddings(&step.claim).await {
                    Ok(Admission::Open { .. }) => {
                        fed.accept_embeddings(&client_id, round, step.values.clone())
                            .await
                    }
                    Ok(Admission::Replay { .. }) => Ok(()),
                    Err(e) => Err(e),
                };
                match accepted {
                    Ok(()) => {}
                    Err(ServiceError::FailedPrecondition(_)) => continue,
                    Err(e) => panic!("exchange refused: {e}"),
                }
                if let (Some(counter), false) = (plan.count, evaluate_only) {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                if plan.send_and_leave == Some(round) {
                    return party;
                }
                let reply = fed
                    .gradient_reply(
                        &client_id,
                        round,
                        tokio::time::Instant::now() + Duration::from_secs(600),
                    )
                    .await
                    .expect("answered");
                if !evaluate_only {
                    let g = tensor::from_le_bytes(&reply.bytes).expect("decodes");
                    step.apply(&mut party.model, g);
                }
                if plan.stop_after == Some(round) {
                    return party;
                }
            }
            NextTask::Wait { .. } => {
                let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
            }
            NextTask::Done { .. } => return party,
            other => panic!("unexpected task {other:?}"),
        }
    }
}

/// Waits until `counter` reaches `target`, or has not moved for half a second (the
/// counting parties are done).
async fn wait_for_steps(counter: &AtomicU64, target: u64) {
    let mut last = counter.load(Ordering::SeqCst);
    let mut still = tokio::time::Instant::now();
    while last < target {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            last = now;
            still = tokio::time::Instant::now();
        } else if still.elapsed() > Duration::from_millis(500) {
            return;
        }
    }
}

fn fresh(x: &Array2<f32>) -> Party {
    let spec = PartyModelSpec::Linear {
        num_features: x.ncols(),
        output_dim: 10,
    };
    Party {
        model: PartyModel::new(spec, 5).expect("model"),
        before: BTreeMap::new(),
    }
}

/// Enrolls the three parties (in order) and returns their ids.
async fn enroll(fed: &Federation, parties: &[Array2<f32>]) -> Vec<String> {
    let mut ids = Vec::new();
    for (m, x) in parties.iter().enumerate() {
        let (id, _) = fed
            .enroll(
                "s",
                &format!("party-{m}"),
                x.nrows() as u64,
                x.ncols() as u32,
                0.0,
            )
            .await
            .expect("enrolled");
        ids.push(id);
    }
    ids
}

/// Runs every party to its plan's end, concurrently.
async fn run_all(
    fed: &Arc<Federation>,
    ids: &[String],
    xs: &[Arc<Array2<f32>>],
    parties: Vec<Party>,
    plans: &[Plan],
) -> Vec<Party> {
    let tasks: Vec<_> = parties
        .into_iter()
        .enumerate()
        .map(|(m, p)| {
            tokio::spawn(run_party(
                fed.clone(),
                ids[m].clone(),
                xs[m].clone(),
                p,
                plans[m],
            ))
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("party task"));
    }
    out
}

/// One embedding step of a party: the batch of its rows, their embeddings, the values sent
/// and the claim announcing them.
struct Step {
    xb: Array2<f32>,
    h: Array2<f32>,
    values: Vec<f32>,
    claim: EmbeddingClaim,
}

impl Step {
    /// Embeds rows `sample_ids` of `x` with `model` for `client_id`'s `round`.
    fn embed(
        model: &PartyModel,
        x: &Array2<f32>,
        sample_ids: &[u32],
        client_id: &str,
        round: u64,
    ) -> Self {
        let rows: Vec<usize> = sample_ids.iter().map(|&i| i as usize).collect();
        let xb = x.select(Axis(0), &rows);
        let h = model.embed(xb.view()).expect("embeds");
        let values: Vec<f32> = h.iter().copied().collect();
        let bytes = tensor::to_le_bytes(&values);
        let claim = EmbeddingClaim {
            client_id: client_id.to_owned(),
            round,
            rows: rows.len() as u32,
            output_dim: h.ncols() as u32,
            total_bytes: bytes.len() as u64,
            sha256: tensor::sha256_hex(&bytes),
        };
        Self {
            xb,
            h,
            values,
            claim,
        }
    }

    /// Applies the step's `gradients` (row-major, one row per embedded sample) to `model`.
    fn apply(&self, model: &mut PartyModel, gradients: Vec<f32>) {
        let g = Array2::from_shape_vec(self.h.dim(), gradients).expect("shape");
        model
            .apply_gradients(self.xb.view(), g.view(), LR, 0.0)
            .expect("updates");
    }
}

/// First life of a restart test: opens a redb store in `dir`, creates `cfg`, enrolls the
/// parties of `xs` and runs them to their `plans`' ends. The caller shuts the registry down.
async fn first_life(
    dir: &std::path::Path,
    cfg: &FederationConfig,
    xs: &[Arc<Array2<f32>>],
    plans: &[Plan],
) -> (Arc<Registry>, Arc<Federation>, Vec<String>, Vec<Party>) {
    let registry = Registry::open(Store::open_redb(dir).expect("opens")).expect("reg");
    let fed = registry.create(cfg.clone()).expect("created");
    let blocks: Vec<Array2<f32>> = xs.iter().map(|x| (**x).clone()).collect();
    let ids = enroll(&fed, &blocks).await;
    let parties = xs.iter().map(|x| fresh(x)).collect();
    let parties = run_all(&fed, &ids, xs, parties, plans).await;
    (registry, fed, ids, parties)
}

/// Reopens the redb store in `dir` after a first life; the old store closes once its
/// tasks are gone, so opening is retried.
async fn reopen(dir: &std::path::Path) -> Arc<Registry> {
    for _ in 0..100 {
        if let Ok(store) = Store::open_redb(dir) {
            return Registry::open(store).expect("registry");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the redb store did not reopen");
}

fn metric(r: &RoundRecord, name: &str) -> f64 {
    r.metrics
        .iter()
        .find(|(n, _)| n == name)
        .map_or(f64::NAN, |(_, v)| *v)
}

async fn wait_finished(fed: &Federation) {
    let mut changes = fed.subscribe_changes();
    while fed.snapshot().await.0.status != FederationStatus::Finished {
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

/// `batch_len` is the size of every drawn batch, round or step (the exchange checks a
/// header's rows against it without drawing the batch).
#[test]
fn batch_len_is_the_size_of_every_drawn_batch() {
    for (samples, expected) in [(200u32, 64), (50, 40)] {
        let cfg = config("len", (0..samples).map(|i| i % 10).collect());
        let spec = VerticalSpec::new(cfg.vertical.as_ref().expect("vertical")).expect("spec");
        assert_eq!(spec.batch_len(), expected);
        for t in 1..=5 {
            assert_eq!(spec.batch(cfg.seed, t).len(), expected);
            assert_eq!(spec.step_batch(cfg.seed, 2, t).len(), expected);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_parties_train_and_verfedsv_values_them() {
    let (xs, labels) = digits_parties();
    let cfg = config("digits", labels);
    let spec = VerticalSpec::new(cfg.vertical.as_ref().expect("vertical")).expect("spec");
    let registry = Registry::open(Store::memory()).expect("registry");
    let fed = registry.create(cfg).expect("created");
    let ids = enroll(&fed, &xs).await;
    let err = fed
        .enroll("s", "late", 10, 4, 0.0)
        .await
        .expect_err("all parties in");
    assert!(matches!(err, ServiceError::FailedPrecondition(_)), "{err}");
    let xs: Vec<Arc<Array2<f32>>> = xs.into_iter().map(Arc::new).collect();
    let parties = xs.iter().map(|x| fresh(x)).collect();
    let parties = run_all(&fed, &ids, &xs, parties, &[Plan::default(); 3]).await;
    wait_finished(&fed).await;

    let rounds = fed.store().list_rounds("digits").expect("rounds");
    assert_eq!(rounds.len() as u64, ROUNDS);
    assert!(
        rounds
            .iter()
            .all(|r| r.participants == ids && r.stragglers.is_empty())
    );
    // Training loss decreases: the last ten batches average well below the first ten.
    let mean = |rs: &[RoundRecord]| rs.iter().map(|r| metric(r, "loss")).sum::<f64>() / 10.0;
    let (first, last) = (mean(&rounds[..10]), mean(&rounds[90..]));
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let final_round = &rounds[99];
    let accuracy = metric(final_round, "test_accuracy");
    assert!(accuracy > 0.85, "test accuracy {accuracy}");
    assert_eq!(metric(final_round, "test_parties"), 3.0);

    // Values: every round valued, the noise party is worth the least.
    assert!(
        rounds
            .iter()
            .all(|r| r.valuation_status == ValuationStatus::Done
                && r.valuation_method == "verfedsv"
                && r.values.len() == 3)
    );
    let values: Vec<f64> = (0..3)
        .map(|m| rounds.iter().map(|r| r.values[m].value).sum())
        .collect();
    assert!(values[2] < values[0] && values[2] < values[1], "{values:?}");
    // Balance on the completed embeddings holds to rounding (exact Shapley) ...
    let value_sum: f64 = values.iter().sum();
    let completed = metric(final_round, "verfedsv_loss_decrease");
    assert!(
        (value_sum - completed).abs() < 1e-9,
        "{value_sum} vs {completed}"
    );
    // ... and against the true full-data loss decrease L(1) - L(T) (the models that
    // embedded rounds 1 and T, the final bias fixed) within the completion error.
    let bias = fed.model(ROUNDS).await.expect("bias").params.to_vec();
    let loss_at = |round: u64| {
        let h: Vec<Array2<f32>> = parties
            .iter()
            .zip(&xs)
            .map(|(p, x)| p.before[&round].embed(x.view()).expect("embeds"))
            .collect();
        let z = combine(&h, &bias).expect("combines");
        let rows: Vec<usize> = (0..z.nrows()).collect();
        spec.objective.mean_loss(z.view(), &rows).expect("loss")
    };
    let truth = loss_at(1) - loss_at(ROUNDS);
    let relative = (value_sum - truth).abs() / truth;
    eprintln!(
        "verfedsv: values {values:?}, sum {value_sum:.4}, true L(1)-L(T) {truth:.4}, relative completion error {relative:.3}, test accuracy {accuracy:.3}"
    );
    assert!(relative < 0.25, "value sum {value_sum} vs true {truth}");
    // Repeating a committed round's exchange returns the stored gradients.
    let reply = fed
        .gradient_reply(&ids[0], 7, tokio::time::Instant::now())
        .await
        .expect("stored");
    assert_eq!(reply.rows, 64);
    assert_eq!(
        tensor::from_le_bytes(&reply.bytes).expect("decodes"),
        fed.store()
            .get_gradients("digits", 7)
            .expect("read")
            .expect("stored")
    );
    registry.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_open_round_with_its_stored_embeddings() {
    let (xs, labels) = digits_parties();
    let mut cfg = config("restart", labels);
    cfg.rounds = 8;
    if let Some(v) = cfg.vertical.as_mut() {
        v.test_ids.clear();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let xs: Vec<Arc<Array2<f32>>> = xs.into_iter().map(Arc::new).collect();
    let (ids, parties, before) = {
        // Everyone does rounds 1-3; party 0 also sends round 4 and hangs up.
        let plans = [
            Plan::send_and_leave(4),
            Plan::stop_after(3),
            Plan::stop_after(3),
        ];
        let (registry, fed, ids, parties) = first_life(dir.path(), &cfg, &xs, &plans).await;
        let before = fed.store().list_rounds("restart").expect("rounds");
        assert_eq!(before.len(), 3);
        registry.shutdown();
        (ids, parties, before)
    };
    let registry = reopen(dir.path()).await;
    let fed = registry.get("restart").expect("restored");
    // Round 4 reopens with party 0's stored embeddings: it has nothing to do.
    let mut task = fed.next_task(&ids[0]).await;
    for _ in 0..100 {
        if !matches!(&task, NextTask::Wait { reason } if reason.contains("waiting for the next round"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        task = fed.next_task(&ids[0]).await;
    }
    assert!(
        matches!(&task, NextTask::Wait { reason } if reason.contains("round 4 received")),
        "{task:?}"
    );
    assert!(matches!(
        fed.next_task(&ids[1]).await,
        NextTask::Embed { round: 4, .. }
    ));
    // Party 0 repeats its round-4 exchange (answered once the round closes); the others
    // embed round 4 and everyone carries on to the end.
    let mut parties = parties;
    let p0 = parties.remove(0);
    let repeat = {
        let (fed, id, x) = (fed.clone(), ids[0].clone(), xs[0].clone());
        tokio::spawn(async move {
            let mut p0 = p0;
            let batch = fed.vertical().expect("vertical").batch(5, 4);
            let step = Step::embed(&p0.model, &x, &batch, &id, 4);
            let admission = fed.admit_embeddings(&step.claim).await.expect("admitted");
            assert!(matches!(admission, Admission::Open { .. }));
            fed.accept_embeddings(&id, 4, step.values.clone())
                .await
                .expect("no second write");
            let reply = fed
                .gradient_reply(
                    &id,
                    4,
                    tokio::time::Instant::now() + Duration::from_secs(600),
                )
                .await
                .expect("answered");
            step.apply(
                &mut p0.model,
                tensor::from_le_bytes(&reply.bytes).expect("decodes"),
            );
            let p0 = run_party(fed, id, x, p0, Plan::default()).await;
            (reply, p0)
        })
    };
    // The others embed round 4 and everyone carries on to the end.
    let _rest = run_all(&fed, &ids[1..], &xs[1..], parties, &[Plan::default(); 2]).await;
    let (reply, _p0) = repeat.await.expect("repeat task");
    assert_eq!(reply.round, 4);
    assert!(reply.stragglers.is_empty());
    wait_finished(&fed).await;
    let after = fed.store().list_rounds("restart").expect("rounds");
    assert_eq!(after.len(), 8);
    assert!(after.iter().all(|r| r.participants == ids), "no straggler");
    // The committed rounds are unchanged, apart from the values the valuation added.
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (b.round, &b.participants, &b.metrics),
            (a.round, &a.participants, &a.metrics)
        );
    }
    // The embeddings stored before the crash were not written twice.
    let round4 = fed.store().list_embeddings("restart", 4).expect("listed");
    assert_eq!(round4.len(), 3);
    registry.shutdown();
}

/// The asynchronous variant of [`config`]: `rounds` snapshots of `every` steps.
fn async_config(id: &str, labels: Vec<u32>, rounds: u64, every: u32) -> FederationConfig {
    let mut cfg = config(id, labels);
    cfg.rounds = rounds;
    if let Some(v) = cfg.vertical.as_mut() {
        v.training = settings::VerticalTraining::Async;
        v.snapshot_every = every;
    }
    cfg.validate().expect("valid");
    cfg
}

/// A copy of the asynchronous run's table (after the driver started it).
async fn table_of(fed: &Federation) -> Vec<Vec<f32>> {
    for _ in 0..200 {
        if let Some(run) = fed.state.lock().await.vertical.steps.as_ref() {
            return run.table.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the asynchronous run did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_run_survives_a_restart_without_losing_an_acknowledged_step() {
    let (xs, labels) = digits_parties();
    let cfg = async_config("async-restart", labels, 4, 15);
    let dir = tempfile::tempdir().expect("tempdir");
    let xs: Vec<Arc<Array2<f32>>> = xs.into_iter().map(Arc::new).collect();
    let (ids, parties, table, steps_before, rounds_before) = {
        // 10 + 10 + 8 = 28 durable steps: snapshot 1 (step 15) and 13 logged after it;
        // party 2's step 8 is durable but its answer is lost.
        let plans = [
            Plan::stop_after(10),
            Plan::stop_after(10),
            Plan::send_and_leave(8),
        ];
        let (registry, fed, ids, parties) = first_life(dir.path(), &cfg, &xs, &plans).await;
        let table = table_of(&fed).await;
        let steps = fed
            .store()
            .list_vertical_steps("async-restart")
            .expect("log");
        let rounds = fed.store().list_rounds("async-restart").expect("rounds");
        registry.shutdown();
        (ids, parties, table, steps, rounds)
    };
    assert_eq!(steps_before.len(), 28);
    assert_eq!(rounds_before.len(), 1);
    assert_eq!(rounds_before[0].round, 1);
    let steps_in_round_1: f64 = ids
        .iter()
        .map(|id| metric(&rounds_before[0], &format!("steps/{id}")))
        .sum();
    assert_eq!(steps_in_round_1, 15.0);
    let registry = reopen(dir.path()).await;
    let fed = registry.get("async-restart").expect("restored");
    // Snapshot 1 plus the 13 later log entries rebuild the table bit for bit.
    assert_eq!(table_of(&fed).await, table);
    // Party 2's next task is step 9: step 8 counts; repeating its exchange replays the
    // stored answer.
    assert!(matches!(
        fed.next_task(&ids[2]).await,
        NextTask::Embed { round: 9, .. }
    ));
    let mut parties = parties;
    let mut p2 = parties.pop().expect("party 2");
    let batch = fed.vertical().expect("vertical").step_batch(5, 2, 8);
    let step = Step::embed(&p2.model, &xs[2], &batch, &ids[2], 8);
    assert!(matches!(
        fed.admit_embeddings(&step.claim).await.expect("admitted"),
        Admission::Replay { .. }
    ));
    let reply = fed
        .gradient_reply(&ids[2], 8, tokio::time::Instant::now())
        .await
        .expect("replayed");
    let logged = steps_before
        .iter()
        .find(|(_, r)| r.client_id == ids[2] && r.step == 8)
        .expect("step 8 logged");
    assert_eq!(
        tensor::from_le_bytes(&reply.bytes).expect("decodes"),
        logged.1.gradients_f32()
    );
    step.apply(&mut p2.model, logged.1.gradients_f32());
    // A step that is neither committed nor next is refused.
    let mut skip = step.claim.clone();
    skip.round = 11;
    let err = fed.admit_embeddings(&skip).await.expect_err("not next");
    assert!(matches!(err, ServiceError::InvalidArgument(_)), "{err}");
    parties.push(p2);
    run_all(&fed, &ids, &xs, parties, &[Plan::default(); 3]).await;
    wait_finished(&fed).await;
    // Nothing acknowledged was lost or written twice: the log's first 28 entries are the
    // ones before the restart, and 4 x 15 steps were taken in all.
    let steps_after = fed
        .store()
        .list_vertical_steps("async-restart")
        .expect("log");
    assert_eq!(steps_after.len(), 60);
    assert_eq!(&steps_after[..28], &steps_before[..]);
    let rounds = fed.store().list_rounds("async-restart").expect("rounds");
    assert_eq!(rounds.len(), 4);
    assert_eq!(rounds[0].metrics, rounds_before[0].metrics);
    for r in &rounds {
        let steps: f64 = ids.iter().map(|id| metric(r, &format!("steps/{id}"))).sum();
        assert_eq!(steps, 15.0, "round {}", r.round);
        assert_eq!(r.valuation_status, ValuationStatus::Done);
    }
    let last = rounds.last().expect("last");
    assert!(metric(last, "verfedsv_balance_error").abs() < 1e-9);
    assert!(metric(last, "verfedsv_loss_decrease") > 0.0);
    assert!(metric(last, "test_accuracy") > 0.5, "{:?}", last.metrics);
    registry.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_that_steps_less_often_than_its_twin_is_valued_lower() {
    let (mut xs, labels) = digits_parties();
    // Party 2 is a twin of party 0 (the same columns) that takes one step for every six
    // of the two others together (about one for three of its twin's).
    xs[2] = xs[0].clone();
    let cfg = async_config("async-twins", labels, 10, 30);
    let registry = Registry::open(Store::memory()).expect("registry");
    let fed = registry.create(cfg).expect("created");
    let ids = enroll(&fed, &xs).await;
    let xs: Vec<Arc<Array2<f32>>> = xs.into_iter().map(Arc::new).collect();
    let parties = xs.iter().map(|x| fresh(x)).collect();
    static FAST_STEPS: AtomicU64 = AtomicU64::new(0);
    let fast = Plan {
        count: Some(&FAST_STEPS),
        ..Plan::default()
    };
    let slow = Plan {
        follow: Some((&FAST_STEPS, 6)),
        ..Plan::default()
    };
    run_all(&fed, &ids, &xs, parties, &[fast, fast, slow]).await;
    wait_finished(&fed).await;
    let rounds = fed.store().list_rounds("async-twins").expect("rounds");
    assert_eq!(rounds.len(), 10);
    let total = |m: usize| -> (f64, f64) {
        let steps = rounds
            .iter()
            .map(|r| metric(r, &format!("steps/{}", ids[m])))
            .sum();
        let value = rounds
            .iter()
            .flat_map(|r| &r.values)
            .filter(|v| v.client_id == ids[m])
            .map(|v| v.value)
            .sum();
        (steps, value)
    };
    let (fast, slow) = (total(0), total(2));
    eprintln!(
        "async twins: fast twin {} steps, value {:.4}; right half {:?}; slow twin {} steps, value {:.4}",
        fast.0,
        fast.1,
        total(1),
        slow.0,
        slow.1
    );
    assert!(fast.0 >= 2.0 * slow.0, "fast {fast:?} slow {slow:?}");
    assert!(fast.1 > slow.1, "fast {fast:?} slow {slow:?}");
    let last = rounds.last().expect("last");
    assert!(metric(last, "verfedsv_balance_error").abs() < 1e-9);
    registry.shutdown();
}
