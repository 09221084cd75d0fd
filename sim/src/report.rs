//! The outcome of a simulation: the table printed at the end and the files written to
//! the output directory (`report.json`, `rounds.csv`, `clients.csv`, `values.csv`, and
//! `report.html`: one self-contained page with the run's summary, inline SVG charts of
//! accuracy, loss and contributions drawn by [`crate::plot`], and the per-client table).
//!
//! A vertical run ([`crate::vertical`]) fills the same report: one [`ClientRow`] per party
//! (with its column count, its VerFedSV value as `shapley`) and a [`VerticalOutcome`]
//! with the training loss, the balance figures and the vertical-vs-centralised test
//! accuracy, shown in the table, the summary and the page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::SimError;
use crate::metrics::RunMetrics;
use crate::plot::{self, Bar, BarChart, LineChart, Series, escape};
use crate::scenario::{ModelChoice, Partition, SimConfig};

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
    /// Fair reward policy only: whether the round explored, and how many clients
    /// received its new global model.
    pub fair_reward: Option<(bool, usize)>,
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
    /// Vertical runs: the number of feature columns the party holds (`None` for a
    /// horizontal client).
    pub columns: Option<usize>,
}

/// What a vertical run reports beyond the per-party rows.
#[derive(Clone, Debug, Serialize)]
pub struct VerticalOutcome {
    /// The column split (e.g. `digits_quadrants`).
    pub split: String,
    /// `sync` or `async`.
    pub training: String,
    /// The server's mean batch loss of the first and the last round.
    pub first_batch_loss: f64,
    pub final_batch_loss: f64,
    /// `sum_m value_m` and the loss decrease of the embeddings the valuation used
    /// (completed, final bias held fixed); equal for exact Shapley (balance).
    pub value_sum: f64,
    pub loss_decrease: f64,
    /// Synchronous runs: the matrix completion's worst relative fit error on the observed
    /// embeddings (`||observed - completed||_F / ||observed||_F`, max over parties); the
    /// balance holds for the completed embeddings. NaN for asynchronous runs (exact).
    pub completion_rel_error: f64,
    /// The vertical model's loss and accuracy on the held-out ids (the server's
    /// evaluation pass).
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// A logistic regression trained centrally on all columns of the same training ids
    /// for `centralised_epochs` epochs (about as many samples as the vertical run saw).
    pub centralised_test_loss: f64,
    pub centralised_test_accuracy: f64,
    pub centralised_epochs: usize,
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
    /// Set for a vertical run.
    pub vertical: Option<VerticalOutcome>,
    /// Set for a FACT run: every client's penalties, prizes, data cost and net.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fact: Option<crate::fact::FactOutcome>,
}

impl Report {
    /// Writes `report.json`, `rounds.csv`, `clients.csv`, `values.csv` and `report.html`
    /// into `dir`, creating it if needed.
    pub fn write(&self, dir: &Path) -> Result<(), SimError> {
        write_json(dir, self)?;
        write_file(&dir.join("rounds.csv"), &self.rounds_csv())?;
        write_file(&dir.join("clients.csv"), &self.clients_csv())?;
        write_file(&dir.join("values.csv"), &self.values_csv())?;
        write_file(&dir.join("report.html"), &self.html())?;
        Ok(())
    }

    fn rounds_csv(&self) -> String {
        let mut s = String::from(
            "round,val_accuracy,val_loss,client_loss,participants,stragglers,valuation_method,valuation_status,valuation_stop,evaluations,valuation_ms,utility_full,utility_empty,sum_values,reward_exploring,reward_recipients\n",
        );
        for r in &self.rounds {
            let _ = writeln!(
                s,
                "{},{:.6},{:.6},{:.6},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{},{}",
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
                r.values.values().sum::<f64>(),
                r.fair_reward.map_or(String::new(), |(e, _)| e.to_string()),
                r.fair_reward.map_or(String::new(), |(_, n)| n.to_string()),
            );
        }
        s
    }

    fn clients_csv(&self) -> String {
        let mut s = String::from(
            "name,client_id,behaviour,samples,shapley,rounds_participated,final_accuracy,standalone_accuracy,test_accuracy,removal_round,columns\n",
        );
        for c in &self.clients {
            let _ = writeln!(
                s,
                "{},{},{},{},{:.8},{},{:.6},{:.6},{:.6},{},{}",
                csv_field(&c.name),
                c.client_id,
                c.behaviour,
                c.samples,
                c.shapley,
                c.rounds_participated,
                c.final_accuracy,
                c.standalone_accuracy,
                c.test_accuracy,
                c.removal_round.map_or(String::new(), |r| r.to_string()),
                c.columns.map_or(String::new(), |n| n.to_string())
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
        if self.vertical.is_some() {
            return vertical_table(&rows);
        }
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
        if let Some(v) = &self.vertical {
            return vertical_summary(v);
        }
        let m = &self.metrics;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "aggregator {}",
            crate::defense::Defense::of(&self.config)
        );
        let honest = self.clients.iter().filter(|c| !c.adversary).count();
        let _ = writeln!(
            s,
            "honest clients' accuracy {:.4} (mean test accuracy of {honest} final models; best {:.4})",
            m.honest_accuracy, m.honest_accuracy_best
        );
        match (m.fairness, &m.fairness_note) {
            (Some(r), _) => {
                let _ = writeln!(
                    s,
                    "fairness {r:.4} (Pearson: standalone accuracy vs {})",
                    m.fairness_basis
                );
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
        let phases: Vec<(u64, bool, usize)> = self
            .rounds
            .iter()
            .filter_map(|r| r.fair_reward.map(|(e, n)| (r.round, e, n)))
            .collect();
        if !phases.is_empty() {
            let exploring = phases.iter().filter(|p| p.1).count();
            match phases.iter().find(|p| !p.1) {
                Some(&(round, _, n)) => {
                    let _ = writeln!(
                        s,
                        "fair reward: explored {exploring} rounds; exploits from round {round} \
                         ({n} clients received that round's model)"
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "fair reward: still exploring after {exploring} rounds (contribution \
                         estimates not yet stationary), so every client got every model"
                    );
                }
            }
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
        if let Some(fact) = &self.fact {
            s.push_str(&fact.table());
        }
        s
    }
}

/// The per-party table of a vertical run (`rows` sorted by value).
fn vertical_table(rows: &[&ClientRow]) -> String {
    let mut s = format!(
        "{:<12} {:>8} {:<10} {:>16}\n",
        "party", "columns", "behaviour", "VerFedSV value"
    );
    for c in rows {
        let columns = c.columns.map_or("-".to_string(), |n| n.to_string());
        let _ = writeln!(
            s,
            "{:<12} {:>8} {:<10} {:>16.6}",
            c.name, columns, c.behaviour, c.shapley
        );
    }
    s
}

/// `; completion relative error X` when the run was completed (synchronous), else empty.
fn completion_note(error: f64) -> String {
    if error.is_finite() {
        format!("; matrix completion relative error on the observed embeddings {error:.2e}")
    } else {
        String::new()
    }
}

/// The lines printed after a vertical run's table.
fn vertical_summary(v: &VerticalOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "vertical ({} split, {} training): batch loss {:.4} in round 1, {:.4} in the last round",
        v.split, v.training, v.first_batch_loss, v.final_batch_loss
    );
    let _ = writeln!(
        s,
        "balance: values sum to {:.6}, loss decrease of the valued embeddings {:.6} (error {:.2e}){}",
        v.value_sum,
        v.loss_decrease,
        v.value_sum - v.loss_decrease,
        completion_note(v.completion_rel_error)
    );
    let _ = writeln!(
        s,
        "test accuracy: vertical {:.4} (loss {:.4}); centralised logistic regression on all \
         columns {:.4} (loss {:.4}, {} epochs)",
        v.test_accuracy,
        v.test_loss,
        v.centralised_test_accuracy,
        v.centralised_test_loss,
        v.centralised_epochs
    );
    s
}

/// Colours of the behaviours in charts and tables, in legend order; honest clients' bars
/// use the first.
const BEHAVIOUR_COLORS: [(&str, &str); 12] = [
    ("honest", "#4c78a8"),
    ("late_joiner", "#9d755d"),
    ("noisy", "#f58518"),
    ("tiny", "#b279a2"),
    ("free_rider_noise", "#e45756"),
    ("free_rider_zero", "#7f7f7f"),
    ("label_flip", "#c9a100"),
    ("sign_flip", "#8b0000"),
    ("scaled_noise", "#d62ad6"),
    ("sybil", "#111111"),
    ("noise", "#e45756"),
    ("duplicate", "#72b7b2"),
];

/// Line colours of honest clients in the per-round values chart (none is a behaviour's).
const HONEST_LINES: [&str; 8] = [
    "#4c78a8", "#72b7b2", "#54a24b", "#1f77b4", "#17becf", "#88d27a", "#3b5b92", "#6b8e23",
];

/// The `<style>` of `report.html` besides the charts' rules.
const PAGE_CSS: &str = "body{font-family:system-ui,sans-serif;max-width:1000px;margin:24px auto;\
padding:0 16px;color:#222}h1{font-size:22px}h2{font-size:18px;margin-top:28px}\
table{border-collapse:collapse;margin:8px 0 24px;font-size:13px}\
th,td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.note{color:#666}.sw{display:inline-block;width:10px;height:10px;margin-right:6px}";

fn behaviour_color(behaviour: &str) -> &'static str {
    BEHAVIOUR_COLORS
        .iter()
        .find(|(b, _)| *b == behaviour)
        .map_or("#999999", |(_, c)| c)
}

/// `v` with `decimals` decimals, or `n/a` when it is not finite.
pub(crate) fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "n/a".into()
    }
}

/// The start of a self-contained `report.html` titled `title` (escaped here): the head
/// with the page's and the charts' styles, the title as `<h1>`, then the `Run` heading.
pub(crate) fn page_head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>{t}</title>\
         <style>{PAGE_CSS}{}</style></head><body><h1>{t}</h1><h2>Run</h2>",
        plot::CHART_CSS,
        t = escape(title)
    )
}

/// A `<table>` of `(key, value)` rows; values are escaped here.
pub(crate) fn key_value_table(rows: &[(&str, String)]) -> String {
    let mut s = String::from("<table>");
    for (key, value) in rows {
        let _ = write!(
            s,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(key),
            escape(value)
        );
    }
    s.push_str("</table>");
    s
}

impl Report {
    /// The self-contained `report.html` page (no JavaScript, no external assets): the
    /// run's summary, inline SVG charts and the per-client table.
    pub fn html(&self) -> String {
        let mut s = page_head(&format!(
            "fedval simulation: {} ({})",
            self.config.dataset, self.federation_id
        ));
        s.push_str(&key_value_table(&self.run_rows()));
        s.push_str("<h2>Global model per round</h2>");
        s.push_str(&self.model_charts());
        s.push_str("<h2>Contributions</h2>");
        s.push_str(&self.contribution_charts());
        s.push_str(&self.reputation_payment_section(None, None));
        if let Some(fact) = &self.fact {
            s.push_str(&fact.html(crate::fact::behaviour_color));
        }
        s.push_str("<h2>Clients</h2>");
        s.push_str(&self.clients_html());
        s.push_str("</body></html>\n");
        s
    }

    /// Config summary, final accuracy and the metrics block, as table rows.
    fn run_rows(&self) -> Vec<(&'static str, String)> {
        if let Some(v) = &self.vertical {
            return self.vertical_rows(v);
        }
        let c = &self.config;
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for client in &self.clients {
            *kinds.entry(client.behaviour.as_str()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let partition = match c.partition {
            Partition::Iid => "IID".to_string(),
            Partition::Dirichlet { alpha } => format!("label skew, Dirichlet alpha = {alpha}"),
            Partition::Quantity { alpha } => format!("size skew, Dirichlet alpha = {alpha}"),
        };
        let model = match c.model {
            ModelChoice::Logreg => "logistic regression".to_string(),
            ModelChoice::Mlp { hidden } => format!("MLP, {hidden} hidden units"),
        };
        let mut used: Vec<&str> = self
            .rounds
            .iter()
            .map(|r| r.valuation_method.as_str())
            .collect();
        used.sort_unstable();
        used.dedup();
        let m = &self.metrics;
        let fairness = match (m.fairness, &m.fairness_note) {
            (Some(r), _) => format!(
                "{r:.4} (Pearson: standalone test accuracy vs that of {})",
                m.fairness_basis
            ),
            (None, note) => format!("n/a ({})", note.as_deref().unwrap_or("undefined")),
        };
        let attack = match m.attack_success_rate {
            Some(rate) => format!("{rate:.4} (label flip: test samples predicted as C - 1 - y)"),
            None if c.adversaries.label_flip == 0 => "n/a (no label flippers)".into(),
            None => "n/a (no test sample has a distinct flipped label)".into(),
        };
        vec![
            ("dataset", c.dataset.clone()),
            (
                "clients",
                format!("{} ({})", self.clients.len(), kinds.join(", ")),
            ),
            (
                "rounds",
                format!("{} committed of {}", self.rounds.len(), c.rounds),
            ),
            ("partition", partition),
            ("model", model),
            (
                "local training",
                format!(
                    "{} epochs, batch {}, learning rate {}",
                    c.local_epochs, c.batch_size, c.learning_rate
                ),
            ),
            (
                "valuation",
                format!(
                    "{} (used: {}); utility {}; budget {}",
                    c.valuation,
                    if used.is_empty() {
                        "-".to_string()
                    } else {
                        used.join(", ")
                    },
                    c.utility,
                    c.valuation_budget
                ),
            ),
            ("aggregator", crate::defense::Defense::of(c).to_string()),
            ("seed", c.seed.to_string()),
            (
                "final test accuracy",
                format!(
                    "{} (loss {})",
                    num(self.final_test_accuracy, 4),
                    num(self.final_test_loss, 4)
                ),
            ),
            (
                "honest clients' accuracy",
                format!(
                    "{} (mean test accuracy of their final models; best {})",
                    num(m.honest_accuracy, 4),
                    num(m.honest_accuracy_best, 4)
                ),
            ),
            ("fairness", fairness),
            ("attack success rate", attack),
            ("wall time", format!("{:.1} s", self.wall_time_s)),
        ]
    }

    /// The run table of a vertical run.
    fn vertical_rows(&self, v: &VerticalOutcome) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for client in &self.clients {
            *kinds.entry(client.behaviour.as_str()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        vec![
            ("dataset", c.dataset.clone()),
            (
                "parties",
                format!("{} ({})", self.clients.len(), kinds.join(", ")),
            ),
            ("column split", v.split.clone()),
            (
                "rounds",
                format!("{} committed of {}", self.rounds.len(), c.rounds),
            ),
            ("training", v.training.clone()),
            (
                "batch loss",
                format!(
                    "{} in round 1, {} in the last round",
                    num(v.first_batch_loss, 4),
                    num(v.final_batch_loss, 4)
                ),
            ),
            (
                "balance (VerFedSV)",
                format!(
                    "values sum to {}; loss decrease of the valued embeddings {}{}",
                    num(v.value_sum, 6),
                    num(v.loss_decrease, 6),
                    completion_note(v.completion_rel_error)
                ),
            ),
            (
                "vertical test accuracy",
                format!("{} (loss {})", num(v.test_accuracy, 4), num(v.test_loss, 4)),
            ),
            (
                "centralised test accuracy",
                format!(
                    "{} (loss {}; logistic regression on all columns, {} epochs)",
                    num(v.centralised_test_accuracy, 4),
                    num(v.centralised_test_loss, 4),
                    v.centralised_epochs
                ),
            ),
            ("seed", c.seed.to_string()),
            ("wall time", format!("{:.1} s", self.wall_time_s)),
        ]
    }

    /// Validation accuracy, then validation and client training loss, per round.
    fn model_charts(&self) -> String {
        let line = |label: &str, color: &str, f: fn(&RoundRow) -> f64| Series {
            label: label.into(),
            points: self.rounds.iter().map(|r| (r.round as f64, f(r))).collect(),
            color: color.into(),
            emphasised: false,
        };
        let accuracy = LineChart {
            title: "Validation accuracy of the global model".into(),
            x_label: "round".into(),
            y_label: "accuracy".into(),
            integer_x: true,
            series: vec![line("validation accuracy", "#4c78a8", |r| r.val_accuracy)],
        };
        let loss = LineChart {
            title: "Loss per round".into(),
            x_label: "round".into(),
            y_label: "cross-entropy".into(),
            integer_x: true,
            series: vec![
                line("validation loss", "#e45756", |r| r.val_loss),
                line("clients' training loss", "#f58518", |r| r.client_loss),
            ],
        };
        accuracy.svg() + &loss.svg()
    }

    /// Cumulative Shapley value per client (sorted bars) and every client's per-round
    /// value (lines); a note instead when the run computed no values.
    fn contribution_charts(&self) -> String {
        if self.rounds.iter().all(|r| r.values.is_empty()) {
            return format!(
                "<p class=\"note\">No contribution values: valuation \"{}\" computed none in \
                 this run, so the contribution charts are left out.</p>",
                escape(&self.config.valuation)
            );
        }
        let mut sorted: Vec<&ClientRow> = self.clients.iter().collect();
        sorted.sort_by(|a, b| b.shapley.total_cmp(&a.shapley));
        let bars = BarChart {
            title: "Cumulative Shapley value per client".into(),
            x_label: "sum of per-round Shapley values".into(),
            bars: sorted
                .iter()
                .map(|c| Bar {
                    label: c.name.clone(),
                    value: c.shapley,
                    color: behaviour_color(&c.behaviour).into(),
                })
                .collect(),
            legend: BEHAVIOUR_COLORS
                .iter()
                .filter(|(b, _)| self.clients.iter().any(|c| c.behaviour == *b))
                .map(|(b, c)| (b.to_string(), c.to_string()))
                .collect(),
        };
        // Every name that has a value, clients first in their order.
        let mut names: Vec<&str> = self.clients.iter().map(|c| c.name.as_str()).collect();
        for r in &self.rounds {
            for name in r.values.keys() {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        let mut honest_lines = HONEST_LINES.iter().cycle();
        let series = names
            .iter()
            .map(|&name| {
                let behaviour = self
                    .clients
                    .iter()
                    .find(|c| c.name == name)
                    .map_or("unknown", |c| c.behaviour.as_str());
                let honest = behaviour == "honest";
                let color = if honest {
                    honest_lines.next().copied().unwrap_or("#4c78a8")
                } else {
                    behaviour_color(behaviour)
                };
                Series {
                    label: format!("{name} ({behaviour})"),
                    // A round without this client's value is a gap, not a zero.
                    points: self
                        .rounds
                        .iter()
                        .map(|r| {
                            (
                                r.round as f64,
                                r.values.get(name).copied().unwrap_or(f64::NAN),
                            )
                        })
                        .collect(),
                    color: color.into(),
                    emphasised: !honest,
                }
            })
            .collect();
        let lines = LineChart {
            title: "Shapley value per round (dashed: not honest)".into(),
            x_label: "round".into(),
            y_label: "Shapley value".into(),
            integer_x: true,
            series,
        };
        bars.svg() + &lines.svg()
    }

    /// Reputation per client and round, and payment per client, once a run records them
    /// (the simulator has neither yet, so [`Report::html`] passes `None`, which prints a
    /// note instead of a chart).
    fn reputation_payment_section(
        &self,
        reputations: Option<&BTreeMap<String, Vec<(u64, f64)>>>,
        payments: Option<&BTreeMap<String, f64>>,
    ) -> String {
        let mut s = String::from("<h2>Reputations and payments</h2>");
        let behaviour = |name: &str| {
            self.clients
                .iter()
                .find(|c| c.name == name)
                .map_or("unknown", |c| c.behaviour.as_str())
        };
        match reputations {
            Some(reputations) => {
                let chart = LineChart {
                    title: "Reputation per round".into(),
                    x_label: "round".into(),
                    y_label: "reputation".into(),
                    integer_x: true,
                    series: reputations
                        .iter()
                        .map(|(name, points)| Series {
                            label: format!("{name} ({})", behaviour(name)),
                            points: points.iter().map(|&(r, v)| (r as f64, v)).collect(),
                            color: behaviour_color(behaviour(name)).into(),
                            emphasised: behaviour(name) != "honest",
                        })
                        .collect(),
                };
                s.push_str(&chart.svg());
            }
            None => s.push_str("<p class=\"note\">No reputations recorded in this run.</p>"),
        }
        match payments {
            Some(payments) => {
                let chart = BarChart {
                    title: "Payment per client".into(),
                    x_label: "payment".into(),
                    bars: payments
                        .iter()
                        .map(|(name, &value)| Bar {
                            label: name.clone(),
                            value,
                            color: behaviour_color(behaviour(name)).into(),
                        })
                        .collect(),
                    legend: Vec::new(),
                };
                s.push_str(&chart.svg());
            }
            None => s.push_str("<p class=\"note\">No payments recorded in this run.</p>"),
        }
        s
    }

    /// The per-client table, in client order.
    fn clients_html(&self) -> String {
        let mut s = String::from(
            "<table><tr><th>client</th><th>behaviour</th><th>samples</th><th>columns</th>\
             <th>rounds</th><th>Shapley (sum)</th><th>standalone acc</th>\
             <th>final acc (local)</th><th>test acc</th><th>removed</th></tr>",
        );
        for c in &self.clients {
            let _ = write!(
                s,
                "<tr><td>{}</td><td><span class=\"sw\" style=\"background:{}\"></span>{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                escape(&c.name),
                behaviour_color(&c.behaviour),
                escape(&c.behaviour),
                c.samples,
                c.columns.map_or("-".to_string(), |n| n.to_string()),
                c.rounds_participated,
                num(c.shapley, 5),
                num(c.standalone_accuracy, 4),
                num(c.final_accuracy, 4),
                num(c.test_accuracy, 4),
                c.removal_round.map_or("-".to_string(), |r| r.to_string())
            );
        }
        s.push_str("</table>");
        s
    }
}

/// Creates `dir` if needed and writes `report` into it as pretty `report.json`.
pub(crate) fn write_json(dir: &Path, report: &impl Serialize) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::Output {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| SimError::Config(format!("report serialisation: {e}")))?;
    write_file(&dir.join("report.json"), &json)
}

/// Writes `text` to `path`, naming the path in the error.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(|e| SimError::Output {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Quotes a CSV field when it holds a comma, quote or newline.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::assert_well_formed;

    fn client(name: &str, behaviour: &str, shapley: f64) -> ClientRow {
        ClientRow {
            name: name.into(),
            client_id: format!("id-{name}"),
            behaviour: behaviour.into(),
            adversary: behaviour == "sign_flip",
            samples: 50,
            shapley,
            rounds_participated: 2,
            final_accuracy: 0.8,
            standalone_accuracy: f64::NAN,
            test_accuracy: 0.75,
            removal_round: None,
            columns: None,
        }
    }

    fn round(round: u64, values: &[(&str, f64)]) -> RoundRow {
        RoundRow {
            round,
            val_accuracy: 0.5 + 0.1 * round as f64,
            val_loss: 1.0 / round as f64,
            client_loss: f64::NAN,
            participants: values.len(),
            stragglers: 0,
            valuation_method: "exact".into(),
            valuation_status: "done".into(),
            valuation_stop: "exact".into(),
            evaluations: 8,
            valuation_ms: 1,
            utility_full: 0.1,
            utility_empty: 0.0,
            fair_reward: None,
            values: values.iter().map(|&(n, v)| (n.to_string(), v)).collect(),
        }
    }

    fn report(rounds: Vec<RoundRow>) -> Report {
        Report {
            config: SimConfig::default(),
            federation_id: "sim".into(),
            server: "http://127.0.0.1:1".into(),
            wall_time_s: 1.5,
            final_test_accuracy: 0.7,
            final_test_loss: 0.9,
            rounds,
            clients: vec![
                client("alice", "honest", 0.3),
                client("<&>bob", "sign_flip", -0.2),
            ],
            metrics: RunMetrics {
                fairness: None,
                fairness_note: Some("fewer than two honest clients".into()),
                fairness_basis: "own final models".into(),
                honest_accuracy: 0.75,
                honest_accuracy_best: 0.8,
                attack_success_rate: None,
            },
            vertical: None,
            fact: None,
        }
    }

    #[test]
    fn write_produces_a_well_formed_html_page_with_the_clients() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rounds = vec![
            round(1, &[("alice", 0.1), ("<&>bob", -0.1)]),
            round(2, &[("alice", 0.2), ("<&>bob", -0.1)]),
        ];
        report(rounds).write(dir.path()).expect("write");
        let html = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
        assert_well_formed(&html);
        assert!(html.contains("alice"));
        assert!(html.contains("&lt;&amp;&gt;bob") && !html.contains("<&>bob"));
        // Accuracy (1 series), loss (2 series, one all NaN), Shapley bars, value lines.
        assert_eq!(html.matches("<svg").count(), 4);
        assert_eq!(html.matches(r#"<rect class="bar""#).count(), 2);
        assert!(html.contains("fewer than two honest clients"));
        assert!(html.contains("No reputations recorded"));
        assert!(!html.contains("<script"));
        for file in ["report.json", "rounds.csv", "clients.csv", "values.csv"] {
            assert!(dir.path().join(file).exists(), "{file}");
        }
    }

    #[test]
    fn a_run_without_values_skips_the_contribution_charts() {
        let html = report(vec![round(1, &[]), round(2, &[])]).html();
        assert_well_formed(&html);
        assert!(html.contains("No contribution values"));
        assert_eq!(html.matches("<svg").count(), 2);
        let empty = report(Vec::new()).html();
        assert_well_formed(&empty);
        assert!(empty.contains("no data"));
    }

    #[test]
    fn a_vertical_report_shows_parties_balance_and_both_accuracies() {
        let mut r = report(vec![round(1, &[("q0", 0.3), ("noise", -0.01)])]);
        r.clients = vec![client("q0", "honest", 0.3), client("noise", "noise", -0.01)];
        r.clients[0].columns = Some(16);
        r.clients[1].columns = Some(16);
        r.vertical = Some(VerticalOutcome {
            split: "digits_quadrants".into(),
            training: "sync".into(),
            first_batch_loss: 2.3,
            final_batch_loss: 0.4,
            value_sum: 0.29,
            loss_decrease: 0.29,
            completion_rel_error: 0.031,
            test_loss: 0.35,
            test_accuracy: 0.91,
            centralised_test_loss: 0.3,
            centralised_test_accuracy: 0.93,
            centralised_epochs: 2,
        });
        let table = r.table(true);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("VerFedSV value"), "{table}");
        assert!(
            lines[1].starts_with("q0") && lines[1].contains(" 16 "),
            "{table}"
        );
        assert!(lines[2].starts_with("noise"), "{table}");
        let summary = r.summary();
        assert!(summary.contains("vertical 0.9100"), "{summary}");
        assert!(summary.contains("all columns 0.9300"), "{summary}");
        assert!(summary.contains("values sum to 0.290000"), "{summary}");
        let html = r.html();
        assert_well_formed(&html);
        assert!(html.contains("centralised test accuracy"));
        assert!(html.contains("digits_quadrants"));
        let csv = r.clients_csv();
        assert!(csv.lines().next().unwrap_or("").ends_with(",columns"));
        assert!(csv.lines().nth(1).unwrap_or("").ends_with(",16"), "{csv}");
    }

    #[test]
    fn reputation_and_payment_data_become_charts() {
        let r = report(Vec::new());
        let reputations = BTreeMap::from([("alice".to_string(), vec![(1, 0.5), (2, 0.7)])]);
        let payments = BTreeMap::from([("alice".to_string(), 3.0), ("<&>bob".to_string(), 0.0)]);
        let html = r.reputation_payment_section(Some(&reputations), Some(&payments));
        assert_well_formed(&html);
        assert_eq!(html.matches("<circle").count(), 2);
        assert_eq!(html.matches(r#"<rect class="bar""#).count(), 2);
    }
}
