//! The defence a simulated federation runs: one of the server's aggregators, or RFFL
//! reputations (which replace the aggregator and give every client its own model).
//!
//! One parser for the command line and the attack table: `fedavg`, `median`,
//! `trimmed_mean:K`, `krum:F`, `multi_krum:F:M`, `norm_clip:C`, `rffl:GAMMA` (ALGORITHMS.md
//! section 4: a client keeps its own update) and `rffl_reference:GAMMA` (the RFFL reference
//! code's rule: a client's model receives only the sparsified reward), and
//! `fair_reward[:BETA[:RATIO[:WINDOW[:SIGNIFICANCE]]]]` (ALGORITHMS.md section 5, over
//! FedAvg).

use fedval_core::aggregate::AggregatorSpec;
use fedval_server::config::{FairRewardSettings, RfflSettings};

use crate::SimConfig;

/// What protects the federation: an aggregator, or RFFL.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Defense {
    /// A shared-model aggregator; RFFL off.
    Aggregator(AggregatorSpec),
    /// RFFL reputations with these settings.
    Rffl(RfflSettings),
    /// Fair yet asymptotically equal rewards over FedAvg.
    FairReward(FairRewardSettings),
}

impl Defense {
    /// Parses `kind[:param[:param]]` (see the module docs); ranges are checked by the server.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let kind = parts.next().unwrap_or_default();
        let params: Vec<&str> = parts.collect();
        let param = |i: usize| -> Result<&str, String> {
            params
                .get(i)
                .copied()
                .ok_or_else(|| format!("{kind} needs {} parameter(s), e.g. krum:2", i + 1))
        };
        let int = |i: usize| -> Result<usize, String> {
            let p = param(i)?;
            p.parse()
                .map_err(|e| format!("{kind}: bad parameter {p:?}: {e}"))
        };
        let float = |i: usize| -> Result<f32, String> {
            let p = param(i)?;
            p.parse()
                .map_err(|e| format!("{kind}: bad parameter {p:?}: {e}"))
        };
        let aggregator = |spec| Ok(Defense::Aggregator(spec));
        match kind {
            "fedavg" => aggregator(AggregatorSpec::FedAvg),
            "median" => aggregator(AggregatorSpec::Median),
            "trimmed_mean" => aggregator(AggregatorSpec::TrimmedMean { trim: int(0)? }),
            "krum" => aggregator(AggregatorSpec::Krum { byzantine: int(0)? }),
            "multi_krum" => aggregator(AggregatorSpec::MultiKrum {
                byzantine: int(0)?,
                selected: int(1)?,
            }),
            "norm_clip" => aggregator(AggregatorSpec::NormClip {
                max_norm: f64::from(float(0)?),
            }),
            "rffl" => Ok(Defense::Rffl(RfflSettings::with_gamma(float(0)?))),
            "rffl_reference" => Ok(Defense::Rffl(RfflSettings {
                keep_own_update: false,
                ..RfflSettings::with_gamma(float(0)?)
            })),
            "fair_reward" => {
                let mut f = FairRewardSettings::default();
                if let Some(p) = params.first() {
                    f.beta = p
                        .parse()
                        .map_err(|e| format!("{kind}: bad beta {p:?}: {e}"))?;
                }
                if let Some(p) = params.get(1) {
                    f.ratio = p
                        .parse()
                        .map_err(|e| format!("{kind}: bad ratio {p:?}: {e}"))?;
                }
                if params.len() > 2 {
                    f.window = Some(int(2)?);
                }
                if let Some(p) = params.get(3) {
                    f.significance = p
                        .parse()
                        .map_err(|e| format!("{kind}: bad significance {p:?}: {e}"))?;
                }
                Ok(Defense::FairReward(f))
            }
            other => Err(format!(
                "unknown aggregator {other:?}: use fedavg, median, trimmed_mean:K, krum:F, \
                 multi_krum:F:M, norm_clip:C, rffl:GAMMA, rffl_reference:GAMMA or \
                 fair_reward[:BETA[:RATIO[:WINDOW[:SIGNIFICANCE]]]]"
            )),
        }
    }

    /// Sets `config` to run this defence (and nothing else).
    pub fn apply(&self, config: &mut SimConfig) {
        match *self {
            Defense::Aggregator(spec) => {
                config.aggregator = spec;
                config.reputation = None;
                config.fair_reward = None;
            }
            Defense::Rffl(settings) => {
                config.aggregator = AggregatorSpec::FedAvg;
                config.reputation = Some(settings);
                config.fair_reward = None;
            }
            Defense::FairReward(settings) => {
                config.aggregator = AggregatorSpec::FedAvg;
                config.reputation = None;
                config.fair_reward = Some(settings);
            }
        }
    }

    /// The defence `config` runs.
    pub fn of(config: &SimConfig) -> Self {
        match (config.reputation, config.fair_reward) {
            (Some(settings), _) => Defense::Rffl(settings),
            (None, Some(settings)) => Defense::FairReward(settings),
            (None, None) => Defense::Aggregator(config.aggregator),
        }
    }
}

impl std::fmt::Display for Defense {
    /// `median`, `krum (byzantine = 2)`, `rffl (gamma = 0.5)`, `rffl_reference (gamma = 0.5)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Defense::Aggregator(spec) => write!(f, "{spec}"),
            Defense::Rffl(s) if s.keep_own_update => write!(f, "rffl (gamma = {})", s.gamma),
            Defense::Rffl(s) => write!(f, "rffl_reference (gamma = {})", s.gamma),
            Defense::FairReward(s) => {
                write!(f, "fair_reward (beta = {}, ratio = {}", s.beta, s.ratio)?;
                if let Some(w) = s.window {
                    write!(f, ", window = {w}")?;
                }
                write!(f, ", significance = {})", s.significance)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregator(text: &str) -> Result<AggregatorSpec, String> {
        match Defense::parse(text)? {
            Defense::Aggregator(spec) => Ok(spec),
            other => Err(format!("not an aggregator: {other}")),
        }
    }

    #[test]
    fn aggregators_parse() {
        assert_eq!(aggregator("median"), Ok(AggregatorSpec::Median));
        assert_eq!(
            aggregator("krum:2"),
            Ok(AggregatorSpec::Krum { byzantine: 2 })
        );
        assert_eq!(
            aggregator("multi_krum:2:6"),
            Ok(AggregatorSpec::MultiKrum {
                byzantine: 2,
                selected: 6
            })
        );
        assert_eq!(
            aggregator("norm_clip:0.5"),
            Ok(AggregatorSpec::NormClip { max_norm: 0.5 })
        );
        assert!(
            aggregator("krum")
                .unwrap_err()
                .contains("needs 1 parameter")
        );
        assert!(
            aggregator("mean")
                .unwrap_err()
                .contains("unknown aggregator")
        );
    }

    #[test]
    fn rffl_variants_parse_and_apply() {
        let spec = Defense::parse("rffl:0.5").expect("parses");
        assert_eq!(spec, Defense::Rffl(RfflSettings::with_gamma(0.5)));
        let reference = Defense::parse("rffl_reference:0.25").expect("parses");
        let Defense::Rffl(settings) = reference else {
            panic!("not rffl: {reference}");
        };
        assert!(!settings.keep_own_update);
        assert_eq!(settings.gamma, 0.25);
        assert!(
            Defense::parse("rffl:x")
                .unwrap_err()
                .contains("bad parameter")
        );

        let mut config = SimConfig {
            aggregator: AggregatorSpec::Median,
            ..SimConfig::default()
        };
        reference.apply(&mut config);
        assert_eq!(config.aggregator, AggregatorSpec::FedAvg);
        assert_eq!(Defense::of(&config), reference);
        let fair = Defense::parse("fair_reward:100:0.5:11:0.7").expect("parses");
        fair.apply(&mut config);
        assert_eq!((config.reputation, Defense::of(&config)), (None, fair));
        let Some(f) = config.fair_reward else {
            panic!("fair_reward not set");
        };
        assert_eq!(
            (f.beta, f.ratio, f.window, f.significance),
            (100.0, 0.5, Some(11), 0.7)
        );
        assert_eq!(
            fair.to_string(),
            "fair_reward (beta = 100, ratio = 0.5, window = 11, significance = 0.7)"
        );
        assert!(
            Defense::parse("fair_reward:x")
                .unwrap_err()
                .contains("bad beta")
        );
        Defense::Aggregator(AggregatorSpec::Median).apply(&mut config);
        assert_eq!((config.reputation, config.fair_reward), (None, None));
        assert_eq!(Defense::of(&config).to_string(), "median");
    }
}
