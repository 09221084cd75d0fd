//! The `[bandit]` table of a scenario ([`BanditSim`]): the environment, the federation's
//! Truth-FedBan settings, the clients' true costs and their cost reports, and the optional
//! misreport sweep. Everything a client draws is a pure function of `(seed, client, index)`,
//! so the same file reproduces the same run.

use fedval_core::aggregate::AggregatorSpec;
use fedval_core::data::{self, partition};
use fedval_core::incentive::environment::{DigitsEnvironment, Environment, LinearEnvironment};
use fedval_core::seed::indexed_rng;
use fedval_proto::v1 as pb;
use fedval_server::config::{BanditMechanism, BanditSettings, MAX_BANDIT_CLIENTS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::scenario::{Adversaries, SimConfig};

/// Which environment every client of a bandit scenario acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BanditEnv {
    /// [`LinearEnvironment`]: shared unit `theta*`, `arms` fresh unit arms per step.
    Linear,
    /// [`DigitsEnvironment`]: each client draws its own digit images (an IID share of the
    /// shipped set); arms are the 10 classes.
    Digits,
}

impl BanditEnv {
    /// The name used in tables and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BanditEnv::Linear => "linear",
            BanditEnv::Digits => "digits",
        }
    }
}

/// One client that misreports its cost: it reports `factor` times its true cost.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Misreport {
    /// Client index (enrollment order, `0..clients`).
    pub client: usize,
    /// Report factor (finite, >= 0; 1 is truthful).
    pub factor: f64,
}

/// The misreport sweep: the same seeded federation run once per `(mechanism, factor)` with
/// client `client` reporting `factor` times its true cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepSpec {
    /// The focal client.
    pub client: usize,
    /// Its report factors (must include 1, the truthful report).
    pub factors: Vec<f64>,
    /// The payment rules compared.
    pub mechanisms: Vec<BanditMechanism>,
}

impl Default for SweepSpec {
    /// Client 0; factors 0.5, 0.75, 0.9, 1, 1.1, 1.25, 1.5, 2; both mechanisms.
    fn default() -> Self {
        SweepSpec {
            client: 0,
            factors: vec![0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0],
            mechanisms: vec![BanditMechanism::TruthFedban, BanditMechanism::Baseline],
        }
    }
}

/// The `[bandit]` table: a federated linear bandit with Truth-FedBan incentives
/// (ALGORITHMS.md section 7). Its clients are `SimConfig::clients`; the federation's seed
/// is `SimConfig::seed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BanditSim {
    /// The environment.
    pub env: BanditEnv,
    /// Linear: the context dimension `d` (unset: 5). Digits: unset (derived from `pool`) or
    /// `10 ((8 / pool)^2 + 1)`.
    pub dim: Option<usize>,
    /// Digits: average pooling of the 8x8 images over `pool x pool` blocks (1, 2, 4 or 8;
    /// 2 gives 16 pixels + a bias per class block, `d = 170`).
    pub pool: usize,
    /// Linear: arms per step.
    pub arms: usize,
    /// Linear: standard deviation of the reward noise.
    pub noise_sd: f64,
    /// Total steps `T` over all clients.
    pub horizon: u64,
    /// Ridge `lambda`.
    pub lambda: f64,
    /// LinUCB exploration weight.
    pub alpha: f64,
    /// Trigger threshold `D_c`.
    pub threshold: f64,
    /// Selection target ratio `beta` in `(0, 1]`.
    pub beta: f64,
    /// Payment to an essential client.
    pub essential_cap: f64,
    /// `truth_fedban` or `baseline`.
    pub mechanism: BanditMechanism,
    /// Baseline: weight of the log-det value of the data received.
    pub baseline_value_weight: f64,
    /// Each client's true cost of a communication round is uniform in
    /// `[cost_low, cost_high]`, drawn per `(seed, client, round)`.
    pub cost_low: f64,
    /// Upper end of the true cost range.
    pub cost_high: f64,
    /// Clients that misreport their cost (everyone else reports the truth).
    pub misreport: Vec<Misreport>,
    /// Set to run the misreport sweep after the main run.
    pub sweep: Option<SweepSpec>,
}

impl Default for BanditSim {
    /// Linear, `d = 5` (`dim` unset), 10 arms, noise 0.1, 2000 steps, the server's defaults for lambda,
    /// alpha, threshold, beta, cap and weight, costs uniform in `[0.5, 1.5]`, everyone
    /// truthful, no sweep.
    fn default() -> Self {
        let s = BanditSettings::new(5, 2000);
        BanditSim {
            env: BanditEnv::Linear,
            dim: None,
            pool: 2,
            arms: 10,
            noise_sd: 0.1,
            horizon: s.horizon,
            lambda: s.lambda,
            alpha: s.alpha,
            threshold: s.threshold,
            beta: s.beta,
            essential_cap: s.essential_cap,
            mechanism: s.mechanism,
            baseline_value_weight: s.baseline_value_weight,
            cost_low: 0.5,
            cost_high: 1.5,
            misreport: Vec::new(),
            sweep: None,
        }
    }
}

/// The linear environment's dimension when `dim` is unset.
const DEFAULT_LINEAR_DIM: usize = 5;
/// Side of the shipped digits images.
const DIGITS_SIDE: usize = 8;
/// Classes (arms) of the digits environment.
const DIGITS_CLASSES: usize = 10;
/// Mixed into the seed of the true costs, so they are independent of the environments'
/// draws (which use the plain seed).
const COST_SEED_SALT: u64 = 0xc057_5eed_0000_0001;

impl BanditSim {
    /// The context dimension `d` every client's agent uses.
    pub fn context_dim(&self) -> usize {
        match self.env {
            BanditEnv::Linear => self.dim.unwrap_or(DEFAULT_LINEAR_DIM),
            BanditEnv::Digits => {
                let cells = DIGITS_SIDE / self.pool.max(1);
                DIGITS_CLASSES * (cells * cells + 1)
            }
        }
    }

    /// The federation's bandit settings with `mechanism` (the table's own, or a sweep's).
    pub fn settings(&self, mechanism: BanditMechanism) -> BanditSettings {
        BanditSettings {
            lambda: self.lambda,
            alpha: self.alpha,
            threshold: self.threshold,
            beta: self.beta,
            essential_cap: self.essential_cap,
            mechanism,
            baseline_value_weight: self.baseline_value_weight,
            seed: None,
            ..BanditSettings::new(self.context_dim() as u32, self.horizon)
        }
    }

    /// The report factor of client `index` (1 unless a [`Misreport`] names it).
    pub fn report_factor(&self, index: usize) -> f64 {
        self.misreport
            .iter()
            .find(|m| m.client == index)
            .map_or(1.0, |m| m.factor)
    }

    /// `truthful` or `misreport xFACTOR`.
    pub fn behaviour(&self, index: usize) -> String {
        let f = self.report_factor(index);
        if f == 1.0 {
            "truthful".into()
        } else {
            format!("misreport x{f}")
        }
    }

    /// The same table with client `client` reporting `factor` times its cost and the
    /// payment rule `mechanism` (a sweep run); the sweep itself is dropped.
    pub fn with_report(&self, client: usize, factor: f64, mechanism: BanditMechanism) -> Self {
        let mut b = self.clone();
        b.misreport.retain(|m| m.client != client);
        if factor != 1.0 {
            b.misreport.push(Misreport { client, factor });
        }
        b.mechanism = mechanism;
        b.sweep = None;
        b
    }

    /// Checks the table against the scenario's `clients`.
    pub fn validate(&self, clients: usize) -> Result<(), String> {
        if !(1..=MAX_BANDIT_CLIENTS).contains(&clients) {
            return Err(format!(
                "a bandit scenario needs 1 to {MAX_BANDIT_CLIENTS} clients, got {clients}"
            ));
        }
        match self.env {
            BanditEnv::Linear => {
                if self.arms == 0 {
                    return Err("bandit.arms must be at least 1".into());
                }
                if !(self.noise_sd.is_finite() && self.noise_sd >= 0.0) {
                    return Err(format!(
                        "bandit.noise_sd must be finite and >= 0, got {}",
                        self.noise_sd
                    ));
                }
            }
            BanditEnv::Digits => {
                if !matches!(self.pool, 1 | 2 | 4 | 8) {
                    return Err(format!(
                        "bandit.pool must be 1, 2, 4 or 8 (it divides the 8x8 images), got {}",
                        self.pool
                    ));
                }
                if let Some(dim) = self.dim.filter(|&d| d != self.context_dim()) {
                    return Err(format!(
                        "bandit.dim {dim} does not match the digits encoding with pool {} \
                         (d = {}); leave it unset",
                        self.pool,
                        self.context_dim()
                    ));
                }
            }
        }
        self.settings(self.mechanism)
            .validate()
            .map_err(|e| e.to_string())?;
        if !(self.cost_low.is_finite()
            && self.cost_high.is_finite()
            && 0.0 <= self.cost_low
            && self.cost_low <= self.cost_high)
        {
            return Err(format!(
                "bandit costs need 0 <= cost_low <= cost_high, both finite; got [{}, {}]",
                self.cost_low, self.cost_high
            ));
        }
        let mut seen = Vec::new();
        for m in &self.misreport {
            check_factor("bandit.misreport", m.factor)?;
            if m.client >= clients {
                return Err(format!(
                    "bandit.misreport names client {} but there are {clients} clients",
                    m.client
                ));
            }
            if seen.contains(&m.client) {
                return Err(format!("bandit.misreport names client {} twice", m.client));
            }
            seen.push(m.client);
        }
        if let Some(s) = &self.sweep {
            s.validate(clients)?;
        }
        Ok(())
    }

    /// Checks a whole bandit scenario: this table against `config.clients`, and the
    /// horizontal and vertical settings left unset.
    pub fn validate_scenario(&self, config: &SimConfig) -> Result<(), String> {
        let unused = config.vertical.is_some()
            || config.adversaries != Adversaries::default()
            || config.reputation.is_some()
            || config.fair_reward.is_some()
            || config.fact.is_some()
            || config.aggregator != AggregatorSpec::FedAvg;
        if unused {
            return Err(
                "vertical, fact, adversaries, aggregator, reputation and fair_reward do not \
                 apply to a bandit scenario: leave them unset"
                    .into(),
            );
        }
        self.validate(config.clients)
    }

    /// The federation `id` with enrollment secret `secret` for `clients` clients and seed
    /// `seed` under the payment rule `mechanism`.
    pub fn federation_config(
        &self,
        id: &str,
        secret: &str,
        clients: usize,
        seed: u64,
        round_timeout_ms: u64,
        mechanism: BanditMechanism,
    ) -> pb::FederationConfig {
        pb::FederationConfig {
            id: id.to_string(),
            enrollment_secret: secret.to_string(),
            model: None,
            rounds: 0,
            min_clients: clients as u32,
            clients_per_round: 0,
            round_timeout_ms,
            training: None,
            valuation: None,
            validation: None,
            seed,
            aggregator: None,
            reputation: None,
            fair_reward: None,
            vertical: None,
            fact: None,
            bandit: Some((&self.settings(mechanism)).into()),
        }
    }

    /// One environment per client, in client order (`clients >= 1`). Digits: the shipped set
    /// split IID among the clients with `seed`.
    pub fn environments(
        &self,
        clients: usize,
        seed: u64,
    ) -> Result<Vec<Box<dyn Environment>>, SimError> {
        let incentive = |e: fedval_core::incentive::IncentiveError| SimError::Config(e.to_string());
        match self.env {
            BanditEnv::Linear => (0..clients)
                .map(|i| {
                    LinearEnvironment::new(
                        self.context_dim(),
                        self.arms,
                        self.noise_sd,
                        seed,
                        i as u64,
                    )
                    .map(|e| Box::new(e) as Box<dyn Environment>)
                    .map_err(incentive)
                })
                .collect(),
            BanditEnv::Digits => {
                let digits = data::builtin::by_name("digits")?;
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                partition::iid(digits.len(), clients, &mut rng)?
                    .iter()
                    .enumerate()
                    .map(|(i, rows)| {
                        DigitsEnvironment::new(&digits.subset(rows), self.pool, seed, i as u64)
                            .map(|e| Box::new(e) as Box<dyn Environment>)
                            .map_err(incentive)
                    })
                    .collect()
            }
        }
    }

    /// Client `client`'s true cost of communication round `round`: uniform in
    /// `[cost_low, cost_high]`, a pure function of `(seed, client, round)`.
    pub fn true_cost(&self, seed: u64, client: usize, round: u64) -> f64 {
        if self.cost_high <= self.cost_low {
            return self.cost_low;
        }
        indexed_rng(seed ^ COST_SEED_SALT, client as u64, round)
            .random_range(self.cost_low..=self.cost_high)
    }
}

fn check_factor(what: &str, factor: f64) -> Result<(), String> {
    if factor.is_finite() && factor >= 0.0 {
        Ok(())
    } else {
        Err(format!(
            "{what}: a report factor must be finite and >= 0, got {factor}"
        ))
    }
}

impl SweepSpec {
    /// Checks the focal client, the factors (1 among them) and the mechanisms.
    pub fn validate(&self, clients: usize) -> Result<(), String> {
        if self.client >= clients {
            return Err(format!(
                "bandit.sweep.client {} is out of range for {clients} clients",
                self.client
            ));
        }
        for &f in &self.factors {
            check_factor("bandit.sweep.factors", f)?;
        }
        if !self.factors.contains(&1.0) {
            return Err("bandit.sweep.factors must include 1 (the truthful report)".into());
        }
        if self.mechanisms.is_empty() {
            return Err("bandit.sweep.mechanisms must name at least one mechanism".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_with_defaults_and_names_typos() {
        let b: BanditSim = toml::from_str(
            "env = \"digits\"\nmechanism = \"baseline\"\nmisreport = [{ client = 1, factor = 0.7 }]\n\
             sweep = { client = 2 }\n",
        )
        .expect("parses");
        assert_eq!(b.env, BanditEnv::Digits);
        assert_eq!(b.mechanism, BanditMechanism::Baseline);
        assert_eq!(b.context_dim(), 170);
        assert_eq!(b.report_factor(1), 0.7);
        assert_eq!(b.report_factor(0), 1.0);
        assert_eq!(b.behaviour(1), "misreport x0.7");
        assert_eq!(b.behaviour(0), "truthful");
        let sweep = b.sweep.clone().expect("sweep");
        assert_eq!(sweep.client, 2);
        assert_eq!(sweep.factors.len(), 8);
        assert_eq!(b.validate(10), Ok(()));
        let err = toml::from_str::<BanditSim>("treshold = 3.0").expect_err("typo");
        assert!(
            err.to_string().contains("unknown field `treshold`"),
            "{err}"
        );
        let err = toml::from_str::<BanditSim>("mechanism = \"vcg\"").expect_err("unknown");
        assert!(err.to_string().contains("vcg"), "{err}");
    }

    #[test]
    fn inconsistent_tables_are_refused() {
        let ok = BanditSim::default();
        assert_eq!(ok.validate(10), Ok(()));
        let with = |f: &dyn Fn(&mut BanditSim), clients: usize| {
            let mut b = ok.clone();
            f(&mut b);
            b.validate(clients).unwrap_err()
        };
        assert!(with(&|_| {}, 0).contains("1 to 100 clients"));
        assert!(with(&|b| b.arms = 0, 3).contains("arms"));
        assert!(with(&|b| b.noise_sd = -0.1, 3).contains("noise_sd"));
        assert!(with(&|b| b.beta = 1.5, 3).contains("bandit.beta"));
        assert!(with(&|b| b.dim = Some(0), 3).contains("bandit.dim"));
        assert!(with(&|b| b.horizon = 0, 3).contains("bandit.horizon"));
        assert!(with(&|b| b.cost_low = 2.0, 3).contains("cost_low <= cost_high"));
        assert!(
            with(
                &|b| b.misreport = vec![Misreport {
                    client: 3,
                    factor: 0.5
                }],
                3
            )
            .contains("client 3")
        );
        assert!(
            with(
                &|b| b.misreport = vec![Misreport {
                    client: 0,
                    factor: f64::NAN
                }],
                3
            )
            .contains("finite")
        );
        let twice = vec![
            Misreport {
                client: 1,
                factor: 0.5,
            };
            2
        ];
        assert!(with(&|b| b.misreport = twice.clone(), 3).contains("twice"));
        assert!(
            with(
                &|b| {
                    b.env = BanditEnv::Digits;
                    b.pool = 3;
                },
                3
            )
            .contains("pool")
        );
        assert!(
            with(
                &|b| {
                    b.env = BanditEnv::Digits;
                    b.dim = Some(5);
                },
                3
            )
            .contains("leave it unset")
        );
        let sweep = |s: SweepSpec| {
            with(
                &|b| {
                    b.sweep = Some(s.clone());
                },
                3,
            )
        };
        assert!(
            sweep(SweepSpec {
                client: 3,
                ..SweepSpec::default()
            })
            .contains("out of range")
        );
        assert!(
            sweep(SweepSpec {
                factors: vec![0.5, 2.0],
                ..SweepSpec::default()
            })
            .contains("include 1")
        );
        assert!(
            sweep(SweepSpec {
                mechanisms: Vec::new(),
                ..SweepSpec::default()
            })
            .contains("at least one")
        );
    }

    #[test]
    fn a_sweep_run_overrides_only_the_focal_report_and_the_mechanism() {
        let b = BanditSim {
            misreport: vec![
                Misreport {
                    client: 0,
                    factor: 0.7,
                },
                Misreport {
                    client: 1,
                    factor: 1.5,
                },
            ],
            sweep: Some(SweepSpec::default()),
            ..BanditSim::default()
        };
        let run = b.with_report(0, 2.0, BanditMechanism::Baseline);
        assert_eq!(run.report_factor(0), 2.0);
        assert_eq!(run.report_factor(1), 1.5);
        assert_eq!(run.mechanism, BanditMechanism::Baseline);
        assert_eq!(run.sweep, None);
        let truthful = b.with_report(0, 1.0, BanditMechanism::TruthFedban);
        assert_eq!(truthful.report_factor(0), 1.0);
        assert_eq!(truthful.misreport.len(), 1);
    }

    #[test]
    fn true_costs_are_seeded_per_client_and_round_and_in_range() {
        let b = BanditSim::default();
        let costs: Vec<f64> = (1..=200).map(|r| b.true_cost(42, 3, r)).collect();
        assert!(costs.iter().all(|c| (0.5..=1.5).contains(c)));
        assert_eq!(
            costs,
            (1..=200).map(|r| b.true_cost(42, 3, r)).collect::<Vec<_>>()
        );
        assert_ne!(costs[0], b.true_cost(42, 4, 1));
        assert_ne!(costs[0], b.true_cost(43, 3, 1));
        let mean = costs.iter().sum::<f64>() / costs.len() as f64;
        assert!((mean - 1.0).abs() < 0.08, "{mean}");
        let fixed = BanditSim {
            cost_low: 0.8,
            cost_high: 0.8,
            ..b
        };
        assert_eq!(fixed.true_cost(1, 1, 1), 0.8);
    }

    #[test]
    fn the_federation_config_is_a_bandit_one() {
        let b = BanditSim {
            horizon: 300,
            ..BanditSim::default()
        };
        let c = b.federation_config("f", "s", 4, 9, 1000, BanditMechanism::Baseline);
        assert_eq!((c.rounds, c.clients_per_round, c.min_clients), (0, 0, 4));
        assert!(c.model.is_none() && c.validation.is_none() && c.training.is_none());
        let bandit = c.bandit.expect("bandit");
        assert_eq!((bandit.dim, bandit.horizon), (5, 300));
        assert_eq!(bandit.mechanism, "baseline");
        let parsed = fedval_server::config::FederationConfig::try_from(b.federation_config(
            "f",
            "s",
            4,
            9,
            1000,
            BanditMechanism::TruthFedban,
        ))
        .expect("the server decodes it");
        assert_eq!(parsed.validate(), Ok(()));
    }

    #[test]
    fn a_bandit_scenario_leaves_the_other_modes_unset() {
        let config = SimConfig {
            bandit: Some(BanditSim::default()),
            ..SimConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
        let vertical = SimConfig {
            vertical: Some(crate::VerticalSim::default()),
            ..config.clone()
        };
        assert!(
            vertical
                .validate()
                .unwrap_err()
                .contains("leave them unset")
        );
        let attacked = SimConfig {
            adversaries: Adversaries {
                sign_flip: 1,
                ..Adversaries::default()
            },
            ..config
        };
        assert!(
            attacked
                .validate()
                .unwrap_err()
                .contains("leave them unset")
        );
    }

    #[test]
    fn environments_match_the_table() {
        let linear = BanditSim::default().environments(3, 7).expect("linear");
        assert_eq!(linear.len(), 3);
        assert!(linear.iter().all(|e| e.dim() == 5));
        let digits = BanditSim {
            env: BanditEnv::Digits,
            pool: 4,
            ..BanditSim::default()
        };
        let mut envs = digits.environments(4, 7).expect("digits");
        assert!(envs.iter().all(|e| e.dim() == 50));
        let arms = envs[0].arms(1);
        assert_eq!(arms.len(), 10);
    }
}
