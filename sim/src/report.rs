//! The outcome of a simulation: the table printed at the end and the files written to
//! the output directory (`report.json`, `rounds.csv`, `clients.csv`, `values.csv`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::SimError;
use crate::metrics::RunMetrics;
use crate::scenario::SimConfig;

/// One committed round.
#[derive(Clone, Debug, Serialize)]
pub struct RoundRow {
    pub round: u64,
    /// Validation accuracy and loss of the round's new global model.
    pub val_accuracy: f64,
    pub val_loss: f64,
    /// Sample-weighted mean of the clients' training loss.
    pub client_loss: f64,
    pub participants: usize,
    pub stragglers: usize,
    pub valuation_method: String,
    /// `done`, `skipped`, `failed: ...` (never `pending` in a finished run).
    pub valuation_status: String,
    /// Why the estimator stopped: exact, budget_exhausted or converged.
    pub valuation_stop: String,
    pub evaluations: u64,
    pub valuation_ms: u64,
    /// v(N) and v(empty) of the round's game.
    pub utility_full: f64,
    pub utility_empty: f64,
    /// Per-client Shapley value of this round, by client name.
    pub values: BTreeMap<String, f64>,
}

/// One client at the end of the run.
#[derive(Clone, Debug, Serialize)]
pub struct ClientRow {
    pub name: String,
    pub client_id: String,
    pub behaviour: String,
    /// Whether the behaviour attacks the federation ([`crate::Behaviour::is_adversary`]).
    pub adversary: bool,
    pub samples: usize,
    /// Cumulative Shapley value (sum over rounds).
    pub shapley: f64,
    pub rounds_participated: u64,
    /// The final global model's accuracy on this client's local data.
    pub final_accuracy: f64,
    /// Test accuracy of a model trained alone on this client's data (see [`crate::metrics`]).
    pub standalone_accuracy: f64,
    /// Test accuracy of the final model this client received.
    pub test_accuracy: f64,
    /// The round in which the server removed this client; `None` if never removed (the
    /// server removes nobody until reputation-based aggregation exists).
    pub removal_round: Option<u64>,
}

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub config: SimConfig,
    pub federation_id: String,
    pub server: String,
    pub wall_time_s: f64,
    /// The final global model on the held-out test set.
    pub final_test_accuracy: f64,
    pub final_test_loss: f64,
    pub rounds: Vec<RoundRow>,
    pub clients: Vec<ClientRow>,
    /// Fairness, honest accuracy and attack success (see [`crate::metrics`]).
    pub metrics: RunMetrics,
}

impl Report {
    /// Writes `report.json`, `rounds.csv`, `clients.csv` and `values.csv` into `dir`,
    /// creating it if needed.
    pub fn write(&self, dir: &Path) -> Result<(), SimError> {
        let io = |e: std::io::Error| SimError::Output {
            path: dir.to_path_buf(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| SimError::Config(format!("report serialisation: {e}")))?;
        write_file(&dir.join("report.json"), &json)?;
        write_file(&dir.join("rounds.csv"), &self.rounds_csv())?;
        write_file(&dir.join("clients.csv"), &self.clients_csv())?;
        write_file(&dir.join("values.csv"), &self.values_csv())?;
        Ok(())
    }

    fn rounds_csv(&self) -> String {
        let mut s = String::from(
            "round,val_accuracy,val_loss,client_loss,participants,stragglers,valuation_method,valuation_status,valuation_stop,evaluations,valuation_ms,utility_full,utility_empty,sum_values\n",
        );
        for r in &self.rounds {
            let _ = writeln!(
                s,
                "{},{:.6},{:.6},{:.6},{},{},{},{},{},{},{},{:.6},{:.6},{:.6}",
                r.round,
                r.val_accuracy,
                r.val_loss,
                r.client_loss,
                r.participants,
                r.stragglers,
                csv_field(&r.valuation_method),
                csv_field(&r.valuation_status),
                r.valuation_stop,
                r.evaluations,
                r.valuation_ms,
                r.utility_full,
                r.utility_empty,
                r.values.values().sum::<f64>()
            );
        }
        s
    }

    fn clients_csv(&self) -> String {
        let mut s = String::from(
            "name,client_id,behaviour,samples,shapley,rounds_participated,final_accuracy,standalone_accuracy,test_accuracy,removal_round\n",
        );
        for c in &self.clients {
            let _ = writeln!(
                s,
                "{},{},{},{},{:.8},{},{:.6},{:.6},{:.6},{}",
                csv_field(&c.name),
                c.client_id,
                c.behaviour,
                c.samples,
                c.shapley,
                c.rounds_participated,
                c.final_accuracy,
                c.standalone_accuracy,
                c.test_accuracy,
                c.removal_round.map_or(String::new(), |r| r.to_string())
            );
        }
        s
    }

    fn values_csv(&self) -> String {
        let mut s = String::from("round,name,value\n");
        for r in &self.rounds {
            for (name, v) in &r.values {
                let _ = writeln!(s, "{},{},{:.8}", r.round, csv_field(name), v);
            }
        }
        s
    }

    /// The per-client table printed at the end of a run, highest value first.
    ///
    /// `detailed` adds three columns: standalone accuracy, the test accuracy of the
    /// client's final model and its removal round (`-`: never removed); without it the
    /// table has the demo's original five columns.
    pub fn table(&self, detailed: bool) -> String {
        let mut rows: Vec<&ClientRow> = self.clients.iter().collect();
        rows.sort_by(|a, b| b.shapley.total_cmp(&a.shapley));
        let width = rows
            .iter()
            .map(|c| c.behaviour.len())
            .max()
            .unwrap_or(0)
            .max(10);
        let mut s = String::new();
        let _ = write!(
            s,
            "{:<12} {:>8} {:<width$} {:>14} {:>10}",
            "client", "samples", "behaviour", "shapley (sum)", "final acc"
        );
        if detailed {
            let _ = write!(
                s,
                " {:>10} {:>9} {:>8}",
                "standalone", "test acc", "removed"
            );
        }
        s.push('\n');
        for c in rows {
            let _ = write!(
                s,
                "{:<12} {:>8} {:<width$} {:>14.5} {:>10.4}",
                c.name, c.samples, c.behaviour, c.shapley, c.final_accuracy
            );
            if detailed {
                let removed = c.removal_round.map_or("-".to_string(), |r| r.to_string());
                let _ = write!(
                    s,
                    " {:>10.4} {:>9.4} {:>8}",
                    c.standalone_accuracy, c.test_accuracy, removed
                );
            }
            s.push('\n');
        }
        s
    }

    /// The short block printed after the table: aggregator, honest accuracy, fairness and,
    /// with label flippers, the attack success rate.
    pub fn summary(&self) -> String {
        let m = &self.metrics;
        let mut s = String::new();
        let _ = writeln!(s, "aggregator {}", self.config.aggregator);
        let honest = self.clients.iter().filter(|c| !c.adversary).count();
        let _ = writeln!(
            s,
            "honest clients' accuracy {:.4} (mean test accuracy of {honest} final models)",
            m.honest_accuracy
        );
        match (m.fairness, &m.fairness_note) {
            (Some(r), _) => {
                let _ = writeln!(s, "fairness {r:.4} (Pearson: standalone vs final accuracy)");
            }
            (None, note) => {
                let _ = writeln!(
                    s,
                    "fairness n/a ({})",
                    note.as_deref().unwrap_or("undefined")
                );
            }
        }
        if let Some(rate) = m.attack_success_rate {
            let _ = writeln!(
                s,
                "label-flip attack success {rate:.4} (test samples predicted as C - 1 - y)"
            );
        }
        let removed: Vec<String> = self
            .clients
            .iter()
            .filter(|c| c.adversary)
            .map(|c| {
                let when = c
                    .removal_round
                    .map_or("never".to_string(), |r| format!("round {r}"));
                format!("{} removed {when}", c.name)
            })
            .collect();
        if !removed.is_empty() {
            let _ = writeln!(s, "adversaries: {}", removed.join(", "));
        }
        s
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(|e| SimError::Output {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Quotes a CSV field when it holds a comma, quote or newline.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
