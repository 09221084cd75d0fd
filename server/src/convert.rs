//! Conversions between the wire types (`fedval_proto::v1`) and the configuration types.
//!
//! **API boundary:** this is the only module that knows both. Proto-to-config conversion
//! checks only what the wire format can get wrong (a missing message, an unknown enum
//! string, bytes that are not whole f32 values) and names the proto field; the caller then
//! runs [`FederationConfig::validate`] for the value rules.
//!
//! proto3 cannot tell an unset field from its zero value, so missing `training` and
//! `valuation` messages, empty `method`/`metric` strings, and a zero in a field where zero
//! is never valid (`round_timeout_ms`, `training.local_epochs`, `training.batch_size`,
//! `training.learning_rate`, `valuation.exact_max_players`, and `valuation.budget` of a
//! sampling method) all mean "the default". A missing `aggregator` message or an empty
//! `aggregator.kind` means FedAvg; parameters of another kind than the one named must be
//! zero. A missing `reputation` message means RFFL is off, a missing `fair_reward` message
//! means the fair reward policy is off; their unset optional fields take the paper's
//! defaults (and an unset `fair_reward.window`/`seed` stays unset: window `2 n + 1`, the
//! federation's seed). A missing `model` is accepted only with a `vertical` message (a
//! vertical federation has no shared model); in `vertical`, an empty `training` means
//! "sync", and zero `batch_size`, `learning_rate`, `snapshot_every`, `completion_rank`
//! and `completion_lambda` mean their defaults. Every valid configuration survives
//! config -> proto -> config unchanged.

use bytes::Bytes;
use fedval_core::aggregate::AggregatorSpec;
use fedval_core::model::ModelSpec;
use fedval_proto::v1 as proto;

use crate::config::{
    BanditMechanism, BanditSettings, ConfigError, DEFAULT_ROUND_TIMEOUT_MS, FactSettings,
    FairRewardSettings, FederationConfig, RfflSettings, TrainingParams, UtilityMetric,
    ValidationData, ValuationConfig, ValuationMethod, VerticalObjective, VerticalSettings,
    VerticalTraining,
};

/// Narrows a count to the wire's `uint32`, saturating (validated configs always fit).
fn to_u32(n: impl TryInto<u32>) -> u32 {
    n.try_into().unwrap_or(u32::MAX)
}

/// `value`, or `default` when `value` is the proto3 zero.
fn or_default<T: PartialEq + Default>(value: T, default: T) -> T {
    if value == T::default() {
        default
    } else {
        value
    }
}

/// Parses one of `accepted`'s spellings; empty means `default`.
fn parse_choice<T: Copy>(
    field: &str,
    text: &str,
    accepted: &[(T, &'static str)],
    default: T,
) -> Result<T, ConfigError> {
    if text.is_empty() {
        return Ok(default);
    }
    accepted
        .iter()
        .find(|(_, name)| *name == text)
        .map(|(v, _)| *v)
        .ok_or_else(|| {
            let names: Vec<String> = accepted.iter().map(|(_, n)| format!("\"{n}\"")).collect();
            ConfigError::new(
                field,
                format!("unknown value {text:?}; accepted: {}", names.join(", ")),
            )
        })
}

/// The model spec of a proto `ModelSpec` (conversion and model checks live in
/// `fedval_proto::convert`); errors name the field `model`.
fn model_from_proto(spec: Option<&proto::ModelSpec>) -> Result<ModelSpec, ConfigError> {
    let spec = spec.ok_or_else(|| {
        ConfigError::new(
            "model",
            "missing: set `model.logistic_regression` or `model.mlp`",
        )
    })?;
    ModelSpec::try_from(spec).map_err(|e| ConfigError::new(e.field, e.reason))
}

impl From<&proto::TrainingParams> for TrainingParams {
    fn from(p: &proto::TrainingParams) -> Self {
        let d = TrainingParams::default();
        Self {
            local_epochs: or_default(p.local_epochs, d.local_epochs),
            batch_size: or_default(p.batch_size, d.batch_size),
            learning_rate: or_default(p.learning_rate, d.learning_rate),
            seed: p.seed,
        }
    }
}

impl From<&TrainingParams> for proto::TrainingParams {
    fn from(t: &TrainingParams) -> Self {
        Self {
            local_epochs: t.local_epochs,
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            seed: t.seed,
        }
    }
}

impl TryFrom<&proto::ValuationConfig> for ValuationConfig {
    type Error = ConfigError;

    fn try_from(p: &proto::ValuationConfig) -> Result<Self, ConfigError> {
        let d = ValuationConfig::default();
        let method = parse_choice(
            "valuation.method",
            &p.method,
            &ValuationMethod::ALL,
            d.method,
        )?;
        let metric = parse_choice("valuation.metric", &p.metric, &UtilityMetric::ALL, d.metric)?;
        Ok(Self {
            method,
            exact_max_players: or_default(p.exact_max_players as usize, d.exact_max_players),
            budget: if method.samples() {
                or_default(p.budget, d.budget)
            } else {
                p.budget
            },
            seed: p.seed,
            metric,
            tolerance: p.tolerance.unwrap_or(d.tolerance),
            round_tolerance: p.round_tolerance.unwrap_or(d.round_tolerance),
            within_tolerance: p.within_tolerance.unwrap_or(d.within_tolerance),
            beta_alpha: p.beta_alpha.unwrap_or(d.beta_alpha),
            beta_beta: p.beta_beta.unwrap_or(d.beta_beta),
            threads: p.threads.map_or(d.threads, |t| t as usize),
            max_lag_rounds: p.max_lag_rounds.unwrap_or(d.max_lag_rounds),
        })
    }
}

impl From<&ValuationConfig> for proto::ValuationConfig {
    fn from(v: &ValuationConfig) -> Self {
        Self {
            method: v.method.as_str().to_string(),
            exact_max_players: to_u32(v.exact_max_players),
            budget: v.budget,
            seed: v.seed,
            metric: v.metric.as_str().to_string(),
            tolerance: Some(v.tolerance),
            round_tolerance: Some(v.round_tolerance),
            within_tolerance: Some(v.within_tolerance),
            beta_alpha: Some(v.beta_alpha),
            beta_beta: Some(v.beta_beta),
            threads: Some(to_u32(v.threads)),
            max_lag_rounds: Some(v.max_lag_rounds),
        }
    }
}

/// The aggregator kinds' wire spellings (the same as the configuration's `kind`).
const AGGREGATOR_KINDS: [(&str, &str); 6] = [
    ("fedavg", "fedavg"),
    ("median", "median"),
    ("trimmed_mean", "trimmed_mean"),
    ("krum", "krum"),
    ("multi_krum", "multi_krum"),
    ("norm_clip", "norm_clip"),
];

/// The aggregator of a wire `Aggregator` (empty kind: FedAvg). A parameter set for
/// another kind is an error naming it (`aggregator.trim`, ...): the sender should hear
/// about a mistake rather than have it ignored.
pub fn aggregator_from_proto(p: &proto::Aggregator) -> Result<AggregatorSpec, ConfigError> {
    let kind = parse_choice("aggregator.kind", &p.kind, &AGGREGATOR_KINDS, "fedavg")?;
    let spec = match kind {
        "median" => AggregatorSpec::Median,
        "trimmed_mean" => AggregatorSpec::TrimmedMean {
            trim: p.trim as usize,
        },
        "krum" => AggregatorSpec::Krum {
            byzantine: p.byzantine as usize,
        },
        "multi_krum" => AggregatorSpec::MultiKrum {
            byzantine: p.byzantine as usize,
            selected: p.selected as usize,
        },
        "norm_clip" => AggregatorSpec::NormClip {
            max_norm: p.max_norm,
        },
        _ => AggregatorSpec::FedAvg,
    };
    for (name, set) in [
        ("trim", p.trim != 0),
        ("byzantine", p.byzantine != 0),
        ("selected", p.selected != 0),
        ("max_norm", p.max_norm != 0.0),
    ] {
        if set && !has_param(&spec, name) {
            return Err(ConfigError::new(
                format!("aggregator.{name}"),
                format!("is not a parameter of kind {kind:?}; leave it zero"),
            ));
        }
    }
    Ok(spec)
}

/// Whether `spec`'s kind has the parameter `name` (`trim`, `byzantine`, ...).
fn has_param(spec: &AggregatorSpec, name: &str) -> bool {
    match spec {
        AggregatorSpec::FedAvg | AggregatorSpec::Median => false,
        AggregatorSpec::TrimmedMean { .. } => name == "trim",
        AggregatorSpec::Krum { .. } => name == "byzantine",
        AggregatorSpec::MultiKrum { .. } => name == "byzantine" || name == "selected",
        AggregatorSpec::NormClip { .. } => name == "max_norm",
    }
}

/// The wire form of an aggregator: its kind and only its own parameters.
pub fn aggregator_to_proto(a: &AggregatorSpec) -> proto::Aggregator {
    let base = proto::Aggregator {
        kind: a.kind().to_string(),
        ..Default::default()
    };
    match *a {
        AggregatorSpec::FedAvg | AggregatorSpec::Median => base,
        AggregatorSpec::TrimmedMean { trim } => proto::Aggregator {
            trim: to_u32(trim),
            ..base
        },
        AggregatorSpec::Krum { byzantine } => proto::Aggregator {
            byzantine: to_u32(byzantine),
            ..base
        },
        AggregatorSpec::MultiKrum {
            byzantine,
            selected,
        } => proto::Aggregator {
            byzantine: to_u32(byzantine),
            selected: to_u32(selected),
            ..base
        },
        AggregatorSpec::NormClip { max_norm } => proto::Aggregator { max_norm, ..base },
    }
}

impl TryFrom<&proto::InlineDataset> for ValidationData {
    type Error = ConfigError;

    fn try_from(p: &proto::InlineDataset) -> Result<Self, ConfigError> {
        let features = fedval_core::tensor::from_le_bytes(&p.features)
            .map_err(|e| ConfigError::new("validation.features", e.to_string()))?;
        Ok(Self {
            num_features: p.num_features as usize,
            features,
            labels: p.labels.clone(),
        })
    }
}

impl From<&ValidationData> for proto::InlineDataset {
    fn from(v: &ValidationData) -> Self {
        Self {
            num_features: to_u32(v.num_features),
            features: Bytes::from(fedval_core::tensor::to_le_bytes(&v.features)),
            labels: v.labels.clone(),
        }
    }
}

impl TryFrom<proto::FederationConfig> for FederationConfig {
    type Error = ConfigError;

    /// Decodes a wire configuration; call [`FederationConfig::validate`] afterwards.
    fn try_from(p: proto::FederationConfig) -> Result<Self, ConfigError> {
        let vertical = p.vertical.as_ref().map(TryInto::try_into).transpose()?;
        let bandit = p.bandit.as_ref().map(TryInto::try_into).transpose()?;
        // Vertical and bandit federations have no shared model.
        let model = match (&p.model, vertical.is_some() || bandit.is_some()) {
            (None, true) => None,
            (model, _) => Some(model_from_proto(model.as_ref())?),
        };
        Ok(Self {
            id: p.id,
            enrollment_secret: p.enrollment_secret,
            model,
            rounds: u64::from(p.rounds),
            min_clients: p.min_clients as usize,
            clients_per_round: p.clients_per_round as usize,
            round_timeout_ms: or_default(p.round_timeout_ms, DEFAULT_ROUND_TIMEOUT_MS),
            training: p.training.as_ref().map(Into::into).unwrap_or_default(),
            valuation: p
                .valuation
                .as_ref()
                .map(TryInto::try_into)
                .transpose()?
                .unwrap_or_default(),
            aggregator: p
                .aggregator
                .as_ref()
                .map(aggregator_from_proto)
                .transpose()?
                .unwrap_or_default(),
            validation: p.validation.as_ref().map(TryInto::try_into).transpose()?,
            seed: p.seed,
            reputation: p.reputation.as_ref().map(Into::into),
            fair_reward: p.fair_reward.as_ref().map(Into::into),
            vertical,
            fact: p.fact.as_ref().map(TryInto::try_into).transpose()?,
            bandit,
        })
    }
}

impl TryFrom<&proto::VerticalConfig> for VerticalSettings {
    type Error = ConfigError;

    /// Decodes the wire's `VerticalConfig`; proto3 zeros take the defaults (module docs).
    fn try_from(p: &proto::VerticalConfig) -> Result<Self, ConfigError> {
        let objective = if p.objective.is_empty() {
            return Err(ConfigError::new(
                "vertical.objective",
                "missing: set \"classification\" or \"regression\"",
            ));
        } else {
            parse_choice(
                "vertical.objective",
                &p.objective,
                &VerticalObjective::ALL,
                VerticalObjective::Classification,
            )?
        };
        let d = VerticalSettings::classification(0, Vec::new());
        Ok(Self {
            objective,
            num_classes: p.num_classes,
            labels: p.labels.clone(),
            targets: p.targets.clone(),
            test_ids: p.test_ids.clone(),
            training: parse_choice(
                "vertical.training",
                &p.training,
                &VerticalTraining::ALL,
                VerticalTraining::Sync,
            )?,
            batch_size: or_default(p.batch_size, d.batch_size),
            learning_rate: or_default(p.learning_rate, d.learning_rate),
            l2: p.l2,
            hidden: p.hidden,
            snapshot_every: or_default(p.snapshot_every, d.snapshot_every),
            completion_rank: or_default(p.completion_rank, d.completion_rank),
            completion_lambda: or_default(p.completion_lambda, d.completion_lambda),
        })
    }
}

impl From<&VerticalSettings> for proto::VerticalConfig {
    /// Every field set explicitly.
    fn from(v: &VerticalSettings) -> Self {
        Self {
            objective: v.objective.as_str().into(),
            num_classes: v.num_classes,
            labels: v.labels.clone(),
            targets: v.targets.clone(),
            test_ids: v.test_ids.clone(),
            training: v.training.as_str().into(),
            batch_size: v.batch_size,
            learning_rate: v.learning_rate,
            l2: v.l2,
            hidden: v.hidden,
            snapshot_every: v.snapshot_every,
            completion_rank: v.completion_rank,
            completion_lambda: v.completion_lambda,
        }
    }
}

impl From<&proto::FairReward> for FairRewardSettings {
    /// Unset fields take the paper's defaults; a window beyond `usize` saturates
    /// (validation rejects it).
    fn from(p: &proto::FairReward) -> Self {
        let d = FairRewardSettings::default();
        FairRewardSettings {
            beta: p.beta.unwrap_or(d.beta),
            ratio: p.ratio.unwrap_or(d.ratio),
            significance: p.significance.unwrap_or(d.significance),
            window: p.window.map(|w| usize::try_from(w).unwrap_or(usize::MAX)),
            seed: p.seed,
        }
    }
}

impl From<&FairRewardSettings> for proto::FairReward {
    /// Every field set explicitly, except an unset window or seed.
    fn from(f: &FairRewardSettings) -> Self {
        proto::FairReward {
            beta: Some(f.beta),
            ratio: Some(f.ratio),
            significance: Some(f.significance),
            window: f.window.map(|w| w as u64),
            seed: f.seed,
        }
    }
}

impl From<&proto::Reputation> for RfflSettings {
    /// Unset optional fields take the paper's defaults; the gamma is narrowed to f32
    /// (validation rejects a non-finite result).
    fn from(p: &proto::Reputation) -> Self {
        let d = RfflSettings::with_gamma(p.gamma as f32);
        RfflSettings {
            alpha: p.alpha.unwrap_or(d.alpha),
            threshold_coefficient: p.threshold_coefficient.unwrap_or(d.threshold_coefficient),
            warm_up_rounds: p.warm_up_rounds.unwrap_or(d.warm_up_rounds),
            keep_own_update: p.keep_own_update.unwrap_or(d.keep_own_update),
            ..d
        }
    }
}

impl From<&RfflSettings> for proto::Reputation {
    /// Every field set explicitly.
    fn from(r: &RfflSettings) -> Self {
        proto::Reputation {
            gamma: f64::from(r.gamma),
            alpha: Some(r.alpha),
            threshold_coefficient: Some(r.threshold_coefficient),
            warm_up_rounds: Some(r.warm_up_rounds),
            keep_own_update: Some(r.keep_own_update),
        }
    }
}

impl From<&FederationConfig> for proto::FederationConfig {
    /// The full wire form, secret and validation data included.
    fn from(c: &FederationConfig) -> Self {
        Self {
            id: c.id.clone(),
            enrollment_secret: c.enrollment_secret.clone(),
            model: c.model.as_ref().map(Into::into),
            rounds: to_u32(c.rounds),
            min_clients: to_u32(c.min_clients),
            clients_per_round: to_u32(c.clients_per_round),
            round_timeout_ms: c.round_timeout_ms,
            training: Some((&c.training).into()),
            valuation: Some((&c.valuation).into()),
            aggregator: Some(aggregator_to_proto(&c.aggregator)),
            validation: c.validation.as_ref().map(Into::into),
            seed: c.seed,
            reputation: c.reputation.as_ref().map(Into::into),
            fair_reward: c.fair_reward.as_ref().map(Into::into),
            vertical: c.vertical.as_ref().map(Into::into),
            fact: c.fact.as_ref().map(Into::into),
            bandit: c.bandit.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<&proto::FactConfig> for FactSettings {
    type Error = ConfigError;

    /// Unset fields take the defaults; an unknown remainder policy is refused.
    fn try_from(p: &proto::FactConfig) -> Result<Self, ConfigError> {
        let d = FactSettings::default();
        Ok(FactSettings {
            offset: p.offset.unwrap_or(d.offset),
            alpha: p.alpha.unwrap_or(d.alpha),
            prize_factor: p.prize_factor.unwrap_or(d.prize_factor),
            remainder: crate::fact::parse_remainder(&p.remainder)?,
            seed: p.seed,
        })
    }
}

impl From<&FactSettings> for proto::FactConfig {
    /// Every field set explicitly, except an unset seed.
    fn from(f: &FactSettings) -> Self {
        proto::FactConfig {
            offset: Some(f.offset),
            alpha: Some(f.alpha),
            prize_factor: Some(f.prize_factor),
            remainder: crate::fact::remainder_name(f.remainder).into(),
            seed: f.seed,
        }
    }
}

impl TryFrom<&proto::BanditConfig> for BanditSettings {
    type Error = ConfigError;

    /// Unset fields take the defaults; an unknown mechanism is refused.
    fn try_from(p: &proto::BanditConfig) -> Result<Self, ConfigError> {
        let d = BanditSettings::new(p.dim, p.horizon);
        Ok(BanditSettings {
            lambda: p.lambda.unwrap_or(d.lambda),
            alpha: p.alpha.unwrap_or(d.alpha),
            threshold: p.threshold.unwrap_or(d.threshold),
            beta: p.beta.unwrap_or(d.beta),
            essential_cap: p.essential_cap.unwrap_or(d.essential_cap),
            mechanism: BanditMechanism::parse(&p.mechanism)?,
            baseline_value_weight: p.baseline_value_weight.unwrap_or(d.baseline_value_weight),
            seed: p.seed,
            ..d
        })
    }
}

impl From<&BanditSettings> for proto::BanditConfig {
    /// Every field set explicitly, except an unset seed.
    fn from(b: &BanditSettings) -> Self {
        proto::BanditConfig {
            dim: b.dim,
            horizon: b.horizon,
            lambda: Some(b.lambda),
            alpha: Some(b.alpha),
            threshold: Some(b.threshold),
            beta: Some(b.beta),
            essential_cap: Some(b.essential_cap),
            mechanism: b.mechanism.as_str().into(),
            baseline_value_weight: Some(b.baseline_value_weight),
            seed: b.seed,
        }
    }
}

/// The wire form for listings: without the enrollment secret (which only clients need)
/// and without the validation data or a vertical federation's labels, targets and test
/// ids (which can be megabytes).
pub fn config_summary_proto(c: &FederationConfig) -> proto::FederationConfig {
    let mut summary = proto::FederationConfig {
        enrollment_secret: String::new(),
        validation: None,
        ..c.into()
    };
    if let Some(v) = summary.vertical.as_mut() {
        v.labels.clear();
        v.targets.clear();
        v.test_ids.clear();
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> FederationConfig {
        FederationConfig {
            id: "fed".into(),
            enrollment_secret: "s".into(),
            model: Some(ModelSpec::Mlp {
                num_features: 2,
                hidden: 5,
                num_classes: 3,
            }),
            rounds: 7,
            min_clients: 2,
            clients_per_round: 4,
            round_timeout_ms: 1234,
            training: TrainingParams {
                local_epochs: 3,
                batch_size: 8,
                learning_rate: 0.01,
                seed: 9,
            },
            valuation: ValuationConfig {
                method: ValuationMethod::Exact,
                exact_max_players: 10,
                budget: 0,
                seed: 5,
                metric: UtilityMetric::NegLogLoss,
                tolerance: 0.02,
                round_tolerance: 0.0,
                within_tolerance: 0.005,
                beta_alpha: 4.0,
                beta_beta: 2.0,
                threads: 3,
                max_lag_rounds: 0,
            },
            aggregator: AggregatorSpec::MultiKrum {
                byzantine: 0,
                selected: 3,
            },
            validation: Some(ValidationData {
                num_features: 2,
                features: vec![0.1, -2.5, 3.0, f32::MIN_POSITIVE],
                labels: vec![2, 0],
            }),
            seed: 11,
            reputation: Some(RfflSettings {
                gamma: 0.25,
                alpha: 0.5,
                threshold_coefficient: 0.125,
                warm_up_rounds: 4,
                keep_own_update: false,
            }),
            fair_reward: None,
            vertical: None,
            fact: None,
            bandit: None,
        }
    }

    #[test]
    fn config_proto_config_is_identity() {
        let logreg = FederationConfig {
            model: Some(ModelSpec::LogisticRegression {
                num_features: 2,
                num_classes: 3,
            }),
            valuation: ValuationConfig::default(),
            ..full()
        };
        let no_validation = FederationConfig {
            valuation: ValuationConfig {
                method: ValuationMethod::None,
                ..ValuationConfig::default()
            },
            validation: None,
            ..full()
        };
        for cfg in [full(), logreg, no_validation] {
            assert_eq!(cfg.validate(), Ok(()));
            let wire = proto::FederationConfig::from(&cfg);
            assert_eq!(FederationConfig::try_from(wire), Ok(cfg));
        }
    }

    /// A valid vertical federation over 6 samples and 2 parties.
    fn vertical() -> FederationConfig {
        FederationConfig {
            model: None,
            validation: None,
            reputation: None,
            fair_reward: None,
            clients_per_round: 0,
            min_clients: 2,
            vertical: Some(VerticalSettings {
                test_ids: vec![5, 1],
                hidden: 4,
                l2: 0.01,
                completion_rank: 2,
                ..VerticalSettings::classification(3, vec![0, 1, 2, 2, 1, 0])
            }),
            ..full()
        }
    }

    #[test]
    fn vertical_round_trips_and_zeros_take_defaults() {
        let cfg = vertical();
        assert_eq!(cfg.validate(), Ok(()));
        let wire = proto::FederationConfig::from(&cfg);
        assert_eq!(wire.model, None);
        assert_eq!(FederationConfig::try_from(wire.clone()), Ok(cfg.clone()));
        // Listings leave the labels and test ids out.
        let summary = config_summary_proto(&cfg).vertical.expect("vertical");
        assert!(summary.labels.is_empty() && summary.test_ids.is_empty());
        assert_eq!(summary.num_classes, 3);

        let minimal = proto::VerticalConfig {
            objective: "regression".into(),
            targets: vec![0.5, -1.0],
            ..Default::default()
        };
        let settings = VerticalSettings::try_from(&minimal).expect("decodes");
        assert_eq!(settings.training, VerticalTraining::Sync);
        assert_eq!(settings.batch_size, 32);
        assert_eq!(settings.learning_rate, 0.1);
        assert_eq!(settings.snapshot_every, 10);
        assert_eq!(settings.completion_rank, 3);
        assert_eq!(settings.completion_lambda, 0.1);
        for (bad, field) in [
            (proto::VerticalConfig::default(), "vertical.objective"),
            (
                proto::VerticalConfig {
                    objective: "ranking".into(),
                    ..minimal.clone()
                },
                "vertical.objective",
            ),
            (
                proto::VerticalConfig {
                    training: "eventually".into(),
                    ..minimal.clone()
                },
                "vertical.training",
            ),
        ] {
            let err = VerticalSettings::try_from(&bad).expect_err("refused");
            assert_eq!(err.field, field, "{err}");
        }
        // A horizontal federation still needs its model.
        let err = FederationConfig::try_from(proto::FederationConfig {
            vertical: None,
            ..wire
        })
        .expect_err("no model");
        assert_eq!(err.field, "model");
    }

    #[test]
    fn reputation_round_trips_and_unset_fields_take_defaults() {
        let off = FederationConfig {
            reputation: None,
            ..full()
        };
        let wire = proto::FederationConfig::from(&off);
        assert_eq!(wire.reputation, None);
        assert_eq!(FederationConfig::try_from(wire), Ok(off));
        let wire = proto::Reputation {
            gamma: 0.5,
            ..Default::default()
        };
        let settings = RfflSettings::from(&wire);
        assert_eq!(settings, RfflSettings::with_gamma(0.5));
        assert_eq!(settings.alpha, 0.95);
        assert_eq!(settings.threshold_coefficient, 1.0 / 3.0);
        assert_eq!(settings.warm_up_rounds, 10);
    }

    #[test]
    fn fact_and_bandit_round_trip_and_unset_fields_take_defaults() {
        let fact = FederationConfig {
            fact: Some(FactSettings {
                offset: 2.0,
                seed: Some(9),
                ..FactSettings::default()
            }),
            ..full()
        };
        assert_eq!(fact.validate(), Ok(()));
        let wire = proto::FederationConfig::from(&fact);
        assert_eq!(FederationConfig::try_from(wire), Ok(fact));
        assert_eq!(
            FactSettings::try_from(&proto::FactConfig::default()),
            Ok(FactSettings::default())
        );
        let bad = proto::FactConfig {
            remainder: "drop".into(),
            ..Default::default()
        };
        assert_eq!(
            FactSettings::try_from(&bad).map_err(|e| e.field),
            Err("fact.remainder".to_string())
        );

        let bandit = FederationConfig {
            model: None,
            validation: None,
            reputation: None,
            fair_reward: None,
            rounds: 0,
            clients_per_round: 0,
            aggregator: AggregatorSpec::default(),
            bandit: Some(BanditSettings {
                mechanism: BanditMechanism::Baseline,
                seed: Some(4),
                ..BanditSettings::new(5, 100)
            }),
            ..full()
        };
        assert_eq!(bandit.validate(), Ok(()));
        let wire = proto::FederationConfig::from(&bandit);
        assert!(wire.model.is_none());
        assert_eq!(FederationConfig::try_from(wire), Ok(bandit));
        let minimal = proto::BanditConfig {
            dim: 5,
            horizon: 100,
            ..Default::default()
        };
        assert_eq!(
            BanditSettings::try_from(&minimal),
            Ok(BanditSettings::new(5, 100))
        );
    }

    #[test]
    fn fair_reward_round_trips_and_unset_fields_take_defaults() {
        let on = FederationConfig {
            reputation: None,
            fair_reward: Some(FairRewardSettings {
                beta: 20.0,
                ratio: 0.25,
                significance: 0.7,
                window: Some(9),
                seed: Some(42),
            }),
            ..full()
        };
        let defaults = FederationConfig {
            reputation: None,
            fair_reward: Some(FairRewardSettings::default()),
            ..full()
        };
        for cfg in [on, defaults] {
            assert_eq!(cfg.validate(), Ok(()));
            let wire = proto::FederationConfig::from(&cfg);
            assert!(wire.fair_reward.is_some());
            assert_eq!(FederationConfig::try_from(wire), Ok(cfg));
        }
        let settings = FairRewardSettings::from(&proto::FairReward::default());
        assert_eq!(settings, FairRewardSettings::default());
        assert_eq!(
            (settings.beta, settings.ratio, settings.significance),
            (150.0, 0.4, 0.9)
        );
        assert_eq!((settings.window, settings.seed), (None, None));
        // Both policies on the wire: decoded, then refused by validation naming both.
        let both = proto::FederationConfig {
            fair_reward: Some(proto::FairReward::default()),
            ..proto::FederationConfig::from(&full())
        };
        let err = FederationConfig::try_from(both)
            .expect("decodes")
            .validate()
            .expect_err("exclusive");
        assert_eq!(err.field, "fair_reward");
        assert!(err.reason.contains("`reputation`"), "{err}");
    }

    #[test]
    fn every_aggregator_round_trips() {
        let specs = [
            AggregatorSpec::FedAvg,
            AggregatorSpec::Median,
            AggregatorSpec::TrimmedMean { trim: 1 },
            AggregatorSpec::Krum { byzantine: 0 },
            AggregatorSpec::MultiKrum {
                byzantine: 0,
                selected: 2,
            },
            AggregatorSpec::NormClip { max_norm: 0.25 },
        ];
        for spec in specs {
            let wire = aggregator_to_proto(&spec);
            assert_eq!(wire.kind, spec.kind());
            assert_eq!(aggregator_from_proto(&wire), Ok(spec));
            let cfg = FederationConfig {
                aggregator: spec,
                ..full()
            };
            let wire = proto::FederationConfig::from(&cfg);
            assert_eq!(FederationConfig::try_from(wire), Ok(cfg));
        }
        // The hand-written wire form of Krum with f = 2.
        let krum = proto::Aggregator {
            kind: "krum".into(),
            byzantine: 2,
            ..Default::default()
        };
        assert_eq!(
            aggregator_to_proto(&AggregatorSpec::Krum { byzantine: 2 }),
            krum
        );
    }

    #[test]
    fn aggregator_wire_errors_name_the_field() {
        let cases = [
            ("bulyan", 0, 0.0, "aggregator.kind"),
            ("median", 1, 0.0, "aggregator.trim"),
            ("krum", 0, 0.5, "aggregator.max_norm"),
            ("", 3, 0.0, "aggregator.trim"),
        ];
        for (kind, trim, max_norm, field) in cases {
            let wire = proto::Aggregator {
                kind: kind.into(),
                trim,
                max_norm,
                ..Default::default()
            };
            let err = aggregator_from_proto(&wire).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        let err = aggregator_from_proto(&proto::Aggregator {
            kind: "krum".into(),
            selected: 2,
            ..Default::default()
        })
        .expect_err("selected is multi-krum's");
        assert_eq!(
            err.to_string(),
            "invalid federation config: field `aggregator.selected`: \
             is not a parameter of kind \"krum\"; leave it zero"
        );
    }

    #[test]
    fn missing_messages_and_zeros_mean_defaults() {
        let wire = proto::FederationConfig {
            id: "x".into(),
            model: Some(
                (&ModelSpec::LogisticRegression {
                    num_features: 2,
                    num_classes: 2,
                })
                    .into(),
            ),
            rounds: 1,
            min_clients: 1,
            ..Default::default()
        };
        let cfg = FederationConfig::try_from(wire).expect("decodes");
        assert_eq!(cfg.training, TrainingParams::default());
        assert_eq!(cfg.valuation, ValuationConfig::default());
        assert_eq!(cfg.round_timeout_ms, DEFAULT_ROUND_TIMEOUT_MS);
        assert_eq!(cfg.validation, None);
        assert_eq!(cfg.aggregator, AggregatorSpec::FedAvg);

        let zeros = proto::ValuationConfig {
            method: "permutation".into(),
            ..Default::default()
        };
        let v = ValuationConfig::try_from(&zeros).expect("decodes");
        assert_eq!((v.exact_max_players, v.budget), (12, 2000));
        let exact = proto::ValuationConfig {
            method: "exact".into(),
            ..Default::default()
        };
        assert_eq!(
            ValuationConfig::try_from(&exact).expect("decodes").budget,
            0
        );
    }

    #[test]
    fn wire_errors_name_the_proto_field() {
        let base = proto::FederationConfig::from(&full());
        let no_model = proto::FederationConfig {
            model: None,
            ..base.clone()
        };
        let empty_model = proto::FederationConfig {
            model: Some(proto::ModelSpec { kind: None }),
            ..base.clone()
        };
        let bad_method = proto::FederationConfig {
            valuation: Some(proto::ValuationConfig {
                method: "shapley".into(),
                ..Default::default()
            }),
            ..base.clone()
        };
        let bad_metric = proto::FederationConfig {
            valuation: Some(proto::ValuationConfig {
                metric: "f1".into(),
                ..Default::default()
            }),
            ..base.clone()
        };
        let ragged = proto::FederationConfig {
            validation: Some(proto::InlineDataset {
                num_features: 2,
                features: Bytes::from_static(&[0, 0, 0, 0, 1]),
                labels: vec![0],
            }),
            ..base
        };
        let cases = [
            (no_model, "model"),
            (empty_model, "model"),
            (bad_method, "valuation.method"),
            (bad_metric, "valuation.metric"),
            (ragged, "validation.features"),
        ];
        for (wire, field) in cases {
            let err = FederationConfig::try_from(wire).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        let err = ValuationConfig::try_from(&proto::ValuationConfig {
            method: "shapley".into(),
            ..Default::default()
        })
        .expect_err("bad method");
        assert!(
            err.reason
                .contains("\"auto\", \"exact\", \"permutation\", \"permutation_antithetic\""),
            "{err}"
        );
    }

    #[test]
    fn summary_hides_secret_and_validation_data() {
        let summary = config_summary_proto(&full());
        assert_eq!(summary.enrollment_secret, "");
        assert_eq!(summary.validation, None);
        assert_eq!(summary.id, "fed");
        assert_eq!(summary.model, full().model.as_ref().map(Into::into));
        assert_eq!(summary.training, Some((&full().training).into()));
    }

    #[test]
    fn validation_bytes_are_little_endian_f32() {
        let v = ValidationData {
            num_features: 1,
            features: vec![1.0],
            labels: vec![0],
        };
        let wire = proto::InlineDataset::from(&v);
        assert_eq!(wire.features.as_ref(), &[0, 0, 0x80, 0x3f]);
    }
}
