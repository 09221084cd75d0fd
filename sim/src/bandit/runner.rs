//! Runs a bandit scenario over gRPC: the server started (or attached) and the federation
//! created as [`crate::runner`] does, the clients enrolled one after another in index order
//! (the server's enrollment order indexes its schedule), every client's SDK bandit node run
//! concurrently on its own environment and cost model, then the server's rounds and ledger
//! read back. [`run`] adds the replay and, if asked, the misreport sweep.

use std::time::Instant;

use fedval_client::{BanditClient, CostModel, RoundCost, connect, run_bandit_node};
use fedval_core::incentive::environment::Environment;
use fedval_proto::v1 as pb;
use fedval_server::config::BanditMechanism;

use super::analysis::{ClientRun, Outcome, outcome};
use super::config::{BanditSim, SweepSpec};
use super::replay::replay;
use super::report::BanditReport;
use super::sweep::{SweepRow, SweepTable};
use crate::SimError;
use crate::runner::{
    Finished, Launch, SimOptions, Target, Turn, Turns, finish, follow_rounds, progress_bar, target,
};

/// Largest `d` the report replays (the replay factorises a `d x d` matrix per step; the
/// digits encoding's `d = 170` would take longer than the run).
pub const MAX_REPLAY_DIM: usize = 64;

/// A client's seeded cost model: its true cost of round `r` from
/// [`BanditSim::true_cost`], reported times its factor.
struct SeededCosts {
    sim: BanditSim,
    seed: u64,
    client: usize,
    factor: f64,
}

impl CostModel for SeededCosts {
    fn cost(&mut self, round: u64) -> RoundCost {
        let true_cost = self.sim.true_cost(self.seed, self.client, round);
        RoundCost {
            true_cost,
            reported: true_cost * self.factor,
        }
    }
}

/// Starts client `index`: connect, enroll in its turn, run the bandit node.
fn spawn_client(
    launch: &Launch,
    index: usize,
    mut env: Box<dyn Environment>,
    mut costs: SeededCosts,
    turn: Turn,
) -> tokio::task::JoinHandle<Result<ClientRun, SimError>> {
    let launch = launch.clone();
    let behaviour = costs.sim.behaviour(index);
    let factor = costs.factor;
    tokio::spawn(async move {
        let name = format!("client-{index:02}");
        let channel = connect(&launch.url).await?;
        let mut client = turn
            .enroll(BanditClient::enroll(
                channel,
                &launch.federation_id,
                &launch.secret,
                &name,
            ))
            .await?;
        let trace =
            run_bandit_node(&mut client, env.as_mut(), &mut costs, &launch.run_opts).await?;
        Ok(ClientRun {
            index,
            name,
            client_id: client.client_id().to_string(),
            behaviour,
            factor,
            trace,
        })
    })
}

/// What one federation run left.
pub(crate) struct RunResult {
    pub(crate) federation_id: String,
    pub(crate) url: String,
    pub(crate) runs: Vec<ClientRun>,
    pub(crate) records: Vec<pb::RoundRecord>,
    pub(crate) outcome: Outcome,
}

/// Runs the federation `sim` describes (clients and seed from `opts.config`) once.
pub(crate) async fn run_federation(
    opts: &SimOptions,
    sim: &BanditSim,
    show_progress: bool,
) -> Result<RunResult, SimError> {
    let config = &opts.config;
    let (clients, seed) = (config.clients, config.seed);
    let envs = sim.environments(clients, seed)?;
    let Target {
        embedded,
        launch,
        mut admin,
        mut events,
    } = target(opts, |id, secret| {
        sim.federation_config(
            id,
            secret,
            clients,
            seed,
            config.round_timeout_ms,
            sim.mechanism,
        )
    })
    .await?;
    let mut turns = Turns::default();
    let mut tasks = Vec::with_capacity(clients);
    for (index, env) in envs.into_iter().enumerate() {
        let costs = SeededCosts {
            sim: sim.clone(),
            seed,
            client: index,
            factor: sim.report_factor(index),
        };
        tasks.push(spawn_client(&launch, index, env, costs, turns.next()));
    }
    let bar = progress_bar(
        show_progress,
        sim.horizon,
        "{spinner} step {pos}/{len} [{bar:30}] {elapsed} {msg}",
    );
    bar.set_message("waiting for clients");
    follow_rounds(&mut events, |r| {
        if let Some(b) = &r.bandit {
            bar.set_position(b.step);
            bar.set_message(format!("{} communication rounds", r.round));
        }
    })
    .await?;
    bar.finish_and_clear();
    let Finished {
        results: runs,
        rounds: records,
        ledger,
        ..
    } = finish(
        tasks,
        "bandit client",
        |r| r.index,
        &mut admin,
        &launch.federation_id,
        embedded,
    )
    .await?;
    let outcome = outcome(&runs, &records, &ledger);
    Ok(RunResult {
        federation_id: launch.federation_id,
        url: launch.url,
        runs,
        records,
        outcome,
    })
}

/// Runs a bandit scenario (`opts.config.bandit` set): the run, its replay (for
/// `d <= MAX_REPLAY_DIM`) and, when the table has a `sweep`, the misreport sweep.
pub async fn run(opts: &SimOptions) -> Result<BanditReport, SimError> {
    let started = Instant::now();
    let config = &opts.config;
    config.validate().map_err(SimError::Config)?;
    let sim = config
        .bandit
        .clone()
        .ok_or_else(|| SimError::Config("not a bandit scenario: no [bandit] table".into()))?;
    let main = run_federation(opts, &sim, opts.progress).await?;
    let replay = if sim.context_dim() <= MAX_REPLAY_DIM {
        Some(replay(&sim, config.seed, &main.runs, &main.records, None)?)
    } else {
        None
    };
    let sweep = match &sim.sweep {
        Some(spec) => Some(sweep(opts, &sim, spec).await?),
        None => None,
    };
    Ok(BanditReport {
        config: config.clone(),
        federation_id: main.federation_id,
        server: main.url,
        wall_time_s: started.elapsed().as_secs_f64(),
        mechanism: sim.mechanism.as_str().to_string(),
        env: sim.env.as_str().to_string(),
        dim: sim.context_dim(),
        outcome: main.outcome,
        replay,
        sweep,
    })
}

/// The misreport sweep: one run per `(mechanism, factor)` with the focal client reporting
/// `factor` times its true cost, then the per-round check on the first mechanism's truthful
/// run (every mechanism's trajectory is the same: payments do not change the state).
pub async fn sweep(
    opts: &SimOptions,
    sim: &BanditSim,
    spec: &SweepSpec,
) -> Result<SweepTable, SimError> {
    spec.validate(opts.config.clients)
        .map_err(SimError::Config)?;
    let total = spec.mechanisms.len() * spec.factors.len();
    let bar = progress_bar(
        opts.progress,
        total as u64,
        "{bar:30} {pos}/{len} runs {elapsed} {msg}",
    );
    let mut rows = Vec::with_capacity(total);
    let mut truthful: Option<RunResult> = None;
    for &mechanism in &spec.mechanisms {
        for &factor in &spec.factors {
            bar.set_message(format!("sweep: {} x{factor}", mechanism.as_str()));
            let run = run_federation(
                opts,
                &sim.with_report(spec.client, factor, mechanism),
                false,
            )
            .await?;
            rows.push(sweep_row(&run.outcome, spec.client, mechanism, factor));
            if factor == 1.0 && truthful.is_none() {
                truthful = Some(run);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let client = format!("client-{:02}", spec.client);
    let per_round = match &truthful {
        Some(run) if sim.context_dim() <= MAX_REPLAY_DIM => {
            let first = spec.mechanisms.first().copied().unwrap_or(sim.mechanism);
            let truthful_sim = sim.with_report(spec.client, 1.0, first);
            replay(
                &truthful_sim,
                opts.config.seed,
                &run.runs,
                &run.records,
                Some((spec.client, &spec.factors)),
            )?
            .per_round
        }
        _ => None,
    };
    Ok(SweepTable {
        client,
        rows,
        per_round,
    })
}

/// The focal client's row of one sweep run.
fn sweep_row(o: &Outcome, client: usize, mechanism: BanditMechanism, factor: f64) -> SweepRow {
    let c = o.clients.get(client);
    SweepRow {
        mechanism: mechanism.as_str().to_string(),
        factor,
        utility: c.map_or(0.0, |c| c.utility),
        payment: c.map_or(0.0, |c| c.payment),
        credited_value: c.map_or(0.0, |c| c.credited_value),
        true_cost: c.map_or(0.0, |c| c.true_cost),
        rounds_selected: c.map_or(0, |c| c.rounds_selected),
        rounds_capped: c.map_or(0, |c| c.rounds_capped),
        communication_rounds: o.communication_rounds,
        cumulative_regret: o.cumulative_regret,
        checks_ok: o.checks.iter().all(|c| c.ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::SimConfig;

    /// A tiny bandit scenario run end to end over gRPC on an embedded server, with a small
    /// sweep: the report's invariants hold, the server's rounds and payments are exactly
    /// fedval-core's (replay), and Truth-FedBan is truthful round by round.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_bandit_scenario_runs_end_to_end_and_keeps_its_invariants() {
        let sim = BanditSim {
            dim: Some(3),
            arms: 5,
            horizon: 240,
            threshold: 4.0,
            misreport: vec![super::super::Misreport {
                client: 1,
                factor: 1.5,
            }],
            sweep: Some(SweepSpec {
                client: 0,
                factors: vec![0.5, 1.0, 2.0],
                mechanisms: vec![BanditMechanism::TruthFedban, BanditMechanism::Baseline],
            }),
            ..BanditSim::default()
        };
        let opts = SimOptions {
            config: SimConfig {
                clients: 4,
                seed: 5,
                bandit: Some(sim),
                ..SimConfig::default()
            },
            server: None,
            admin_token: "bandit-test-token".into(),
            progress: false,
        };
        let report = run(&opts).await.expect("bandit run");
        let o = &report.outcome;
        for c in &o.checks {
            assert!(c.ok, "{c:?}");
        }
        assert_eq!(o.steps, 240);
        assert!(
            o.communication_rounds >= 3,
            "{} rounds",
            o.communication_rounds
        );
        assert!(o.communication_rounds < o.steps);
        assert!(
            o.curve
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(o.curve.first().map(|p| p.0), Some(1));
        for c in &o.clients {
            assert!((c.payment - c.trace_payment).abs() < 1e-9, "{c:?}");
            assert_eq!(c.rounds_reported, o.communication_rounds);
        }
        assert_eq!(o.clients[1].behaviour, "misreport x1.5");
        let paid: f64 = o.clients.iter().map(|c| c.payment).sum();
        assert!((paid - o.total_paid).abs() < 1e-9);
        let replay = report.replay.as_ref().expect("replayed");
        assert_eq!(replay.divergence, None);
        assert_eq!((replay.steps, replay.rounds), (240, o.communication_rounds));
        assert_eq!(replay.selection_mismatches, 0);
        assert!(
            replay.max_payment_error < 1e-9,
            "{}",
            replay.max_payment_error
        );

        let sweep = report.sweep.as_ref().expect("sweep");
        assert_eq!(sweep.rows.len(), 6);
        assert!(sweep.rows.iter().all(|r| r.checks_ok));
        let per_round = sweep.per_round.as_ref().expect("per-round check");
        assert!(per_round.rounds >= 3);
        assert_eq!(per_round.mechanisms[0].mechanism, "truth_fedban");
        assert_eq!(per_round.mechanisms[0].rounds_misreport_gains, 0);
        // The truthful run of the sweep is the main run with client 0 truthful: the same.
        let truthful = sweep
            .rows
            .iter()
            .find(|r| r.mechanism == "truth_fedban" && r.factor == 1.0)
            .expect("truthful row");
        assert!((truthful.utility - o.clients[0].utility).abs() < 1e-9);
        assert_eq!(truthful.communication_rounds, o.communication_rounds);
    }
}
