//! The arithmetic of one communication round, pure (no state, no I/O): verify the trigger,
//! select the participants and price them ([`settle`], core Truth-FedBan), then build what
//! the round commits ([`conclude`]): the round record, the new aggregate and the ledger
//! entries.
//!
//! Both are functions of stored inputs only (the aggregate before the round, the step log,
//! the durable reports and uploads), so a restarted server recomputes exactly the same
//! round. [`settle`] cannot fail: a trigger that does not verify and a selection or payment
//! that cannot be computed both give a *void* settlement (nobody selected or paid, the
//! reason recorded), which the driver commits like any other round instead of retrying a
//! computation that would fail again.

use std::collections::BTreeMap;
use std::sync::Arc;

use fedval_core::incentive::IncentiveError;
use fedval_core::incentive::truthfedban::{Payment, SelectionProblem, trigger_statistic};

use super::{Aggregate, BanditMechanism, BanditSettings, SKIPPED_STEPS_METRIC};
use crate::store::{
    BanditReport, BanditRound, ClientBanditReport, LedgerEntry, LedgerKind, RoundRecord,
};

/// Relative tolerance of the trigger verification: the recomputed statistic must exceed
/// `threshold * (1 - TRIGGER_TOLERANCE)`. An honest client computes the same value bit for
/// bit (core `trigger_statistic`); the margin only absorbs a client built differently.
pub const TRIGGER_TOLERANCE: f64 = 1e-9;

/// One reporter's line of a settled round.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The client.
    pub client_id: String,
    /// Its reported cost.
    pub cost: f64,
    /// `g({client}) - g({})` (0 in a void round).
    pub gain: f64,
    /// Its payment if the selection chose it.
    pub payment: Option<Payment>,
}

/// A round after selection and pricing, before the uploads.
#[derive(Clone, Debug, PartialEq)]
pub struct Settlement {
    /// Every reporter, in enrollment order.
    pub rows: Vec<Row>,
    /// The selected clients in greedy order (none in a void round).
    pub selected: Vec<String>,
    /// `g(S)` reached (0 in a void round).
    pub value: f64,
    /// `g(all reporters) + log(beta)` (0 in a void round).
    pub target: f64,
    /// The trigger statistic recomputed from the trigger client's report, when it could be.
    pub trigger_statistic: Option<f64>,
    /// Why the round is void; `None` when it was settled.
    pub void_reason: Option<String>,
}

impl Settlement {
    /// Whether `client_id` was selected.
    pub fn is_selected(&self, client_id: &str) -> bool {
        self.selected.iter().any(|c| c == client_id)
    }

    /// A void round over `reports`: every reporter listed with its cost, nobody selected.
    pub fn void(
        reports: &[(String, Arc<BanditReport>)],
        trigger_statistic: Option<f64>,
        reason: String,
    ) -> Self {
        Self {
            rows: reports
                .iter()
                .map(|(client_id, r)| Row {
                    client_id: client_id.clone(),
                    cost: r.cost,
                    gain: 0.0,
                    payment: None,
                })
                .collect(),
            selected: Vec::new(),
            value: 0.0,
            target: 0.0,
            trigger_statistic,
            void_reason: Some(reason),
        }
    }
}

/// The step that opened a round, as the server checks it.
#[derive(Clone, Debug)]
pub struct Trigger {
    /// The active client of that step.
    pub client_id: String,
    /// The step `t`.
    pub step: u64,
    /// The step of the previous round (the `t_last` its play task carried).
    pub t_last: u64,
    /// The statistic the client claimed.
    pub claimed: f64,
    /// The aggregate the client last downloaded (its LinUCB base is `lambda I + V_g` of it),
    /// `None` if the server cannot tell.
    pub downloaded: Option<Arc<Aggregate>>,
}

/// Recomputes the trigger statistic of `trigger` from its client's report `dV` (the Gram
/// update pending at the trigger step: the client plays no step between its trigger and its
/// report) and checks it against the threshold. `Ok(statistic)` when it verifies, else the
/// statistic (if it could be computed) and why the round is void.
fn verify_trigger(
    settings: &BanditSettings,
    reports: &[(String, Arc<BanditReport>)],
    trigger: &Trigger,
) -> Result<f64, (Option<f64>, String)> {
    let step = trigger.step;
    let Some((_, report)) = reports.iter().find(|(c, _)| *c == trigger.client_id) else {
        return Err((None, "the trigger client did not report".into()));
    };
    let Some(downloaded) = &trigger.downloaded else {
        return Err((
            None,
            "the aggregate the trigger client last downloaded is unknown".into(),
        ));
    };
    let recomputed = match (usize::try_from(step), usize::try_from(trigger.t_last)) {
        (Ok(t), Ok(t_last)) => trigger_statistic(
            settings.dim as usize,
            settings.lambda,
            &downloaded.v_g,
            &report.gram_update,
            t,
            t_last,
        )
        .map_err(|e| e.to_string()),
        _ => Err("the step numbers do not fit this platform".into()),
    }
    .map_err(|e| {
        (
            None,
            format!("the trigger statistic of step {step} could not be recomputed: {e}"),
        )
    })?;
    if !recomputed.is_finite() {
        return Err((
            None,
            format!("the trigger statistic of step {step} recomputes to {recomputed}"),
        ));
    }
    let threshold = settings.threshold;
    if recomputed > threshold * (1.0 - TRIGGER_TOLERANCE) {
        return Ok(recomputed);
    }
    Err((
        Some(recomputed),
        format!(
            "the trigger did not verify: {} claimed statistic {} at step {step}, but its reported \
             dV over the aggregate it last downloaded gives {recomputed}, which does not exceed \
             the threshold {threshold}",
            trigger.client_id, trigger.claimed
        ),
    ))
}

/// Settles a round (module docs): verifies `trigger`, then selects and prices the
/// reporters. `reports` are the round's reporters in enrollment order, `aggregate` the
/// server's `(V_g, b_g)` before the round. A trigger that does not verify (or whose client
/// did not report) and a selection or pricing error give a void settlement with the reason.
pub fn settle(
    settings: &BanditSettings,
    aggregate: &Aggregate,
    reports: &[(String, Arc<BanditReport>)],
    trigger: &Trigger,
) -> Settlement {
    let statistic = match verify_trigger(settings, reports, trigger) {
        Ok(statistic) => statistic,
        Err((statistic, reason)) => return Settlement::void(reports, statistic, reason),
    };
    let reason = match select_and_price(settings, aggregate, reports, statistic) {
        Ok(settled) => match not_finite(&settled) {
            None => return settled,
            Some(what) => format!("the selection gave a non-finite {what}"),
        },
        Err(e) => format!("the participants could not be selected and priced: {e}"),
    };
    Settlement::void(reports, Some(statistic), reason)
}

/// The first value of `s` that is not finite, named, if any: the store refuses to record
/// one, so committing such a round would fail on every retry.
fn not_finite(s: &Settlement) -> Option<String> {
    let mut values = vec![("value".to_string(), s.value), ("target".into(), s.target)];
    for row in &s.rows {
        values.push((format!("gain of {}", row.client_id), row.gain));
        if let Some(p) = &row.payment {
            values.push((format!("payment of {}", row.client_id), p.amount));
            values.push((
                format!("credited value of {}", row.client_id),
                p.credited_value,
            ));
        }
    }
    values
        .into_iter()
        .find(|(_, v)| !v.is_finite())
        .map(|(what, v)| format!("{what} ({v})"))
}

/// The selection and prices of a round whose trigger verified with `statistic`.
fn select_and_price(
    settings: &BanditSettings,
    aggregate: &Aggregate,
    reports: &[(String, Arc<BanditReport>)],
    statistic: f64,
) -> Result<Settlement, IncentiveError> {
    let problem = SelectionProblem::new(
        settings.dim as usize,
        settings.lambda,
        &aggregate.v_g,
        reports.iter().map(|(_, r)| r.gram_update.clone()).collect(),
    )?;
    let costs: Vec<f64> = reports.iter().map(|(_, r)| r.cost).collect();
    let (selection, payments) = problem.payments(
        &costs,
        &settings.mechanism_config(),
        settings.mechanism.to_core(),
    )?;
    let base = problem.value(&[])?;
    let rows = reports
        .iter()
        .enumerate()
        .map(|(j, (client_id, report))| {
            Ok(Row {
                client_id: client_id.clone(),
                cost: report.cost,
                gain: problem.value(&[j])? - base,
                payment: payments.iter().find(|p| p.client == j).copied(),
            })
        })
        .collect::<Result<Vec<_>, IncentiveError>>()?;
    let selected = selection
        .selected
        .iter()
        .filter_map(|&j| reports.get(j).map(|(c, _)| c.clone()))
        .collect();
    Ok(Settlement {
        rows,
        selected,
        value: selection.value,
        target: selection.target,
        trigger_statistic: Some(statistic),
        void_reason: None,
    })
}

/// What committing a round writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Conclusion {
    /// The round record (with its `bandit` field).
    pub record: RoundRecord,
    /// The new aggregate.
    pub aggregate: Aggregate,
    /// One payment per participant.
    pub ledger: Vec<LedgerEntry>,
}

/// Where a round stands when it is committed.
#[derive(Debug)]
pub struct Closing<'a> {
    /// The federation.
    pub federation: &'a str,
    /// The round number.
    pub round: u64,
    /// The step whose trigger opened it, and its active client.
    pub step: u64,
    /// The client whose trigger fired.
    pub trigger_client: &'a str,
    /// Every enrolled client, in enrollment order.
    pub clients: &'a [String],
    /// The durable reports, by client.
    pub reports: &'a BTreeMap<String, Arc<BanditReport>>,
    /// The durable uploads, by client.
    pub uploads: &'a BTreeMap<String, Arc<Vec<f64>>>,
    /// The round's selection and prices.
    pub settlement: &'a Settlement,
    /// The aggregate before the round.
    pub aggregate: &'a Aggregate,
    /// Commit time (the ledger entries' `recorded_at_ms`).
    pub now_ms: u64,
    /// Steps of the run skipped so far (all at or before `step`): the record's
    /// [`SKIPPED_STEPS_METRIC`].
    pub skipped_steps: u64,
}

/// Builds the commit of a round: the participants are the selected clients whose upload
/// arrived, in greedy order; their `dV` (as reported) and `db` are added to the aggregate in
/// that order and each is paid. A selected client whose upload never arrived is neither
/// aggregated nor paid (payment 0 in the record) and is listed as a straggler, as is every
/// client that did not report. A void settlement selected nobody: no participant, no
/// payment, the aggregate unchanged, the reason in the record.
pub fn conclude(c: &Closing<'_>, settings: &BanditSettings) -> Conclusion {
    let participants: Vec<String> = c
        .settlement
        .selected
        .iter()
        .filter(|id| c.uploads.contains_key(*id))
        .cloned()
        .collect();
    let stragglers: Vec<String> = c
        .clients
        .iter()
        .filter(|id| {
            !c.reports.contains_key(*id)
                || (c.settlement.is_selected(id) && !c.uploads.contains_key(*id))
        })
        .cloned()
        .collect();
    let mut aggregate = c.aggregate.clone();
    for id in &participants {
        if let (Some(report), Some(b)) = (c.reports.get(id), c.uploads.get(id)) {
            add_assign(&mut aggregate.v_g, &report.gram_update);
            add_assign(&mut aggregate.b_g, b);
        }
    }
    let mechanism = settings.mechanism;
    let mut ledger = Vec::new();
    let mut reports = Vec::with_capacity(c.settlement.rows.len());
    for row in &c.settlement.rows {
        let paid = row
            .payment
            .filter(|_| participants.contains(&row.client_id));
        if let Some(p) = paid {
            ledger.push(LedgerEntry {
                federation: c.federation.to_string(),
                round: c.round,
                client_id: row.client_id.clone(),
                kind: LedgerKind::Payment,
                amount: p.amount,
                mechanism: mechanism.as_str().to_string(),
                inputs: payment_inputs(row, &p, c, mechanism, settings),
                recorded_at_ms: c.now_ms,
            });
        }
        reports.push(ClientBanditReport {
            client_id: row.client_id.clone(),
            reported_cost: row.cost,
            selected: row.payment.is_some(),
            payment: paid.map_or(0.0, |p| p.amount),
            capped: paid.is_some_and(|p| p.capped),
            gain: row.gain,
        });
    }
    let record = RoundRecord {
        bandit: Some(BanditRound {
            step: c.step,
            trigger_client: c.trigger_client.to_string(),
            selected: c.settlement.selected.clone(),
            value: c.settlement.value,
            target: c.settlement.target,
            reports,
            trigger_statistic: c.settlement.trigger_statistic,
            void_reason: c.settlement.void_reason.clone(),
        }),
        ..RoundRecord::committed(
            c.round,
            0,
            participants,
            stragglers,
            vec![(SKIPPED_STEPS_METRIC.to_string(), c.skipped_steps as f64)],
            false,
        )
    };
    Conclusion {
        record,
        aggregate,
        ledger,
    }
}

/// The audit inputs of a payment: the report, its gain, the critical value (Truth-FedBan)
/// or the cap (an essential client), whether capped, the baseline's credited value, and the
/// round's step, value and target.
fn payment_inputs(
    row: &Row,
    p: &Payment,
    c: &Closing<'_>,
    mechanism: BanditMechanism,
    settings: &BanditSettings,
) -> BTreeMap<String, f64> {
    let mut inputs = BTreeMap::from([
        ("reported_cost".to_string(), row.cost),
        ("gain".to_string(), row.gain),
        ("capped".to_string(), if p.capped { 1.0 } else { 0.0 }),
        ("credited_value".to_string(), p.credited_value),
        ("step".to_string(), c.step as f64),
        ("value".to_string(), c.settlement.value),
        ("target".to_string(), c.settlement.target),
    ]);
    match (mechanism, p.capped) {
        (_, true) => {
            inputs.insert("cap".into(), settings.essential_cap);
        }
        (BanditMechanism::TruthFedban, false) => {
            inputs.insert("critical_value".into(), p.amount);
        }
        (BanditMechanism::Baseline, false) => {}
    }
    inputs
}

/// `acc += m` element-wise (lengths are checked at submission).
fn add_assign(acc: &mut [f64], m: &[f64]) {
    for (a, b) in acc.iter_mut().zip(m) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(cost: f64, gram: [f64; 4]) -> Arc<BanditReport> {
        Arc::new(BanditReport {
            cost,
            gram_update: gram.to_vec(),
        })
    }

    fn settings() -> BanditSettings {
        let mut s = BanditSettings::new(2, 100);
        s.beta = 0.9;
        s.threshold = 5.0;
        s
    }

    /// Round 3's aggregate `V_g = I` (so `lambda I + V_g = 2 I`) and three reports.
    fn round() -> (Aggregate, Vec<(String, Arc<BanditReport>)>) {
        let aggregate = Aggregate {
            v_g: vec![1.0, 0.0, 0.0, 1.0],
            b_g: vec![0.5, -0.5],
        };
        let reports = vec![
            ("a".into(), report(1.0, [4.0, 0.0, 0.0, 0.0])),
            ("b".into(), report(0.5, [0.0, 0.0, 0.0, 4.0])),
            ("c".into(), report(0.25, [0.0, 0.0, 0.0, 0.0])),
        ];
        (aggregate, reports)
    }

    /// Client `b`'s trigger at step 17: its statistic is `(17 - t_last) * log(6 / 2)`.
    fn trigger(aggregate: &Aggregate, t_last: u64) -> Trigger {
        Trigger {
            client_id: "b".into(),
            step: 17,
            t_last,
            claimed: 30.0,
            downloaded: Some(Arc::new(aggregate.clone())),
        }
    }

    fn closing<'a>(
        s: &'a Settlement,
        aggregate: &'a Aggregate,
        reports: &'a BTreeMap<String, Arc<BanditReport>>,
        uploads: &'a BTreeMap<String, Arc<Vec<f64>>>,
        clients: &'a [String],
    ) -> Closing<'a> {
        Closing {
            federation: "f",
            round: 3,
            step: 17,
            trigger_client: "b",
            clients,
            reports,
            uploads,
            settlement: s,
            aggregate,
            now_ms: 5,
            skipped_steps: 2,
        }
    }

    #[test]
    fn conclude_aggregates_and_pays_only_the_uploaders() {
        let (aggregate, reports) = round();
        let s = settle(&settings(), &aggregate, &reports, &trigger(&aggregate, 0));
        assert_eq!(s.void_reason, None);
        // Recomputed exactly as the client's LinUCB does it.
        assert_close(s.trigger_statistic, 17.0 * 3.0_f64.ln());
        let recomputed = s.trigger_statistic.expect("recomputed");
        // Both informative clients are needed for 90% of g(all); the empty one never.
        assert_eq!(s.selected.len(), 2, "{s:?}");
        assert!(!s.is_selected("c"));
        assert_eq!(s.rows[2].gain, 0.0);
        assert!(s.value >= s.target);
        let by_id: BTreeMap<String, Arc<BanditReport>> = reports.into_iter().collect();
        let uploads = BTreeMap::from([("a".to_string(), Arc::new(vec![2.0, 1.0]))]);
        let clients = ["a", "b", "c", "d"].map(String::from);
        let closing = closing(&s, &aggregate, &by_id, &uploads, &clients);
        let done = conclude(&closing, &settings());
        assert_eq!(done.aggregate.v_g, vec![5.0, 0.0, 0.0, 1.0]);
        assert_eq!(done.aggregate.b_g, vec![2.5, 0.5]);
        assert_eq!(done.record.participants, vec!["a".to_string()]);
        // b was selected but never uploaded; d never reported.
        assert_eq!(done.record.stragglers, vec!["b".to_string(), "d".into()]);
        assert_eq!(
            done.record.metrics,
            vec![("skipped_steps".to_string(), 2.0)],
            "the run's skipped steps so far"
        );
        assert_eq!(done.ledger.len(), 1);
        let paid = &done.ledger[0];
        let row = &s.rows[0];
        let p = row.payment.expect("a is selected");
        assert_eq!((paid.client_id.as_str(), paid.amount), ("a", p.amount));
        assert!(p.amount >= row.cost);
        assert_eq!(paid.inputs["reported_cost"], 1.0);
        assert_eq!(paid.inputs["step"], 17.0);
        assert_eq!(paid.mechanism, "truth_fedban");
        let b = done.record.bandit.expect("bandit");
        assert_eq!((b.step, b.trigger_client.as_str()), (17, "b"));
        let unpaid = &b.reports[1];
        assert!(unpaid.selected && unpaid.payment == 0.0 && !unpaid.capped);
        assert_eq!(b.reports.len(), 3);
        assert_eq!(
            (b.trigger_statistic, b.void_reason),
            (Some(recomputed), None)
        );
    }

    fn assert_close(statistic: Option<f64>, expected: f64) {
        let got = statistic.expect("recomputed");
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    }

    /// Commits `s` with every selected client's upload in: a void round must change nothing.
    fn assert_void_commit(s: &Settlement, aggregate: &Aggregate, reason: &str) {
        let (_, reports) = round();
        assert!(
            s.void_reason.as_deref().is_some_and(|r| r.contains(reason)),
            "{:?}",
            s.void_reason
        );
        assert!(s.selected.is_empty() && s.rows.iter().all(|r| r.payment.is_none()));
        let by_id: BTreeMap<String, Arc<BanditReport>> = reports.into_iter().collect();
        let uploads: BTreeMap<String, Arc<Vec<f64>>> = ["a", "b", "c"]
            .map(|c| (c.to_string(), Arc::new(vec![1.0, 1.0])))
            .into();
        let clients = ["a", "b", "c"].map(String::from);
        let done = conclude(
            &closing(s, aggregate, &by_id, &uploads, &clients),
            &settings(),
        );
        assert_eq!(&done.aggregate, aggregate, "the aggregate is unchanged");
        assert!(done.ledger.is_empty() && done.record.participants.is_empty());
        let b = done.record.bandit.expect("bandit");
        assert_eq!(b.void_reason, s.void_reason);
        assert_eq!(b.trigger_statistic, s.trigger_statistic);
        assert!(b.selected.is_empty());
        assert!(b.reports.iter().all(|r| !r.selected && r.payment == 0.0));
        assert_eq!(b.reports.len(), 3, "every reporter is still listed");
    }

    #[test]
    fn a_trigger_that_does_not_verify_voids_the_round() {
        let (aggregate, reports) = round();
        // Since step 16 the statistic is only log 3 < 5, whatever the client claimed.
        let s = settle(&settings(), &aggregate, &reports, &trigger(&aggregate, 16));
        assert_close(s.trigger_statistic, 3.0_f64.ln());
        assert_void_commit(&s, &aggregate, "the trigger did not verify");
        let reason = s.void_reason.unwrap_or_default();
        assert!(reason.contains("claimed statistic 30") && reason.contains("threshold 5"));

        // The trigger client did not report.
        let without_b: Vec<_> = reports.iter().filter(|(c, _)| c != "b").cloned().collect();
        let s = settle(&settings(), &aggregate, &without_b, &trigger(&aggregate, 0));
        assert_eq!(s.trigger_statistic, None);
        assert_eq!(
            s.void_reason.as_deref(),
            Some("the trigger client did not report")
        );
        assert_eq!(s.rows.len(), 2);

        // What the trigger client downloaded is unknown.
        let unknown = Trigger {
            downloaded: None,
            ..trigger(&aggregate, 0)
        };
        let s = settle(&settings(), &aggregate, &reports, &unknown);
        assert_void_commit(&s, &aggregate, "last downloaded is unknown");

        // The base is what the client downloaded: since step 13 the report gives 4 log 3 < 5
        // over `V_g = I`, but 4 log 5 > 5 over an empty aggregate.
        let s = settle(&settings(), &aggregate, &reports, &trigger(&aggregate, 13));
        assert_void_commit(&s, &aggregate, "the trigger did not verify");
        let empty = Aggregate::zeros(2);
        let over_empty = Trigger {
            downloaded: Some(Arc::new(empty)),
            ..trigger(&aggregate, 13)
        };
        let s = settle(&settings(), &aggregate, &reports, &over_empty);
        assert_eq!(s.void_reason, None);
        assert_close(s.trigger_statistic, 4.0 * 5.0_f64.ln());
    }

    #[test]
    fn a_non_finite_result_is_named() {
        let (aggregate, reports) = round();
        let mut s = settle(&settings(), &aggregate, &reports, &trigger(&aggregate, 0));
        assert_eq!(not_finite(&s), None);
        if let Some(p) = s.rows[0].payment.as_mut() {
            p.amount = f64::INFINITY;
        }
        assert_eq!(not_finite(&s).as_deref(), Some("payment of a (inf)"));
    }

    /// A selection that cannot be computed (here a report whose `lambda I + V_g + dV` is
    /// indefinite, which the report checks would refuse) is not retried: the round is void
    /// with the error as its reason.
    #[test]
    fn a_selection_error_voids_the_round_instead_of_failing() {
        let (aggregate, mut reports) = round();
        reports[2].1 = report(0.25, [-3.0, 0.0, 0.0, 0.0]);
        let s = settle(&settings(), &aggregate, &reports, &trigger(&aggregate, 0));
        assert!(s.trigger_statistic.is_some(), "the trigger verified");
        assert_void_commit(&s, &aggregate, "could not be selected and priced");
        assert!(
            s.void_reason
                .as_deref()
                .is_some_and(|r| r.contains("not positive definite")),
            "{:?}",
            s.void_reason
        );
    }
}
