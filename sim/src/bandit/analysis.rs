//! From what a bandit run left (every client's trace, the server's round records and its
//! ledger) to the report's numbers: per-client costs, payments and utilities, the merged
//! regret curve, and the invariants the run must satisfy ([`Check`]).
//!
//! A step the server skipped (its active client did not answer in time) is not part of the
//! run: it has no place in the regret curve or a client's step count, and is counted apart
//! ([`Outcome::skipped_steps`]): the steps a trace marks skipped (answered late) and the
//! steps no trace holds (never answered) up to the last step seen.

use std::collections::{BTreeMap, HashMap};

use fedval_proto::v1 as pb;
use serde::Serialize;

use fedval_client::BanditTrace;

/// Ledger input under which the baseline records the value it credits a participant
/// (deducted from its payment and counted as compensation).
pub const CREDITED_INPUT: &str = "credited_value";

/// Tolerance of the money, log-det, reward and utility comparisons of the analysis and
/// the replay (relative to the larger magnitude, at least absolute).
pub(super) const TOLERANCE: f64 = 1e-9;

/// The round-record metric in which the server counts the steps skipped up to the round's
/// step (server `bandit::SKIPPED_STEPS_METRIC`).
pub const SKIPPED_STEPS_METRIC: &str = "skipped_steps";

/// One client's run: who it is and what its node recorded.
#[derive(Clone, Debug)]
pub struct ClientRun {
    /// Index in enrollment order.
    pub index: usize,
    /// Enrollment name.
    pub name: String,
    /// Id the server gave it.
    pub client_id: String,
    /// `truthful` or `misreport xF`.
    pub behaviour: String,
    /// Its report factor.
    pub factor: f64,
    /// Its node's trace.
    pub trace: BanditTrace,
}

/// One client at the end of a bandit run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BanditClientRow {
    pub name: String,
    pub client_id: String,
    pub behaviour: String,
    pub report_factor: f64,
    /// Steps it played (was the active client and answered in time).
    pub steps: usize,
    /// Cumulative pseudo-regret of its own (played) steps.
    pub regret: f64,
    /// Communication rounds it reported in, and was selected in.
    pub rounds_reported: usize,
    pub rounds_selected: usize,
    /// Rounds in which it was essential and paid the configured cap (server's record).
    pub rounds_capped: usize,
    /// Sum of its true costs over the rounds it was selected in.
    pub true_cost: f64,
    /// Sum of its payment entries in the ledger.
    pub payment: f64,
    /// Sum of the payments its node saw (must equal `payment`).
    pub trace_payment: f64,
    /// Baseline: the value credited to it (ledger input `credited_value`); 0 otherwise.
    pub credited_value: f64,
    /// `payment + credited_value - true_cost`.
    pub utility: f64,
}

/// One communication round as the server recorded it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BanditRoundRow {
    pub round: u64,
    /// Global step at which the trigger fired.
    pub step: u64,
    /// Name of the client whose trigger fired.
    pub trigger_client: String,
    /// Participants (names) in greedy order.
    pub selected: Vec<String>,
    /// `g(S)` and the target `g(all) + log(beta)`.
    pub value: f64,
    pub target: f64,
    /// Sum of the round's payments, and how many were capped (essential clients).
    pub paid: f64,
    pub capped: usize,
}

/// One invariant of a run and whether it held.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was compared (the first violation when it failed).
    pub detail: String,
}

/// A run's numbers.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Outcome {
    pub clients: Vec<BanditClientRow>,
    pub rounds: Vec<BanditRoundRow>,
    /// `(t, cumulative regret after step t)` for every played step, in step order.
    pub curve: Vec<(u64, f64)>,
    /// Steps played over all clients.
    pub steps: usize,
    /// Steps the server skipped (module docs), up to the last step seen.
    pub skipped_steps: usize,
    /// Communication rounds recorded by the server.
    pub communication_rounds: usize,
    /// Final cumulative regret.
    pub cumulative_regret: f64,
    /// Sum of the true costs of every participant of every round.
    pub social_cost: f64,
    /// Sum of every payment in the ledger.
    pub total_paid: f64,
    pub checks: Vec<Check>,
}

/// `|a - b|` within [`TOLERANCE`] relative to the larger magnitude (at least 1).
pub(super) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOLERANCE * a.abs().max(b.abs()).max(1.0)
}

/// The sum of `values`, `+0.0` when empty (an empty float sum is `-0.0`, which prints as
/// `-0.0000`).
fn total(values: impl Iterator<Item = f64>) -> f64 {
    values.sum::<f64>() + 0.0
}

fn check(name: &str, failure: Option<String>, passed: String) -> Check {
    Check {
        name: name.to_string(),
        ok: failure.is_none(),
        detail: failure.unwrap_or(passed),
    }
}

/// The merged regret of every client's played steps.
struct Merged {
    /// `(t, cumulative regret)` in step order.
    curve: Vec<(u64, f64)>,
    /// The first step played by two clients.
    twice: Option<u64>,
    /// The first step whose regret is negative or not finite.
    bad: Option<(u64, f64)>,
    /// The skipped steps in order: marked skipped in a trace, or in no trace at all, up to
    /// the last step of any trace or round.
    skipped: Vec<u64>,
}

fn regret_curve(runs: &[ClientRun], records: &[pb::RoundRecord]) -> Merged {
    let all = runs.iter().flat_map(|r| r.trace.steps.iter());
    let last = all
        .clone()
        .map(|s| s.step)
        .chain(
            records
                .iter()
                .filter_map(|r| r.bandit.as_ref().map(|b| b.step)),
        )
        .max()
        .unwrap_or(0);
    let mut steps: Vec<(u64, f64)> = all
        .filter(|s| !s.skipped)
        .map(|s| (s.step, s.regret.unwrap_or(f64::NAN)))
        .collect();
    steps.sort_by_key(|s| s.0);
    let twice = steps.windows(2).find(|w| w[0].0 == w[1].0).map(|w| w[0].0);
    let bad = steps
        .iter()
        .copied()
        .find(|(_, r)| !(r.is_finite() && *r >= -TOLERANCE));
    let played: std::collections::BTreeSet<u64> = steps.iter().map(|s| s.0).collect();
    let skipped = (1..=last).filter(|t| !played.contains(t)).collect();
    let mut sum = 0.0;
    let curve = steps
        .into_iter()
        .map(|(t, r)| {
            sum += r;
            (t, sum)
        })
        .collect();
    Merged {
        curve,
        twice,
        bad,
        skipped,
    }
}

/// The first round whose `skipped_steps` metric (the server's count of the steps skipped
/// up to its step; absent before skipping existed, read as 0) differs from the skipped
/// steps the traces show up to that step.
fn skipped_mismatch(records: &[pb::RoundRecord], skipped: &[u64]) -> Option<String> {
    records.iter().find_map(|r| {
        let b = r.bandit.as_ref()?;
        let server = r
            .metrics
            .iter()
            .find(|m| m.name == SKIPPED_STEPS_METRIC)
            .map_or(0.0, |m| m.value);
        let traces = skipped.iter().filter(|&&t| t <= b.step).count();
        (server != traces as f64).then(|| {
            format!(
                "round {}: the server counts {server} skipped steps up to step {}, the traces {traces}",
                r.round, b.step
            )
        })
    })
}

/// Computes a run's rows, curve and checks.
pub fn outcome(
    runs: &[ClientRun],
    records: &[pb::RoundRecord],
    ledger: &pb::ListLedgerResponse,
) -> Outcome {
    let names: HashMap<&str, &str> = runs
        .iter()
        .map(|r| (r.client_id.as_str(), r.name.as_str()))
        .collect();
    let name_of = |id: &str| {
        names
            .get(id)
            .map_or_else(|| id.to_string(), |n| n.to_string())
    };
    let mut ledger_paid: BTreeMap<&str, f64> = BTreeMap::new();
    let mut credited: BTreeMap<&str, f64> = BTreeMap::new();
    for e in ledger.entries.iter().filter(|e| e.kind == "payment") {
        *ledger_paid.entry(e.client_id.as_str()).or_default() += e.amount;
        if let Some(v) = e.inputs.get(CREDITED_INPUT) {
            *credited.entry(e.client_id.as_str()).or_default() += v;
        }
    }
    let capped = |id: &str| {
        records
            .iter()
            .filter_map(|r| r.bandit.as_ref())
            .filter(|b| b.reports.iter().any(|c| c.client_id == id && c.capped))
            .count()
    };
    let clients: Vec<BanditClientRow> = runs
        .iter()
        .map(|r| {
            let selected = r.trace.rounds.iter().filter(|l| l.selected);
            let payment = ledger_paid
                .get(r.client_id.as_str())
                .copied()
                .unwrap_or(0.0);
            let credited_value = credited.get(r.client_id.as_str()).copied().unwrap_or(0.0);
            let true_cost = total(selected.clone().map(|l| l.true_cost));
            BanditClientRow {
                name: r.name.clone(),
                client_id: r.client_id.clone(),
                behaviour: r.behaviour.clone(),
                report_factor: r.factor,
                steps: r.trace.steps.iter().filter(|s| !s.skipped).count(),
                regret: total(
                    r.trace
                        .steps
                        .iter()
                        .filter(|s| !s.skipped)
                        .filter_map(|s| s.regret),
                ),
                rounds_reported: r.trace.rounds.len(),
                rounds_selected: selected.clone().count(),
                rounds_capped: capped(&r.client_id),
                true_cost,
                payment,
                trace_payment: total(selected.map(|l| l.payment)),
                credited_value,
                utility: payment + credited_value - true_cost,
            }
        })
        .collect();
    let bandit_rounds: Vec<(u64, &pb::BanditRound)> = records
        .iter()
        .filter_map(|r| r.bandit.as_ref().map(|b| (r.round, b)))
        .collect();
    let rounds: Vec<BanditRoundRow> = bandit_rounds
        .iter()
        .map(|&(round, b)| BanditRoundRow {
            round,
            step: b.step,
            trigger_client: name_of(&b.trigger_client),
            selected: b.selected.iter().map(|id| name_of(id)).collect(),
            value: b.value,
            target: b.target,
            paid: total(b.reports.iter().map(|c| c.payment)),
            capped: b.reports.iter().filter(|c| c.capped).count(),
        })
        .collect();
    let Merged {
        curve,
        twice,
        bad: bad_regret,
        skipped,
    } = regret_curve(runs, records);
    let steps = curve.len();
    let mut checks = Vec::new();
    checks.push(check(
        "every step played once",
        twice
            .map(|t| format!("step {t} was played by two clients"))
            .or_else(|| skipped_mismatch(records, &skipped)),
        if skipped.is_empty() {
            format!("{steps} steps")
        } else {
            format!("{steps} steps played, {} skipped", skipped.len())
        },
    ));
    checks.push(check(
        "regret non-decreasing",
        bad_regret.map(|(t, r)| format!("step {t} has regret {r}")),
        "every step's regret is finite and >= 0".into(),
    ));
    checks.push(check(
        "communication rounds < steps",
        (rounds.len() >= steps.max(1))
            .then(|| format!("{} rounds for {steps} steps", rounds.len())),
        format!("{} rounds for {steps} steps", rounds.len()),
    ));
    checks.push(check(
        "ledger payments == trace payments",
        clients
            .iter()
            .find(|c| !close(c.payment, c.trace_payment))
            .map(|c| {
                format!(
                    "{}: ledger {} vs trace {}",
                    c.name, c.payment, c.trace_payment
                )
            }),
        "per client".into(),
    ));
    checks.push(check(
        "ledger totals == sum of entries",
        ledger
            .totals
            .iter()
            .find(|t| {
                !close(
                    t.payments,
                    ledger_paid
                        .get(t.client_id.as_str())
                        .copied()
                        .unwrap_or(0.0),
                )
            })
            .map(|t| format!("{}: totals say {}", name_of(&t.client_id), t.payments)),
        format!("{} clients with entries", ledger.totals.len()),
    ));
    checks.push(check(
        "every client reported in every round",
        clients
            .iter()
            .find(|c| c.rounds_reported != rounds.len())
            .map(|c| {
                format!(
                    "{} reported in {} of {} rounds",
                    c.name,
                    c.rounds_reported,
                    rounds.len()
                )
            }),
        format!("{} rounds", rounds.len()),
    ));
    checks.push(check(
        "selections agree",
        selection_mismatch(runs, &bandit_rounds),
        "the server's participants are the clients told they were selected".into(),
    ));
    checks.push(check(
        "target met",
        rounds
            .iter()
            .find(|r| r.value < r.target - TOLERANCE * r.target.abs().max(1.0))
            .map(|r| format!("round {}: g(S) {} < target {}", r.round, r.value, r.target)),
        "g(S) >= g(all) + log(beta) in every round".into(),
    ));
    let social_cost = total(clients.iter().map(|c| c.true_cost));
    let total_paid = total(ledger_paid.values().copied());
    Outcome {
        communication_rounds: rounds.len(),
        cumulative_regret: curve.last().map_or(0.0, |p| p.1),
        clients,
        rounds,
        curve,
        steps,
        skipped_steps: skipped.len(),
        social_cost,
        total_paid,
        checks,
    }
}

/// The first round whose recorded participants differ from the clients whose traces say they
/// were selected.
fn selection_mismatch(runs: &[ClientRun], rounds: &[(u64, &pb::BanditRound)]) -> Option<String> {
    for &(round, b) in rounds {
        let mut told: Vec<&str> = runs
            .iter()
            .filter(|r| {
                r.trace
                    .rounds
                    .iter()
                    .any(|l| l.round == round && l.selected)
            })
            .map(|r| r.client_id.as_str())
            .collect();
        let mut recorded: Vec<&str> = b.selected.iter().map(String::as_str).collect();
        told.sort_unstable();
        recorded.sort_unstable();
        if told != recorded {
            return Some(format!(
                "round {round}: server selected {recorded:?}, clients told {told:?}"
            ));
        }
    }
    None
}

/// `(t, regret(t) / sqrt(t))` at about `points` evenly spaced steps of the curve (always
/// including the last).
pub fn scaled_regret(curve: &[(u64, f64)], points: usize) -> Vec<(u64, f64)> {
    let stride = (curve.len() / points.max(1)).max(1);
    let mut out: Vec<(u64, f64)> = curve
        .iter()
        .skip(stride - 1)
        .step_by(stride)
        .map(|&(t, r)| (t, r / (t.max(1) as f64).sqrt()))
        .collect();
    if let Some(&(t, r)) = curve.last()
        && out.last().is_none_or(|p| p.0 != t)
    {
        out.push((t, r / (t.max(1) as f64).sqrt()));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fedval_client::{RoundLog, StepLog};

    /// Two clients alternating steps 1..=steps, with rounds at the given steps where client
    /// `a` is selected and paid `pay` (and `b` is not).
    pub(crate) fn synthetic(
        steps: u64,
        rounds_at: &[u64],
        pay: f64,
    ) -> (Vec<ClientRun>, Vec<pb::RoundRecord>, pb::ListLedgerResponse) {
        let mut runs: Vec<ClientRun> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, id)| ClientRun {
                index: i,
                name: format!("client-{i:02}"),
                client_id: id.to_string(),
                behaviour: "truthful".into(),
                factor: 1.0,
                trace: BanditTrace::default(),
            })
            .collect();
        for t in 1..=steps {
            let who = (t % 2) as usize;
            runs[who].trace.steps.push(StepLog {
                step: t,
                reward: 0.5,
                regret: Some(1.0 / (t as f64).sqrt()),
                triggered: rounds_at.contains(&t),
                skipped: false,
            });
        }
        let mut records = Vec::new();
        let mut entries = Vec::new();
        for (k, &t) in rounds_at.iter().enumerate() {
            let round = k as u64 + 1;
            for (i, run) in runs.iter_mut().enumerate() {
                run.trace.rounds.push(RoundLog {
                    round,
                    true_cost: 0.5 + i as f64,
                    reported_cost: 0.5 + i as f64,
                    selected: i == 0,
                    payment: if i == 0 { pay } else { 0.0 },
                });
            }
            records.push(pb::RoundRecord {
                round,
                bandit: Some(pb::BanditRound {
                    trigger_statistic: None,
                    void_reason: String::new(),
                    step: t,
                    trigger_client: "b".into(),
                    selected: vec!["a".into()],
                    value: 2.0,
                    target: 1.5,
                    reports: vec![
                        pb::ClientBanditReport {
                            client_id: "a".into(),
                            reported_cost: 0.5,
                            selected: true,
                            payment: pay,
                            capped: false,
                            gain: 1.0,
                        },
                        pb::ClientBanditReport {
                            client_id: "b".into(),
                            reported_cost: 1.5,
                            selected: false,
                            payment: 0.0,
                            capped: false,
                            gain: 0.5,
                        },
                    ],
                }),
                ..Default::default()
            });
            entries.push(pb::LedgerEntry {
                round,
                client_id: "a".into(),
                kind: "payment".into(),
                amount: pay,
                mechanism: "truth_fedban".into(),
                inputs: Default::default(),
                recorded_at_ms: 0,
            });
        }
        let n = rounds_at.len() as f64;
        let ledger = pb::ListLedgerResponse {
            entries,
            totals: vec![pb::LedgerTotals {
                client_id: "a".into(),
                payments: pay * n,
                penalties: 0.0,
                prizes: 0.0,
                net: pay * n,
            }],
        };
        (runs, records, ledger)
    }

    #[test]
    fn a_consistent_run_passes_every_check_and_adds_up() {
        let (runs, records, ledger) = synthetic(100, &[10, 40], 0.8);
        let o = outcome(&runs, &records, &ledger);
        for c in &o.checks {
            assert!(c.ok, "{c:?}");
        }
        assert_eq!((o.steps, o.communication_rounds), (100, 2));
        let a = &o.clients[0];
        assert_eq!((a.rounds_selected, a.rounds_reported, a.steps), (2, 2, 50));
        assert!((a.payment - 1.6).abs() < 1e-12 && (a.trace_payment - 1.6).abs() < 1e-12);
        assert!((a.true_cost - 1.0).abs() < 1e-12);
        assert!((a.utility - 0.6).abs() < 1e-12);
        assert_eq!(o.clients[1].utility, 0.0);
        assert!((o.social_cost - 1.0).abs() < 1e-12);
        assert!((o.total_paid - 1.6).abs() < 1e-12);
        let expected: f64 = (1..=100).map(|t| 1.0 / (t as f64).sqrt()).sum();
        assert!((o.cumulative_regret - expected).abs() < 1e-9);
        assert!(
            o.curve
                .windows(2)
                .all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0)
        );
        assert_eq!(o.rounds[0].selected, vec!["client-00".to_string()]);
        assert_eq!(o.rounds[1].trigger_client, "client-01");
        let per_client: f64 = o.clients.iter().map(|c| c.regret).sum();
        assert!((per_client - o.cumulative_regret).abs() < 1e-9);
    }

    #[test]
    fn violations_are_named() {
        let failed = |o: &Outcome| -> Vec<String> {
            o.checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.clone())
                .collect()
        };
        // The ledger lost a payment.
        let (runs, records, mut ledger) = synthetic(50, &[10, 20], 0.8);
        ledger.entries.pop();
        let o = outcome(&runs, &records, &ledger);
        assert_eq!(
            failed(&o),
            [
                "ledger payments == trace payments",
                "ledger totals == sum of entries"
            ]
        );
        // A step played twice, a negative regret, a missed target, a wrong selection.
        let (mut runs, mut records, ledger) = synthetic(50, &[10, 20], 0.8);
        let dup = runs[0].trace.steps[0].clone();
        runs[1].trace.steps.push(dup);
        runs[0].trace.steps[3].regret = Some(-0.5);
        if let Some(b) = records[1].bandit.as_mut() {
            b.value = 1.0;
            b.selected = vec!["b".into()];
        }
        let o = outcome(&runs, &records, &ledger);
        assert_eq!(
            failed(&o),
            [
                "every step played once",
                "regret non-decreasing",
                "selections agree",
                "target met"
            ]
        );
        // Communicating every step.
        let all: Vec<u64> = (1..=6).collect();
        let (runs, records, ledger) = synthetic(6, &all, 1.0);
        assert_eq!(
            failed(&outcome(&runs, &records, &ledger)),
            ["communication rounds < steps"]
        );
    }

    /// Step 7 answered late (marked skipped in its trace) and step 12 never answered: both
    /// are counted as skipped, not played; the regret leaves them out; a round whose
    /// `skipped_steps` metric disagrees with the traces fails the check.
    #[test]
    fn skipped_steps_are_counted_apart_and_checked_against_the_server() {
        let (mut runs, mut records, ledger) = synthetic(20, &[10, 15], 0.8);
        let who = |t: u64| (t % 2) as usize;
        let at = |runs: &[ClientRun], t: u64| {
            runs[who(t)]
                .trace
                .steps
                .iter()
                .position(|s| s.step == t)
                .expect("step")
        };
        let i = at(&runs, 7);
        runs[who(7)].trace.steps[i].skipped = true;
        let i = at(&runs, 12);
        runs[who(12)].trace.steps.remove(i);
        let metric = |n: f64| pb::Metric {
            name: SKIPPED_STEPS_METRIC.into(),
            value: n,
        };
        records[0].metrics = vec![metric(1.0)];
        records[1].metrics = vec![metric(2.0)];
        let o = outcome(&runs, &records, &ledger);
        for c in &o.checks {
            assert!(c.ok, "{c:?}");
        }
        assert_eq!((o.steps, o.skipped_steps), (18, 2));
        assert_eq!(o.checks[0].detail, "18 steps played, 2 skipped");
        assert_eq!(o.clients[1].steps, 9, "step 7 is not counted as played");
        let expected: f64 = (1..=20u64)
            .filter(|t| ![7, 12].contains(t))
            .map(|t| 1.0 / (t as f64).sqrt())
            .sum();
        assert!((o.cumulative_regret - expected).abs() < 1e-9);
        assert!(o.curve.iter().all(|p| p.0 != 7 && p.0 != 12));
        records[1].metrics = vec![metric(1.0)];
        let o = outcome(&runs, &records, &ledger);
        assert!(!o.checks[0].ok);
        assert_eq!(
            o.checks[0].detail,
            "round 2: the server counts 1 skipped steps up to step 15, the traces 2"
        );
    }

    #[test]
    fn credited_value_counts_in_the_utility_and_caps_are_counted() {
        let (runs, mut records, mut ledger) = synthetic(20, &[5], 0.2);
        ledger.entries[0].inputs.insert(CREDITED_INPUT.into(), 0.7);
        if let Some(b) = records[0].bandit.as_mut() {
            b.reports[0].capped = true;
        }
        let o = outcome(&runs, &records, &ledger);
        assert_eq!(
            (o.clients[0].rounds_capped, o.clients[1].rounds_capped),
            (1, 0)
        );
        assert_eq!(o.rounds[0].capped, 1);
        assert!((o.clients[0].credited_value - 0.7).abs() < 1e-12);
        assert!((o.clients[0].utility - (0.2 + 0.7 - 0.5)).abs() < 1e-12);
    }

    #[test]
    fn scaled_regret_samples_the_curve_and_keeps_the_end() {
        let curve: Vec<(u64, f64)> = (1..=10).map(|t| (t, (t as f64).sqrt() * 2.0)).collect();
        let s = scaled_regret(&curve, 3);
        assert_eq!(s.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 6, 9, 10]);
        assert!(s.iter().all(|p| (p.1 - 2.0).abs() < 1e-12));
        assert_eq!(scaled_regret(&[], 5), []);
        assert_eq!(scaled_regret(&curve[..2], 100).len(), 2);
    }
}
