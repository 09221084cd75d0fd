//! The misreport sweep's table: the focal client's whole-run utility for every report factor
//! under every payment rule (one seeded gRPC run each, driven by [`super::run`]), plus the
//! per-round check of the truthful run ([`super::replay`]).
//!
//! Read the two tables differently. The per-round table fixes each round's state and the
//! others' reports, which is exactly Truth-FedBan's guarantee (no misreport beats the truth).
//! The whole-run table lets a misreport change who uploads when, hence every later round's
//! state, trigger times and essential caps; no truthfulness guarantee covers that, so a
//! misreport may beat the truth there. In the shipped linear scenarios it does,
//! systematically, for over-reporting: a client that over-reports is selected less often,
//! its pending Gram update grows between uploads, and when it is selected its larger
//! log-det gain earns a larger critical value; its total payment stays about the same while
//! it bears the cost of fewer rounds (see `bandit_misreport.toml`). Under the baseline,
//! reporting a higher cost raises the payment of every round the client is still selected
//! in, so misreporting pays in both tables.

use std::fmt::Write as _;

use serde::Serialize;

use super::replay::PerRoundCheck;
use super::report::per_round_text;
use crate::plot::{LineChart, Series, escape};
use crate::report::num;

/// The focal client's outcome in one sweep run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SweepRow {
    /// `truth_fedban` or `baseline`.
    pub mechanism: String,
    /// Its report factor in this run.
    pub factor: f64,
    /// Payment (ledger) + credited value - true cost incurred.
    pub utility: f64,
    pub payment: f64,
    pub credited_value: f64,
    pub true_cost: f64,
    pub rounds_selected: usize,
    /// Rounds it was paid the essential cap in.
    pub rounds_capped: usize,
    /// The run's communication rounds and cumulative regret.
    pub communication_rounds: usize,
    pub cumulative_regret: f64,
    /// Whether every invariant check of the run held.
    pub checks_ok: bool,
}

/// The sweep: every run's row and the per-round check.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SweepTable {
    /// The focal client's name.
    pub client: String,
    pub rows: Vec<SweepRow>,
    /// The per-round check on the truthful run (`None` if it was skipped).
    pub per_round: Option<PerRoundCheck>,
}

impl SweepTable {
    /// The mechanisms in first-seen order.
    fn mechanisms(&self) -> Vec<&str> {
        let mut m: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !m.contains(&r.mechanism.as_str()) {
                m.push(&r.mechanism);
            }
        }
        m
    }

    /// The factors in first-seen order.
    fn factors(&self) -> Vec<f64> {
        let mut f: Vec<f64> = Vec::new();
        for r in &self.rows {
            if !f.contains(&r.factor) {
                f.push(r.factor);
            }
        }
        f
    }

    fn row(&self, mechanism: &str, factor: f64) -> Option<&SweepRow> {
        self.rows
            .iter()
            .find(|r| r.mechanism == mechanism && r.factor == factor)
    }

    /// For each mechanism, the factor with the highest whole-run utility.
    pub fn best_factors(&self) -> Vec<(String, f64)> {
        self.mechanisms()
            .into_iter()
            .filter_map(|m| {
                self.rows
                    .iter()
                    .filter(|r| r.mechanism == m)
                    .max_by(|a, b| a.utility.total_cmp(&b.utility))
                    .map(|r| (m.to_string(), r.factor))
            })
            .collect()
    }

    /// The tables as text: whole-run utilities (rounds selected in brackets), then the
    /// per-round check.
    pub fn text(&self) -> String {
        let mechanisms = self.mechanisms();
        let mut s = format!(
            "misreport sweep: {} reports factor x its true cost; whole-run utility = payment \
             + credited - true cost (rounds selected, of which paid the essential cap):\n{:>8}",
            self.client, "factor"
        );
        for m in &mechanisms {
            let _ = write!(s, " {m:>22}");
        }
        s.push('\n');
        for f in self.factors() {
            let _ = write!(s, "{f:>8.2}");
            for m in &mechanisms {
                let cell = self.row(m, f).map_or("-".to_string(), |r| {
                    format!(
                        "{:.4} ({}, {}){}",
                        r.utility,
                        r.rounds_selected,
                        r.rounds_capped,
                        if r.checks_ok { "" } else { "!" }
                    )
                });
                let _ = write!(s, " {cell:>22}");
            }
            s.push('\n');
        }
        for (m, f) in self.best_factors() {
            let _ = writeln!(s, "{m}: best whole-run factor {f}");
        }
        if let Some(p) = &self.per_round {
            s.push_str(&per_round_text(p));
        }
        s
    }

    /// One CSV line per run.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "mechanism,factor,utility,payment,credited_value,true_cost,rounds_selected,rounds_capped,communication_rounds,cumulative_regret,checks_ok\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{},{},{:.8},{:.8},{:.8},{:.8},{},{},{},{:.6},{}",
                r.mechanism,
                r.factor,
                r.utility,
                r.payment,
                r.credited_value,
                r.true_cost,
                r.rounds_selected,
                r.rounds_capped,
                r.communication_rounds,
                r.cumulative_regret,
                r.checks_ok
            );
        }
        s
    }

    /// The tables and a chart of utility against the factor.
    pub fn html(&self) -> String {
        let mechanisms = self.mechanisms();
        let colors = ["#4c78a8", "#e45756", "#54a24b", "#b279a2"];
        let series = |points: &dyn Fn(&str) -> Vec<(f64, f64)>, suffix: &str| -> Vec<Series> {
            mechanisms
                .iter()
                .enumerate()
                .map(|(k, m)| Series {
                    label: format!("{m}{suffix}"),
                    points: points(m),
                    color: colors[k % colors.len()].to_string(),
                    emphasised: k > 0,
                })
                .collect()
        };
        let whole = |m: &str| -> Vec<(f64, f64)> {
            self.factors()
                .iter()
                .filter_map(|&f| self.row(m, f).map(|r| (f, r.utility)))
                .collect()
        };
        let mut charts = vec![LineChart {
            title: format!("{}: whole-run utility by report factor", self.client),
            x_label: "report factor (1 = truthful)".into(),
            y_label: "utility".into(),
            integer_x: false,
            series: series(&whole, ""),
        }];
        let mut s = format!(
            "<p class=\"note\">{} reports factor x its true cost in every round of a whole \
             seeded run (the others as configured). Whole-run truthfulness is not guaranteed: \
             a misreport changes later rounds' states. The per-round table fixes each round's \
             state and the others' reports, which is what Truth-FedBan guarantees.</p>\
             <table><tr><th>factor</th>",
            escape(&self.client)
        );
        for m in &mechanisms {
            let _ = write!(
                s,
                "<th>{} utility (rounds selected, capped)</th>",
                escape(m)
            );
        }
        s.push_str("</tr>");
        for f in self.factors() {
            let _ = write!(s, "<tr><td class=\"n\">{f}</td>");
            for m in &mechanisms {
                let cell = self.row(m, f).map_or("-".to_string(), |r| {
                    format!(
                        "{} ({}, {})",
                        num(r.utility, 4),
                        r.rounds_selected,
                        r.rounds_capped
                    )
                });
                let _ = write!(s, "<td class=\"n\">{cell}</td>");
            }
            s.push_str("</tr>");
        }
        s.push_str("</table>");
        if let Some(p) = &self.per_round {
            let _ = write!(
                s,
                "<h3>Per-round check ({} rounds)</h3><table><tr><th>factor</th>",
                p.rounds
            );
            for m in &p.mechanisms {
                let _ = write!(
                    s,
                    "<th>{} utility (sum over rounds)</th>",
                    escape(&m.mechanism)
                );
            }
            s.push_str("</tr>");
            for (k, f) in p.factors.iter().enumerate() {
                let _ = write!(s, "<tr><td class=\"n\">{f}</td>");
                for m in &p.mechanisms {
                    let u = m.utility_sum.get(k).copied().unwrap_or(f64::NAN);
                    let _ = write!(s, "<td class=\"n\">{}</td>", num(u, 4));
                }
                s.push_str("</tr>");
            }
            s.push_str("</table><p>");
            for m in &p.mechanisms {
                let _ = write!(
                    s,
                    "{}: a misreport beats the truth in {} of {} rounds (largest gain {}).<br/>",
                    escape(&m.mechanism),
                    m.rounds_misreport_gains,
                    p.rounds,
                    num(m.max_gain, 4)
                );
            }
            s.push_str("</p>");
            let per_round = |m: &str| -> Vec<(f64, f64)> {
                p.mechanisms
                    .iter()
                    .find(|x| x.mechanism == m)
                    .map(|x| {
                        p.factors
                            .iter()
                            .copied()
                            .zip(x.utility_sum.iter().copied())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            charts.push(LineChart {
                title: format!("{}: per-round utility (summed) by report factor", p.client),
                x_label: "report factor (1 = truthful)".into(),
                y_label: "utility".into(),
                integer_x: false,
                series: series(&per_round, " (per round)"),
            });
        }
        for c in charts {
            s.push_str(&c.svg());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::replay::PerRoundMechanism;

    fn table() -> SweepTable {
        let row = |mechanism: &str, factor: f64, utility: f64| SweepRow {
            mechanism: mechanism.into(),
            factor,
            utility,
            payment: utility + 1.0,
            credited_value: 0.0,
            true_cost: 1.0,
            rounds_selected: 3,
            rounds_capped: 1,
            communication_rounds: 10,
            cumulative_regret: 5.0,
            checks_ok: true,
        };
        SweepTable {
            client: "client-00".into(),
            rows: vec![
                row("truth_fedban", 0.5, 0.2),
                row("truth_fedban", 1.0, 0.4),
                row("truth_fedban", 2.0, 0.1),
                row("baseline", 0.5, -0.3),
                row("baseline", 1.0, 0.0),
                row("baseline", 2.0, 0.6),
            ],
            per_round: Some(PerRoundCheck {
                client: "client-00".into(),
                factors: vec![0.5, 1.0, 2.0],
                rounds: 10,
                mechanisms: vec![
                    PerRoundMechanism {
                        mechanism: "truth_fedban".into(),
                        utility_sum: vec![0.3, 0.4, 0.1],
                        truthful_sum: 0.4,
                        rounds_misreport_gains: 0,
                        max_gain: 0.0,
                    },
                    PerRoundMechanism {
                        mechanism: "baseline".into(),
                        utility_sum: vec![-0.2, 0.0, 0.5],
                        truthful_sum: 0.0,
                        rounds_misreport_gains: 4,
                        max_gain: 0.25,
                    },
                ],
            }),
        }
    }

    #[test]
    fn the_tables_list_every_run_and_the_best_factor() {
        let t = table();
        assert_eq!(
            t.best_factors(),
            [
                ("truth_fedban".to_string(), 1.0),
                ("baseline".to_string(), 2.0)
            ]
        );
        let text = t.text();
        assert!(
            text.contains("    1.00          0.4000 (3, 1)          0.0000 (3, 1)"),
            "{text}"
        );
        assert!(text.contains("baseline: a misreport beats the truth in 4 of 10 rounds"));
        assert_eq!(t.csv().lines().count(), 7);
        let html = t.html();
        crate::plot::tests::assert_well_formed(&format!("<div>{html}</div>"));
        assert_eq!(html.matches("<svg").count(), 2);
    }
}
