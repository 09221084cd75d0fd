//! The arithmetic of one communication round, pure (no state, no I/O): select the
//! participants and price them ([`settle`], core Truth-FedBan), then build what the round
//! commits ([`conclude`]): the round record, the new aggregate and the ledger entries.
//!
//! Both are functions of stored inputs only (the aggregate before the round, the durable
//! reports and uploads), so a restarted server recomputes exactly the same round.

use std::collections::BTreeMap;
use std::sync::Arc;

use fedval_core::incentive::IncentiveError;
use fedval_core::incentive::truthfedban::{Payment, SelectionProblem};

use super::{Aggregate, BanditMechanism, BanditSettings};
use crate::store::{
    BanditReport, BanditRound, ClientBanditReport, LedgerEntry, LedgerKind, RoundRecord,
};

/// One reporter's line of a settled round.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The client.
    pub client_id: String,
    /// Its reported cost.
    pub cost: f64,
    /// `g({client}) - g({})`.
    pub gain: f64,
    /// Its payment if the selection chose it.
    pub payment: Option<Payment>,
}

/// A round after selection and pricing, before the uploads.
#[derive(Clone, Debug, PartialEq)]
pub struct Settlement {
    /// Every reporter, in enrollment order.
    pub rows: Vec<Row>,
    /// The selected clients in greedy order.
    pub selected: Vec<String>,
    /// `g(S)` reached.
    pub value: f64,
    /// `g(all reporters) + log(beta)`.
    pub target: f64,
}

impl Settlement {
    /// Whether `client_id` was selected.
    pub fn is_selected(&self, client_id: &str) -> bool {
        self.selected.iter().any(|c| c == client_id)
    }
}

/// Selects and prices round participants: `reports` are the round's reporters in
/// enrollment order, `aggregate` the server's `(V_g, b_g)` before the round.
pub fn settle(
    settings: &BanditSettings,
    aggregate: &Aggregate,
    reports: &[(String, Arc<BanditReport>)],
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
}

/// Builds the commit of a round: the participants are the selected clients whose upload
/// arrived, in greedy order; their `dV` (as reported) and `db` are added to the aggregate in
/// that order and each is paid. A selected client whose upload never arrived is neither
/// aggregated nor paid (payment 0 in the record) and is listed as a straggler, as is every
/// client that did not report.
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
        }),
        ..RoundRecord::committed(c.round, 0, participants, stragglers, Vec::new(), false)
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
        s
    }

    #[test]
    fn conclude_aggregates_and_pays_only_the_uploaders() {
        let aggregate = Aggregate {
            v_g: vec![1.0, 0.0, 0.0, 1.0],
            b_g: vec![0.5, -0.5],
        };
        let reports: Vec<(String, Arc<BanditReport>)> = vec![
            ("a".into(), report(1.0, [4.0, 0.0, 0.0, 0.0])),
            ("b".into(), report(0.5, [0.0, 0.0, 0.0, 4.0])),
            ("c".into(), report(0.25, [0.0, 0.0, 0.0, 0.0])),
        ];
        let s = settle(&settings(), &aggregate, &reports).expect("settles");
        // Both informative clients are needed for 90% of g(all); the empty one never.
        assert_eq!(s.selected.len(), 2, "{s:?}");
        assert!(!s.is_selected("c"));
        assert_eq!(s.rows[2].gain, 0.0);
        assert!(s.value >= s.target);
        let by_id: BTreeMap<String, Arc<BanditReport>> = reports.into_iter().collect();
        let uploads = BTreeMap::from([("a".to_string(), Arc::new(vec![2.0, 1.0]))]);
        let clients = ["a", "b", "c", "d"].map(String::from);
        let closing = Closing {
            federation: "f",
            round: 3,
            step: 17,
            trigger_client: "b",
            clients: &clients,
            reports: &by_id,
            uploads: &uploads,
            settlement: &s,
            aggregate: &aggregate,
            now_ms: 5,
        };
        let done = conclude(&closing, &settings());
        assert_eq!(done.aggregate.v_g, vec![5.0, 0.0, 0.0, 1.0]);
        assert_eq!(done.aggregate.b_g, vec![2.5, 0.5]);
        assert_eq!(done.record.participants, vec!["a".to_string()]);
        // b was selected but never uploaded; d never reported.
        assert_eq!(done.record.stragglers, vec!["b".to_string(), "d".into()]);
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
    }
}
