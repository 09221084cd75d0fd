//! The attack table: every scenario against every defence, each over the same seeds, on
//! embedded servers, summarised per (defence, scenario) cell.
//!
//! A cell averages over seeds: the honest clients' mean final test accuracy, the best
//! honest client's accuracy, fairness (runs where it is undefined are left out and
//! counted), the label-flip attack success rate; and it states the latest round by which
//! every adversary was removed in every seed (or how many were never removed) and how
//! many honest clients were removed in all. Valuation is switched off for these runs: it
//! does not change training and would only cost time.

use std::fmt::Write as _;

use crate::defense::Defense;
use crate::runner::{SimOptions, run};
use crate::{Report, SimConfig, SimError};

/// One (defence, scenario) cell, over seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// Mean over seeds of the honest clients' mean final test accuracy.
    pub honest_accuracy: f64,
    /// Mean over seeds of the best honest client's final test accuracy.
    pub honest_accuracy_best: f64,
    /// Mean fairness over the seeds where it is defined, and how many those are.
    pub fairness: Option<f64>,
    /// Seeds where fairness was defined.
    pub fairness_runs: usize,
    /// Mean label-flip success rate, when the scenario flips labels.
    pub attack_success_rate: Option<f64>,
    /// Adversary removals over all seeds: (removed, total, latest removal round).
    pub removals: (usize, usize, Option<u64>),
    /// Honest clients removed, summed over seeds.
    pub honest_removed: usize,
    /// Runs (seeds) behind the cell.
    pub runs: usize,
}

impl Cell {
    /// Summarises the reports of one (defence, scenario) pair; `None` for no reports.
    pub fn from_reports(reports: &[Report]) -> Option<Cell> {
        if reports.is_empty() {
            return None;
        }
        let n = reports.len() as f64;
        let mean = |f: fn(&Report) -> f64| reports.iter().map(f).sum::<f64>() / n;
        let fair: Vec<f64> = reports.iter().filter_map(|r| r.metrics.fairness).collect();
        let attack: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.metrics.attack_success_rate)
            .collect();
        let (mut removed, mut total, mut latest, mut honest_removed) = (0, 0, None, 0);
        for r in reports {
            for c in &r.clients {
                match (c.adversary, c.removal_round) {
                    (true, Some(round)) => {
                        removed += 1;
                        total += 1;
                        latest = latest.max(Some(round));
                    }
                    (true, None) => total += 1,
                    (false, Some(_)) => honest_removed += 1,
                    (false, None) => {}
                }
            }
        }
        let average = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Some(Cell {
            honest_accuracy: mean(|r| r.metrics.honest_accuracy),
            honest_accuracy_best: mean(|r| r.metrics.honest_accuracy_best),
            fairness: average(&fair),
            fairness_runs: fair.len(),
            attack_success_rate: average(&attack),
            removals: (removed, total, latest),
            honest_removed,
            runs: reports.len(),
        })
    }

    /// The removal column: `-` without adversaries or removals, `all by round R`, or
    /// `k of m (last round R)`; then the honest clients removed, if any.
    pub fn removal_text(&self) -> String {
        let (removed, total, latest) = self.removals;
        let mut text = match (removed, latest) {
            (0, _) | (_, None) => "-".to_string(),
            (k, Some(round)) if k == total => format!("all by round {round}"),
            (k, Some(round)) => format!("{k} of {total} (last in round {round})"),
        };
        if self.honest_removed > 0 {
            let _ = write!(text, "; {} honest removed", self.honest_removed);
        }
        text
    }
}

/// How one metric of a cell is written in the markdown table.
type CellText = fn(&Cell) -> String;

/// The table: rows of defences, columns of scenarios.
#[derive(Clone, Debug)]
pub struct AttackTable {
    /// Scenario names, in column order.
    pub scenarios: Vec<String>,
    /// Defences, in row order.
    pub defenses: Vec<Defense>,
    /// Seeds every cell ran.
    pub seeds: Vec<u64>,
    /// `cells[d][s]` for defence `d` and scenario `s`.
    pub cells: Vec<Vec<Cell>>,
}

/// Runs every scenario against every defence over `seeds` (valuation off), calling
/// `progress(done, total, what)` before each run.
pub async fn run_table(
    scenarios: &[(String, SimConfig)],
    defenses: &[Defense],
    seeds: &[u64],
    admin_token: &str,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<AttackTable, SimError> {
    if scenarios.is_empty() || defenses.is_empty() || seeds.is_empty() {
        return Err(SimError::Config(
            "the attack table needs at least one scenario, one defence and one seed".into(),
        ));
    }
    let total = scenarios.len() * defenses.len() * seeds.len();
    let mut done = 0;
    let mut cells = Vec::with_capacity(defenses.len());
    for defense in defenses {
        let mut row = Vec::with_capacity(scenarios.len());
        for (name, scenario) in scenarios {
            let mut reports = Vec::with_capacity(seeds.len());
            for &seed in seeds {
                progress(done, total, &format!("{defense} / {name} / seed {seed}"));
                let mut config = scenario.clone();
                defense.apply(&mut config);
                config.seed = seed;
                config.valuation = "none".into();
                let opts = SimOptions {
                    config,
                    server: None,
                    admin_token: admin_token.to_string(),
                    progress: false,
                };
                let report = run(&opts).await.map_err(|e| {
                    SimError::Client(format!("{defense} / {name} / seed {seed}: {e}"))
                })?;
                reports.push(report);
                done += 1;
            }
            row.extend(Cell::from_reports(&reports));
        }
        cells.push(row);
    }
    Ok(AttackTable {
        scenarios: scenarios.iter().map(|(n, _)| n.clone()).collect(),
        defenses: defenses.to_vec(),
        seeds: seeds.to_vec(),
        cells,
    })
}

impl AttackTable {
    /// One markdown table per metric (honest accuracy, fairness, removals, label-flip
    /// success), rows = defences, columns = scenarios.
    pub fn markdown(&self) -> String {
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut s = format!(
            "Each cell: mean over seeds {} (valuation off).\n",
            seeds.join(", ")
        );
        let sections: [(&str, CellText); 4] = [
            (
                "Honest clients' final test accuracy: mean (best client)",
                |c| format!("{:.4} ({:.4})", c.honest_accuracy, c.honest_accuracy_best),
            ),
            (
                "Fairness: Pearson(standalone accuracy, final-model accuracy) over honest clients",
                |c| match c.fairness {
                    Some(f) if c.fairness_runs == c.runs => format!("{f:.3}"),
                    Some(f) => format!("{f:.3} ({} of {} runs defined)", c.fairness_runs, c.runs),
                    None => "n/a".into(),
                },
            ),
            ("Adversaries removed (RFFL)", Cell::removal_text),
            (
                "Label-flip attack success (share of test samples predicted as C - 1 - y)",
                |c| {
                    c.attack_success_rate
                        .map_or("-".into(), |r| format!("{r:.4}"))
                },
            ),
        ];
        for (title, cell_text) in sections {
            let _ = writeln!(s, "\n{title}\n");
            let _ = writeln!(s, "| aggregator | {} |", self.scenarios.join(" | "));
            let _ = writeln!(s, "|---|{}", "---|".repeat(self.scenarios.len()));
            for (defense, row) in self.defenses.iter().zip(&self.cells) {
                let texts: Vec<String> = row.iter().map(cell_text).collect();
                let _ = writeln!(s, "| {defense} | {} |", texts.join(" | "));
            }
        }
        s
    }

    /// One CSV row per (defence, scenario) cell.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "aggregator,scenario,runs,honest_accuracy,honest_accuracy_best,fairness,fairness_runs,attack_success_rate,adversaries_removed,adversaries,last_removal_round,honest_removed\n",
        );
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
        for (defense, row) in self.defenses.iter().zip(&self.cells) {
            for (scenario, c) in self.scenarios.iter().zip(row) {
                let (removed, total, latest) = c.removals;
                let _ = writeln!(
                    s,
                    "\"{defense}\",{scenario},{},{:.6},{:.6},{},{},{},{removed},{total},{},{}",
                    c.runs,
                    c.honest_accuracy,
                    c.honest_accuracy_best,
                    opt(c.fairness),
                    c.fairness_runs,
                    opt(c.attack_success_rate),
                    latest.map_or(String::new(), |r| r.to_string()),
                    c.honest_removed
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(removals: (usize, usize, Option<u64>), honest_removed: usize) -> Cell {
        Cell {
            honest_accuracy: 0.9,
            honest_accuracy_best: 0.95,
            fairness: None,
            fairness_runs: 0,
            attack_success_rate: None,
            removals,
            honest_removed,
            runs: 2,
        }
    }

    #[test]
    fn removal_text_states_all_some_or_none() {
        assert_eq!(cell((0, 0, None), 0).removal_text(), "-");
        assert_eq!(cell((0, 4, None), 0).removal_text(), "-");
        assert_eq!(cell((4, 4, Some(11)), 0).removal_text(), "all by round 11");
        assert_eq!(
            cell((3, 4, Some(12)), 1).removal_text(),
            "3 of 4 (last in round 12); 1 honest removed"
        );
    }

    #[test]
    fn an_empty_table_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let err = rt
            .block_on(run_table(&[], &[], &[42], "t", |_, _, _| {}))
            .expect_err("nothing to run");
        assert!(err.to_string().contains("at least one scenario"), "{err}");
    }
}
