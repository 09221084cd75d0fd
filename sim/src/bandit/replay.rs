//! Replays a finished bandit run offline with fedval-core, to check the server against the
//! core mechanism and to measure per-round truthfulness.
//!
//! The environments are pure functions of `(seed, client, step)` and the traces say which
//! client played which step, so the replay rebuilds every client's LinUCB state step by step
//! (checking each reward and trigger against the trace). At each recorded round it rebuilds
//! the round's [`SelectionProblem`] (the server's aggregate and every client's pending Gram
//! update), recomputes the selection and payments from the recorded reports (they must match
//! the server's), and, for a focal client, evaluates its utility for every report factor with
//! the other reports fixed, under both payment rules. The state then advances with the
//! server's recorded participants, so the replay follows the run even where it disagrees.
//!
//! A step the server skipped but its client played late (its trace marks it skipped) is
//! replayed like any other: the client's agent kept the observation. It opens no round.
//!
//! The per-round check is what Truth-FedBan guarantees (ALGORITHMS.md 7): with the round's
//! state fixed, no misreport beats the truth. A whole-run misreport also changes later
//! states, which no per-round argument covers; the sweep ([`super::sweep`]) measures that.

use std::collections::{BTreeMap, HashMap};

use fedval_core::incentive::truthfedban::{LinUcbClient, Mechanism, SelectionProblem};
use fedval_proto::v1 as pb;
use serde::Serialize;

use super::analysis::{ClientRun, TOLERANCE, close};
use super::config::BanditSim;
use crate::SimError;

/// One payment rule's per-round utilities of the focal client.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PerRoundMechanism {
    /// `truth_fedban` or `baseline`.
    pub mechanism: String,
    /// For each factor, the focal client's utility summed over the checked rounds (each
    /// round's others' reports and state fixed at the run's).
    pub utility_sum: Vec<f64>,
    /// The same with the truthful report (factor 1).
    pub truthful_sum: f64,
    /// Rounds in which some factor's utility beats the truthful one (by more than the
    /// tolerance).
    pub rounds_misreport_gains: usize,
    /// The largest such gain in one round (0 if none).
    pub max_gain: f64,
}

/// The per-round truthfulness check of one client.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PerRoundCheck {
    /// The focal client's name.
    pub client: String,
    pub factors: Vec<f64>,
    /// Rounds checked.
    pub rounds: usize,
    pub mechanisms: Vec<PerRoundMechanism>,
}

/// What the replay found.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Replay {
    /// Steps replayed with the trace's reward and trigger (skipped steps a client played
    /// late included).
    pub steps: usize,
    /// The first disagreement with the trace, if the replay stopped early.
    pub divergence: Option<String>,
    /// Rounds replayed.
    pub rounds: usize,
    /// Rounds whose recomputed participants (in greedy order) differ from the server's.
    pub selection_mismatches: usize,
    /// Largest `|core payment - recorded payment|` over every participant.
    pub max_payment_error: f64,
    /// Set when a focal client was given.
    pub per_round: Option<PerRoundCheck>,
}

fn core_err(e: fedval_core::incentive::IncentiveError) -> SimError {
    SimError::Config(format!("replay: {e}"))
}

/// The mechanisms of the per-round check, with their report names.
const MECHANISMS: [(Mechanism, &str); 2] = [
    (Mechanism::TruthFedBan, "truth_fedban"),
    (Mechanism::Baseline, "baseline"),
];

/// Per-round accumulator of one mechanism.
struct Tally {
    sums: Vec<f64>,
    truthful: f64,
    gains: usize,
    max_gain: f64,
}

/// Replays the run of `runs` (in client index order) on the environments `sim` builds for
/// `seed`, with the server's `records`; with `focal = Some((client, factors))` also runs the
/// per-round check for that client.
pub fn replay(
    sim: &BanditSim,
    seed: u64,
    runs: &[ClientRun],
    records: &[pb::RoundRecord],
    focal: Option<(usize, &[f64])>,
) -> Result<Replay, SimError> {
    let n = runs.len();
    let d = sim.context_dim();
    let settings = sim.settings(sim.mechanism);
    let config = settings.mechanism_config();
    let mut envs = sim.environments(n, seed)?;
    let mut agents = (0..n)
        .map(|_| LinUcbClient::new(d, settings.lambda, settings.alpha))
        .collect::<Result<Vec<_>, _>>()
        .map_err(core_err)?;
    let index: HashMap<&str, usize> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.client_id.as_str(), i))
        .collect();
    let mut schedule = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        for s in &r.trace.steps {
            schedule.insert(s.step, (i, s));
        }
    }
    let rounds: BTreeMap<u64, (u64, &pb::BanditRound)> = records
        .iter()
        .filter_map(|r| r.bandit.as_ref().map(|b| (b.step, (r.round, b))))
        .collect();
    let mut out = Replay {
        steps: 0,
        divergence: None,
        rounds: 0,
        selection_mismatches: 0,
        max_payment_error: 0.0,
        per_round: None,
    };
    let mut tallies: Vec<Tally> = match focal {
        Some((_, factors)) => MECHANISMS
            .iter()
            .map(|_| Tally {
                sums: vec![0.0; factors.len()],
                truthful: 0.0,
                gains: 0,
                max_gain: 0.0,
            })
            .collect(),
        None => Vec::new(),
    };
    let (mut v_g, mut b_g) = (vec![0.0; d * d], vec![0.0; d]);
    let mut t_last = 0u64;
    for (&t, &(i, log)) in &schedule {
        let (Some(env), Some(agent)) = (envs.get_mut(i), agents.get_mut(i)) else {
            break;
        };
        let arms = env.arms(t);
        let k = agent.choose(&arms).map_err(core_err)?;
        let feedback = env.play(t, k);
        if !close(feedback.reward, log.reward) {
            out.divergence = Some(format!(
                "step {t}: replayed reward {} but {} observed {}",
                feedback.reward, runs[i].name, log.reward
            ));
            break;
        }
        agent.observe(&arms[k], feedback.reward).map_err(core_err)?;
        let statistic = agent
            .trigger_statistic(t as usize, t_last as usize)
            .map_err(core_err)?;
        if (statistic > settings.threshold) != log.triggered {
            out.divergence = Some(format!(
                "step {t}: replayed trigger statistic {statistic} (threshold {}) but {} \
                 reported triggered = {}",
                settings.threshold, runs[i].name, log.triggered
            ));
            break;
        }
        out.steps += 1;
        let Some(&(round, record)) = rounds.get(&t) else {
            continue;
        };
        if !record.void_reason.is_empty() {
            // A void round selects and pays nobody and leaves the aggregate as it was; there
            // is no selection to compare or to check for truthfulness.
            t_last = t;
            out.rounds += 1;
            continue;
        }
        let mut reports = vec![f64::NAN; n];
        for r in &record.reports {
            if let Some(&j) = index.get(r.client_id.as_str()) {
                reports[j] = r.reported_cost;
            }
        }
        if let Some(j) = reports.iter().position(|c| c.is_nan()) {
            out.divergence = Some(format!("round {round}: no report of {}", runs[j].name));
            break;
        }
        let problem = SelectionProblem::new(
            d,
            settings.lambda,
            &v_g,
            agents.iter().map(|a| a.pending_gram().to_vec()).collect(),
        )
        .map_err(core_err)?;
        let (selection, payments) = problem
            .payments(&reports, &config, settings.mechanism.to_core())
            .map_err(core_err)?;
        let recorded: Vec<usize> = record
            .selected
            .iter()
            .filter_map(|id| index.get(id.as_str()).copied())
            .collect();
        if selection.selected != recorded {
            out.selection_mismatches += 1;
        }
        for p in &payments {
            let paid = record
                .reports
                .iter()
                .find(|r| index.get(r.client_id.as_str()) == Some(&p.client))
                .map_or(0.0, |r| r.payment);
            out.max_payment_error = out.max_payment_error.max((p.amount - paid).abs());
        }
        if let Some((c, factors)) = focal {
            let true_cost = runs
                .get(c)
                .and_then(|r| r.trace.rounds.iter().find(|l| l.round == round))
                .map(|l| l.true_cost);
            if let Some(true_cost) = true_cost {
                for ((mechanism, _), tally) in MECHANISMS.iter().zip(&mut tallies) {
                    let utility = |factor: f64| -> Result<f64, SimError> {
                        let mut report = reports.clone();
                        report[c] = factor * true_cost;
                        let (_, pays) = problem
                            .payments(&report, &config, *mechanism)
                            .map_err(core_err)?;
                        Ok(pays
                            .iter()
                            .find(|p| p.client == c)
                            .map_or(0.0, |p| p.utility(true_cost)))
                    };
                    let truthful = utility(1.0)?;
                    tally.truthful += truthful;
                    let mut best = truthful;
                    for (sum, &f) in tally.sums.iter_mut().zip(factors) {
                        let u = utility(f)?;
                        *sum += u;
                        best = best.max(u);
                    }
                    if best > truthful + TOLERANCE * truthful.abs().max(1.0) {
                        tally.gains += 1;
                        tally.max_gain = tally.max_gain.max(best - truthful);
                    }
                }
            }
        }
        for &j in &recorded {
            let a = &mut agents[j];
            for (acc, v) in v_g.iter_mut().zip(a.pending_gram()) {
                *acc += v;
            }
            for (acc, v) in b_g.iter_mut().zip(a.pending_b()) {
                *acc += v;
            }
            a.clear_pending();
        }
        for a in &mut agents {
            a.download(&v_g, &b_g).map_err(core_err)?;
        }
        t_last = t;
        out.rounds += 1;
    }
    if let Some((c, factors)) = focal {
        out.per_round = Some(PerRoundCheck {
            client: runs.get(c).map_or_else(String::new, |r| r.name.clone()),
            factors: factors.to_vec(),
            rounds: out.rounds,
            mechanisms: MECHANISMS
                .iter()
                .zip(tallies)
                .map(|((_, name), t)| PerRoundMechanism {
                    mechanism: name.to_string(),
                    utility_sum: t.sums,
                    truthful_sum: t.truthful,
                    rounds_misreport_gains: t.gains,
                    max_gain: t.max_gain,
                })
                .collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedval_client::{BanditTrace, RoundLog, StepLog};
    use fedval_core::incentive::truthfedban::MechanismConfig;

    /// A reference run of the protocol written with the core pieces (the role the server
    /// and the SDK play over gRPC): client `t % n` is active at step `t`.
    fn reference_run(
        sim: &BanditSim,
        n: usize,
        seed: u64,
    ) -> (Vec<ClientRun>, Vec<pb::RoundRecord>) {
        let d = sim.context_dim();
        let mut envs = sim.environments(n, seed).unwrap();
        let mut agents: Vec<LinUcbClient> = (0..n)
            .map(|_| LinUcbClient::new(d, sim.lambda, sim.alpha).unwrap())
            .collect();
        let mut runs: Vec<ClientRun> = (0..n)
            .map(|i| ClientRun {
                index: i,
                name: format!("client-{i:02}"),
                client_id: format!("id{i}"),
                behaviour: sim.behaviour(i),
                factor: sim.report_factor(i),
                trace: BanditTrace::default(),
            })
            .collect();
        let config = MechanismConfig {
            beta: sim.beta,
            essential_cap: sim.essential_cap,
            baseline_value_weight: sim.baseline_value_weight,
        };
        let (mut v_g, mut b_g) = (vec![0.0; d * d], vec![0.0; d]);
        let mut records = Vec::new();
        let mut t_last = 0;
        for t in 1..=sim.horizon {
            let i = (t % n as u64) as usize;
            let arms = envs[i].arms(t);
            let k = agents[i].choose(&arms).unwrap();
            let f = envs[i].play(t, k);
            agents[i].observe(&arms[k], f.reward).unwrap();
            let triggered = agents[i]
                .trigger_statistic(t as usize, t_last as usize)
                .unwrap()
                > sim.threshold;
            runs[i].trace.steps.push(StepLog {
                step: t,
                reward: f.reward,
                regret: f.regret,
                triggered,
                skipped: false,
            });
            if !triggered {
                continue;
            }
            let round = records.len() as u64 + 1;
            let true_costs: Vec<f64> = (0..n).map(|j| sim.true_cost(seed, j, round)).collect();
            let reports: Vec<f64> = (0..n)
                .map(|j| true_costs[j] * sim.report_factor(j))
                .collect();
            let problem = SelectionProblem::new(
                d,
                sim.lambda,
                &v_g,
                agents.iter().map(|a| a.pending_gram().to_vec()).collect(),
            )
            .unwrap();
            let (sel, pays) = problem
                .payments(&reports, &config, sim.mechanism.to_core())
                .unwrap();
            let paid = |j: usize| {
                pays.iter()
                    .find(|p| p.client == j)
                    .map_or(0.0, |p| p.amount)
            };
            for (j, run) in runs.iter_mut().enumerate() {
                run.trace.rounds.push(RoundLog {
                    round,
                    true_cost: true_costs[j],
                    reported_cost: reports[j],
                    selected: sel.selected.contains(&j),
                    payment: paid(j),
                });
            }
            records.push(pb::RoundRecord {
                round,
                bandit: Some(pb::BanditRound {
                    trigger_statistic: None,
                    void_reason: String::new(),
                    step: t,
                    trigger_client: format!("id{i}"),
                    selected: sel.selected.iter().map(|j| format!("id{j}")).collect(),
                    value: sel.value,
                    target: sel.target,
                    reports: (0..n)
                        .map(|j| pb::ClientBanditReport {
                            client_id: format!("id{j}"),
                            reported_cost: reports[j],
                            selected: sel.selected.contains(&j),
                            payment: paid(j),
                            capped: pays.iter().any(|p| p.client == j && p.capped),
                            gain: 0.0,
                        })
                        .collect(),
                }),
                ..Default::default()
            });
            for &j in &sel.selected {
                for (acc, v) in v_g.iter_mut().zip(agents[j].pending_gram()) {
                    *acc += v;
                }
                for (acc, v) in b_g.iter_mut().zip(agents[j].pending_b()) {
                    *acc += v;
                }
                agents[j].clear_pending();
            }
            for a in &mut agents {
                a.download(&v_g, &b_g).unwrap();
            }
            t_last = t;
        }
        (runs, records)
    }

    fn sim(horizon: u64) -> BanditSim {
        BanditSim {
            horizon,
            threshold: 5.0,
            misreport: vec![crate::bandit::Misreport {
                client: 2,
                factor: 1.5,
            }],
            ..BanditSim::default()
        }
    }

    #[test]
    fn a_faithful_run_replays_exactly_and_truth_fedban_is_truthful_per_round() {
        let sim = sim(600);
        let (runs, records) = reference_run(&sim, 5, 11);
        assert!(records.len() >= 5, "{} rounds", records.len());
        let factors = [0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0];
        let r = replay(&sim, 11, &runs, &records, Some((0, &factors))).unwrap();
        assert_eq!(r.divergence, None);
        assert_eq!((r.steps, r.rounds), (600, records.len()));
        assert_eq!(r.selection_mismatches, 0);
        assert!(r.max_payment_error < 1e-9, "{}", r.max_payment_error);
        let check = r.per_round.unwrap();
        assert_eq!(check.rounds, records.len());
        let tfb = &check.mechanisms[0];
        assert_eq!(tfb.mechanism, "truth_fedban");
        assert_eq!(tfb.rounds_misreport_gains, 0);
        assert!(
            tfb.utility_sum
                .iter()
                .all(|&u| u <= tfb.truthful_sum + 1e-9)
        );
        assert!((tfb.utility_sum[3] - tfb.truthful_sum).abs() < 1e-12);
        let baseline = &check.mechanisms[1];
        assert!(baseline.rounds_misreport_gains > 0, "{baseline:?}");
        assert!(baseline.max_gain > 0.0);
    }

    #[test]
    fn a_tampered_trace_or_record_is_detected() {
        let sim = sim(300);
        let (mut runs, mut records) = reference_run(&sim, 4, 3);
        let some_round = records.len() / 2;
        if let Some(b) = records[some_round].bandit.as_mut() {
            // The complement of the real participants.
            let others: Vec<String> = (0..4)
                .map(|j| format!("id{j}"))
                .filter(|id| !b.selected.contains(id))
                .collect();
            assert!(!others.is_empty());
            b.selected = others;
            for r in &mut b.reports {
                r.payment += 0.25;
            }
        }
        let r = replay(&sim, 3, &runs, &records, None).unwrap();
        assert!(r.selection_mismatches >= 1);
        assert!(r.max_payment_error >= 0.25 - 1e-12);
        assert_eq!(r.per_round, None);
        runs[1].trace.steps[10].reward += 1.0;
        let step = runs[1].trace.steps[10].step;
        let r = replay(&sim, 3, &runs, &records, None).unwrap();
        assert!(r.divergence.unwrap().starts_with(&format!("step {step}:")));
        assert_eq!(r.steps as u64, step - 1);
    }
}
