//! The report of a bandit run: the per-client table (behaviour, rounds selected, true cost,
//! payment from the ledger, utility), the run summary (steps, communication rounds against
//! every-round communication, cumulative regret and `regret / sqrt(t)`, social cost, the
//! invariant checks, the replay), the misreport sweep, and the files: `report.json`,
//! `regret.csv`, `rounds.csv`, `sweep.csv` (with a sweep) and `report.html` with the regret
//! charts.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::analysis::{Outcome, scaled_regret};
use super::replay::{PerRoundCheck, Replay};
use super::sweep::SweepTable;
use crate::SimError;
use crate::plot::{LineChart, Series, escape};
use crate::report::{csv_field, key_value_table, num, page_head, write_file, write_json};
use crate::scenario::SimConfig;

/// Points of the regret charts.
const CHART_POINTS: usize = 400;

/// Everything a bandit run reports.
#[derive(Clone, Debug, Serialize)]
pub struct BanditReport {
    pub config: SimConfig,
    pub federation_id: String,
    pub server: String,
    pub wall_time_s: f64,
    /// `truth_fedban` or `baseline`.
    pub mechanism: String,
    /// `linear` or `digits`.
    pub env: String,
    /// Context dimension `d`.
    pub dim: usize,
    pub outcome: Outcome,
    /// The offline replay (`None` when skipped, e.g. for a large `d`).
    pub replay: Option<Replay>,
    /// The misreport sweep, when one ran.
    pub sweep: Option<SweepTable>,
}

/// `regret(t) / sqrt(t)` at `t = T/16, T/8, T/4, T/2, T` (distinct, existing steps).
pub fn checkpoints(curve: &[(u64, f64)]) -> Vec<(u64, f64, f64)> {
    let n = curve.len();
    let mut out: Vec<(u64, f64, f64)> = [16, 8, 4, 2, 1]
        .iter()
        .filter_map(|&k| curve.get((n / k).checked_sub(1)?))
        .map(|&(t, r)| (t, r, r / (t.max(1) as f64).sqrt()))
        .collect();
    out.dedup_by_key(|p| p.0);
    out
}

impl BanditReport {
    /// Writes `report.json`, `regret.csv`, `rounds.csv`, `sweep.csv` (with a sweep) and
    /// `report.html` into `dir`, creating it if needed.
    pub fn write(&self, dir: &Path) -> Result<(), SimError> {
        write_json(dir, self)?;
        let mut regret = String::from("step,cumulative_regret,regret_over_sqrt_t\n");
        for &(t, r) in &self.outcome.curve {
            let _ = writeln!(regret, "{t},{r:.8},{:.8}", r / (t.max(1) as f64).sqrt());
        }
        write_file(&dir.join("regret.csv"), &regret)?;
        let mut rounds =
            String::from("round,step,trigger_client,selected,value,target,paid,capped\n");
        for r in &self.outcome.rounds {
            let _ = writeln!(
                rounds,
                "{},{},{},{},{:.8},{:.8},{:.8},{}",
                r.round,
                r.step,
                csv_field(&r.trigger_client),
                csv_field(&r.selected.join(" ")),
                r.value,
                r.target,
                r.paid,
                r.capped
            );
        }
        write_file(&dir.join("rounds.csv"), &rounds)?;
        if let Some(sweep) = &self.sweep {
            write_file(&dir.join("sweep.csv"), &sweep.csv())?;
        }
        write_file(&dir.join("report.html"), &self.html())?;
        Ok(())
    }

    /// The per-client table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<10} {:<16} {:>6} {:>9} {:>9} {:>6} {:>10} {:>10} {:>10} {:>10}\n",
            "client",
            "behaviour",
            "steps",
            "regret",
            "selected",
            "capped",
            "true cost",
            "payment",
            "credited",
            "utility"
        );
        for c in &self.outcome.clients {
            let _ = writeln!(
                s,
                "{:<10} {:<16} {:>6} {:>9.3} {:>4}/{:<4} {:>6} {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
                c.name,
                c.behaviour,
                c.steps,
                c.regret,
                c.rounds_selected,
                c.rounds_reported,
                c.rounds_capped,
                c.true_cost,
                c.payment,
                c.credited_value,
                c.utility
            );
        }
        s
    }

    /// The run summary: communication, regret, costs, checks and replay.
    pub fn summary(&self) -> String {
        let o = &self.outcome;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} environment, d = {}, mechanism {}: {} steps, {} communication rounds \
             (every-round communication: {}; {:.2}%)",
            self.env,
            self.dim,
            self.mechanism,
            o.steps,
            o.communication_rounds,
            o.steps,
            100.0 * o.communication_rounds as f64 / o.steps.max(1) as f64
        );
        let _ = writeln!(
            s,
            "cumulative regret {:.3}; social cost {:.3}; total paid {:.3}",
            o.cumulative_regret, o.social_cost, o.total_paid
        );
        let points: Vec<String> = checkpoints(&o.curve)
            .iter()
            .map(|(t, r, q)| format!("t={t}: {r:.2} ({q:.3})"))
            .collect();
        let _ = writeln!(s, "regret (regret/sqrt(t)): {}", points.join(", "));
        for c in &o.checks {
            let _ = writeln!(
                s,
                "check {:<38} {}  {}",
                c.name,
                if c.ok { "ok" } else { "FAILED" },
                c.detail
            );
        }
        let _ = writeln!(s, "replay: {}", self.replay_summary());
        if let Some(sweep) = &self.sweep {
            s.push_str(&sweep.text());
        }
        s
    }

    fn run_rows(&self) -> Vec<(&'static str, String)> {
        let o = &self.outcome;
        let b = self.config.bandit.as_ref();
        let mut rows = vec![
            (
                "environment",
                format!(
                    "{} (d = {}), {} clients",
                    self.env,
                    self.dim,
                    o.clients.len()
                ),
            ),
            ("mechanism", self.mechanism.clone()),
            ("seed", self.config.seed.to_string()),
            ("steps", o.steps.to_string()),
            (
                "communication rounds",
                format!(
                    "{} (every-round communication: {} rounds)",
                    o.communication_rounds, o.steps
                ),
            ),
            ("cumulative regret", num(o.cumulative_regret, 3)),
            (
                "social cost (true costs of participants)",
                num(o.social_cost, 3),
            ),
            ("total paid", num(o.total_paid, 3)),
            ("server", self.server.clone()),
            ("wall time", format!("{:.1} s", self.wall_time_s)),
        ];
        if let Some(b) = b {
            rows.push((
                "settings",
                format!(
                    "lambda {}, alpha {}, threshold {}, beta {}, essential cap {}, costs \
                     U[{}, {}]",
                    b.lambda,
                    b.alpha,
                    b.threshold,
                    b.beta,
                    b.essential_cap,
                    b.cost_low,
                    b.cost_high
                ),
            ));
        }
        rows
    }

    fn charts(&self) -> String {
        let curve = &self.outcome.curve;
        let scaled = scaled_regret(curve, CHART_POINTS);
        let stride = (curve.len() / CHART_POINTS).max(1);
        let raw: Vec<(f64, f64)> = curve
            .iter()
            .step_by(stride)
            .chain(curve.last())
            .map(|&(t, r)| (t as f64, r))
            .collect();
        let line = |label: &str, points: Vec<(f64, f64)>, color: &str| Series {
            label: label.to_string(),
            points,
            color: color.to_string(),
            emphasised: false,
        };
        let ratio = LineChart {
            title: "Cumulative regret / sqrt(t)".into(),
            x_label: "step t".into(),
            y_label: "regret(t) / sqrt(t)".into(),
            integer_x: true,
            series: vec![line(
                "regret / sqrt(t)",
                scaled.iter().map(|&(t, q)| (t as f64, q)).collect(),
                "#4c78a8",
            )],
        };
        let regret = LineChart {
            title: "Cumulative regret".into(),
            x_label: "step t".into(),
            y_label: "regret(t)".into(),
            integer_x: true,
            series: vec![line("regret", raw, "#e45756")],
        };
        format!("{}{}", ratio.svg(), regret.svg())
    }

    fn clients_html(&self) -> String {
        let mut s = String::from(
            "<table><tr><th>client</th><th>behaviour</th><th>steps</th><th>regret</th>\
             <th>selected</th><th>capped</th><th>true cost</th><th>payment (ledger)</th><th>credited</th>\
             <th>utility</th></tr>",
        );
        for c in &self.outcome.clients {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{} / {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                escape(&c.name),
                escape(&c.behaviour),
                c.steps,
                num(c.regret, 3),
                c.rounds_selected,
                c.rounds_reported,
                c.rounds_capped,
                num(c.true_cost, 4),
                num(c.payment, 4),
                num(c.credited_value, 4),
                num(c.utility, 4)
            );
        }
        s.push_str("</table>");
        s
    }

    /// What the replay found, in one line (`skipped` without a replay).
    fn replay_summary(&self) -> String {
        match &self.replay {
            Some(r) => format!(
                "{} steps and {} rounds with fedval-core; {} selection mismatches; max payment \
                 error {:.2e}{}",
                r.steps,
                r.rounds,
                r.selection_mismatches,
                r.max_payment_error,
                r.divergence
                    .as_ref()
                    .map_or(String::new(), |d| format!("; stopped: {d}"))
            ),
            None => "skipped".into(),
        }
    }

    fn checks_html(&self) -> String {
        let mut rows: Vec<(&str, String)> = self
            .outcome
            .checks
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    format!("{}: {}", if c.ok { "ok" } else { "FAILED" }, c.detail),
                )
            })
            .collect();
        rows.push(("replay", self.replay_summary()));
        key_value_table(&rows)
    }

    /// The self-contained `report.html` page.
    pub fn html(&self) -> String {
        let mut s = page_head(&format!(
            "fedval bandit simulation: {} ({}, {})",
            self.env, self.mechanism, self.federation_id
        ));
        s.push_str(&key_value_table(&self.run_rows()));
        s.push_str("<h2>Regret</h2>");
        if self.env == "digits" {
            s.push_str(
                "<p class=\"note\">The digits environment is a misspecified linear model \
                 (class indicators are not linear in the pixels): its regret need not be \
                 sublinear. The linear environment is the one for the sqrt(T) bar.</p>",
            );
        }
        s.push_str(&self.charts());
        s.push_str("<h2>Clients</h2>");
        s.push_str(&self.clients_html());
        s.push_str("<h2>Checks</h2>");
        s.push_str(&self.checks_html());
        if let Some(sweep) = &self.sweep {
            s.push_str("<h2>Misreport sweep</h2>");
            s.push_str(&sweep.html());
        }
        s.push_str("</body></html>\n");
        s
    }
}

/// The per-round check as text lines (shared by the sweep's text).
pub(crate) fn per_round_text(p: &PerRoundCheck) -> String {
    let mut s = format!(
        "per-round check for {} over {} rounds (others' reports and the round's state \
         fixed; utility summed over rounds):\n{:>8}",
        p.client, p.rounds, "factor"
    );
    for m in &p.mechanisms {
        let _ = write!(s, " {:>14}", m.mechanism);
    }
    s.push('\n');
    for (k, f) in p.factors.iter().enumerate() {
        let _ = write!(s, "{f:>8.2}");
        for m in &p.mechanisms {
            let _ = write!(
                s,
                " {:>14.4}",
                m.utility_sum.get(k).copied().unwrap_or(f64::NAN)
            );
        }
        s.push('\n');
    }
    for m in &p.mechanisms {
        let _ = writeln!(
            s,
            "{}: a misreport beats the truth in {} of {} rounds (largest gain {:.4})",
            m.mechanism, m.rounds_misreport_gains, p.rounds, m.max_gain
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::BanditSim;
    use crate::bandit::analysis::{outcome, tests::synthetic};
    use crate::plot::tests::assert_well_formed;

    fn report() -> BanditReport {
        let (runs, records, ledger) = synthetic(400, &[50, 150, 300], 0.9);
        BanditReport {
            config: SimConfig {
                bandit: Some(BanditSim::default()),
                ..SimConfig::default()
            },
            federation_id: "sim".into(),
            server: "http://127.0.0.1:1".into(),
            wall_time_s: 1.5,
            mechanism: "truth_fedban".into(),
            env: "linear".into(),
            dim: 5,
            outcome: outcome(&runs, &records, &ledger),
            replay: None,
            sweep: None,
        }
    }

    #[test]
    fn checkpoints_divide_by_the_root_of_t() {
        let curve: Vec<(u64, f64)> = (1..=160).map(|t| (t, 3.0 * (t as f64).sqrt())).collect();
        let c = checkpoints(&curve);
        assert_eq!(
            c.iter().map(|p| p.0).collect::<Vec<_>>(),
            [10, 20, 40, 80, 160]
        );
        assert!(c.iter().all(|p| (p.2 - 3.0).abs() < 1e-12));
        assert_eq!(checkpoints(&curve[..3]).len(), 2);
        assert!(checkpoints(&[]).is_empty());
    }

    #[test]
    fn the_report_writes_its_files_and_a_well_formed_page() {
        let r = report();
        let dir = tempfile::tempdir().expect("tempdir");
        r.write(dir.path()).expect("write");
        for f in ["report.json", "regret.csv", "rounds.csv", "report.html"] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        assert!(!dir.path().join("sweep.csv").exists());
        let regret = std::fs::read_to_string(dir.path().join("regret.csv")).expect("regret");
        assert_eq!(regret.lines().count(), 401);
        let rounds = std::fs::read_to_string(dir.path().join("rounds.csv")).expect("rounds");
        assert_eq!(
            rounds.lines().nth(1),
            Some("1,50,client-01,client-00,2.00000000,1.50000000,0.90000000,0")
        );
        let html = r.html();
        let body = html
            .split_once("<body>")
            .and_then(|(_, b)| b.split_once("</body>"))
            .map(|(b, _)| b)
            .expect("body");
        assert_well_formed(&format!("<body>{body}</body>"));
        assert!(html.contains("Cumulative regret / sqrt(t)"));
        assert!(html.contains("client-00"));
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("report.json")).expect("json"),
        )
        .expect("valid json");
        assert_eq!(json["outcome"]["communication_rounds"], 3);
        let table = r.table();
        assert_eq!(table.lines().count(), 3);
        assert!(
            table.lines().nth(1).expect("row").contains("3/3"),
            "{table}"
        );
        let summary = r.summary();
        assert!(
            summary.contains("400 steps, 3 communication rounds"),
            "{summary}"
        );
        assert!(!summary.contains("FAILED"), "{summary}");
    }
}
