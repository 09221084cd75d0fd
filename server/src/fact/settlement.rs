//! Settling a committed FACT round: penalties and prizes for the round's participants.
//!
//! **One round, one game.** FACT (ALGORITHMS.md 6) is a one-shot game: agents report
//! costs, contribute, pay a penalty for contributing less than required and compete for
//! a prize. In a federation every committed horizontal round is one play of that game
//! over the round's participants, ordered by enrollment: their reported costs are the
//! costs they reported at enrollment (`ClientRecord::cost_per_point`), their claims the
//! points each update says it trained on (`UpdateHeader.num_samples`), and the sandwich
//! groups are drawn with [`grouping_seed`]`(fact.seed or the federation's seed, round)`.
//! [`fedval_core::incentive::fact::settle`] computes the amounts. A client thus pays the
//! penalty and may win the prize once per round it takes part in.
//!
//! **Ledger.** Every settled client gets a [`LedgerKind::Penalty`] entry (its penalty,
//! possibly 0 when it claims more than required) and a winner with a positive prize a
//! [`LedgerKind::Prize`] entry; mechanism `"fact"`, and as inputs every number that
//! produced the amounts ([`inputs`]). The round loop commits them in the round's own
//! store batch ([`Store::commit_round`](crate::store::Store::commit_round)), so they
//! exist exactly when the round does: a crash before the commit leaves neither (the
//! reopened round is settled afresh), a crash after leaves both, and a repeated commit is
//! refused as a whole.
//!
//! **Skip rule.** A round whose settlement cannot run (fewer than three participants,
//! which the sandwich competition needs; a participant without a reported cost; a cost
//! the core refuses; an amount the ledger cannot hold, e.g. a penalty that overflows on an
//! extreme reported cost) is committed WITHOUT ledger entries: the settlement never fails or
//! blocks a round. The reason is logged as a warning naming the round and the round's
//! metrics carry `fact_skipped = 1`. A settled round carries `fact_settled` (clients),
//! `fact_winners`, `fact_penalties` and `fact_prizes` (sums) instead. (The cost condition
//! `c > offset / (2 M^2)` cannot fail on reported costs alone: `M` exceeds each agent's
//! `m* = sqrt(offset / (2 c))`, so `offset / (2 M^2) < c`; it is still checked by the core.)

use std::collections::BTreeMap;

use fedval_core::incentive::IncentiveError;
use fedval_core::incentive::fact::{AgentSettlement, Settlement, settle};
use fedval_core::seed::mix_seed;

use crate::config::FederationConfig;
use crate::fact::FactSettings;
use crate::store::{ClientRecord, LedgerEntry, LedgerKind, UpdateRecord};

/// The `mechanism` of FACT's ledger entries.
pub const MECHANISM: &str = "fact";

/// What settling one round produced.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundSettlement {
    /// The round's ledger entries, ordered by (client id, kind); empty when skipped.
    pub entries: Vec<LedgerEntry>,
    /// Metrics to add to the round's record (see the module docs).
    pub metrics: Vec<(String, f64)>,
    /// Why the round was not settled; `None` when it was.
    pub skipped: Option<String>,
}

/// The seed of round `round`'s sandwich groups: `base` (the `fact.seed`, else the
/// federation's seed) and the round mixed by [`mix_seed`], so consecutive rounds draw
/// unrelated groupings and the same round always draws the same.
pub fn grouping_seed(base: u64, round: u64) -> u64 {
    mix_seed(base, &[round])
}

/// Settles round `round` of a FACT federation over the `updates` it aggregated (`None`
/// when the federation has no `fact` settings). `clients` are the federation's clients
/// (any order; participants are ordered by enrollment `seq`); `recorded_at_ms` stamps the
/// entries. A round that cannot be settled is skipped with a warning, never an error.
pub fn settle_round<'a>(
    config: &FederationConfig,
    round: u64,
    clients: &[ClientRecord],
    updates: impl IntoIterator<Item = &'a UpdateRecord>,
    recorded_at_ms: u64,
) -> Option<RoundSettlement> {
    let settings = config.fact.as_ref()?;
    let base = settings.seed.unwrap_or(config.seed);
    let seed = grouping_seed(base, round);
    let outcome = participants(clients, updates)
        .and_then(|p| run(settings, &p, seed).map(|s| (p, s)))
        .and_then(|(participants, settlement)| {
            let entries = entries(
                &config.id,
                round,
                settings,
                &participants,
                &settlement,
                recorded_at_ms,
            );
            recordable(&entries)?;
            Ok((entries, metrics(&settlement)))
        });
    Some(match outcome {
        Ok((entries, metrics)) => RoundSettlement {
            entries,
            metrics,
            skipped: None,
        },
        Err(reason) => {
            tracing::warn!(
                federation = %config.id,
                round,
                %reason,
                "FACT settlement skipped: the round commits without penalties or prizes"
            );
            RoundSettlement {
                entries: Vec::new(),
                metrics: vec![("fact_skipped".into(), 1.0)],
                skipped: Some(reason),
            }
        }
    })
}

/// One settled participant: its id, reported cost and claimed points.
#[derive(Clone, Debug, PartialEq)]
struct Participant {
    client_id: String,
    cost: f64,
    claimed: f64,
}

/// The round's participants in enrollment order, or why they cannot be settled.
fn participants<'a>(
    clients: &[ClientRecord],
    updates: impl IntoIterator<Item = &'a UpdateRecord>,
) -> Result<Vec<Participant>, String> {
    let mut found: Vec<(u64, Participant)> = Vec::new();
    for u in updates {
        let client = clients
            .iter()
            .find(|c| c.client_id == u.client_id)
            .ok_or_else(|| format!("the update of {} has no enrolled client", u.client_id))?;
        let cost = client.cost_per_point.ok_or_else(|| {
            format!(
                "client {} reported no cost per point at enrollment",
                client.client_id
            )
        })?;
        found.push((
            client.seq,
            Participant {
                client_id: client.client_id.clone(),
                cost,
                claimed: u.num_samples as f64,
            },
        ));
    }
    found.sort_by_key(|(seq, _)| *seq);
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Runs the core settlement over `participants`.
fn run(
    settings: &FactSettings,
    participants: &[Participant],
    seed: u64,
) -> Result<Settlement, String> {
    let costs: Vec<f64> = participants.iter().map(|p| p.cost).collect();
    let claims: Vec<f64> = participants.iter().map(|p| p.claimed).collect();
    settle(&settings.params(), &costs, &claims, seed).map_err(|e| refusal(&e, participants))
}

/// Why the core refused to settle `participants`: a reason about one agent (`agent i`, its
/// index in enrollment order) names that participant's client id instead; any other
/// reason lists the participants.
fn refusal(e: &IncentiveError, participants: &[Participant]) -> String {
    let message = e.to_string();
    let agent = match e {
        IncentiveError::InvalidAgentValue { agent, .. }
        | IncentiveError::CostBelowThreshold { agent, .. } => Some(*agent),
        _ => None,
    };
    if let Some(a) = agent
        && let Some(p) = participants.get(a)
        && let Some(rest) = message.strip_prefix(&format!("agent {a}"))
    {
        return format!("client {}{rest}", p.client_id);
    }
    format!(
        "{message} (participants in enrollment order: {})",
        participants
            .iter()
            .map(|p| p.client_id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Every number that produced agent `a`'s penalty and prize, by name: its report and
/// required and claimed points, the penalty's `lambda` and `kappa`, its improvement and
/// share, whether it won (0/1) in which group (-1: in none), and the parameters and
/// totals of the round (`alpha`, `offset`, `prize_factor`, `total_required`,
/// `participants`).
pub fn inputs(
    settings: &FactSettings,
    settlement: &Settlement,
    a: &AgentSettlement,
) -> BTreeMap<String, f64> {
    let group = a.group.map_or(-1.0, |g| g as f64);
    [
        ("reported_cost", a.reported_cost),
        ("required_m", a.required_m),
        ("claimed_m", a.claimed_m),
        ("lambda", a.lambda),
        ("kappa", a.kappa),
        ("penalty", a.penalty),
        ("improvement", a.improvement),
        ("share", a.share),
        ("won", if a.won { 1.0 } else { 0.0 }),
        ("group", group),
        ("prize", a.prize),
        ("prize_factor", settings.prize_factor),
        ("alpha", settings.alpha),
        ("offset", settings.offset),
        ("total_required", settlement.total_required),
        ("participants", settlement.agents.len() as f64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The ledger entries of a settled round: a penalty for everyone, a prize for every
/// winner whose prize is positive; ordered by (client id, kind) like the ledger.
fn entries(
    federation: &str,
    round: u64,
    settings: &FactSettings,
    participants: &[Participant],
    settlement: &Settlement,
    recorded_at_ms: u64,
) -> Vec<LedgerEntry> {
    let mut out = Vec::with_capacity(settlement.agents.len() * 2);
    for (p, a) in participants.iter().zip(&settlement.agents) {
        let inputs = inputs(settings, settlement, a);
        let entry = |kind, amount| LedgerEntry {
            federation: federation.to_string(),
            round,
            client_id: p.client_id.clone(),
            kind,
            amount,
            mechanism: MECHANISM.to_string(),
            inputs: inputs.clone(),
            recorded_at_ms,
        };
        out.push(entry(LedgerKind::Penalty, a.penalty));
        if a.won && a.prize > 0.0 {
            out.push(entry(LedgerKind::Prize, a.prize));
        }
    }
    out.sort_by(|x, y| (&x.client_id, x.kind).cmp(&(&y.client_id, y.kind)));
    out
}

/// Refuses entries the ledger cannot hold (a non-finite amount or input: extreme reported
/// costs overflow the penalty weight `lambda`), naming the client and its reported cost.
/// Committing them would fail on every retry and stall the round loop.
fn recordable(entries: &[LedgerEntry]) -> Result<(), String> {
    for e in entries {
        let bad = std::iter::once((e.kind.as_str(), e.amount))
            .chain(e.inputs.iter().map(|(k, v)| (k.as_str(), *v)))
            .find(|(_, v)| !v.is_finite());
        if let Some((name, value)) = bad {
            let cost = e.inputs.get("reported_cost").copied().unwrap_or(f64::NAN);
            return Err(format!(
                "the {name} of {} is {value}, not finite (its reported cost per point {cost} \
                 is too extreme for the penalty; FACT needs costs of a sensible scale)",
                e.client_id
            ));
        }
    }
    Ok(())
}

/// The metrics of a settled round: clients, winners, penalty and prize sums.
fn metrics(settlement: &Settlement) -> Vec<(String, f64)> {
    let agents = &settlement.agents;
    vec![
        ("fact_settled".into(), agents.len() as f64),
        (
            "fact_winners".into(),
            agents.iter().filter(|a| a.won).count() as f64,
        ),
        (
            "fact_penalties".into(),
            agents.iter().map(|a| a.penalty).fold(0.0, |acc, x| acc + x),
        ),
        (
            "fact_prizes".into(),
            agents.iter().map(|a| a.prize).fold(0.0, |acc, x| acc + x),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use fedval_core::incentive::fact::RemainderPolicy;

    use super::*;
    use crate::federation::tests::config;

    /// The unit federation with FACT (offset 1, alpha 1.5, prize factor 3, fact seed 11).
    fn fact_config() -> FederationConfig {
        FederationConfig {
            fact: Some(FactSettings {
                seed: Some(11),
                ..FactSettings::default()
            }),
            ..config(3)
        }
    }

    /// The cost whose required contribution is `m` under offset 1: `1 / (2 m^2)`.
    fn cost_for(m: f64) -> f64 {
        1.0 / (2.0 * m * m)
    }

    fn client(seq: u64, cost: Option<f64>) -> ClientRecord {
        ClientRecord {
            client_id: format!("client-{seq:04}"),
            name: format!("n{seq}"),
            token_hash: String::new(),
            num_samples: 100,
            enrolled_at_ms: 0,
            seq,
            cost_per_point: cost,
        }
    }

    fn update(client_id: &str, num_samples: u64) -> UpdateRecord {
        UpdateRecord {
            client_id: client_id.to_string(),
            round: 2,
            model_version: 1,
            num_samples,
            metrics: Vec::new(),
            sha256: String::new(),
            received_at_ms: 0,
        }
    }

    /// Three clients requiring 10, 20 and 40 points (costs 1/200, 1/800, 1/3200).
    fn three() -> Vec<ClientRecord> {
        vec![
            client(0, Some(cost_for(10.0))),
            client(1, Some(cost_for(20.0))),
            client(2, Some(cost_for(40.0))),
        ]
    }

    fn settle3(claims: [u64; 3]) -> RoundSettlement {
        let clients = three();
        // Updates arrive in client-id order reversed: the settlement orders by seq.
        let updates: Vec<UpdateRecord> = clients
            .iter()
            .zip(claims)
            .rev()
            .map(|(c, m)| update(&c.client_id, m))
            .collect();
        settle_round(&fact_config(), 2, &clients, &updates, 5).expect("a FACT federation")
    }

    fn amount(s: &RoundSettlement, client: &str, kind: LedgerKind) -> Option<f64> {
        s.entries
            .iter()
            .find(|e| e.client_id == client && e.kind == kind)
            .map(|e| e.amount)
    }

    /// Every client claims its m*: the entries are the core settlement's, the middle
    /// report (client 1, cost 1/800) alone wins, and at m* each penalty is
    /// (2 - alpha) / 2 = 1/4 of the federated gain 1/(2 m*) - 1/(2 M), M = 70.
    #[test]
    fn a_three_client_round_records_the_core_settlement() {
        let s = settle3([10, 20, 40]);
        assert_eq!(s.skipped, None);
        let params = fact_config().fact.expect("fact").params();
        let core = settle(
            &params,
            &[cost_for(10.0), cost_for(20.0), cost_for(40.0)],
            &[10.0, 20.0, 40.0],
            grouping_seed(11, 2),
        )
        .expect("settles");
        let kinds: Vec<(&str, LedgerKind)> = s
            .entries
            .iter()
            .map(|e| (e.client_id.as_str(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("client-0000", LedgerKind::Penalty),
                ("client-0001", LedgerKind::Penalty),
                ("client-0001", LedgerKind::Prize),
                ("client-0002", LedgerKind::Penalty),
            ]
        );
        for (i, a) in core.agents.iter().enumerate() {
            let id = format!("client-{i:04}");
            assert_eq!(amount(&s, &id, LedgerKind::Penalty), Some(a.penalty));
            assert_eq!(a.won, i == 1, "only the middle report wins");
            let gain = 1.0 / (2.0 * a.required_m) - 1.0 / (2.0 * 70.0);
            let expected = 0.25 * gain;
            assert!(
                (a.penalty - expected).abs() < 1e-12 * expected,
                "{id}: {} vs {expected}",
                a.penalty
            );
        }
        let winner = &core.agents[1];
        assert!(winner.prize > 0.0);
        assert_eq!(winner.prize, 3.0 * winner.share);
        assert_eq!(
            amount(&s, "client-0001", LedgerKind::Prize),
            Some(winner.prize)
        );
        // The inputs say how each amount came about.
        let e = &s.entries[1];
        assert_eq!(e.mechanism, "fact");
        assert_eq!(e.recorded_at_ms, 5);
        assert_eq!(e.inputs.get("reported_cost"), Some(&cost_for(20.0)));
        assert_eq!(e.inputs.get("required_m"), Some(&20.0));
        assert_eq!(e.inputs.get("claimed_m"), Some(&20.0));
        assert_eq!(e.inputs.get("lambda"), Some(&winner.lambda));
        assert_eq!(e.inputs.get("kappa"), Some(&winner.kappa));
        assert_eq!(e.inputs.get("won"), Some(&1.0));
        assert_eq!(e.inputs.get("group"), Some(&0.0));
        assert_eq!(e.inputs.get("share"), Some(&winner.share));
        assert_eq!(e.inputs.get("total_required"), Some(&70.0));
        assert_eq!(e.inputs.get("alpha"), Some(&1.5));
        assert_eq!(e.inputs.get("prize_factor"), Some(&3.0));
        assert_eq!(e.inputs.get("participants"), Some(&3.0));
        assert_eq!(s.entries[0].inputs.get("won"), Some(&0.0));
        let metric = |name: &str| s.metrics.iter().find(|(n, _)| n == name).map(|m| m.1);
        assert_eq!(metric("fact_settled"), Some(3.0));
        assert_eq!(metric("fact_winners"), Some(1.0));
        let penalties = core
            .agents
            .iter()
            .map(|a| a.penalty)
            .fold(0.0, |x, y| x + y);
        assert_eq!(metric("fact_penalties"), Some(penalties));
        assert_eq!(metric("fact_prizes"), Some(winner.prize));
        assert_eq!(metric("fact_skipped"), None);
        // Settling the same round again gives the same entries (a replay is a no-op).
        assert_eq!(settle3([10, 20, 40]), s);
    }

    /// Claiming half of m* costs `lambda (kappa + m*/2)^2 > lambda kappa^2`.
    #[test]
    fn claiming_fewer_points_than_required_pays_a_larger_penalty() {
        let honest = settle3([10, 20, 40]);
        let shirking = settle3([10, 10, 40]);
        let at_m_star = amount(&honest, "client-0001", LedgerKind::Penalty).expect("penalty");
        let short = amount(&shirking, "client-0001", LedgerKind::Penalty).expect("penalty");
        let e = shirking
            .entries
            .iter()
            .find(|e| e.client_id == "client-0001")
            .expect("entry");
        let (lambda, kappa) = (e.inputs["lambda"], e.inputs["kappa"]);
        assert_eq!(e.inputs["claimed_m"], 10.0);
        let expected = lambda * (kappa + 10.0) * (kappa + 10.0);
        assert!((short - expected).abs() < 1e-12 * expected);
        assert!(short > at_m_star, "{short} <= {at_m_star}");
        // The others' penalties do not depend on client 1's claim.
        for id in ["client-0000", "client-0002"] {
            assert_eq!(
                amount(&honest, id, LedgerKind::Penalty),
                amount(&shirking, id, LedgerKind::Penalty)
            );
        }
    }

    #[test]
    fn rounds_that_cannot_be_settled_are_skipped_with_a_reason() {
        let cfg = fact_config();
        let skipped = |clients: &[ClientRecord], updates: &[UpdateRecord]| {
            let s = settle_round(&cfg, 1, clients, updates, 0).expect("FACT");
            assert!(s.entries.is_empty());
            assert_eq!(s.metrics, vec![("fact_skipped".to_string(), 1.0)]);
            s.skipped.expect("a reason")
        };
        let clients = three();
        let two = [update("client-0000", 10), update("client-0001", 20)];
        let reason = skipped(&clients, &two);
        assert!(
            reason.contains("needs at least 3 agents, got 2")
                && reason.contains("client-0000, client-0001"),
            "{reason}"
        );
        let mut no_cost = three();
        no_cost[2].cost_per_point = None;
        let all = [
            update("client-0000", 10),
            update("client-0001", 20),
            update("client-0002", 40),
        ];
        let reason = skipped(&no_cost, &all);
        assert!(reason.contains("client-0002 reported no cost"), "{reason}");
        let reason = skipped(&clients[..2], &all);
        assert!(
            reason.contains("client-0002 has no enrolled client"),
            "{reason}"
        );
        // Not a FACT federation: nothing to settle.
        assert_eq!(settle_round(&config(1), 1, &clients, &all, 0), None);
    }

    /// Settles `costs` (which enrollment accepts), each client claiming 10 points, and
    /// returns why the round was skipped.
    fn skipped_with_costs(costs: [f64; 3]) -> String {
        let cfg = fact_config();
        let settings = cfg.fact.expect("fact");
        let mut clients = three();
        for (c, cost) in clients.iter_mut().zip(costs) {
            crate::fact::check_reported_cost(&settings, cost).expect("enrollment accepts it");
            c.cost_per_point = Some(cost);
        }
        let updates: Vec<UpdateRecord> = clients.iter().map(|c| update(&c.client_id, 10)).collect();
        let s = settle_round(&cfg, 2, &clients, &updates, 0).expect("FACT");
        assert!(s.entries.is_empty(), "costs {costs:?}: {:?}", s.entries);
        assert_eq!(s.metrics, vec![("fact_skipped".to_string(), 1.0)]);
        s.skipped.expect("a reason")
    }

    /// An extreme cost that enrollment accepts (finite, > 0, with a finite m* an update
    /// can claim) breaks the penalty: 1e300 overflows `lambda` to inf (an infinite
    /// penalty). The ledger refuses non-finite amounts, so such a round must be skipped,
    /// not handed to the commit (which would fail on every retry and stall the
    /// federation's round loop).
    #[test]
    fn a_settlement_the_ledger_cannot_hold_is_skipped() {
        let reason = skipped_with_costs([cost_for(10.0), 1e300, cost_for(40.0)]);
        assert!(reason.contains("penalty of client-0001 is inf"), "{reason}");
    }

    /// The core refuses a settlement where one agent's m* (2^39) swallows the total (the
    /// others' m* of about 7e-151 vanish beside it): the reason names that client by its
    /// id, not by its index among the participants.
    #[test]
    fn a_core_refusal_names_the_client_not_the_agent_index() {
        let reason = skipped_with_costs([1e300, cost_for(2f64.powi(39)), 1e300]);
        assert!(
            reason.starts_with("client client-0001: invalid total data "),
            "{reason}"
        );
        assert!(!reason.contains("agent 1"), "{reason}");
    }

    #[test]
    fn leftovers_follow_the_remainder_policy() {
        let mut cfg = fact_config();
        if let Some(f) = cfg.fact.as_mut() {
            f.remainder = RemainderPolicy::LeftoversLose;
        }
        let clients: Vec<ClientRecord> = (0..4)
            .map(|i| client(i, Some(cost_for(10.0 + 5.0 * i as f64))))
            .collect();
        let updates: Vec<UpdateRecord> = clients.iter().map(|c| update(&c.client_id, 30)).collect();
        let s = settle_round(&cfg, 3, &clients, &updates, 0).expect("FACT");
        let penalties = s
            .entries
            .iter()
            .filter(|e| e.kind == LedgerKind::Penalty)
            .count();
        assert_eq!(penalties, 4, "everyone pays its penalty");
        let left_out: Vec<&LedgerEntry> = s
            .entries
            .iter()
            .filter(|e| e.inputs["group"] == -1.0)
            .collect();
        assert_eq!(left_out.len(), 1, "one leftover of four");
        assert!(left_out.iter().all(|e| e.kind == LedgerKind::Penalty));
    }

    /// Crash safety on redb, through the round loop. Round 1: the process dies while
    /// committing (nothing is written); the reopened store has no round and no entry,
    /// the restarted federation reloads the three acknowledged updates, settles round 1
    /// and commits it with its entries, announced once. Round 2: the commit reaches the
    /// disk but reports a failure; the loop adopts it: its entries are stored once and
    /// announced once. A copy of the file taken while the server runs (a crash after the
    /// commits) holds every entry, and replaying them writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_around_the_commit_loses_and_duplicates_nothing_on_redb() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU8, Ordering};
        use std::time::Duration;

        use tokio::sync::{broadcast, watch};

        use crate::federation::tests::{claim, until};
        use crate::federation::{Event, Federation, NextTask};
        use crate::store::kv::{Batch, Entries, KvBackend};
        use crate::store::redb_backend::{FILE_NAME, RedbBackend};
        use crate::store::{Store, StoreError};

        const NORMAL: u8 = 0;
        const DIE_BEFORE: u8 = 1;
        const FAIL_AFTER: u8 = 2;

        /// redb with a round commit that dies before writing, or writes then fails once.
        struct Crashing {
            inner: RedbBackend,
            mode: Arc<AtomicU8>,
        }

        impl KvBackend for Crashing {
            fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
                self.inner.get(key)
            }
            fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
                self.inner.scan_prefix(prefix)
            }
            fn commit(&self, batch: Batch) -> Result<(), StoreError> {
                let died = || StoreError::Backend {
                    backend: "test",
                    context: "committing".into(),
                    source: "the process died".into(),
                };
                if batch.puts.iter().any(|(k, _)| k.starts_with(b"round/")) {
                    match self.mode.load(Ordering::SeqCst) {
                        DIE_BEFORE => return Err(died()),
                        FAIL_AFTER => {
                            self.inner.commit(batch)?;
                            self.mode.store(NORMAL, Ordering::SeqCst);
                            return Err(died());
                        }
                        _ => {}
                    }
                }
                self.inner.commit(batch)
            }
        }

        /// The next round commit and the ledger events until it, in order.
        async fn next_commit(events: &mut broadcast::Receiver<Event>) -> Vec<Event> {
            let mut seen = Vec::new();
            loop {
                let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
                    .await
                    .expect("an event arrives")
                    .expect("channel open");
                match event {
                    Event::RoundCommitted(_) => {
                        seen.push(event);
                        // Its ledger event follows at once.
                        let next = tokio::time::timeout(Duration::from_secs(30), events.recv())
                            .await
                            .expect("the ledger event arrives")
                            .expect("channel open");
                        seen.push(next);
                        return seen;
                    }
                    Event::LedgerRecorded { .. } => seen.push(event),
                    _ => {}
                }
            }
        }

        async fn upload(fed: &Arc<Federation>, ids: &[String], claims: [u64; 3], round: u64) {
            for (id, m) in ids.iter().zip(claims) {
                until(fed, || async {
                    matches!(fed.next_task(id).await, NextTask::Train { round: r, .. } if r == round)
                })
                .await;
                let delta = vec![0.01 * m as f32; 9];
                let mut c = claim(round, &delta);
                c.model_version = round - 1;
                c.num_samples = m;
                fed.accept_update(id, c, delta).await.expect("accepted");
            }
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let copy = tempfile::tempdir().expect("tempdir");
        let mode = Arc::new(AtomicU8::new(DIE_BEFORE));
        let open = |mode: &Arc<AtomicU8>| {
            Store::with_backend(Crashing {
                inner: RedbBackend::open(dir.path()).expect("opens"),
                mode: mode.clone(),
            })
        };
        let mut cfg = fact_config();
        cfg.rounds = 2;
        cfg.min_clients = 3;
        let claims = [10, 20, 40];
        let ids = {
            let fed = Federation::create(cfg.clone(), open(&mode)).expect("created");
            let mut ids = Vec::new();
            for (name, m) in ["a", "b", "c"].into_iter().zip([10.0, 20.0, 40.0]) {
                let (id, _) = fed
                    .enroll("s", name, 100, 0, cost_for(m))
                    .await
                    .expect("enrolled");
                ids.push(id);
            }
            let (stop, stopped) = watch::channel(false);
            let handle = tokio::spawn(crate::round_loop::run(fed.clone(), stopped));
            upload(&fed, &ids, claims, 1).await;
            until(&fed, || async { fed.loop_error().await.is_some() }).await;
            let _ = stop.send(true);
            handle.await.expect("loop ends");
            ids
        };
        // Restart: the crash wrote nothing.
        mode.store(NORMAL, Ordering::SeqCst);
        let store = open(&mode);
        assert_eq!(store.list_rounds("unit").expect("rounds"), vec![]);
        assert_eq!(store.list_ledger("unit").expect("ledger"), vec![]);
        let record = store.get_federation("unit").expect("read").expect("exists");
        let fed = Federation::restore(record, store.clone()).expect("restored");
        let mut events = fed.subscribe_events();
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(crate::round_loop::run(fed.clone(), stopped));
        let expected = |round: u64| {
            let clients = store.list_clients("unit").expect("clients");
            let updates: Vec<UpdateRecord> = store
                .list_updates("unit", round)
                .expect("updates")
                .into_iter()
                .map(|(u, _)| u)
                .collect();
            settle_round(&cfg, round, &clients, &updates, 0)
                .expect("FACT")
                .entries
        };
        let stored = |round: u64| -> Vec<LedgerEntry> {
            store
                .list_ledger("unit")
                .expect("ledger")
                .into_iter()
                .filter(|e| e.round == round)
                .collect()
        };
        let same = |a: &[LedgerEntry], b: &[LedgerEntry]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_content(y))
        };
        for round in [1, 2] {
            if round == 2 {
                mode.store(FAIL_AFTER, Ordering::SeqCst);
                upload(&fed, &ids, claims, 2).await;
            }
            let seen = next_commit(&mut events).await;
            let [
                Event::RoundCommitted(r),
                Event::LedgerRecorded { round: lr, entries },
            ] = seen.as_slice()
            else {
                panic!("round {round}: expected the commit then one ledger event: {seen:?}");
            };
            assert_eq!((r.round, *lr), (round, round));
            let want = expected(round);
            assert!(!want.is_empty());
            assert!(same(&stored(round), &want), "round {round}");
            assert!(same(entries, &want), "round {round}: the announced entries");
            assert!(
                r.metrics
                    .iter()
                    .any(|(n, v)| n == "fact_settled" && *v == 3.0),
                "{:?}",
                r.metrics
            );
        }
        until(&fed, || async { fed.loop_error().await.is_none() }).await;
        // A crash now: the file as it is holds both rounds' entries, once each.
        std::fs::copy(dir.path().join(FILE_NAME), copy.path().join(FILE_NAME))
            .expect("copy the file as a crash leaves it");
        let _ = stop.send(true);
        handle.await.expect("loop ends");
        let crashed = Store::open_redb(copy.path()).expect("opens the copy");
        let all = crashed.list_ledger("unit").expect("ledger");
        assert_eq!(all, store.list_ledger("unit").expect("ledger"));
        let penalties = all.iter().filter(|e| e.kind == LedgerKind::Penalty).count();
        assert_eq!(penalties, 6, "three penalties per round");
        assert_eq!(crashed.record_ledger(&all, None).expect("replay"), 0);
        assert_eq!(crashed.list_ledger("unit").expect("ledger"), all);
        assert_eq!(crashed.list_rounds("unit").expect("rounds").len(), 2);
    }

    #[test]
    fn grouping_seeds_differ_by_round_and_base() {
        assert_eq!(grouping_seed(7, 3), grouping_seed(7, 3));
        assert_ne!(grouping_seed(7, 3), grouping_seed(7, 4));
        assert_ne!(grouping_seed(7, 3), grouping_seed(8, 3));
        assert_ne!(grouping_seed(0, 1), grouping_seed(1, 0));
    }
}
