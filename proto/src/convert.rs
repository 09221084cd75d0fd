//! Conversions between wire messages and fedval-core's domain types, written once for
//! the server, the client SDK and the simulator.

use fedval_core::model::ModelSpec;

use crate::v1;

/// A wire message that does not describe a valid domain value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct ConvertError {
    /// The offending field, dotted from the message root (e.g. `model.mlp.hidden`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConvertError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        ConvertError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

impl From<&ModelSpec> for v1::ModelSpec {
    fn from(spec: &ModelSpec) -> Self {
        use v1::model_spec::Kind;
        let kind = match *spec {
            ModelSpec::LogisticRegression {
                num_features,
                num_classes,
            } => Kind::LogisticRegression(v1::LogisticRegressionSpec {
                num_features: saturate(num_features),
                num_classes: saturate(num_classes),
            }),
            ModelSpec::Mlp {
                num_features,
                hidden,
                num_classes,
            } => Kind::Mlp(v1::MlpSpec {
                num_features: saturate(num_features),
                hidden: saturate(hidden),
                num_classes: saturate(num_classes),
            }),
        };
        v1::ModelSpec { kind: Some(kind) }
    }
}

impl TryFrom<&v1::ModelSpec> for ModelSpec {
    type Error = ConvertError;

    /// Converts and validates (dimensions, parameter count) the wire model spec.
    fn try_from(spec: &v1::ModelSpec) -> Result<Self, ConvertError> {
        use v1::model_spec::Kind;
        let model = match &spec.kind {
            Some(Kind::LogisticRegression(m)) => ModelSpec::LogisticRegression {
                num_features: m.num_features as usize,
                num_classes: m.num_classes as usize,
            },
            Some(Kind::Mlp(m)) => ModelSpec::Mlp {
                num_features: m.num_features as usize,
                hidden: m.hidden as usize,
                num_classes: m.num_classes as usize,
            },
            None => {
                return Err(ConvertError::new(
                    "model",
                    "no model kind set; use logistic_regression or mlp",
                ));
            }
        };
        model
            .validate()
            .map_err(|e| ConvertError::new("model", e.to_string()))?;
        Ok(model)
    }
}

/// Dimensions beyond u32 cannot be described on the wire; they are rejected earlier by
/// `ModelSpec::validate`, so saturating here never changes a valid spec.
fn saturate(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_spec_round_trips() {
        for spec in [
            ModelSpec::LogisticRegression {
                num_features: 64,
                num_classes: 10,
            },
            ModelSpec::Mlp {
                num_features: 13,
                hidden: 32,
                num_classes: 3,
            },
        ] {
            let wire = v1::ModelSpec::from(&spec);
            assert_eq!(ModelSpec::try_from(&wire), Ok(spec));
        }
    }

    #[test]
    fn missing_or_invalid_model_names_the_field() {
        let err = ModelSpec::try_from(&v1::ModelSpec { kind: None }).unwrap_err();
        assert_eq!(err.field, "model");
        let bad = v1::ModelSpec {
            kind: Some(v1::model_spec::Kind::LogisticRegression(
                v1::LogisticRegressionSpec {
                    num_features: 0,
                    num_classes: 10,
                },
            )),
        };
        assert_eq!(ModelSpec::try_from(&bad).unwrap_err().field, "model");
    }
}
