//! The records the store persists, and their encodings.
//!
//! Records are JSON (`serde_json`): self-describing, easy to inspect with a debugger or a
//! dump tool, and cheap at their size. Floats in metrics and values may legitimately be
//! non-finite (a log-loss of `-inf`), which JSON cannot express, so those fields go through
//! [`float_repr`]: finite numbers stay numbers, `NaN`/`inf`/`-inf` become strings, and every
//! `f64` survives a round trip bit for bit. Tensors (models, updates) are not JSON: they are
//! little-endian f32 bytes, the wire format of `fedval_core::tensor`.

use fedval_core::reputation::{FairRewardState, RfflState};
use serde::{Deserialize, Serialize};

use crate::config::FederationConfig;

/// A federation: its immutable configuration and its mutable progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederationRecord {
    /// The configuration it was created with.
    pub config: FederationConfig,
    /// Where it is in its life cycle.
    pub status: FederationStatus,
    /// Rounds committed so far.
    pub committed_rounds: u64,
    /// Version of the current global model (0 = the initial model).
    pub model_version: u64,
    /// RFFL state after the last committed round (reputation federations only; `None`
    /// before the first round commits). Committed with the round, so a restart keeps it.
    #[serde(default)]
    pub rffl: Option<RfflState>,
    /// Fair-reward state after the last committed round (`fair_reward` federations only;
    /// `None` before the first round commits). Committed with the round, like `rffl`.
    #[serde(default)]
    pub fair_reward: Option<FairRewardState>,
}

/// Life cycle of a federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FederationStatus {
    /// Created; waiting for `min_clients` enrollments.
    Waiting,
    /// Running rounds.
    Running,
    /// All rounds committed.
    Finished,
    /// Stopped by an operator before the last round.
    Stopped,
}

impl FederationStatus {
    /// The wire spelling (`"waiting"`, `"running"`, `"finished"`, `"stopped"`).
    pub fn as_str(self) -> &'static str {
        match self {
            FederationStatus::Waiting => "waiting",
            FederationStatus::Running => "running",
            FederationStatus::Finished => "finished",
            FederationStatus::Stopped => "stopped",
        }
    }
}

/// An enrolled client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Server-assigned id (also the prefix of its token).
    pub client_id: String,
    /// Name chosen by the client, unique in its federation.
    pub name: String,
    /// Hex SHA-256 of its bearer token (see `auth::hash_token`).
    pub token_hash: String,
    /// Local samples it declared at enrollment.
    pub num_samples: u64,
    /// Enrollment time, milliseconds since the Unix epoch.
    pub enrolled_at_ms: u64,
    /// Enrollment sequence number in the federation; clients are listed in this order.
    pub seq: u64,
    /// FACT federations: the marginal cost per data point it reported at enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_point: Option<f64>,
}

/// Metadata of one acknowledged client update (the tensor is stored beside it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// The uploading client.
    pub client_id: String,
    /// Round the update belongs to.
    pub round: u64,
    /// Global model version the update was trained from.
    pub model_version: u64,
    /// Samples the client trained on.
    pub num_samples: u64,
    /// Client-reported training metrics.
    #[serde(with = "metrics_repr")]
    pub metrics: Vec<(String, f64)>,
    /// Hex SHA-256 of the update's little-endian bytes.
    pub sha256: String,
    /// Receipt time, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
}

/// A committed round: who took part, what it produced and what each client contributed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number.
    pub round: u64,
    /// Model version this round produced.
    pub model_version: u64,
    /// Clients whose updates were aggregated.
    pub participants: Vec<String>,
    /// Selected clients that missed the deadline.
    pub stragglers: Vec<String>,
    /// Validation metrics of the new global model.
    #[serde(with = "metrics_repr")]
    pub metrics: Vec<(String, f64)>,
    /// Per-client contribution of this round.
    pub values: Vec<ClientValue>,
    /// Estimator actually used (`"exact"`, `"permutation"`, `"none"`).
    pub valuation_method: String,
    /// Utility evaluations spent.
    pub evaluations: u64,
    /// v(N) of the round's game.
    #[serde(with = "float_repr")]
    pub utility_full: f64,
    /// v(empty) of the round's game.
    #[serde(with = "float_repr")]
    pub utility_empty: f64,
    /// Wall time of the valuation, in milliseconds.
    pub valuation_ms: u64,
    /// Where the round's valuation stands: it may lag behind training.
    #[serde(default)]
    pub valuation_status: ValuationStatus,
    /// Why the estimator stopped (`"exact"`, `"budget_exhausted"`, `"converged"`), empty
    /// while pending or when not valued.
    #[serde(default)]
    pub valuation_stop: String,
    /// RFFL only: every client's reputation after this round, in enrollment order.
    #[serde(default)]
    pub reputations: Vec<ClientReputation>,
    /// RFFL only: this round's removal threshold; `None` during the warm-up.
    #[serde(default)]
    pub reputation_threshold: Option<f64>,
    /// Fair-reward federations only: what the policy did this round.
    #[serde(default)]
    pub fair_reward: Option<FairRewardRound>,
    /// Bandit federations only: the communication round (a bandit federation's `round`
    /// counts communication rounds; `model_version` is unused, 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandit: Option<super::bandit::BanditRound>,
}

impl RoundRecord {
    /// The record of a round just committed, before its valuation: `valued` says whether
    /// the valuation worker will value it (pending) or not (skipped, method `"none"`); no
    /// reward-policy fields.
    pub fn committed(
        round: u64,
        model_version: u64,
        participants: Vec<String>,
        stragglers: Vec<String>,
        metrics: Vec<(String, f64)>,
        valued: bool,
    ) -> Self {
        Self {
            round,
            model_version,
            participants,
            stragglers,
            metrics,
            values: Vec::new(),
            valuation_method: if valued { String::new() } else { "none".into() },
            evaluations: 0,
            utility_full: f64::NAN,
            utility_empty: f64::NAN,
            valuation_ms: 0,
            valuation_status: if valued {
                ValuationStatus::Pending
            } else {
                ValuationStatus::Skipped
            },
            valuation_stop: String::new(),
            reputations: Vec::new(),
            reputation_threshold: None,
            fair_reward: None,
            bandit: None,
        }
    }
}

/// One round of the fair yet asymptotically equal reward policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FairRewardRound {
    /// True for an exploration round (contributions estimated, every participant received
    /// the new global model); false once the policy exploits.
    pub exploring: bool,
    /// p-value of the stationarity test run after this round, if it ran.
    pub p_value: Option<f64>,
    /// Every enrolled client, in enrollment order.
    pub clients: Vec<ClientFairReward>,
}

/// One client's standing under the fair reward policy after a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientFairReward {
    /// The client.
    pub client_id: String,
    /// Running mean of its contribution estimates (frozen once exploration ended).
    pub psi: f64,
    /// True if its own model became this round's new global model; false if it kept
    /// its previous one.
    pub received_model: bool,
    /// Exploitation rounds only: its selection probability `softmax(beta psi)`.
    pub probability: Option<f64>,
}

/// One client's RFFL reputation after a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientReputation {
    /// The client.
    pub client_id: String,
    /// Normalised reputation (0 once removed).
    pub reputation: f64,
    /// Cosine similarity of its clipped update with the aggregate (0 if it sat out).
    pub phi: f64,
    /// True once the client is removed (in this round or an earlier one).
    pub removed: bool,
}

/// The state of a committed round's valuation, which runs after the round is committed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValuationStatus {
    /// Not valued yet (queued or running).
    #[default]
    Pending,
    /// Values are recorded.
    Done,
    /// Not valued by configuration (method `none` or no validation set).
    Skipped,
    /// The estimator failed; the reason is kept.
    Failed(String),
}

impl ValuationStatus {
    /// `pending`, `done`, `skipped` or `failed: <reason>`.
    pub fn describe(&self) -> String {
        match self {
            ValuationStatus::Pending => "pending".into(),
            ValuationStatus::Done => "done".into(),
            ValuationStatus::Skipped => "skipped".into(),
            ValuationStatus::Failed(reason) => format!("failed: {reason}"),
        }
    }
}

/// One client's value in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientValue {
    /// The client.
    pub client_id: String,
    /// Its (estimated) Shapley value.
    #[serde(with = "float_repr")]
    pub value: f64,
    /// Standard error of the estimate (0 when exact).
    #[serde(with = "float_repr")]
    pub std_error: f64,
}

/// Serde encoding of an `f64` that keeps non-finite values: numbers stay numbers,
/// `NaN`, `inf` and `-inf` become the strings `"NaN"`, `"inf"`, `"-inf"`.
pub mod float_repr {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as a number, or as a string when it is not finite.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    /// Reads a number or one of `"NaN"`, `"inf"`, `"-inf"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Number(v) => Ok(v),
            Repr::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!(
                    "expected a number, \"NaN\", \"inf\" or \"-inf\", got {other:?}"
                ))),
            },
        }
    }
}

/// Serde encoding of named metrics `[(name, value)]` with values through [`float_repr`].
mod metrics_repr {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Value(#[serde(with = "super::float_repr")] f64);

    pub fn serialize<S: Serializer>(v: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(name, x)| (name, Value(*x))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
        let raw: Vec<(String, Value)> = Vec::deserialize(d)?;
        Ok(raw.into_iter().map(|(name, Value(x))| (name, x)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_floats_survive_json() {
        let rec = RoundRecord {
            round: 3,
            model_version: 3,
            participants: vec!["a".into()],
            stragglers: vec![],
            metrics: vec![
                ("loss".into(), f64::INFINITY),
                ("x".into(), f64::NEG_INFINITY),
                ("acc".into(), 0.1 + 0.2),
            ],
            values: vec![ClientValue {
                client_id: "a".into(),
                value: f64::NAN,
                std_error: 1e-300,
            }],
            valuation_method: "exact".into(),
            evaluations: 2,
            utility_full: -f64::INFINITY,
            utility_empty: f64::MIN_POSITIVE,
            valuation_ms: 1,
            valuation_status: ValuationStatus::Failed("x".into()),
            valuation_stop: "exact".into(),
            reputations: vec![ClientReputation {
                client_id: "a".into(),
                reputation: 0.25,
                phi: -0.5,
                removed: true,
            }],
            reputation_threshold: Some(1.0 / 3.0),
            fair_reward: Some(FairRewardRound {
                exploring: false,
                p_value: Some(0.95),
                clients: vec![ClientFairReward {
                    client_id: "a".into(),
                    psi: -0.125,
                    received_model: true,
                    probability: Some(0.75),
                }],
            }),
            bandit: None,
        };
        let json = serde_json::to_vec(&rec).expect("encodes");
        let back: RoundRecord = serde_json::from_slice(&json).expect("decodes");
        assert!(back.values[0].value.is_nan());
        let mut expected = rec.clone();
        expected.values[0].value = 0.0;
        let mut got = back;
        got.values[0].value = 0.0;
        assert_eq!(got, expected);
    }

    #[test]
    fn unknown_float_strings_are_rejected() {
        let err = serde_json::from_str::<ClientValue>(
            r#"{"client_id":"a","value":"lots","std_error":0}"#,
        )
        .expect_err("bad float");
        assert!(err.to_string().contains("\"lots\""), "{err}");
    }

    #[test]
    fn status_spelling_matches_serde() {
        for s in [
            FederationStatus::Waiting,
            FederationStatus::Running,
            FederationStatus::Finished,
            FederationStatus::Stopped,
        ] {
            let json = serde_json::to_string(&s).expect("encodes");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }
}

/// One durable step of an asynchronous vertical run (the step log): what the party sent
/// and what it was answered. Tensors are stored as f32 bit patterns so a restart rebuilds
/// the embedding table and replays answers bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerticalStepRecord {
    /// The party.
    pub client_id: String,
    /// The party's step number (1, 2, ... per party).
    pub step: u64,
    /// Mean loss of the step's batch, before the update.
    pub loss: f64,
    /// The party's embeddings of the batch (`rows x C`, row-major), as `f32::to_bits`.
    pub rows: Vec<u32>,
    /// The per-sample gradients answered (`rows x C`), as `f32::to_bits`.
    pub gradients: Vec<u32>,
    /// The server bias after the step, as `f32::to_bits`.
    pub bias: Vec<u32>,
}

impl VerticalStepRecord {
    /// Encodes a step.
    pub fn new(
        client_id: &str,
        step: u64,
        loss: f64,
        rows: &[f32],
        gradients: &[f32],
        bias: &[f32],
    ) -> Self {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
        Self {
            client_id: client_id.to_string(),
            step,
            loss,
            rows: bits(rows),
            gradients: bits(gradients),
            bias: bits(bias),
        }
    }

    /// The embeddings the party sent.
    pub fn rows_f32(&self) -> Vec<f32> {
        self.rows.iter().map(|b| f32::from_bits(*b)).collect()
    }

    /// The gradients it was answered.
    pub fn gradients_f32(&self) -> Vec<f32> {
        self.gradients.iter().map(|b| f32::from_bits(*b)).collect()
    }

    /// The bias after the step.
    pub fn bias_f32(&self) -> Vec<f32> {
        self.bias.iter().map(|b| f32::from_bits(*b)).collect()
    }
}
