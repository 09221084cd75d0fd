//! What a simulation runs: the data, the clients and their behaviours, the federation.
//!
//! [`SimConfig`] is one serde struct (so it can be read from a file and is echoed into
//! the report); its `Default` is the demo: 10 clients on digits with Dirichlet label
//! skew, one client with shuffled labels and one with very little data, 20 rounds.
//!
//! Adversarial clients are counted in the `[adversaries]` table ([`Adversaries`]); client
//! indices are assigned in a fixed order (see [`SimConfig::behaviour`]) so the same file
//! always attacks with the same clients.
//!
//! A `[vertical]` table ([`VerticalSim`]) makes the scenario a vertical federation
//! (ALGORITHMS.md section 3): the data set's columns are split among parties, the server
//! holds the labels, and VerFedSV values the parties (run by [`crate::vertical`]).
//!
//! A `[bandit]` table ([`crate::bandit::BanditSim`]) makes the scenario a federated linear
//! bandit with Truth-FedBan incentives (ALGORITHMS.md section 7, run by [`crate::bandit`]).
//!
//! A `[fact]` table ([`crate::fact::FactSim`]) makes a horizontal scenario a FACT
//! federation (ALGORITHMS.md section 6): clients report costs per data point, train on
//! their required points (or less, by behaviour) and are penalised and rewarded.

use fedval_core::aggregate::AggregatorSpec;
use serde::{Deserialize, Serialize};

/// The scenario files of `sim/scenarios/`, by name, compiled into the binary so that the
/// attack table runs them from any directory.
pub const SHIPPED: &[(&str, &str)] = &[
    ("baseline", include_str!("../scenarios/baseline.toml")),
    ("free_riders", include_str!("../scenarios/free_riders.toml")),
    ("label_flip", include_str!("../scenarios/label_flip.toml")),
    ("sign_flip", include_str!("../scenarios/sign_flip.toml")),
    (
        "scaled_noise",
        include_str!("../scenarios/scaled_noise.toml"),
    ),
    ("sybil", include_str!("../scenarios/sybil.toml")),
    ("late_joiner", include_str!("../scenarios/late_joiner.toml")),
    (
        "rffl_sign_flip",
        include_str!("../scenarios/rffl_sign_flip.toml"),
    ),
    (
        "vertical_digits",
        include_str!("../scenarios/vertical_digits.toml"),
    ),
    (
        "vertical_breast_cancer",
        include_str!("../scenarios/vertical_breast_cancer.toml"),
    ),
    (
        "vertical_digits_async",
        include_str!("../scenarios/vertical_digits_async.toml"),
    ),
    (
        "bandit_linear",
        include_str!("../scenarios/bandit_linear.toml"),
    ),
    (
        "bandit_misreport",
        include_str!("../scenarios/bandit_misreport.toml"),
    ),
    (
        "bandit_digits",
        include_str!("../scenarios/bandit_digits.toml"),
    ),
    (
        "fact_truthful",
        include_str!("../scenarios/fact_truthful.toml"),
    ),
    (
        "fact_misreport",
        include_str!("../scenarios/fact_misreport.toml"),
    ),
];

/// The shipped scenario `name` (see [`SHIPPED`]).
pub fn shipped(name: &str) -> Result<SimConfig, String> {
    let (_, text) = SHIPPED.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = SHIPPED.iter().map(|(n, _)| *n).collect();
        format!(
            "no shipped scenario {name:?}; the scenarios are {}",
            names.join(", ")
        )
    })?;
    toml::from_str(text).map_err(|e| format!("scenario {name}: {e}"))
}

/// How a simulated client behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Trains on its own data as asked.
    Honest,
    /// Trains on its data with the labels shuffled among its samples (useless updates).
    Noisy,
    /// Holds very little data (`SimConfig::tiny_samples` rows).
    Tiny,
    /// Free rider: uploads uniform noise in [-1, 1] instead of training.
    FreeRiderNoise,
    /// Free rider: sends the global model back unchanged (a zero update).
    FreeRiderZero,
    /// Trains on its data with every label `y` replaced by `C - 1 - y`.
    LabelFlip,
    /// Trains honestly and uploads the negated update.
    SignFlip,
    /// Uploads Gaussian noise scaled to `noise_scale` times the norm of its own honest update.
    ScaledNoise,
    /// One of `sybil_copies` identities of the same party that all upload the same update.
    Sybil,
    /// Honest, but enrolls only after round `late_join_round` is committed.
    LateJoiner,
}

impl Behaviour {
    /// The name used in tables and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::Honest => "honest",
            Behaviour::Noisy => "noisy",
            Behaviour::Tiny => "tiny",
            Behaviour::FreeRiderNoise => "free_rider_noise",
            Behaviour::FreeRiderZero => "free_rider_zero",
            Behaviour::LabelFlip => "label_flip",
            Behaviour::SignFlip => "sign_flip",
            Behaviour::ScaledNoise => "scaled_noise",
            Behaviour::Sybil => "sybil",
            Behaviour::LateJoiner => "late_joiner",
        }
    }

    /// Whether the client attacks the federation (honest, noisy, tiny and late clients do
    /// not; they are the "honest" clients of the fairness and accuracy metrics).
    pub fn is_adversary(self) -> bool {
        !matches!(
            self,
            Behaviour::Honest | Behaviour::Noisy | Behaviour::Tiny | Behaviour::LateJoiner
        )
    }
}

/// How many clients of each adversarial behaviour a scenario has (the `[adversaries]`
/// table of a scenario file), plus the attacks' parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adversaries {
    /// Free riders uploading uniform noise in [-1, 1].
    pub free_rider_noise: usize,
    /// Free riders uploading a zero update.
    pub free_rider_zero: usize,
    /// Label flippers (`y -> C - 1 - y`).
    pub label_flip: usize,
    /// Sign flippers (the honest update negated).
    pub sign_flip: usize,
    /// Scaled-noise uploaders.
    pub scaled_noise: usize,
    /// Gaussian noise norm as a multiple of the client's own honest update norm.
    pub noise_scale: f64,
    /// Identities of the one Sybil party (0: none; otherwise at least 2). They all
    /// upload the same update, trained honestly on the first identity's data.
    pub sybil_copies: usize,
    /// Honest clients that enroll late.
    pub late_joiner: usize,
    /// Late joiners enroll once this round is committed (1 <= k < rounds).
    pub late_join_round: u64,
}

impl Default for Adversaries {
    /// No adversaries; noise scale 1; late joiners (if any) after round 5.
    fn default() -> Self {
        Adversaries {
            free_rider_noise: 0,
            free_rider_zero: 0,
            label_flip: 0,
            sign_flip: 0,
            scaled_noise: 0,
            noise_scale: 1.0,
            sybil_copies: 0,
            late_joiner: 0,
            late_join_round: 5,
        }
    }
}

impl Adversaries {
    /// The behaviours in index order with their counts.
    fn counts(&self) -> [(Behaviour, usize); 7] {
        [
            (Behaviour::FreeRiderNoise, self.free_rider_noise),
            (Behaviour::FreeRiderZero, self.free_rider_zero),
            (Behaviour::LabelFlip, self.label_flip),
            (Behaviour::SignFlip, self.sign_flip),
            (Behaviour::ScaledNoise, self.scaled_noise),
            (Behaviour::Sybil, self.sybil_copies),
            (Behaviour::LateJoiner, self.late_joiner),
        ]
    }
}

/// How the training rows are split among clients.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Partition {
    /// Uniformly at random, equal sizes.
    Iid,
    /// Label skew: per-class shares drawn from Dir(alpha).
    Dirichlet { alpha: f64 },
    /// Size skew: client sizes drawn from Dir(alpha).
    Quantity { alpha: f64 },
}

/// The built-in model the federation trains.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelChoice {
    /// Multinomial logistic regression.
    Logreg,
    /// One hidden layer of `hidden` ReLU units.
    Mlp { hidden: usize },
}

/// Everything a simulation run depends on; the same config and seed give the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Shipped data set: digits, breast_cancer, wine or iris.
    pub dataset: String,
    /// Number of clients.
    pub clients: usize,
    /// Federated rounds.
    pub rounds: u64,
    /// How training rows are split among clients.
    pub partition: Partition,
    /// Clients with shuffled labels.
    pub noisy: usize,
    /// Clients with very little data.
    pub tiny: usize,
    /// Rows a tiny client keeps.
    pub tiny_samples: usize,
    /// The model.
    pub model: ModelChoice,
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Mini-batch size.
    pub batch_size: u32,
    /// SGD learning rate.
    pub learning_rate: f32,
    /// Fraction of rows held out as the test set (reported, never trained on).
    pub test_fraction: f64,
    /// Fraction of rows the server keeps as its validation set (valuation utility).
    pub validation_fraction: f64,
    /// Valuation method: auto, exact, permutation or none.
    pub valuation: String,
    /// Utility evaluations per round for the permutation estimator.
    pub valuation_budget: u64,
    /// Utility metric: accuracy or neg_log_loss.
    pub utility: String,
    /// Milliseconds a round stays open.
    pub round_timeout_ms: u64,
    /// Master seed: data split, partition, behaviours, model init, training, valuation.
    pub seed: u64,
    /// The federation's aggregator, e.g. `{ kind = "fedavg" }`, `{ kind = "median" }`,
    /// `{ kind = "trimmed_mean", trim = 2 }`, `{ kind = "krum", byzantine = 2 }`,
    /// `{ kind = "multi_krum", byzantine = 2, selected = 6 }`,
    /// `{ kind = "norm_clip", max_norm = 1.0 }`; sent with the federation's configuration.
    pub aggregator: AggregatorSpec,
    /// RFFL reputations, e.g. `{ gamma = 0.5, warm_up_rounds = 5 }`; unset (the default)
    /// is off. When set the server's RFFL aggregation replaces `aggregator`, and the
    /// report's removal rounds come from the recorded reputations. A federation with
    /// reputations refuses late joiners.
    pub reputation: Option<fedval_server::config::RfflSettings>,
    /// Fair yet asymptotically equal rewards (ALGORITHMS.md 5), e.g.
    /// `{ window = 11 }`; unset (the default) is off; exclusive with `reputation`. Every
    /// client trains from its own model, which receives the newest global model only when
    /// the policy draws it (always while exploring).
    pub fair_reward: Option<fedval_server::config::FairRewardSettings>,
    /// Adversarial and late clients.
    pub adversaries: Adversaries,
    /// Set (a `[vertical]` table) for a vertical federation; unset (the default) for a
    /// horizontal one. In vertical mode `clients` must equal the number of parties
    /// ([`VerticalSim::parties`]); `rounds`, `test_fraction`, `round_timeout_ms`,
    /// `valuation`, `valuation_budget` and `seed` keep their meaning; noisy, tiny,
    /// partition, model, local epochs, batch size and learning rate are ignored, and
    /// adversaries, aggregator, reputation and fair_reward must stay unset.
    pub vertical: Option<VerticalSim>,
    /// Set (a `[bandit]` table) for a federated bandit with Truth-FedBan incentives; unset
    /// (the default) otherwise. Only `clients`, `seed` and `round_timeout_ms` keep their
    /// meaning; the learning settings are ignored, and adversaries, aggregator, reputation,
    /// fair_reward and vertical must stay unset.
    pub bandit: Option<crate::bandit::BanditSim>,
    /// Set (a `[fact]` table) for a horizontal FACT federation: clients report costs per
    /// data point at enrollment and are settled every round; unset (the default) is off.
    pub fact: Option<crate::fact::FactSim>,
}

/// What a vertical party does in a simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartyBehaviour {
    /// Holds a block of the data set's columns.
    Honest,
    /// Holds columns of seeded Gaussian noise (no information about the labels).
    Noise,
    /// Holds a copy of party 0's columns.
    Duplicate,
    /// Holds a copy of party 0's columns and waits `slow_delay_ms` before every
    /// training step (asynchronous training): it communicates less often.
    Slow,
}

impl PartyBehaviour {
    /// The name used in tables and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PartyBehaviour::Honest => "honest",
            PartyBehaviour::Noise => "noise",
            PartyBehaviour::Duplicate => "duplicate",
            PartyBehaviour::Slow => "slow",
        }
    }
}

/// The `[vertical]` table: how a vertical scenario splits the columns and trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerticalSim {
    /// How the data set's columns are split among the honest parties:
    /// `digits_quadrants` (4 parties), `breast_cancer_groups` (3 parties) or
    /// `contiguous:K` (K blocks of consecutive columns).
    pub split: String,
    /// `sync`: every round the server draws one mini-batch that every party embeds.
    /// `async`: every party steps at its own pace against the latest embeddings of the
    /// others; `rounds` snapshots of `snapshot_every` steps each.
    pub training: String,
    /// Asynchronous training: party steps (over all parties) per snapshot round.
    pub snapshot_every: u32,
    /// Mini-batch size.
    pub batch_size: u32,
    /// SGD step of the parties' models and of the server's bias.
    pub learning_rate: f32,
    /// Weight decay of the parties' weights.
    pub l2: f32,
    /// 0: linear party models; otherwise MLPs with this many hidden units.
    pub hidden: u32,
    /// Extra parties holding seeded Gaussian noise, as many columns as party 0.
    pub noise_parties: usize,
    /// Extra parties holding a copy of party 0's columns.
    pub duplicate_parties: usize,
    /// Asynchronous training: extra copies of party 0 that wait `slow_delay_ms` before
    /// every step (they communicate less often than party 0).
    pub slow_parties: usize,
    /// The slow parties' wait before each step, in milliseconds.
    pub slow_delay_ms: u64,
    /// Rank of VerFedSV's matrix completion (synchronous training).
    pub completion_rank: u32,
    /// Ridge of VerFedSV's matrix completion.
    pub completion_lambda: f64,
}

impl Default for VerticalSim {
    /// Digits quadrants, synchronous, batches of 32, step 0.1, no decay, linear parties,
    /// no noise, duplicate or slow party (slow delay 50 ms, snapshots every 10 steps),
    /// completion rank 3 and ridge 0.1 (the reference code).
    fn default() -> Self {
        VerticalSim {
            split: "digits_quadrants".into(),
            training: "sync".into(),
            snapshot_every: 10,
            batch_size: 32,
            learning_rate: 0.1,
            l2: 0.0,
            hidden: 0,
            noise_parties: 0,
            duplicate_parties: 0,
            slow_parties: 0,
            slow_delay_ms: 50,
            completion_rank: 3,
            completion_lambda: 0.1,
        }
    }
}

impl VerticalSim {
    /// The column split of a data set with `num_features` columns (see
    /// [`split`](Self::split)).
    pub fn column_split(
        &self,
        num_features: usize,
    ) -> Result<fedval_core::vertical::ColumnSplit, String> {
        use fedval_core::vertical::ColumnSplit;
        let split = match self.split.as_str() {
            "digits_quadrants" => ColumnSplit::digits_quadrants(),
            "breast_cancer_groups" => ColumnSplit::breast_cancer_groups(),
            other => match other.strip_prefix("contiguous:") {
                Some(k) => {
                    let k: usize = k
                        .parse()
                        .map_err(|e| format!("bad party count in split {other:?}: {e}"))?;
                    ColumnSplit::contiguous(num_features, k).map_err(|e| e.to_string())?
                }
                None => {
                    return Err(format!(
                        "unknown split {other:?}: expected digits_quadrants, \
                         breast_cancer_groups or contiguous:K"
                    ));
                }
            },
        };
        if split.num_features() != num_features {
            return Err(format!(
                "split {} is for {} columns but the data set has {num_features}",
                self.split,
                split.num_features()
            ));
        }
        Ok(split)
    }

    /// Number of parties: the split's blocks, then the noise and the duplicate parties.
    pub fn parties(&self, split_parties: usize) -> usize {
        split_parties + self.noise_parties + self.duplicate_parties + self.slow_parties
    }

    /// The behaviour of party `index` when the split has `split_parties` blocks.
    pub fn behaviour(&self, index: usize, split_parties: usize) -> PartyBehaviour {
        if index < split_parties {
            PartyBehaviour::Honest
        } else if index < split_parties + self.noise_parties {
            PartyBehaviour::Noise
        } else if index < split_parties + self.noise_parties + self.duplicate_parties {
            PartyBehaviour::Duplicate
        } else {
            PartyBehaviour::Slow
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            dataset: "digits".into(),
            clients: 10,
            rounds: 20,
            partition: Partition::Dirichlet { alpha: 0.5 },
            noisy: 1,
            tiny: 1,
            tiny_samples: 10,
            model: ModelChoice::Logreg,
            local_epochs: 2,
            batch_size: 16,
            learning_rate: 0.3,
            test_fraction: 0.2,
            validation_fraction: 0.1,
            valuation: "auto".into(),
            valuation_budget: 2000,
            utility: "neg_log_loss".into(),
            round_timeout_ms: 30_000,
            seed: 42,
            aggregator: AggregatorSpec::FedAvg,
            reputation: None,
            fair_reward: None,
            adversaries: Adversaries::default(),
            vertical: None,
            bandit: None,
            fact: None,
        }
    }
}

impl SimConfig {
    /// The behaviour of client `index`: the first `noisy` clients are noisy, the next
    /// `tiny` are tiny, then the adversaries in the order of [`Adversaries`]' fields
    /// (free riders with noise, zero free riders, label flippers, sign flippers, scaled
    /// noise, Sybil identities, late joiners); the rest are honest.
    pub fn behaviour(&self, index: usize) -> Behaviour {
        let mut end = 0;
        let groups = [(Behaviour::Noisy, self.noisy), (Behaviour::Tiny, self.tiny)];
        for (behaviour, count) in groups.into_iter().chain(self.adversaries.counts()) {
            end += count;
            if index < end {
                return behaviour;
            }
        }
        Behaviour::Honest
    }

    /// Clients that are not honest by construction (noisy, tiny, adversaries, late).
    pub fn special_clients(&self) -> usize {
        self.noisy
            + self.tiny
            + self
                .adversaries
                .counts()
                .iter()
                .map(|&(_, n)| n)
                .sum::<usize>()
    }

    /// Clients enrolled before the first round (all but the late joiners).
    pub fn initial_clients(&self) -> usize {
        self.clients.saturating_sub(self.adversaries.late_joiner)
    }

    /// Checks the counts and attack parameters against each other.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(b) = &self.bandit {
            return b.validate_scenario(self);
        }
        if let Some(v) = &self.vertical {
            if self.fact.is_some() {
                return Err("[fact] is for horizontal federations: leave it unset in a \
                            vertical scenario"
                    .into());
            }
            return self.validate_vertical(v);
        }
        if let Some(f) = &self.fact {
            f.validate(self.clients)?;
        }
        if self.clients == 0 {
            return Err("clients must be at least 1".into());
        }
        if self.special_clients() > self.clients {
            return Err(format!(
                "noisy ({}) + tiny ({}) + adversaries ({}) exceed the number of clients ({})",
                self.noisy,
                self.tiny,
                self.special_clients() - self.noisy - self.tiny,
                self.clients
            ));
        }
        let adv = &self.adversaries;
        if adv.sybil_copies == 1 {
            return Err("sybil_copies must be 0 (no Sybil) or at least 2 identities".into());
        }
        if !(adv.noise_scale.is_finite() && adv.noise_scale > 0.0) {
            return Err(format!(
                "noise_scale must be positive and finite, got {}",
                adv.noise_scale
            ));
        }
        if self.reputation.is_some() && self.fair_reward.is_some() {
            return Err("set either reputation (RFFL) or fair_reward, not both".into());
        }
        if adv.late_joiner > 0 && (self.reputation.is_some() || self.fair_reward.is_some()) {
            return Err(
                "late joiners cannot enroll in a federation with reputation or fair_reward \
                 (its per-client state is sized in round 1)"
                    .into(),
            );
        }
        if adv.late_joiner > 0 {
            if adv.late_join_round == 0 || adv.late_join_round >= self.rounds {
                return Err(format!(
                    "late_join_round must be in 1..{} (rounds), got {}",
                    self.rounds, adv.late_join_round
                ));
            }
            if adv.late_joiner >= self.clients {
                return Err(format!(
                    "late joiners ({}) leave nobody to start the federation ({} clients)",
                    adv.late_joiner, self.clients
                ));
            }
        }
        Ok(())
    }
}

/// Feature columns of the shipped data set `name` (`None` for an unknown name).
pub fn dataset_columns(name: &str) -> Option<usize> {
    match name {
        "digits" => Some(64),
        "breast_cancer" => Some(30),
        "wine" => Some(13),
        "iris" => Some(4),
        _ => None,
    }
}

impl SimConfig {
    /// The checks of a vertical scenario: a known split that fits the data set, `clients`
    /// equal to the number of parties, synchronous training, sane steps, at least one
    /// round, and the horizontal-only settings left alone.
    fn validate_vertical(&self, v: &VerticalSim) -> Result<(), String> {
        let columns = dataset_columns(&self.dataset)
            .ok_or_else(|| format!("unknown data set {:?}", self.dataset))?;
        let split = v.column_split(columns)?;
        let parties = v.parties(split.num_parties());
        if self.clients != parties {
            return Err(format!(
                "a vertical scenario has {parties} parties ({} split blocks, {} noise, {} \
                 duplicate, {} slow) but clients = {}",
                split.num_parties(),
                v.noise_parties,
                v.duplicate_parties,
                v.slow_parties,
                self.clients
            ));
        }
        if v.training != "sync" && v.training != "async" {
            return Err(format!(
                "vertical training {:?} is not supported (use \"sync\" or \"async\")",
                v.training
            ));
        }
        if v.slow_parties > 0 && v.training != "async" {
            return Err(
                "vertical slow_parties need training = \"async\" (a synchronous round waits for every party)"
                    .into(),
            );
        }
        if v.training == "async" && v.snapshot_every == 0 {
            return Err("vertical snapshot_every must be at least 1".into());
        }
        if v.batch_size == 0 {
            return Err("vertical batch_size must be at least 1".into());
        }
        if !(v.learning_rate.is_finite() && v.learning_rate > 0.0) {
            return Err(format!(
                "vertical learning_rate must be positive and finite, got {}",
                v.learning_rate
            ));
        }
        if !(v.l2.is_finite() && v.l2 >= 0.0) {
            return Err(format!("vertical l2 must be >= 0, got {}", v.l2));
        }
        if self.rounds == 0 {
            return Err("rounds must be at least 1".into());
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return Err(format!(
                "test_fraction must be in (0, 1), got {}",
                self.test_fraction
            ));
        }
        let horizontal = self.adversaries != Adversaries::default()
            || self.reputation.is_some()
            || self.fair_reward.is_some()
            || self.aggregator != AggregatorSpec::FedAvg;
        if horizontal {
            return Err(
                "adversaries, aggregator, reputation and fair_reward are horizontal \
                 settings: leave them unset in a vertical scenario"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");

    fn scenario(name: &str) -> SimConfig {
        shipped(name).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reputation_is_off_by_default_and_parses_with_defaults() {
        assert_eq!(SimConfig::default().reputation, None);
        let config: SimConfig =
            toml::from_str("reputation = { gamma = 0.5, warm_up_rounds = 3 }").expect("parses");
        let expected = fedval_server::config::RfflSettings {
            warm_up_rounds: 3,
            ..fedval_server::config::RfflSettings::with_gamma(0.5)
        };
        assert_eq!(config.reputation, Some(expected));
    }

    #[test]
    fn every_shipped_scenario_parses_and_is_valid() {
        let mut names: Vec<String> = std::fs::read_dir(SCENARIOS)
            .expect("scenarios directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let mut listed: Vec<String> = SHIPPED.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(names, listed, "SHIPPED must list every file of {SCENARIOS}");
        assert!(shipped("nope").unwrap_err().contains("baseline"));
        for name in &names {
            let config = scenario(name);
            assert_eq!(config.validate(), Ok(()), "{name}");
            if config.bandit.is_some() {
                assert!(name.starts_with("bandit_"), "{name}");
                continue;
            }
            if let Some(f) = &config.fact {
                assert!(name.starts_with("fact_"), "{name}");
                assert_eq!(config.special_clients(), 0, "{name}: no [adversaries]");
                let kinds: Vec<String> = (0..config.clients)
                    .map(|i| f.behaviour(i).label())
                    .filter(|b| b != "truthful")
                    .collect();
                let expected: &[&str] = if name == "fact_misreport" {
                    &[
                        "misreport x1.30",
                        "misreport x0.70",
                        "free_rider 20%",
                        "shirker 20%",
                    ]
                } else {
                    &[]
                };
                assert_eq!(kinds, expected, "{name}");
                continue;
            }
            if let Some(v) = &config.vertical {
                assert!(name.starts_with("vertical_"), "{name}");
                let expected = if name.ends_with("_async") {
                    (1, "async")
                } else {
                    (1, "sync")
                };
                assert_eq!(
                    (
                        v.noise_parties + v.duplicate_parties + v.slow_parties,
                        v.training.as_str()
                    ),
                    expected,
                    "{name}"
                );
                continue;
            }
            assert_eq!(
                (config.dataset.as_str(), config.clients, config.rounds),
                ("digits", 10, 20)
            );
            assert_eq!((config.noisy, config.tiny), (0, 0), "{name}");
            assert_eq!(config.partition, Partition::Iid, "{name}");
            assert_eq!(config.aggregator, AggregatorSpec::FedAvg, "{name}");
            assert_eq!(
                config.reputation.is_some(),
                name.starts_with("rffl_"),
                "{name}"
            );
            let special = config.special_clients();
            assert_eq!(special, if name == "baseline" { 0 } else { 2 }, "{name}");
        }
        let kinds = |name: &str| {
            let c = scenario(name);
            (0..c.clients)
                .map(|i| c.behaviour(i))
                .filter(|b| *b != Behaviour::Honest)
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds("free_riders"), [Behaviour::FreeRiderNoise; 2]);
        assert_eq!(kinds("label_flip"), [Behaviour::LabelFlip; 2]);
        assert_eq!(kinds("sign_flip"), [Behaviour::SignFlip; 2]);
        assert_eq!(kinds("rffl_sign_flip"), [Behaviour::SignFlip; 2]);
        assert_eq!(kinds("scaled_noise"), [Behaviour::ScaledNoise; 2]);
        assert_eq!(kinds("sybil"), [Behaviour::Sybil; 2]);
        assert_eq!(kinds("late_joiner"), [Behaviour::LateJoiner; 2]);
        assert_eq!(scenario("late_joiner").initial_clients(), 8);

        // The vertical scenarios: 4 quadrants + 1 noise party; 3 groups + 1 duplicate.
        let parties = |name: &str| {
            let c = scenario(name);
            let v = c.vertical.clone().expect("vertical");
            let columns = if c.dataset == "digits" { 64 } else { 30 };
            let blocks = v.column_split(columns).expect("split").num_parties();
            (
                c.dataset.clone(),
                (0..c.clients)
                    .map(|i| v.behaviour(i, blocks))
                    .collect::<Vec<_>>(),
            )
        };
        use PartyBehaviour::*;
        assert_eq!(
            parties("vertical_digits"),
            (
                "digits".to_string(),
                vec![Honest, Honest, Honest, Honest, Noise]
            )
        );
        assert_eq!(
            parties("vertical_breast_cancer"),
            (
                "breast_cancer".to_string(),
                vec![Honest, Honest, Honest, Duplicate]
            )
        );
        assert_eq!(
            parties("vertical_digits_async"),
            (
                "digits".to_string(),
                vec![Honest, Honest, Honest, Honest, Slow]
            )
        );
    }

    #[test]
    fn vertical_scenarios_are_checked() {
        let base = scenario("vertical_digits");
        let with = |f: &dyn Fn(&mut SimConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(with(&|c| c.clients = 4).contains("has 5 parties"));
        assert!(
            with(&|c| {
                let v = c.vertical.as_mut().unwrap();
                v.noise_parties = 0;
                v.slow_parties = 1;
            })
            .contains("slow_parties need training = \"async\"")
        );
        assert!(with(&|c| c.dataset = "iris".into()).contains("split digits_quadrants is for 64"));
        assert!(
            with(&|c| c.vertical.as_mut().unwrap().split = "rows".into())
                .contains("unknown split \"rows\"")
        );
        assert!(
            with(&|c| c.vertical.as_mut().unwrap().training = "later".into()).contains("\"later\"")
        );
        assert!(with(&|c| c.adversaries.sign_flip = 1).contains("horizontal settings"));
        assert!(
            with(&|c| c.vertical.as_mut().unwrap().learning_rate = 0.0).contains("learning_rate")
        );
        let mut contiguous = base.clone();
        if let Some(v) = contiguous.vertical.as_mut() {
            v.split = "contiguous:8".into();
        }
        contiguous.clients = 9;
        assert_eq!(contiguous.validate(), Ok(()));
        let v = VerticalSim::default();
        assert!(v.column_split(64).is_ok());
        assert!(
            VerticalSim {
                split: "contiguous:x".into(),
                ..v
            }
            .column_split(64)
            .unwrap_err()
            .contains("bad party count")
        );
    }

    #[test]
    fn reward_policies_exclude_each_other_and_late_joiners() {
        let rffl = Some(fedval_server::config::RfflSettings::with_gamma(0.5));
        let fair = Some(fedval_server::config::FairRewardSettings::default());
        let both = SimConfig {
            reputation: rffl,
            fair_reward: fair,
            ..SimConfig::default()
        };
        assert!(both.validate().unwrap_err().contains("not both"));
        let late = scenario("late_joiner");
        assert_eq!(late.validate(), Ok(()));
        for (reputation, fair_reward) in [(rffl, None), (None, fair)] {
            let config = SimConfig {
                reputation,
                fair_reward,
                ..late.clone()
            };
            assert!(
                config
                    .validate()
                    .unwrap_err()
                    .contains("late joiners cannot")
            );
        }
    }

    #[test]
    fn a_typo_in_a_scenario_is_named_in_the_error() {
        let err = toml::from_str::<SimConfig>("rounds = 3\n[adversaries]\nlabel_flips = 2\n")
            .expect_err("unknown field");
        assert!(
            err.to_string().contains("unknown field `label_flips`"),
            "{err}"
        );
        let err = toml::from_str::<SimConfig>("round = 3\n").expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `round`"), "{err}");
    }

    #[test]
    fn behaviours_are_assigned_in_field_order() {
        let config = SimConfig {
            noisy: 1,
            tiny: 1,
            adversaries: Adversaries {
                free_rider_noise: 1,
                free_rider_zero: 1,
                label_flip: 1,
                sign_flip: 1,
                scaled_noise: 1,
                sybil_copies: 2,
                late_joiner: 1,
                ..Adversaries::default()
            },
            clients: 12,
            ..SimConfig::default()
        };
        let got: Vec<Behaviour> = (0..12).map(|i| config.behaviour(i)).collect();
        use Behaviour::*;
        assert_eq!(
            got,
            [
                Noisy,
                Tiny,
                FreeRiderNoise,
                FreeRiderZero,
                LabelFlip,
                SignFlip,
                ScaledNoise,
                Sybil,
                Sybil,
                LateJoiner,
                Honest,
                Honest
            ]
        );
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.initial_clients(), 11);
        // The demo is unchanged: one noisy, one tiny, eight honest.
        let demo = SimConfig::default();
        assert_eq!(demo.behaviour(0), Noisy);
        assert_eq!(demo.behaviour(1), Tiny);
        assert!((2..10).all(|i| demo.behaviour(i) == Honest));
    }

    #[test]
    fn inconsistent_counts_are_refused() {
        let with = |adversaries: Adversaries| SimConfig {
            adversaries,
            ..SimConfig::default()
        };
        let too_many = with(Adversaries {
            sign_flip: 9,
            ..Adversaries::default()
        });
        assert!(
            too_many
                .validate()
                .unwrap_err()
                .contains("exceed the number of clients (10)")
        );
        let lonely = with(Adversaries {
            sybil_copies: 1,
            ..Adversaries::default()
        });
        assert!(lonely.validate().unwrap_err().contains("sybil_copies"));
        let never = with(Adversaries {
            late_joiner: 1,
            late_join_round: 20,
            ..Adversaries::default()
        });
        assert!(
            never
                .validate()
                .unwrap_err()
                .contains("late_join_round must be in 1..20")
        );
        let bad_scale = with(Adversaries {
            noise_scale: f64::NAN,
            ..Adversaries::default()
        });
        assert!(bad_scale.validate().unwrap_err().contains("noise_scale"));
    }
}
