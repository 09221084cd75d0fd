//! Federation-level tests of bandit mode: in-process clients (core `LinUcbClient`s on a
//! small seeded linear environment) follow the federation's tasks through its handlers'
//! methods (`next_task`, `submit_bandit`) while the registry runs the driver.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fedval_core::incentive::truthfedban::{LinUcbClient, SelectionProblem};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::federation::tests::{Faults, FaultyBackend};
use crate::federation::{Event, Federation};
use crate::registry::Registry;
use crate::store::{FederationStatus, LedgerEntry, RoundRecord, Store};

const DIM: u32 = 3;

fn config(id: &str, clients: usize, horizon: u64) -> FederationConfig {
    let cfg: FederationConfig = toml::from_str(&format!(
        r#"
        id = "{id}"
        enrollment_secret = "s"
        min_clients = {clients}
        round_timeout_ms = 600000
        seed = 11
        bandit = {{ dim = {DIM}, horizon = {horizon}, threshold = 5.0, beta = 0.6 }}
        "#
    ))
    .expect("parses");
    cfg.validate().expect("valid");
    cfg
}

/// A small seeded linear environment: `theta* = (0.6, -0.8, 0, ...)`, four uniform arms in
/// `[-1, 1]^d` per step, reward `x^T theta* + U(-0.05, 0.05)`; a pure function of
/// `(client, step)`.
struct Env {
    client: u64,
    theta: Vec<f64>,
}

impl Env {
    fn new(client: u64) -> Self {
        let mut theta = vec![0.0; DIM as usize];
        theta[0] = 0.6;
        theta[1] = -0.8;
        Self { client, theta }
    }

    fn rng(&self, step: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + self.client);
        rng.set_stream(step);
        rng
    }

    fn arms(&self, step: u64) -> Vec<Vec<f64>> {
        let mut rng = self.rng(step);
        (0..4)
            .map(|_| (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect()
    }

    fn reward(&self, step: u64, x: &[f64]) -> f64 {
        let mut rng = self.rng(step);
        rng.set_word_pos(1 << 20);
        let mean: f64 = x.iter().zip(&self.theta).map(|(a, b)| a * b).sum();
        mean + rng.random_range(-0.05..0.05)
    }
}

/// One in-process client and what it sent and received.
struct Agent {
    id: String,
    ucb: LinUcbClient,
    env: Env,
    cost: f64,
    steps: u64,
    /// Per round: the report it sent.
    reports: BTreeMap<u64, (f64, Vec<f64>)>,
    /// Per round: the payment its sync announced.
    paid: BTreeMap<u64, f64>,
    synced: u64,
    /// Misbehaviour under test.
    quirk: Quirk,
    /// The step it falsely claimed a trigger at, with its true statistic there.
    cheated: Option<(u64, f64)>,
    /// `Quirk::NoPlay`: the play tasks it ignored, and its late answers to them with the
    /// server's refusals.
    ignored: BTreeSet<u64>,
    late: Vec<(u64, ServiceError)>,
    /// Returns once the step log reaches this step (a crash of every client at once).
    stop_at_step: Option<u64>,
}

/// How an agent departs from the protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Quirk {
    #[default]
    Honest,
    /// Claims `triggered` (with a statistic above the threshold) at its first step whose
    /// true statistic is below the threshold.
    FalseTrigger,
    /// Never answers a play task (answers everything else); when handed a later step, it
    /// first sends a late answer to every play task it ignored so far.
    NoPlay,
}

impl Agent {
    fn new(id: String, index: u64, settings: &BanditSettings) -> Self {
        Self {
            id,
            ucb: LinUcbClient::new(settings.dim as usize, settings.lambda, settings.alpha)
                .expect("agent"),
            env: Env::new(index),
            cost: 0.5 + 0.25 * index as f64,
            steps: 0,
            reports: BTreeMap::new(),
            paid: BTreeMap::new(),
            synced: 0,
            quirk: Quirk::Honest,
            cheated: None,
            ignored: BTreeSet::new(),
            late: Vec::new(),
            stop_at_step: None,
        }
    }

    /// This agent's report of `round` (the same one when asked again).
    fn report(&mut self, round: u64) -> Submission {
        let (cost, gram) = self
            .reports
            .entry(round)
            .or_insert_with(|| (self.cost, self.ucb.pending_gram().to_vec()))
            .clone();
        Submission::Report {
            round,
            report: crate::store::BanditReport {
                cost,
                gram_update: gram,
            },
        }
    }
}

/// Follows the federation's tasks until Done, or until it sent its report of round
/// `stop_after_report`.
async fn run_agent(
    fed: Arc<Federation>,
    mut a: Agent,
    threshold: f64,
    stop_after_report: Option<u64>,
) -> Agent {
    let mut changes = fed.subscribe_changes();
    loop {
        if let Some(stop) = a.stop_at_step
            && fed
                .store()
                .last_bandit_step(fed.id())
                .expect("read")
                .is_some_and(|s| s.step >= stop)
        {
            return a;
        }
        let task = match fed.next_task(&a.id).await {
            NextTask::Bandit(task) => task,
            NextTask::Wait { .. } => {
                let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
                continue;
            }
            NextTask::Done { .. } => return a,
            other => panic!("unexpected task {other:?}"),
        };
        if let (Quirk::NoPlay, BanditTask::Play { step, .. }) = (a.quirk, &task) {
            let step = *step;
            let earlier: Vec<u64> = a.ignored.range(..step).copied().collect();
            for t in earlier {
                a.ignored.remove(&t);
                let late = Submission::Step {
                    step: t,
                    reward: 0.5,
                    trigger_statistic: 1.0,
                    triggered: false,
                };
                let refused = fed.submit_bandit(&a.id, late).await.expect_err("skipped");
                a.late.push((t, refused));
            }
            a.ignored.insert(step);
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
            continue;
        }
        let submission = match task {
            BanditTask::Play { step, t_last } => {
                let arms = a.env.arms(step);
                let k = a.ucb.choose(&arms).expect("choose");
                let reward = a.env.reward(step, &arms[k]);
                a.ucb.observe(&arms[k], reward).expect("observe");
                let stat = a
                    .ucb
                    .trigger_statistic(step as usize, t_last as usize)
                    .expect("statistic");
                a.steps += 1;
                if a.quirk == Quirk::FalseTrigger && a.cheated.is_none() && stat <= threshold {
                    a.cheated = Some((step, stat));
                    Submission::Step {
                        step,
                        reward,
                        trigger_statistic: threshold + 1.0,
                        triggered: true,
                    }
                } else {
                    Submission::Step {
                        step,
                        reward,
                        trigger_statistic: stat,
                        triggered: stat > threshold,
                    }
                }
            }
            BanditTask::Report { round } => a.report(round),
            BanditTask::Upload { round } => Submission::Upload {
                round,
                b: a.ucb.pending_b().to_vec(),
            },
            BanditTask::Sync {
                round,
                aggregate,
                selected,
                payment,
            } => {
                if round > a.synced {
                    a.ucb
                        .download(&aggregate.v_g, &aggregate.b_g)
                        .expect("download");
                    if selected {
                        a.ucb.clear_pending();
                    }
                    a.paid.insert(round, payment);
                    a.synced = round;
                }
                Submission::Synced { round }
            }
        };
        let stop = matches!(
            (&submission, stop_after_report),
            (Submission::Report { round, .. }, Some(r)) if *round == r
        );
        fed.submit_bandit(&a.id, submission)
            .await
            .unwrap_or_else(|e| panic!("{} refused: {e}", a.id));
        if stop {
            return a;
        }
    }
}

/// Overall bound of a federation-level test: generous (each takes seconds at most), so a
/// regression that stalls a run fails the test instead of hanging it. Not a timing check.
const BOUND: Duration = Duration::from_secs(300);

/// Runs a test body within [`BOUND`].
async fn bounded(body: impl Future<Output = ()>) {
    if tokio::time::timeout(BOUND, body).await.is_err() {
        panic!("the test did not finish within {BOUND:?}: a run stalled");
    }
}

async fn enroll(fed: &Federation, n: usize) -> Vec<Agent> {
    let settings = fed.config().bandit.expect("bandit");
    let mut agents = Vec::new();
    for i in 0..n {
        let (id, _) = fed
            .enroll("s", &format!("agent-{i}"), 0, 0, 0.0)
            .await
            .expect("enrolled");
        agents.push(Agent::new(id, i as u64, &settings));
    }
    agents
}

async fn run_all(fed: &Arc<Federation>, agents: Vec<Agent>, stop: Option<u64>) -> Vec<Agent> {
    let threshold = fed.config().bandit.expect("bandit").threshold;
    let handles: Vec<_> = agents
        .into_iter()
        .map(|a| tokio::spawn(run_agent(fed.clone(), a, threshold, stop)))
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("agent task"));
    }
    out
}

async fn wait_status(fed: &Federation, status: FederationStatus) {
    let mut changes = fed.subscribe_changes();
    while fed.snapshot().await.0.status != status {
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

/// Replays the committed rounds from what the agents reported: the aggregate after each
/// round is the sum of its participants' reported Gram updates (in the record's order),
/// every settled round's trigger verified (recomputed statistic above the threshold), every
/// payment equals core Truth-FedBan's on the round's inputs, and a void round selected,
/// paid and aggregated nobody. Returns the final `V_g` and each client's total payment.
fn replay(
    settings: &BanditSettings,
    rounds: &[RoundRecord],
    ledger: &[LedgerEntry],
    agents: &[Agent],
) -> (Vec<f64>, BTreeMap<String, f64>) {
    let d = settings.dim as usize;
    let by_id: BTreeMap<&str, &Agent> = agents.iter().map(|a| (a.id.as_str(), a)).collect();
    let mut v_g = vec![0.0; d * d];
    let mut totals = BTreeMap::new();
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r.round, i as u64 + 1, "rounds are committed once, in order");
        let b = r.bandit.as_ref().expect("bandit record");
        if b.void_reason.is_some() {
            // Nobody selected, paid or aggregated.
            assert!(b.selected.is_empty() && r.participants.is_empty(), "{r:?}");
            assert!(b.reports.iter().all(|c| !c.selected && c.payment == 0.0));
            assert!(
                ledger.iter().all(|e| e.round != r.round),
                "round {}",
                r.round
            );
            continue;
        }
        let statistic = b
            .trigger_statistic
            .expect("a settled round's trigger verified");
        assert!(
            statistic > settings.threshold,
            "round {}: {statistic}",
            r.round
        );
        assert!(b.value >= b.target - 1e-8, "round {}: target met", r.round);
        let reporters: Vec<&str> = b.reports.iter().map(|c| c.client_id.as_str()).collect();
        let grams: Vec<Vec<f64>> = reporters
            .iter()
            .map(|c| by_id[c].reports[&r.round].1.clone())
            .collect();
        let costs: Vec<f64> = b.reports.iter().map(|c| c.reported_cost).collect();
        let problem = SelectionProblem::new(d, settings.lambda, &v_g, grams).expect("problem");
        let (selection, payments) = problem
            .payments(
                &costs,
                &settings.mechanism_config(),
                settings.mechanism.to_core(),
            )
            .expect("payments");
        let selected: Vec<&str> = selection.selected.iter().map(|&j| reporters[j]).collect();
        assert_eq!(b.selected, selected, "round {}", r.round);
        assert_eq!((b.value, b.target), (selection.value, selection.target));
        for p in &payments {
            let client = reporters[p.client];
            let entry = ledger
                .iter()
                .find(|e| e.round == r.round && e.client_id == client)
                .unwrap_or_else(|| panic!("no payment of {client} in round {}", r.round));
            assert_eq!(entry.amount, p.amount, "core's payment");
            assert!(
                p.capped || p.amount >= costs[p.client],
                "individually rational"
            );
            *totals.entry(client.to_string()).or_insert(0.0) += p.amount;
        }
        assert_eq!(
            ledger.iter().filter(|e| e.round == r.round).count(),
            payments.len(),
            "one payment per participant"
        );
        for p in &r.participants {
            for (acc, x) in v_g.iter_mut().zip(&by_id[p.as_str()].reports[&r.round].1) {
                *acc += x;
            }
        }
    }
    (v_g, totals)
}

fn final_v_g(fed: &Federation) -> Vec<f64> {
    let stored = fed
        .store()
        .get_bandit_aggregate(fed.id())
        .expect("read")
        .expect("aggregate");
    Aggregate::from_stored(DIM as usize, stored)
        .expect("dimension")
        .v_g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_linucb_clients_reach_the_horizon_with_few_paid_rounds() {
    bounded(async {
    const HORIZON: u64 = 400;
    let registry = Registry::open(Store::memory()).expect("registry");
    let fed = registry
        .create(config("bandit", 3, HORIZON))
        .expect("created");
    let settings = fed.config().bandit.expect("bandit");
    let mut events = fed.subscribe_events();
    let agents = enroll(&fed, 3).await;
    let err = fed.enroll("s", "late", 0, 0, 0.0).await.expect_err("full");
    assert!(
        matches!(&err, ServiceError::FailedPrecondition(m) if m.contains("takes no new clients")),
        "{err}"
    );
    let agents = run_all(&fed, agents, None).await;
    wait_status(&fed, FederationStatus::Finished).await;

    assert_eq!(agents.iter().map(|a| a.steps).sum::<u64>(), HORIZON);
    let last = fed.store().last_bandit_step("bandit").expect("read");
    assert_eq!(last.map(|s| s.step), Some(HORIZON));
    let rounds = fed.store().list_rounds("bandit").expect("rounds");
    let ledger = fed.store().list_ledger("bandit").expect("ledger");
    println!("{} steps, {} communication rounds", HORIZON, rounds.len());
    assert!(rounds.len() >= 3, "{} rounds", rounds.len());
    assert!(
        rounds.len() * 8 < HORIZON as usize,
        "{} rounds",
        rounds.len()
    );
    let (v_g, totals) = replay(&settings, &rounds, &ledger, &agents);
    assert_eq!(final_v_g(&fed), v_g, "V_g is exactly the uploaded updates");
    for a in &agents {
        let got: f64 = a.paid.values().sum();
        assert_eq!(got, totals.get(&a.id).copied().unwrap_or(0.0), "{}", a.id);
        assert_eq!(a.synced, rounds.len() as u64, "{} synced every round", a.id);
    }
    // Every round was announced, with its payments.
    let (mut committed, mut recorded) = (0, 0);
    while let Ok(event) = events.try_recv() {
        match event {
            Event::RoundCommitted(_) => committed += 1,
            Event::LedgerRecorded { entries, .. } => recorded += entries.len(),
            _ => {}
        }
    }
    assert_eq!((committed, recorded), (rounds.len(), ledger.len()));
    registry.shutdown();
    })
    .await;
}

/// A run of two clients and one step that triggers: the test plays the protocol by hand.
async fn one_round_federation(store: Store) -> (Arc<Registry>, Arc<Federation>, Vec<Agent>) {
    let registry = Registry::open(store).expect("registry");
    let mut cfg = config("hand", 2, 1);
    if let Some(b) = cfg.bandit.as_mut() {
        b.threshold = 1e-9;
    }
    let fed = registry.create(cfg).expect("created");
    let agents = enroll(&fed, 2).await;
    (registry, fed, agents)
}

/// Polls `client`'s task until it is not a Wait.
async fn task(fed: &Federation, client: &str) -> NextTask {
    let mut changes = fed.subscribe_changes();
    loop {
        match fed.next_task(client).await {
            NextTask::Wait { .. } => {
                let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
            }
            other => return other,
        }
    }
}

fn step(t: u64, reward: f64) -> Submission {
    Submission::Step {
        step: t,
        reward,
        trigger_statistic: 1.0,
        triggered: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_is_recorded_once_and_bad_reports_lose_nothing() {
    bounded(async {
        let (registry, fed, mut agents) = one_round_federation(Store::memory()).await;
        let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
        let seed = fed.config().seed;
        let active = active_client(seed, 1, 2);
        let (player, other) = (&ids[active], &ids[1 - active]);
        assert_eq!(
            task(&fed, player).await,
            NextTask::Bandit(BanditTask::Play { step: 1, t_last: 0 })
        );
        let refused = fed
            .submit_bandit(other, step(1, 0.5))
            .await
            .expect_err("not its turn");
        assert!(
            matches!(&refused, ServiceError::FailedPrecondition(m) if m.contains("turn")),
            "{refused}"
        );
        fed.submit_bandit(player, step(1, 0.5))
            .await
            .expect("played");
        fed.submit_bandit(player, step(1, 0.5))
            .await
            .expect("a repeat is acknowledged again");
        let different = fed
            .submit_bandit(player, step(1, 0.25))
            .await
            .expect_err("another reward");
        assert!(
            matches!(&different, ServiceError::AlreadyExists(m) if m.contains("step 1")),
            "{different}"
        );
        let late = fed
            .submit_bandit(other, step(1, 0.5))
            .await
            .expect_err("played by the other");
        assert!(
            matches!(&late, ServiceError::FailedPrecondition(m) if m.contains("was played by")),
            "{late}"
        );
        let stored = fed
            .store()
            .get_bandit_step("hand", 1)
            .expect("read")
            .expect("logged");
        assert_eq!(stored.reward, 0.5);

        // Round 1 opens: every client reports.
        let settings = fed.config().bandit.expect("bandit");
        for a in &agents {
            assert_eq!(
                task(&fed, &a.id).await,
                NextTask::Bandit(BanditTask::Report { round: 1 })
            );
        }
        let gram = vec![1.0, 0.5, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.25];
        let good = pb::BanditCostReport {
            round: 1,
            cost: 0.75,
            gram_update: gram.clone(),
        };
        let kind = |r: pb::BanditCostReport| Some(pb::bandit_submission::Kind::Report(r));
        let submission = Submission::from_proto(kind(good.clone()), &settings).expect("valid");
        fed.submit_bandit(&ids[0], submission.clone())
            .await
            .expect("accepted");
        for bad in [
            pb::BanditCostReport {
                cost: f64::NAN,
                ..good.clone()
            },
            pb::BanditCostReport {
                gram_update: vec![1.0; 8],
                ..good.clone()
            },
        ] {
            let err = Submission::from_proto(kind(bad), &settings).expect_err("invalid");
            assert!(matches!(err, ServiceError::InvalidArgument(_)), "{err}");
        }
        fed.submit_bandit(&ids[0], submission)
            .await
            .expect("repeat");
        let mut changed = good.clone();
        changed.cost = 0.5;
        let err = fed
            .submit_bandit(
                &ids[0],
                Submission::from_proto(kind(changed), &settings).expect("valid"),
            )
            .await
            .expect_err("a second report");
        assert!(
            matches!(&err, ServiceError::AlreadyExists(m) if m.contains("report")),
            "{err}"
        );
        let stored = fed.store().list_bandit_reports("hand", 1).expect("listed");
        assert_eq!(stored.len(), 1);
        assert_eq!((stored[0].1.cost, &stored[0].1.gram_update), (0.75, &gram));
        let upload = fed
            .submit_bandit(
                &ids[0],
                Submission::Upload {
                    round: 1,
                    b: vec![0.0; 3],
                },
            )
            .await
            .expect_err("not selected yet");
        assert!(
            matches!(upload, ServiceError::FailedPrecondition(_)),
            "{upload}"
        );

        // The other client reports; the round settles, uploads, commits and syncs.
        agents[1].reports.insert(1, (1.0, gram.clone()));
        fed.submit_bandit(&ids[1], agents[1].report(1))
            .await
            .expect("second report");
        let mut selected = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if let NextTask::Bandit(BanditTask::Upload { round: 1 }) = task(&fed, id).await {
                fed.submit_bandit(
                    id,
                    Submission::Upload {
                        round: 1,
                        b: vec![i as f64, 1.0, -1.0],
                    },
                )
                .await
                .expect("upload");
                selected.push(id.clone());
            }
        }
        assert!(!selected.is_empty());
        for id in &ids {
            let NextTask::Bandit(BanditTask::Sync {
                round: 1,
                selected: s,
                ..
            }) = task(&fed, id).await
            else {
                panic!("expected the sync of round 1");
            };
            assert_eq!(s, selected.contains(id));
            fed.submit_bandit(id, Submission::Synced { round: 1 })
                .await
                .expect("synced");
        }
        wait_status(&fed, FederationStatus::Finished).await;
        assert!(matches!(task(&fed, &ids[0]).await, NextTask::Done { .. }));
        let rounds = fed.store().list_rounds("hand").expect("rounds");
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].participants, selected);
        drop(agents);
        registry.shutdown();
    })
    .await;
}

/// Reopens the redb store in `dir`; the old store closes once its tasks are gone.
async fn reopen(dir: &std::path::Path) -> Arc<Registry> {
    for _ in 0..100 {
        if let Ok(store) = Store::open_redb(dir) {
            return Registry::open(store).expect("registry");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the redb store did not reopen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_reports_commits_the_round_once() {
    bounded(async {
        const HORIZON: u64 = 250;
        let dir = tempfile::tempdir().expect("tempdir");
        let settings;
        let agents = {
            let registry =
                Registry::open(Store::open_redb(dir.path()).expect("opens")).expect("reg");
            let fed = registry
                .create(config("crash", 3, HORIZON))
                .expect("created");
            settings = fed.config().bandit.expect("bandit");
            let agents = enroll(&fed, 3).await;
            // Round 1 completes; every client reports in round 2, then the server "crashes"
            // before anyone uploads.
            let agents = run_all(&fed, agents, Some(2)).await;
            let mut changes = fed.subscribe_changes();
            while fed
                .state
                .lock()
                .await
                .bandit
                .run
                .as_ref()
                .and_then(|r| r.open.as_ref())
                .is_none_or(|r| r.phase != Phase::Upload)
            {
                let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
            }
            assert_eq!(fed.store().list_rounds("crash").expect("rounds").len(), 1);
            assert_eq!(
                fed.store()
                    .list_bandit_reports("crash", 2)
                    .expect("r")
                    .len(),
                3
            );
            registry.shutdown();
            agents
        };
        let registry = reopen(dir.path()).await;
        let fed = registry.get("crash").expect("restored");
        let mut changes = fed.subscribe_changes();
        while fed.state.lock().await.bandit.run.is_none() {
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
        }
        let mut agents = agents;
        // The clients never saw their acks: they send the SAME reports again.
        for a in &mut agents {
            let again = a.report(2);
            fed.submit_bandit(&a.id, again)
                .await
                .expect("a repeated report is acknowledged");
        }
        let agents = run_all(&fed, agents, None).await;
        wait_status(&fed, FederationStatus::Finished).await;
        assert_eq!(agents.iter().map(|a| a.steps).sum::<u64>(), HORIZON);
        let rounds = fed.store().list_rounds("crash").expect("rounds");
        let ledger = fed.store().list_ledger("crash").expect("ledger");
        assert!(rounds.len() >= 2);
        let (v_g, _) = replay(&settings, &rounds, &ledger, &agents);
        assert_eq!(final_v_g(&fed), v_g);

        // Replaying round 2's commit writes nothing.
        let round2: Vec<LedgerEntry> = ledger.iter().filter(|e| e.round == 2).cloned().collect();
        assert!(!round2.is_empty());
        let fed_rec = fed.snapshot().await.0;
        let replayed = fed
            .store()
            .commit_bandit_round("crash", &rounds[1], &[0.0; 12], &round2, &fed_rec);
        assert!(matches!(
            replayed,
            Err(crate::store::StoreError::Conflict { .. })
        ));
        assert_eq!(fed.store().record_ledger(&round2, None).expect("replay"), 0);
        assert_eq!(fed.store().list_ledger("crash").expect("ledger"), ledger);
        registry.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_reported_failed_after_it_reached_the_disk_is_adopted() {
    bounded(async {
        let faults = Arc::new(Faults::default());
        faults.durable_but_failed.store(1, Ordering::SeqCst);
        let registry = Registry::open(FaultyBackend::store(faults.clone())).expect("registry");
        let fed = registry.create(config("faulty", 2, 150)).expect("created");
        let settings = fed.config().bandit.expect("bandit");
        let mut events = fed.subscribe_events();
        let agents = enroll(&fed, 2).await;
        let agents = run_all(&fed, agents, None).await;
        wait_status(&fed, FederationStatus::Finished).await;
        assert_eq!(
            faults.durable_but_failed.load(Ordering::SeqCst),
            0,
            "the fault fired"
        );
        let rounds = fed.store().list_rounds("faulty").expect("rounds");
        let ledger = fed.store().list_ledger("faulty").expect("ledger");
        let (v_g, totals) = replay(&settings, &rounds, &ledger, &agents);
        assert_eq!(final_v_g(&fed), v_g);
        for a in &agents {
            assert_eq!(
                a.paid.values().sum::<f64>(),
                totals.get(&a.id).copied().unwrap_or(0.0)
            );
        }
        let mut recorded = BTreeMap::new();
        while let Ok(event) = events.try_recv() {
            if let Event::LedgerRecorded { round, entries } = event {
                *recorded.entry(round).or_insert(0) += entries.len();
            }
        }
        let mut expected = BTreeMap::new();
        for e in &ledger {
            *expected.entry(e.round).or_insert(0) += 1;
        }
        assert_eq!(recorded, expected, "each round's payments announced once");
        registry.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_trigger_voids_its_round_and_the_run_goes_on() {
    bounded(async {
        const HORIZON: u64 = 300;
        let registry = Registry::open(Store::memory()).expect("registry");
        let fed = registry
            .create(config("cheat", 3, HORIZON))
            .expect("created");
        let settings = fed.config().bandit.expect("bandit");
        let mut agents = enroll(&fed, 3).await;
        agents[0].quirk = Quirk::FalseTrigger;
        let cheater = agents[0].id.clone();
        let agents = run_all(&fed, agents, None).await;
        wait_status(&fed, FederationStatus::Finished).await;

        assert_eq!(agents.iter().map(|a| a.steps).sum::<u64>(), HORIZON);
        let (step, true_statistic) = agents[0].cheated.expect("the cheater cheated once");
        assert!(true_statistic <= settings.threshold);
        let rounds = fed.store().list_rounds("cheat").expect("rounds");
        let ledger = fed.store().list_ledger("cheat").expect("ledger");
        let void: Vec<&RoundRecord> = rounds
            .iter()
            .filter(|r| r.bandit.as_ref().is_some_and(|b| b.void_reason.is_some()))
            .collect();
        assert_eq!(void.len(), 1, "only the false trigger is void");
        let (k, b) = (void[0].round, void[0].bandit.as_ref().expect("bandit"));
        assert_eq!(
            (b.step, b.trigger_client.as_str()),
            (step, cheater.as_str())
        );
        assert!(
            b.void_reason
                .as_deref()
                .is_some_and(|r| r.contains("the trigger did not verify")),
            "{:?}",
            b.void_reason
        );
        // The server's recomputation is the cheater's own LinUCB statistic, bit for bit.
        assert_eq!(b.trigger_statistic, Some(true_statistic));
        assert_eq!(b.reports.len(), 3, "everyone reported");
        assert!(
            ledger.iter().all(|e| e.round != k),
            "nobody paid in round {k}"
        );
        assert!(void[0].participants.is_empty());
        // The replay checks every other round and that the void one aggregated nothing.
        let (v_g, totals) = replay(&settings, &rounds, &ledger, &agents);
        assert_eq!(
            final_v_g(&fed),
            v_g,
            "V_g holds the settled rounds' updates only"
        );
        for a in &agents {
            assert_eq!(a.paid.get(&k), Some(&0.0), "{} synced round {k}", a.id);
            assert_eq!(a.synced, rounds.len() as u64, "{} synced every round", a.id);
            let got: f64 = a.paid.values().sum();
            assert_eq!(got, totals.get(&a.id).copied().unwrap_or(0.0), "{}", a.id);
        }
        assert!(
            rounds.last().is_some_and(|r| r.round > k),
            "rounds followed the void one"
        );
        registry.shutdown();
    })
    .await;
}

/// Round 1 of three clients with short deadlines, played by hand: the trigger client and a
/// second client report, the third never does; both reporters are needed (`beta = 1`) and
/// selected, but only the trigger client uploads. After the deadlines the round commits
/// with the trigger client alone aggregated and paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_miss_the_report_or_upload_deadline_are_left_out() {
    bounded(async {
        let registry = Registry::open(Store::memory()).expect("registry");
        let mut cfg = config("late", 3, 1);
        cfg.round_timeout_ms = 1500;
        if let Some(b) = cfg.bandit.as_mut() {
            b.threshold = 1e-9;
            b.beta = 1.0;
        }
        let fed = registry.create(cfg).expect("created");
        let agents = enroll(&fed, 3).await;
        let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
        let active = active_client(fed.config().seed, 1, 3);
        let (player, second, silent) =
            (&ids[active], &ids[(active + 1) % 3], &ids[(active + 2) % 3]);
        assert_eq!(
            task(&fed, player).await,
            NextTask::Bandit(BanditTask::Play { step: 1, t_last: 0 })
        );
        fed.submit_bandit(player, step(1, 0.5))
            .await
            .expect("played");
        let gram = |i: usize| {
            let mut g = vec![0.0; 9];
            g[i * 3 + i] = 1.0;
            g
        };
        for (id, g) in [(player, gram(0)), (second, gram(1))] {
            assert_eq!(
                task(&fed, id).await,
                NextTask::Bandit(BanditTask::Report { round: 1 })
            );
            let report = crate::store::BanditReport {
                cost: 1.0,
                gram_update: g,
            };
            fed.submit_bandit(id, Submission::Report { round: 1, report })
                .await
                .expect("reported");
        }
        // The silent client never reports; after the report deadline both reporters are
        // asked for their uploads, and only the player answers.
        for id in [player, second] {
            assert_eq!(
                task(&fed, id).await,
                NextTask::Bandit(BanditTask::Upload { round: 1 })
            );
        }
        fed.submit_bandit(
            player,
            Submission::Upload {
                round: 1,
                b: vec![0.5, 0.0, 0.0],
            },
        )
        .await
        .expect("uploaded");
        // After the upload deadline the round commits; everyone downloads it (the silent
        // client first: its task is a Wait until then, the second's is still the upload).
        for id in [silent, player, second] {
            let NextTask::Bandit(BanditTask::Sync {
                round: 1,
                aggregate,
                selected,
                payment,
            }) = task(&fed, id).await
            else {
                panic!("expected the sync of round 1");
            };
            assert_eq!(aggregate.v_g, gram(0), "only the uploader's dV");
            assert_eq!(aggregate.b_g, vec![0.5, 0.0, 0.0]);
            assert_eq!(selected, id == player, "{id}");
            assert_eq!(payment > 0.0, id == player, "{id}: {payment}");
            fed.submit_bandit(id, Submission::Synced { round: 1 })
                .await
                .expect("synced");
        }
        wait_status(&fed, FederationStatus::Finished).await;

        let rounds = fed.store().list_rounds("late").expect("rounds");
        assert_eq!(rounds.len(), 1);
        let r = &rounds[0];
        assert_eq!(r.participants, vec![player.clone()]);
        let mut stragglers = vec![second.clone(), silent.clone()];
        stragglers.sort_by_key(|c| ids.iter().position(|i| i == c));
        assert_eq!(
            r.stragglers, stragglers,
            "the silent one and the non-uploader"
        );
        let b = r.bandit.as_ref().expect("bandit");
        assert_eq!(b.void_reason, None);
        assert!(b.trigger_statistic.is_some_and(|s| s > 1e-9));
        let mut selected = b.selected.clone();
        selected.sort();
        let mut both = vec![player.clone(), second.clone()];
        both.sort();
        assert_eq!(selected, both, "both reporters were needed");
        assert!(b.reports.iter().all(|c| &c.client_id != silent));
        let unpaid = b
            .reports
            .iter()
            .find(|c| &c.client_id == second)
            .expect("reported");
        assert!(unpaid.selected && unpaid.payment == 0.0);
        let ledger = fed.store().list_ledger("late").expect("ledger");
        assert_eq!(ledger.len(), 1);
        assert_eq!(&ledger[0].client_id, player);
        assert_eq!(final_v_g(&fed), gram(0));
        drop(agents);
        registry.shutdown();
    })
    .await;
}

/// A step, report or upload that reached the store although its write reported failure
/// (simulated by writing it behind the run's back) is the one the run uses; a different
/// submission in its place is refused with the same message as any second submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_but_unacknowledged_write_is_adopted() {
    bounded(async {
        let (registry, fed, agents) = one_round_federation(Store::memory()).await;
        let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
        let active = active_client(fed.config().seed, 1, 2);
        let (player, other) = (&ids[active], &ids[1 - active]);
        let store = fed.store().clone();
        assert_eq!(
            task(&fed, player).await,
            NextTask::Bandit(BanditTask::Play { step: 1, t_last: 0 })
        );
        let stored = crate::store::BanditStepRecord {
            client_id: player.clone(),
            step: 1,
            reward: 0.25,
            trigger_statistic: 1.0,
            triggered: true,
            skipped: false,
        };
        store.put_bandit_step("hand", &stored).expect("written");
        let err = fed
            .submit_bandit(player, step(1, 0.5))
            .await
            .expect_err("another reward");
        assert!(
            matches!(&err, ServiceError::AlreadyExists(m)
                if m.contains("step 1 is already recorded with reward 0.25")
                    && m.contains("pull the next task")),
            "{err}"
        );
        // The run adopted the stored step: its repeat is acknowledged and round 1 opens.
        fed.submit_bandit(player, step(1, 0.25))
            .await
            .expect("the stored step, repeated");
        for id in &ids {
            assert_eq!(
                task(&fed, id).await,
                NextTask::Bandit(BanditTask::Report { round: 1 })
            );
        }
        let gram = |i: usize| {
            let mut g = vec![0.0; 9];
            g[i * 3 + i] = 1.0;
            g
        };
        let report = |cost: f64, i: usize| crate::store::BanditReport {
            cost,
            gram_update: gram(i),
        };
        store
            .put_bandit_report("hand", 1, other, &report(0.25, 1))
            .expect("written");
        let err = fed
            .submit_bandit(
                other,
                Submission::Report {
                    round: 1,
                    report: report(0.75, 1),
                },
            )
            .await
            .expect_err("another cost");
        let second = format!("a different report of {other} for round 1 was already accepted");
        assert!(
            matches!(&err, ServiceError::AlreadyExists(m) if m.contains(&second)),
            "{err}"
        );
        fed.submit_bandit(
            player,
            Submission::Report {
                round: 1,
                report: report(1.0, 0),
            },
        )
        .await
        .expect("reported");
        // Both are needed for 60% of g(both) and upload; the other's upload is stored first.
        for id in [player, other] {
            assert_eq!(
                task(&fed, id).await,
                NextTask::Bandit(BanditTask::Upload { round: 1 })
            );
        }
        store
            .put_bandit_upload("hand", 1, other, &[9.0, 9.0, 9.0])
            .expect("written");
        let upload = |b: Vec<f64>| Submission::Upload { round: 1, b };
        let err = fed
            .submit_bandit(other, upload(vec![1.0; 3]))
            .await
            .expect_err("another upload");
        assert!(
            matches!(&err, ServiceError::AlreadyExists(m) if m.contains("a different upload")),
            "{err}"
        );
        fed.submit_bandit(player, upload(vec![0.5, 0.0, 0.0]))
            .await
            .expect("uploaded");
        for id in &ids {
            let NextTask::Bandit(BanditTask::Sync { aggregate, .. }) = task(&fed, id).await else {
                panic!("expected the sync of round 1");
            };
            assert_eq!(
                aggregate.b_g,
                vec![9.5, 9.0, 9.0],
                "the stored upload counts"
            );
            fed.submit_bandit(id, Submission::Synced { round: 1 })
                .await
                .expect("synced");
        }
        wait_status(&fed, FederationStatus::Finished).await;
        let rounds = fed.store().list_rounds("hand").expect("rounds");
        let b = rounds[0].bandit.as_ref().expect("bandit");
        let cost = b.reports.iter().find(|c| &c.client_id == other);
        assert_eq!(
            cost.map(|c| c.reported_cost),
            Some(0.25),
            "the stored report counts"
        );
        let last = fed.store().last_bandit_step("hand").expect("read");
        assert_eq!(last, Some(stored));
        registry.shutdown();
    })
    .await;
}

#[test]
fn the_active_client_is_a_seeded_uniform_draw() {
    let draws: Vec<usize> = (1..=3000).map(|t| active_client(7, t, 3)).collect();
    assert_eq!(
        draws,
        (1..=3000)
            .map(|t| active_client(7, t, 3))
            .collect::<Vec<_>>()
    );
    for c in 0..3 {
        let n = draws.iter().filter(|&&d| d == c).count();
        assert!((900..1100).contains(&n), "client {c} drawn {n} times");
    }
    assert_ne!(
        draws,
        (1..=3000)
            .map(|t| active_client(8, t, 3))
            .collect::<Vec<_>>()
    );
    assert_eq!(active_client(7, 5, 1), 0);
}

/// Three clients with a short play deadline, one of which never answers a play task. The
/// run reaches its horizon: every step of the silent client is recorded as skipped (and
/// opens no round), every other step is played by its active client, a late answer to a
/// skipped step is refused, and each round's `skipped_steps` metric counts the skipped
/// steps up to its step. The server restarts in the middle (redb): the steps skipped before
/// stay skipped, a late answer to one of them is still refused, and the count goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_active_client_has_its_steps_skipped_across_a_restart() {
    bounded(async {
        const HORIZON: u64 = 30;
        const RESTART_AT: u64 = 14;
        const TIMEOUT_MS: u64 = 500;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config("silent", 3, HORIZON);
        cfg.round_timeout_ms = TIMEOUT_MS;
        let seed = cfg.seed;
        let active = |t: u64| active_client(seed, t, 3);
        // The silent client: the active client of step 2, which (seed 11) also has steps
        // on both sides of the restart.
        let silent_index = active(2);
        let silent_steps: Vec<u64> = (1..=HORIZON)
            .filter(|&t| active(t) == silent_index)
            .collect();
        assert!(
            silent_steps.iter().any(|&t| t < RESTART_AT)
                && silent_steps.iter().filter(|&&t| t > RESTART_AT).count() >= 2,
            "{silent_steps:?}"
        );
        let (settings, agents, before) = {
            let registry =
                Registry::open(Store::open_redb(dir.path()).expect("opens")).expect("reg");
            let fed = registry.create(cfg).expect("created");
            let settings = fed.config().bandit.expect("bandit");
            let mut agents = enroll(&fed, 3).await;
            agents[silent_index].quirk = Quirk::NoPlay;
            for a in &mut agents {
                a.stop_at_step = Some(RESTART_AT);
            }
            let agents = run_all(&fed, agents, None).await;
            let store = fed.store();
            let last = store.last_bandit_step("silent").expect("read");
            let before: Vec<_> = (1..=last.map_or(0, |s| s.step))
                .map(|t| {
                    store
                        .get_bandit_step("silent", t)
                        .expect("read")
                        .expect("logged")
                })
                .collect();
            registry.shutdown();
            (settings, agents, before)
        };
        let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
        let silent = ids[silent_index].clone();
        let registry = reopen(dir.path()).await;
        let fed = registry.get("silent").expect("restored");
        let mut changes = fed.subscribe_changes();
        while fed.state.lock().await.bandit.run.is_none() {
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
        }
        // A step skipped before the restart is still skipped.
        let first = silent_steps[0];
        assert!(before.iter().any(|s| s.step == first && s.skipped));
        let late = Submission::Step {
            step: first,
            reward: 0.5,
            trigger_statistic: 1.0,
            triggered: false,
        };
        let refused = fed.submit_bandit(&silent, late).await.expect_err("skipped");
        let expected = format!(
            "step {first} was skipped after {TIMEOUT_MS} ms without an answer; pull the next task"
        );
        assert!(
            matches!(&refused, ServiceError::FailedPrecondition(m) if *m == expected),
            "{refused}"
        );
        let mut agents = agents;
        for a in &mut agents {
            a.stop_at_step = None;
        }
        let agents = run_all(&fed, agents, None).await;
        wait_status(&fed, FederationStatus::Finished).await;

        // Every step is recorded once: the silent client's skipped, the others' played.
        let mut skipped = Vec::new();
        for t in 1..=HORIZON {
            let s = fed
                .store()
                .get_bandit_step("silent", t)
                .expect("read")
                .unwrap_or_else(|| panic!("step {t} is in the log"));
            assert_eq!(s.client_id, ids[active(t)], "step {t}'s active client");
            assert_eq!(s.skipped, active(t) == silent_index, "step {t}: {s:?}");
            if s.skipped {
                assert!(!s.triggered && s.reward == 0.0);
                skipped.push(t);
            }
        }
        assert_eq!(skipped, silent_steps);
        // The log before the restart is kept as it was.
        assert!(before.len() as u64 >= RESTART_AT);
        for s in &before {
            assert_eq!(
                fed.store()
                    .get_bandit_step("silent", s.step)
                    .expect("read")
                    .as_ref(),
                Some(s)
            );
        }
        assert_eq!(agents[silent_index].steps, 0);
        assert_eq!(
            agents.iter().map(|a| a.steps).sum::<u64>(),
            HORIZON - silent_steps.len() as u64,
            "the others played every other step"
        );
        // Every late answer (each skipped step followed by another of the silent client's
        // steps) was refused as skipped.
        let late = &agents[silent_index].late;
        let answered: Vec<u64> = late.iter().map(|(t, _)| *t).collect();
        assert_eq!(answered, silent_steps[..silent_steps.len() - 1]);
        for (t, e) in late {
            let expected = format!(
                "step {t} was skipped after {TIMEOUT_MS} ms without an answer; pull the next task"
            );
            assert!(
                matches!(e, ServiceError::FailedPrecondition(m) if *m == expected),
                "{e}"
            );
        }
        // No round at a skipped step; each round counts the skipped steps up to its step.
        let rounds = fed.store().list_rounds("silent").expect("rounds");
        assert!(!rounds.is_empty());
        for r in &rounds {
            let b = r.bandit.as_ref().expect("bandit");
            assert!(
                !skipped.contains(&b.step),
                "round {} at a skipped step",
                r.round
            );
            let up_to = skipped.iter().filter(|&&t| t <= b.step).count() as f64;
            assert_eq!(
                r.metrics,
                vec![(SKIPPED_STEPS_METRIC.to_string(), up_to)],
                "round {}",
                r.round
            );
        }
        let ledger = fed.store().list_ledger("silent").expect("ledger");
        let (v_g, _) = replay(&settings, &rounds, &ledger, &agents);
        assert_eq!(final_v_g(&fed), v_g);
        registry.shutdown();
    })
    .await;
}
