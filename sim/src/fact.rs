//! FACT in the simulator (ALGORITHMS.md 6): true and reported costs, clients that train
//! on less than required, and the per-client account read back from the server's ledger.
//!
//! A scenario's `[fact]` table ([`FactSim`]) turns the federation into a FACT federation
//! with the table's mechanism parameters. Each client draws a private true cost per data
//! point from `N(cost, (cost x cost_spread)^2)` (seeded, clipped above 0) and reports it at
//! enrollment, possibly misreported; the server answers with its required contribution
//! `m* = sqrt(offset / (2 reported))` in every train task. Behaviours ([`FactBehaviour`]) are
//! assigned by client index like the `[adversaries]` table: first one misreporter per
//! `misreport` factor (reported = factor x true), then `free_riders` (claim `m*`, train on
//! `free_rider_fraction` of it: FACT cannot see this), then `shirkers` (train on and claim
//! `shirker_fraction` of `m*`: penalised); the rest are truthful.
//!
//! After the run [`outcome`] reads `Admin.ListLedger` and reports per client its
//! behaviour, true and reported cost, `m*`, points trained and claimed, its total penalty
//! and prize, its data cost `true cost x trained points x rounds it trained` and its net
//! `prizes - penalties - data cost` (all in the loss units of `offset / (2 m)`), beside
//! its Shapley value from the server's valuation.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fedval_client::trainer::points;
use fedval_client::{Claim, Contribution};
use fedval_core::incentive::fact::{FactParams, RemainderPolicy};
use fedval_proto::v1 as pb;
use fedval_server::fact::FactSettings;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::plot::{Bar, BarChart, escape};

/// Share of the smallest client's data the default mean cost requires: `m*` of the mean
/// cost is 80% of it, so that truthful clients (costs spread around the mean) and the
/// under-reporter of the shipped scenario can still train on all they must.
pub const DEFAULT_REQUIRED_SHARE: f64 = 0.8;

/// The `[fact]` table of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactSim {
    /// Loss-surrogate numerator (the federation's `fact.offset`).
    pub offset: f64,
    /// Penalty strength in (1, 2) (`fact.alpha`).
    pub alpha: f64,
    /// Prize multiplier of a competition winner (`fact.prize_factor`).
    pub prize_factor: f64,
    /// Clients left over after grouping in threes (`fact.remainder`).
    pub remainder: RemainderPolicy,
    /// Mean true cost per data point; unset: `offset / (2 (0.8 n_min)^2)`, the cost whose
    /// `m*` is 80% of the smallest client's data ([`DEFAULT_REQUIRED_SHARE`]).
    pub cost: Option<f64>,
    /// Standard deviation of the true costs relative to the mean (the paper's 0.1).
    pub cost_spread: f64,
    /// One misreporting client per factor: it reports `factor x` its true cost.
    pub misreport: Vec<f64>,
    /// Free riders: claim `m*`, train on `free_rider_fraction` of it.
    pub free_riders: usize,
    /// The fraction of `m*` a free rider trains on, in (0, 1].
    pub free_rider_fraction: f64,
    /// Shirkers: train on `shirker_fraction` of `m*` and claim what they trained.
    pub shirkers: usize,
    /// The fraction of `m*` a shirker trains on, in (0, 1].
    pub shirker_fraction: f64,
}

impl Default for FactSim {
    /// The core mechanism defaults, the default cost, spread 0.1, everyone truthful
    /// (fractions 0.2 for free riders and shirkers, if any).
    fn default() -> Self {
        let p = FactParams::default();
        FactSim {
            offset: p.offset,
            alpha: p.alpha,
            prize_factor: p.prize_factor,
            remainder: p.remainder,
            cost: None,
            cost_spread: 0.1,
            misreport: Vec::new(),
            free_riders: 0,
            free_rider_fraction: 0.2,
            shirkers: 0,
            shirker_fraction: 0.2,
        }
    }
}

/// What a simulated FACT client does.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FactBehaviour {
    /// Reports its true cost, trains on and claims `m*` (or all it has).
    Truthful,
    /// Reports `factor x` its true cost, then trains honestly for the `m*` that sets.
    Misreport {
        /// Reported / true cost.
        factor: f64,
    },
    /// Reports truthfully, trains on `fraction` of `m*`, claims `m*`.
    FreeRider {
        /// Share of `m*` trained on.
        fraction: f64,
    },
    /// Reports truthfully, trains on `fraction` of `m*` and claims that.
    Shirker {
        /// Share of `m*` trained on.
        fraction: f64,
    },
}

impl FactBehaviour {
    /// The name in tables: `truthful`, `misreport x1.30`, `free_rider 20%`, `shirker 20%`.
    pub fn label(&self) -> String {
        match self {
            FactBehaviour::Truthful => "truthful".into(),
            FactBehaviour::Misreport { factor } => format!("misreport x{factor:.2}"),
            FactBehaviour::FreeRider { fraction } => format!("free_rider {:.0}%", fraction * 100.0),
            FactBehaviour::Shirker { fraction } => format!("shirker {:.0}%", fraction * 100.0),
        }
    }

    /// Reported cost / true cost.
    pub fn report_factor(&self) -> f64 {
        match self {
            FactBehaviour::Misreport { factor } => *factor,
            _ => 1.0,
        }
    }

    /// How the client's trainer answers the requirement.
    pub fn contribution(&self) -> Contribution {
        match *self {
            FactBehaviour::Truthful | FactBehaviour::Misreport { .. } => Contribution::Honest,
            FactBehaviour::FreeRider { fraction } => Contribution::Partial {
                fraction,
                claim: Claim::Required,
            },
            FactBehaviour::Shirker { fraction } => Contribution::Partial {
                fraction,
                claim: Claim::Trained,
            },
        }
    }
}

/// One client's costs and behaviour, fixed before the run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct FactClient {
    /// What it does.
    pub behaviour: FactBehaviour,
    /// Its private cost per data point.
    pub true_cost: f64,
    /// The cost it reports at enrollment.
    pub reported_cost: f64,
}

impl FactSim {
    /// The federation's FACT settings (grouping seed: the federation's).
    pub fn settings(&self) -> FactSettings {
        FactSettings {
            offset: self.offset,
            alpha: self.alpha,
            prize_factor: self.prize_factor,
            remainder: self.remainder,
            seed: None,
        }
    }

    /// Checks the table against `clients` clients.
    pub fn validate(&self, clients: usize) -> Result<(), String> {
        self.settings()
            .validate()
            .map_err(|e| format!("[fact]: {e}"))?;
        if let Some(c) = self.cost
            && !(c.is_finite() && c > 0.0)
        {
            return Err(format!("[fact] cost must be finite and > 0, got {c}"));
        }
        if !(self.cost_spread.is_finite() && self.cost_spread >= 0.0) {
            return Err(format!(
                "[fact] cost_spread must be finite and >= 0, got {}",
                self.cost_spread
            ));
        }
        if let Some(f) = self
            .misreport
            .iter()
            .find(|f| !(f.is_finite() && **f > 0.0))
        {
            return Err(format!(
                "[fact] misreport factors must be finite and > 0, got {f}"
            ));
        }
        for (name, f) in [
            ("free_rider_fraction", self.free_rider_fraction),
            ("shirker_fraction", self.shirker_fraction),
        ] {
            if !(f.is_finite() && f > 0.0 && f <= 1.0) {
                return Err(format!("[fact] {name} must be in (0, 1], got {f}"));
            }
        }
        let special = self.misreport.len() + self.free_riders + self.shirkers;
        if special > clients {
            return Err(format!(
                "[fact] misreporters ({}) + free riders ({}) + shirkers ({}) exceed the number \
                 of clients ({clients})",
                self.misreport.len(),
                self.free_riders,
                self.shirkers
            ));
        }
        if clients < 3 {
            return Err(format!(
                "[fact] needs at least 3 clients (the sandwich competition groups them in \
                 threes), got {clients}"
            ));
        }
        Ok(())
    }

    /// The behaviour of client `index` (see the module docs for the order).
    pub fn behaviour(&self, index: usize) -> FactBehaviour {
        let misreporters = self.misreport.len();
        if let Some(&factor) = self.misreport.get(index) {
            FactBehaviour::Misreport { factor }
        } else if index < misreporters + self.free_riders {
            FactBehaviour::FreeRider {
                fraction: self.free_rider_fraction,
            }
        } else if index < misreporters + self.free_riders + self.shirkers {
            FactBehaviour::Shirker {
                fraction: self.shirker_fraction,
            }
        } else {
            FactBehaviour::Truthful
        }
    }

    /// The mean true cost: `cost`, or the default for clients holding `shard_sizes`.
    pub fn mean_cost(&self, shard_sizes: &[usize]) -> f64 {
        self.cost.unwrap_or_else(|| {
            let smallest = shard_sizes.iter().copied().min().unwrap_or(1).max(1) as f64;
            let m = DEFAULT_REQUIRED_SHARE * smallest;
            self.offset / (2.0 * m * m)
        })
    }

    /// Every client's behaviour and costs: true costs drawn from
    /// `N(mean, (mean x cost_spread)^2)` with `seed`, clipped to at least `mean / 1000`.
    pub fn clients(&self, shard_sizes: &[usize], seed: u64) -> Vec<FactClient> {
        let mean = self.mean_cost(shard_sizes);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfac7_c057);
        let normal = Normal::new(mean, mean * self.cost_spread).ok();
        (0..shard_sizes.len())
            .map(|index| {
                let draw = normal.as_ref().map_or(mean, |n| n.sample(&mut rng));
                let true_cost = draw.max(mean / 1000.0);
                let behaviour = self.behaviour(index);
                FactClient {
                    behaviour,
                    true_cost,
                    reported_cost: true_cost * behaviour.report_factor(),
                }
            })
            .collect()
    }

    /// The required contribution the server computes for a reported cost.
    pub fn required(&self, reported_cost: f64) -> f64 {
        (self.offset / (2.0 * reported_cost)).sqrt()
    }
}

/// One client's FACT account at the end of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FactRow {
    /// Client name.
    pub name: String,
    /// Server-assigned id.
    pub client_id: String,
    /// Its FACT behaviour ([`FactBehaviour::label`]).
    pub behaviour: String,
    /// Private cost per point.
    pub true_cost: f64,
    /// Reported cost per point.
    pub reported_cost: f64,
    /// Required contribution `m*` (from the ledger's inputs when settled).
    pub required_m: f64,
    /// Points trained on per round.
    pub trained: usize,
    /// Points claimed per round.
    pub claimed: u64,
    /// Rounds it trained in.
    pub rounds: u64,
    /// Rounds it was settled in (penalty entries).
    pub settled_rounds: u64,
    /// Rounds it won a prize in.
    pub wins: u64,
    /// Sum of its penalties.
    pub penalties: f64,
    /// Sum of its prizes.
    pub prizes: f64,
    /// `true_cost x trained x rounds`.
    pub data_cost: f64,
    /// `prizes - penalties - data_cost`.
    pub net: f64,
    /// Its cumulative Shapley value.
    pub shapley: f64,
}

/// How the amounts of a FACT account are measured (said under the table and on the page).
const AMOUNTS: &str = "in loss units (offset / (2 m)), summed over rounds; data cost = true cost \
                       x trained points x rounds; net = prizes - penalties - data cost";

/// What a FACT run reports beyond the usual rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FactOutcome {
    /// The scenario's `[fact]` table.
    pub settings: FactSim,
    /// The mean true cost used.
    pub mean_cost: f64,
    /// Rounds whose settlement wrote ledger entries.
    pub settled_rounds: usize,
    /// Rounds committed without a settlement (metric `fact_skipped`).
    pub skipped_rounds: usize,
    /// One row per client, in client order.
    pub rows: Vec<FactRow>,
}

/// A client of the run as [`outcome`] needs it.
#[derive(Clone, Debug)]
pub struct RunClient {
    /// Client name.
    pub name: String,
    /// Server-assigned id.
    pub client_id: String,
    /// Local samples.
    pub samples: usize,
    /// Rounds it took part in (server's count).
    pub rounds: u64,
    /// Cumulative Shapley value.
    pub shapley: f64,
}

/// Builds the FACT account of every client from the plans, the run's clients (same order)
/// and the federation's ledger; `rounds` are the committed rounds (for skipped ones).
pub fn outcome(
    sim: &FactSim,
    mean_cost: f64,
    plans: &[FactClient],
    clients: &[RunClient],
    ledger: &[pb::LedgerEntry],
    rounds: &[pb::RoundRecord],
) -> FactOutcome {
    let skipped = rounds
        .iter()
        .filter(|r| {
            r.metrics
                .iter()
                .any(|m| m.name == "fact_skipped" && m.value > 0.0)
        })
        .count();
    let mut settled: Vec<u64> = ledger.iter().map(|e| e.round).collect();
    settled.sort_unstable();
    settled.dedup();
    let rows = plans
        .iter()
        .zip(clients)
        .map(|(plan, c)| {
            let mine: Vec<&pb::LedgerEntry> = ledger
                .iter()
                .filter(|e| e.client_id == c.client_id)
                .collect();
            let sum = |kind: &str| -> f64 {
                mine.iter()
                    .filter(|e| e.kind == kind)
                    .map(|e| e.amount)
                    // From +0.0: `sum` of nothing is -0.0 for floats.
                    .fold(0.0, |acc, x| acc + x)
            };
            let count = |kind: &str| mine.iter().filter(|e| e.kind == kind).count() as u64;
            let input = |name: &str| mine.first().and_then(|e| e.inputs.get(name).copied());
            let required_m =
                input("required_m").unwrap_or_else(|| sim.required(plan.reported_cost));
            let p = points(Some(required_m), c.samples, &plan.behaviour.contribution());
            let claimed = input("claimed_m").map_or(p.claimed, |m| m as u64);
            let (penalties, prizes) = (sum("penalty"), sum("prize"));
            let data_cost = plan.true_cost * p.trained as f64 * c.rounds as f64;
            FactRow {
                name: c.name.clone(),
                client_id: c.client_id.clone(),
                behaviour: plan.behaviour.label(),
                true_cost: plan.true_cost,
                reported_cost: plan.reported_cost,
                required_m,
                trained: p.trained,
                claimed,
                rounds: c.rounds,
                settled_rounds: count("penalty"),
                wins: count("prize"),
                penalties,
                prizes,
                data_cost,
                net: prizes - penalties - data_cost,
                shapley: c.shapley,
            }
        })
        .collect();
    FactOutcome {
        settings: sim.clone(),
        mean_cost,
        settled_rounds: settled.len(),
        skipped_rounds: skipped,
        rows,
    }
}

impl FactOutcome {
    /// Mean net per behaviour label, in first-seen order.
    pub fn mean_net_by_behaviour(&self) -> Vec<(String, f64, usize)> {
        let mut out: Vec<(String, f64, usize)> = Vec::new();
        for r in &self.rows {
            match out.iter_mut().find(|(b, _, _)| *b == r.behaviour) {
                Some(entry) => {
                    entry.1 += r.net;
                    entry.2 += 1;
                }
                None => out.push((r.behaviour.clone(), r.net, 1)),
            }
        }
        for entry in &mut out {
            entry.1 /= entry.2 as f64;
        }
        out
    }

    /// The text block printed after a FACT run: the per-client table and a summary.
    pub fn table(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.behaviour.len())
            .max()
            .unwrap_or(0)
            .max(9);
        let mut s = String::new();
        let _ = writeln!(s, "FACT ({}): {}", self.parameters(), self.counts());
        let _ = writeln!(
            s,
            "{:<10} {:<width$} {:>10} {:>10} {:>7} {:>7} {:>7} {:>6} {:>10} {:>10} {:>10} {:>11} {:>10}",
            "client",
            "behaviour",
            "true cost",
            "reported",
            "m*",
            "trained",
            "claimed",
            "wins",
            "penalty",
            "prize",
            "data cost",
            "net",
            "shapley"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<10} {:<width$} {:>10.3e} {:>10.3e} {:>7.1} {:>7} {:>7} {:>6} {:>10.3e} {:>10.3e} {:>10.3e} {:>11.3e} {:>10.5}",
                r.name,
                r.behaviour,
                r.true_cost,
                r.reported_cost,
                r.required_m,
                r.trained,
                r.claimed,
                r.wins,
                r.penalties,
                r.prizes,
                r.data_cost,
                r.net,
                r.shapley
            );
        }
        let means: Vec<String> = self
            .mean_net_by_behaviour()
            .iter()
            .map(|(b, net, n)| format!("{b} {net:.3e} ({n})"))
            .collect();
        let _ = writeln!(s, "mean net by behaviour: {}", means.join(", "));
        let _ = writeln!(s, "amounts {AMOUNTS}");
        s
    }

    /// The mechanism's parameters: `offset O, alpha A, prize factor P, remainder R`.
    fn parameters(&self) -> String {
        let f = &self.settings;
        format!(
            "offset {}, alpha {}, prize factor {}, remainder {}",
            f.offset,
            f.alpha,
            f.prize_factor,
            fedval_server::fact::remainder_name(f.remainder)
        )
    }

    /// What was settled: `N rounds settled, M skipped; mean true cost C`.
    fn counts(&self) -> String {
        format!(
            "{} rounds settled, {} skipped; mean true cost {:.3e}",
            self.settled_rounds, self.skipped_rounds, self.mean_cost
        )
    }

    /// The `FACT` section of `report.html`: a note, the net per client as bars and the
    /// per-client table.
    pub fn html(&self, color: impl Fn(&str) -> &'static str) -> String {
        let mut s = String::from("<h2>FACT: penalties and prizes</h2>");
        let _ = write!(
            s,
            "<p class=\"note\">{}; {}. Amounts are {AMOUNTS}.</p>",
            escape(&self.parameters()),
            self.counts()
        );
        let mut behaviours: BTreeMap<&str, ()> = BTreeMap::new();
        for r in &self.rows {
            behaviours.insert(r.behaviour.as_str(), ());
        }
        let chart = BarChart {
            title: "Net per client (prizes - penalties - data cost)".into(),
            x_label: "net".into(),
            bars: self
                .rows
                .iter()
                .map(|r| Bar {
                    label: format!("{} ({})", r.name, r.behaviour),
                    value: r.net,
                    color: color(&r.behaviour).into(),
                })
                .collect(),
            legend: behaviours
                .keys()
                .map(|b| (b.to_string(), color(b).to_string()))
                .collect(),
        };
        s.push_str(&chart.svg());
        s.push_str(
            "<table><tr><th>client</th><th>behaviour</th><th>true cost</th><th>reported</th>\
             <th>m*</th><th>trained</th><th>claimed</th><th>rounds</th><th>wins</th>\
             <th>penalty</th><th>prize</th><th>data cost</th><th>net</th><th>Shapley</th></tr>",
        );
        for r in &self.rows {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{:.3e}</td><td class=\"n\">{:.3e}</td>\
                 <td class=\"n\">{:.1}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.3e}</td>\
                 <td class=\"n\">{:.3e}</td><td class=\"n\">{:.3e}</td><td class=\"n\">{:.3e}</td>\
                 <td class=\"n\">{:.5}</td></tr>",
                escape(&r.name),
                escape(&r.behaviour),
                r.true_cost,
                r.reported_cost,
                r.required_m,
                r.trained,
                r.claimed,
                r.rounds,
                r.wins,
                r.penalties,
                r.prizes,
                r.data_cost,
                r.net,
                r.shapley
            );
        }
        s.push_str("</table>");
        s
    }
}

/// The colour of a FACT behaviour label in charts.
pub fn behaviour_color(label: &str) -> &'static str {
    match label.split(' ').next().unwrap_or("") {
        "truthful" => "#4c78a8",
        "misreport" => "#f58518",
        "free_rider" => "#e45756",
        "shirker" => "#b279a2",
        _ => "#999999",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn misreport_sim() -> FactSim {
        FactSim {
            misreport: vec![1.3, 0.7],
            free_riders: 1,
            shirkers: 1,
            ..FactSim::default()
        }
    }

    #[test]
    fn behaviours_follow_the_table_order() {
        let sim = misreport_sim();
        let got: Vec<String> = (0..6).map(|i| sim.behaviour(i).label()).collect();
        assert_eq!(
            got,
            [
                "misreport x1.30",
                "misreport x0.70",
                "free_rider 20%",
                "shirker 20%",
                "truthful",
                "truthful"
            ]
        );
        assert_eq!(sim.validate(10), Ok(()));
        assert!(sim.validate(3).unwrap_err().contains("exceed the number"));
        assert!(
            FactSim::default()
                .validate(2)
                .unwrap_err()
                .contains("at least 3")
        );
        let bad = FactSim {
            alpha: 2.5,
            ..FactSim::default()
        };
        assert!(
            bad.validate(5).unwrap_err().contains("fact.alpha"),
            "{bad:?}"
        );
        let bad = FactSim {
            shirker_fraction: 0.0,
            ..FactSim::default()
        };
        assert!(bad.validate(5).unwrap_err().contains("shirker_fraction"));
        let bad = FactSim {
            misreport: vec![f64::NAN],
            ..FactSim::default()
        };
        assert!(bad.validate(5).unwrap_err().contains("misreport"));
    }

    /// The default cost asks 80% of the smallest shard; true costs are seeded, spread
    /// around it, and misreporters report factor x truth.
    #[test]
    fn costs_are_seeded_and_misreports_scale_the_truth() {
        let sim = misreport_sim();
        let shards = [150usize, 125, 140, 130, 160, 150, 150, 150, 150, 150];
        let mean = sim.mean_cost(&shards);
        assert!(
            (sim.required(mean) - 100.0).abs() < 1e-9,
            "m* of the mean is 0.8 x 125"
        );
        let a = sim.clients(&shards, 42);
        assert_eq!(a, sim.clients(&shards, 42));
        assert_ne!(a, sim.clients(&shards, 43));
        assert_eq!(a.len(), 10);
        assert_eq!(a[0].reported_cost, 1.3 * a[0].true_cost);
        assert_eq!(a[1].reported_cost, 0.7 * a[1].true_cost);
        for c in &a[2..] {
            assert_eq!(c.reported_cost, c.true_cost);
        }
        for c in &a {
            assert!(c.true_cost > 0.0);
            assert!((c.true_cost / mean - 1.0).abs() < 0.5, "{c:?}");
        }
        let fixed = FactSim {
            cost: Some(2e-5),
            cost_spread: 0.0,
            ..FactSim::default()
        };
        assert!(
            fixed
                .clients(&shards, 1)
                .iter()
                .all(|c| c.true_cost == 2e-5)
        );
    }

    #[test]
    fn outcome_sums_the_ledger_per_client() {
        let sim = FactSim {
            free_riders: 1,
            ..FactSim::default()
        };
        let plans = [
            FactClient {
                behaviour: sim.behaviour(0),
                true_cost: 1.0 / 200.0,
                reported_cost: 1.0 / 200.0,
            },
            FactClient {
                behaviour: sim.behaviour(1),
                true_cost: 1.0 / 800.0,
                reported_cost: 1.0 / 800.0,
            },
        ];
        let clients = [
            RunClient {
                name: "c0".into(),
                client_id: "id0".into(),
                samples: 50,
                rounds: 2,
                shapley: 0.25,
            },
            RunClient {
                name: "c1".into(),
                client_id: "id1".into(),
                samples: 50,
                rounds: 2,
                shapley: 0.5,
            },
        ];
        let entry = |round: u64, client: &str, kind: &str, amount: f64, m: f64| pb::LedgerEntry {
            round,
            client_id: client.into(),
            kind: kind.into(),
            amount,
            mechanism: "fact".into(),
            inputs: [("required_m".to_string(), m), ("claimed_m".to_string(), m)]
                .into_iter()
                .collect(),
            recorded_at_ms: 0,
        };
        let ledger = [
            entry(1, "id0", "penalty", 0.5, 10.0),
            entry(2, "id0", "penalty", 0.25, 10.0),
            entry(1, "id1", "penalty", 0.125, 20.0),
            entry(1, "id1", "prize", 2.0, 20.0),
        ];
        let skipped = pb::RoundRecord {
            round: 3,
            metrics: vec![pb::Metric {
                name: "fact_skipped".into(),
                value: 1.0,
            }],
            ..Default::default()
        };
        let out = outcome(&sim, 1e-3, &plans, &clients, &ledger, &[skipped]);
        assert_eq!((out.settled_rounds, out.skipped_rounds), (2, 1));
        let r0 = &out.rows[0];
        assert_eq!(r0.behaviour, "free_rider 20%");
        // 20% of m* = 10 is 2 points trained, 10 claimed.
        assert_eq!((r0.trained, r0.claimed), (2, 10));
        assert_eq!((r0.penalties, r0.prizes, r0.wins), (0.75, 0.0, 0));
        assert_eq!(r0.data_cost, 2.0 * 2.0 / 200.0);
        assert_eq!(r0.net, -0.75 - 0.02);
        let r1 = &out.rows[1];
        assert_eq!(
            (r1.trained, r1.claimed, r1.settled_rounds, r1.wins),
            (20, 20, 1, 1)
        );
        assert_eq!(r1.net, 2.0 - 0.125 - 20.0 * 2.0 / 800.0);
        assert_eq!(r1.shapley, 0.5);
        let table = out.table();
        assert!(table.contains("2 rounds settled, 1 skipped"), "{table}");
        assert!(table.contains("free_rider 20%"), "{table}");
        let html = out.html(behaviour_color);
        crate::plot::tests::assert_well_formed(&format!("<div>{html}</div>"));
        assert!(html.contains("Net per client"));
    }
}
