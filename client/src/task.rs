//! Typed tasks: what the coordinator asks a node to do next, converted from (and to) the
//! `fedval.v1` messages at this edge so the rest of the SDK never touches prost types.
//!
//! The conversion also checks what the proto cannot: a task names exactly one kind, and a
//! model spec names a known architecture with non-zero sizes.
//!
//! Horizontal nodes convert with [`Task::from_proto`], which refuses embed and bandit tasks;
//! vertical nodes with [`VerticalTask::from_proto`], which refuses train and bandit tasks;
//! bandit nodes with [`BanditTask::from_proto`], which refuses train and embed tasks and
//! checks every aggregate against the federation's dimension. Either way a node enrolled
//! in the wrong kind of federation stops with a message saying so.

use std::time::Duration;

use fedval_core::model::ModelSpec;
use fedval_proto::v1;

use crate::error::ClientError;

/// The next thing a node should do, mirrored from `fedval.v1.Task`.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Train one round and upload the update.
    Train(TrainTask),
    /// Nothing to do yet; ask again after `retry_after`.
    Wait {
        /// Suggested delay before the next pull.
        retry_after: Duration,
        /// Why (e.g. "round 3 is full"), for logs.
        reason: String,
    },
    /// The federation has finished (or this node was removed).
    Done {
        /// Version of the final global model.
        final_model_version: u64,
        /// Why, for logs.
        reason: String,
    },
    /// The server's reputation mechanism (RFFL) removed this node: it cannot upload
    /// any more and its own model stops improving.
    Removed {
        /// The round in which it was removed.
        round: u64,
        /// Why, for logs.
        reason: String,
    },
}

/// Train on local data from global model `model_version`, then upload for `round`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainTask {
    /// The round the update is for.
    pub round: u64,
    /// The global model version to start from.
    pub model_version: u64,
    /// Local training hyper-parameters chosen by the server.
    pub params: TrainParams,
    /// Time left, when the task was pulled, before the server closes the round.
    pub deadline: Duration,
    /// The model architecture.
    pub model: ModelSpec,
    /// FACT federations: the points `m*` this node must train on (from the cost it
    /// reported at enrollment); `None` when the federation sets no requirement.
    pub required_points: Option<f64>,
}

/// Local training hyper-parameters, mirrored from `fedval.v1.TrainingParams`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainParams {
    /// Passes over the local data.
    pub local_epochs: u32,
    /// Mini-batch size.
    pub batch_size: u32,
    /// SGD step size.
    pub learning_rate: f32,
    /// Seed the node mixes into its own RNG so runs are reproducible.
    pub seed: u64,
}

impl Task {
    /// Converts a task from the wire. A train task without a model spec uses `enrolled`, the
    /// spec the node was given at enrollment (the field is optional in proto3).
    pub fn from_proto(task: v1::Task, enrolled: &ModelSpec) -> Result<Self, ClientError> {
        match Wire::split(task)? {
            Wire::Train(t) => {
                let model = match &t.model {
                    Some(spec) => model_spec_from_proto(spec)?,
                    None => enrolled.clone(),
                };
                let p = t.params.ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "train task for round {} carries no training params",
                        t.round
                    ))
                })?;
                let required = t.required_points;
                if !(required.is_finite() && required >= 0.0) {
                    return Err(ClientError::Protocol(format!(
                        "train task for round {} requires {required} points (must be a \
                         finite number >= 0)",
                        t.round
                    )));
                }
                Ok(Task::Train(TrainTask {
                    round: t.round,
                    model_version: t.model_version,
                    params: TrainParams {
                        local_epochs: p.local_epochs,
                        batch_size: p.batch_size,
                        learning_rate: p.learning_rate,
                        seed: p.seed,
                    },
                    deadline: Duration::from_millis(t.deadline_ms),
                    model,
                    required_points: (required > 0.0).then_some(required),
                }))
            }
            Wire::Embed(e) => Err(ClientError::Protocol(format!(
                "embed task for round {}: this is a horizontal node; vertical federations \
                 need a vertical node",
                e.round
            ))),
            Wire::Bandit(_) => Err(wrong_node("bandit", "horizontal")),
            Wire::Shared(Shared::Wait {
                retry_after,
                reason,
            }) => Ok(Task::Wait {
                retry_after,
                reason,
            }),
            Wire::Shared(Shared::Done {
                final_model_version,
                reason,
            }) => Ok(Task::Done {
                final_model_version,
                reason,
            }),
            Wire::Shared(Shared::Removed { round, reason }) => Ok(Task::Removed { round, reason }),
        }
    }
}

impl From<Task> for v1::Task {
    /// The wire form of a task (used by tests and by anyone faking a coordinator).
    fn from(task: Task) -> Self {
        use v1::task::Kind;
        let kind = match task {
            Task::Train(t) => Kind::Train(v1::TrainTask {
                round: t.round,
                model_version: t.model_version,
                params: Some(v1::TrainingParams {
                    local_epochs: t.params.local_epochs,
                    batch_size: t.params.batch_size,
                    learning_rate: t.params.learning_rate,
                    seed: t.params.seed,
                }),
                deadline_ms: u64::try_from(t.deadline.as_millis()).unwrap_or(u64::MAX),
                model: Some(v1::ModelSpec::from(&t.model)),
                required_points: t.required_points.unwrap_or(0.0),
            }),
            Task::Wait {
                retry_after,
                reason,
            } => Shared::Wait {
                retry_after,
                reason,
            }
            .into_kind(),
            Task::Done {
                final_model_version,
                reason,
            } => Shared::Done {
                final_model_version,
                reason,
            }
            .into_kind(),
            Task::Removed { round, reason } => Shared::Removed { round, reason }.into_kind(),
        };
        v1::Task { kind: Some(kind) }
    }
}

/// The next thing a vertical party should do, mirrored from `fedval.v1.Task`.
#[derive(Clone, Debug, PartialEq)]
pub enum VerticalTask {
    /// Embed samples, exchange the embeddings for gradients, apply them.
    Embed(EmbedTask),
    /// Nothing to do yet; ask again after `retry_after`.
    Wait {
        /// Suggested delay before the next pull.
        retry_after: Duration,
        /// Why, for logs.
        reason: String,
    },
    /// The federation has finished.
    Done {
        /// Why, for logs.
        reason: String,
    },
    /// The server removed this party: it takes no further part.
    Removed {
        /// The round in which it was removed.
        round: u64,
        /// Why, for logs.
        reason: String,
    },
}

/// Embed `sample_ids` with the current local model, exchange the embeddings for the
/// gradients of the loss, then apply them (unless `evaluate_only`), mirrored from
/// `fedval.v1.EmbedTask`.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedTask {
    /// Synchronous training: the round; asynchronous: this party's step number.
    pub round: u64,
    /// The samples to embed (rows of the party's feature block), in the order the
    /// embeddings and the gradients travel.
    pub sample_ids: Vec<u32>,
    /// Embedding width.
    pub output_dim: usize,
    /// The evaluation pass over held-out ids: no gradients come back and the local model
    /// must not change.
    pub evaluate_only: bool,
    /// Time left, when the task was pulled, before the server closes the round.
    pub deadline: Duration,
}

impl VerticalTask {
    /// Converts a task from the wire for a party whose embeddings have `output_dim`
    /// outputs (from enrollment). Refuses a train task (this is a vertical node), an embed
    /// task with no samples and one whose width differs from `output_dim`.
    pub fn from_proto(task: v1::Task, output_dim: usize) -> Result<Self, ClientError> {
        match Wire::split(task)? {
            Wire::Embed(e) => {
                if e.sample_ids.is_empty() {
                    return Err(ClientError::Protocol(format!(
                        "embed task for round {} names no samples",
                        e.round
                    )));
                }
                if e.output_dim as usize != output_dim {
                    return Err(ClientError::Protocol(format!(
                        "embed task for round {} asks for {} outputs but the party was \
                         enrolled with {output_dim}",
                        e.round, e.output_dim
                    )));
                }
                Ok(VerticalTask::Embed(EmbedTask {
                    round: e.round,
                    sample_ids: e.sample_ids,
                    output_dim,
                    evaluate_only: e.evaluate_only,
                    deadline: Duration::from_millis(e.deadline_ms),
                }))
            }
            Wire::Train(t) => Err(ClientError::Protocol(format!(
                "train task for round {}: this is a vertical node; horizontal federations \
                 need a horizontal node",
                t.round
            ))),
            Wire::Bandit(_) => Err(wrong_node("bandit", "vertical")),
            Wire::Shared(Shared::Wait {
                retry_after,
                reason,
            }) => Ok(VerticalTask::Wait {
                retry_after,
                reason,
            }),
            Wire::Shared(Shared::Done { reason, .. }) => Ok(VerticalTask::Done { reason }),
            Wire::Shared(Shared::Removed { round, reason }) => {
                Ok(VerticalTask::Removed { round, reason })
            }
        }
    }
}

impl From<VerticalTask> for v1::Task {
    /// The wire form of a vertical task (used by tests and by anyone faking a coordinator).
    fn from(task: VerticalTask) -> Self {
        use v1::task::Kind;
        let kind = match task {
            VerticalTask::Embed(e) => Kind::Embed(v1::EmbedTask {
                round: e.round,
                sample_ids: e.sample_ids,
                output_dim: u32::try_from(e.output_dim).unwrap_or(u32::MAX),
                evaluate_only: e.evaluate_only,
                deadline_ms: u64::try_from(e.deadline.as_millis()).unwrap_or(u64::MAX),
            }),
            VerticalTask::Wait {
                retry_after,
                reason,
            } => Shared::Wait {
                retry_after,
                reason,
            }
            .into_kind(),
            VerticalTask::Done { reason } => Shared::Done {
                final_model_version: 0,
                reason,
            }
            .into_kind(),
            VerticalTask::Removed { round, reason } => {
                Shared::Removed { round, reason }.into_kind()
            }
        };
        v1::Task { kind: Some(kind) }
    }
}

/// The error of a task meant for another kind of node: a `kind` task reached a `node` node.
fn wrong_node(kind: &str, node: &str) -> ClientError {
    let (federation, client) = match kind {
        "train" => ("horizontal", "a horizontal node (FederationClient)"),
        "embed" => ("vertical", "a vertical node (VerticalClient)"),
        _ => ("bandit", "a bandit node (BanditClient)"),
    };
    ClientError::Protocol(format!(
        "{kind} task: this is a {node} node; {federation} federations need {client}"
    ))
}

/// The next thing a bandit client should do, mirrored from `fedval.v1.Task`.
#[derive(Clone, Debug, PartialEq)]
pub enum BanditTask {
    /// Play global step `step` with LinUCB; `t_last` is the step of the last communication
    /// round (0 before the first), for the trigger statistic.
    Play {
        /// The step (1-based).
        step: u64,
        /// Step of the previous communication round.
        t_last: u64,
    },
    /// Report a cost and the pending Gram update for communication round `round`.
    Report {
        /// The round.
        round: u64,
    },
    /// Upload the pending reward vector: this client was selected in `round`.
    Upload {
        /// The round.
        round: u64,
    },
    /// Download the aggregate after a round and acknowledge it.
    Sync(BanditSync),
    /// Nothing to do yet; ask again after `retry_after`.
    Wait {
        /// Suggested delay before the next pull.
        retry_after: Duration,
        /// Why, for logs.
        reason: String,
    },
    /// The federation has finished (or was stopped).
    Done {
        /// Why, for logs.
        reason: String,
    },
}

/// The aggregate after communication round `round`, checked: `v_g` is `d x d` and `b_g`
/// has `d` values, all finite; the payment is finite and `>= 0`.
#[derive(Clone, Debug, PartialEq)]
pub struct BanditSync {
    /// The round.
    pub round: u64,
    /// `V_g`, row-major `d x d`.
    pub v_g: Vec<f64>,
    /// `b_g`.
    pub b_g: Vec<f64>,
    /// The aggregate holds this client's pending statistics: clear them.
    pub selected: bool,
    /// What this client was paid in `round`.
    pub payment: f64,
}

impl BanditTask {
    /// Converts a task from the wire for a client of dimension `dim` (from enrollment).
    /// Refuses train and embed tasks (this is a bandit node), a bandit task that names no
    /// phase, a play of step 0 or with `t_last` after the step, a round 0, and a sync whose
    /// aggregate has the wrong size or non-finite values or whose payment is negative or
    /// not finite.
    pub fn from_proto(task: v1::Task, dim: usize) -> Result<Self, ClientError> {
        use v1::bandit_task::Phase;
        let bad = |what: String| ClientError::Protocol(format!("bandit task: {what}"));
        let b = match Wire::split(task)? {
            Wire::Bandit(b) => b,
            Wire::Train(_) => return Err(wrong_node("train", "bandit")),
            Wire::Embed(_) => return Err(wrong_node("embed", "bandit")),
            Wire::Shared(Shared::Wait {
                retry_after,
                reason,
            }) => {
                return Ok(BanditTask::Wait {
                    retry_after,
                    reason,
                });
            }
            Wire::Shared(Shared::Done { reason, .. } | Shared::Removed { reason, .. }) => {
                return Ok(BanditTask::Done { reason });
            }
        };
        let round_of = |round: u64| {
            if round == 0 {
                Err(bad("round 0 does not exist (rounds count from 1)".into()))
            } else {
                Ok(round)
            }
        };
        match b.phase {
            None => Err(bad(
                "names no phase (is the server newer than this client?)".into(),
            )),
            Some(Phase::Play(p)) if p.step == 0 || p.t_last >= p.step => Err(bad(format!(
                "play of step {} with t_last {}: steps count from 1 and t_last precedes the step",
                p.step, p.t_last
            ))),
            Some(Phase::Play(p)) => Ok(BanditTask::Play {
                step: p.step,
                t_last: p.t_last,
            }),
            Some(Phase::Report(r)) => Ok(BanditTask::Report {
                round: round_of(r.round)?,
            }),
            Some(Phase::Upload(u)) => Ok(BanditTask::Upload {
                round: round_of(u.round)?,
            }),
            Some(Phase::Sync(s)) => {
                let round = round_of(s.round)?;
                for (what, values, expected) in [("v_g", &s.v_g, dim * dim), ("b_g", &s.b_g, dim)] {
                    if values.len() != expected {
                        return Err(bad(format!(
                            "sync of round {round}: {what} has {} values, expected {expected} \
                             (dimension {dim})",
                            values.len()
                        )));
                    }
                    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                        return Err(bad(format!("sync of round {round}: {what}[{i}] is {v}")));
                    }
                }
                if !(s.payment.is_finite() && s.payment >= 0.0) {
                    return Err(bad(format!(
                        "sync of round {round}: payment {} is not a finite amount >= 0",
                        s.payment
                    )));
                }
                Ok(BanditTask::Sync(BanditSync {
                    round,
                    v_g: s.v_g,
                    b_g: s.b_g,
                    selected: s.selected,
                    payment: s.payment,
                }))
            }
        }
    }
}

impl From<BanditTask> for v1::Task {
    /// The wire form of a bandit task (used by tests and by anyone faking a coordinator).
    fn from(task: BanditTask) -> Self {
        use v1::bandit_task::Phase;
        use v1::task::Kind;
        let phase = |phase| Kind::Bandit(v1::BanditTask { phase: Some(phase) });
        let kind = match task {
            BanditTask::Play { step, t_last } => {
                phase(Phase::Play(v1::BanditPlay { step, t_last }))
            }
            BanditTask::Report { round } => phase(Phase::Report(v1::BanditReportRequest { round })),
            BanditTask::Upload { round } => phase(Phase::Upload(v1::BanditUploadRequest { round })),
            BanditTask::Sync(s) => phase(Phase::Sync(v1::BanditSync {
                round: s.round,
                v_g: s.v_g,
                b_g: s.b_g,
                selected: s.selected,
                payment: s.payment,
            })),
            BanditTask::Wait {
                retry_after,
                reason,
            } => Shared::Wait {
                retry_after,
                reason,
            }
            .into_kind(),
            BanditTask::Done { reason } => Shared::Done {
                final_model_version: 0,
                reason,
            }
            .into_kind(),
        };
        v1::Task { kind: Some(kind) }
    }
}

/// The task kinds every node shares (wait, done, removed), converted to
/// and from the wire in this one place.
enum Shared {
    Wait {
        retry_after: Duration,
        reason: String,
    },
    Done {
        final_model_version: u64,
        reason: String,
    },
    Removed {
        round: u64,
        reason: String,
    },
}

impl Shared {
    /// The wire form (a delay too long for the wire saturates).
    fn into_kind(self) -> v1::task::Kind {
        use v1::task::Kind;
        match self {
            Shared::Wait {
                retry_after,
                reason,
            } => Kind::Wait(v1::WaitTask {
                retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
                reason,
            }),
            Shared::Done {
                final_model_version,
                reason,
            } => Kind::Done(v1::DoneTask {
                final_model_version,
                reason,
            }),
            Shared::Removed { round, reason } => Kind::Removed(v1::RemovedTask { round, reason }),
        }
    }
}

/// A wire task split into the shared kinds, already converted, and the kind-specific rest.
enum Wire {
    Train(v1::TrainTask),
    Embed(v1::EmbedTask),
    Bandit(v1::BanditTask),
    Shared(Shared),
}

impl Wire {
    /// Splits `task`, refusing one that names no kind.
    fn split(task: v1::Task) -> Result<Self, ClientError> {
        use v1::task::Kind;
        Ok(match task.kind {
            Some(Kind::Train(t)) => Wire::Train(t),
            Some(Kind::Embed(e)) => Wire::Embed(e),
            Some(Kind::Wait(w)) => Wire::Shared(Shared::Wait {
                retry_after: Duration::from_millis(w.retry_after_ms),
                reason: w.reason,
            }),
            Some(Kind::Done(d)) => Wire::Shared(Shared::Done {
                final_model_version: d.final_model_version,
                reason: d.reason,
            }),
            Some(Kind::Removed(r)) => Wire::Shared(Shared::Removed {
                round: r.round,
                reason: r.reason,
            }),
            Some(Kind::Bandit(b)) => Wire::Bandit(b),
            None => {
                return Err(ClientError::Protocol(
                    "task names no kind (is the server newer than this client?)".into(),
                ));
            }
        })
    }
}

/// Converts a model spec from the wire (through `fedval_proto::convert`), refusing a
/// missing kind and invalid dimensions as a protocol error: the server sent it.
pub fn model_spec_from_proto(spec: &v1::ModelSpec) -> Result<ModelSpec, ClientError> {
    ModelSpec::try_from(spec)
        .map_err(|e| ClientError::Protocol(format!("server sent an unusable model spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> ModelSpec {
        ModelSpec::Mlp {
            num_features: 4,
            hidden: 8,
            num_classes: 3,
        }
    }

    fn logreg() -> ModelSpec {
        ModelSpec::LogisticRegression {
            num_features: 64,
            num_classes: 10,
        }
    }

    /// A plain train task of `logreg()` (no FACT requirement, no deadline).
    fn train(round: u64, model_version: u64) -> TrainTask {
        TrainTask {
            round,
            model_version,
            params: TrainParams {
                local_epochs: 1,
                batch_size: 8,
                learning_rate: 0.1,
                seed: 0,
            },
            deadline: Duration::ZERO,
            model: logreg(),
            required_points: None,
        }
    }

    #[test]
    fn tasks_round_trip_through_the_wire_form() {
        let tasks = [
            Task::Train(TrainTask {
                round: 7,
                model_version: 6,
                params: TrainParams {
                    local_epochs: 2,
                    batch_size: 16,
                    learning_rate: 0.05,
                    seed: 99,
                },
                deadline: Duration::from_millis(30_000),
                model: mlp(),
                required_points: None,
            }),
            Task::Train(TrainTask {
                round: 2,
                model_version: 1,
                params: TrainParams {
                    local_epochs: 1,
                    batch_size: 8,
                    learning_rate: 0.1,
                    seed: 3,
                },
                deadline: Duration::from_millis(1_000),
                model: logreg(),
                required_points: Some(143.5),
            }),
            Task::Wait {
                retry_after: Duration::from_millis(250),
                reason: "round 3 is full".into(),
            },
            Task::Done {
                final_model_version: 12,
                reason: "all rounds done".into(),
            },
            Task::Removed {
                round: 4,
                reason: "removed by reputation in round 4".into(),
            },
        ];
        for task in tasks {
            let wire = v1::Task::from(task.clone());
            assert_eq!(Task::from_proto(wire, &logreg()).unwrap(), task);
        }
    }

    #[test]
    fn wire_fields_land_in_the_typed_task() {
        let wire = v1::Task {
            kind: Some(v1::task::Kind::Train(v1::TrainTask {
                round: 3,
                model_version: 2,
                params: Some(v1::TrainingParams {
                    local_epochs: 1,
                    batch_size: 32,
                    learning_rate: 0.1,
                    seed: 5,
                }),
                deadline_ms: 1500,
                required_points: 0.0,
                model: Some(v1::ModelSpec {
                    kind: Some(v1::model_spec::Kind::LogisticRegression(
                        v1::LogisticRegressionSpec {
                            num_features: 64,
                            num_classes: 10,
                        },
                    )),
                }),
            })),
        };
        let Task::Train(t) = Task::from_proto(wire, &mlp()).unwrap() else {
            panic!("expected a train task");
        };
        assert_eq!((t.round, t.model_version), (3, 2));
        assert_eq!(t.deadline, Duration::from_millis(1500));
        assert_eq!(t.model, logreg());
        assert_eq!(t.params.seed, 5);
        assert_eq!(t.required_points, None, "0 means no requirement");
    }

    /// A FACT requirement travels as `Some(m*)`; a negative or non-finite one is refused.
    #[test]
    fn required_points_are_checked() {
        let with = |required: f64| {
            let mut wire = v1::Task::from(Task::Train(train(8, 7)));
            if let Some(v1::task::Kind::Train(t)) = &mut wire.kind {
                t.required_points = required;
            }
            Task::from_proto(wire, &logreg())
        };
        let Ok(Task::Train(t)) = with(57.25) else {
            panic!("expected a train task");
        };
        assert_eq!(t.required_points, Some(57.25));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let err = with(bad).unwrap_err();
            assert!(
                matches!(&err, ClientError::Protocol(m) if m.contains(&format!("requires {bad} points"))),
                "{err:?}"
            );
        }
    }

    #[test]
    fn train_task_without_model_uses_the_enrolled_one() {
        let mut wire = v1::Task::from(Task::Train(train(1, 0)));
        if let Some(v1::task::Kind::Train(t)) = &mut wire.kind {
            t.model = None;
        }
        let Task::Train(t) = Task::from_proto(wire, &mlp()).unwrap() else {
            panic!("expected a train task");
        };
        assert_eq!(t.model, mlp());
    }

    #[test]
    fn malformed_tasks_are_protocol_errors() {
        let err = Task::from_proto(v1::Task { kind: None }, &mlp()).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");

        let no_params = v1::Task {
            kind: Some(v1::task::Kind::Train(v1::TrainTask {
                round: 4,
                ..Default::default()
            })),
        };
        let err = Task::from_proto(no_params, &mlp()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol error: train task for round 4 carries no training params"
        );
    }

    fn embed(round: u64, ids: Vec<u32>, evaluate_only: bool) -> EmbedTask {
        EmbedTask {
            round,
            sample_ids: ids,
            output_dim: 3,
            evaluate_only,
            deadline: Duration::from_millis(900),
        }
    }

    #[test]
    fn vertical_tasks_round_trip_and_horizontal_nodes_refuse_them() {
        let tasks = [
            VerticalTask::Embed(embed(4, vec![7, 0, 3], false)),
            VerticalTask::Embed(embed(9, vec![1], true)),
            VerticalTask::Wait {
                retry_after: Duration::from_millis(20),
                reason: "waiting for parties".into(),
            },
            VerticalTask::Done {
                reason: "all rounds done".into(),
            },
            VerticalTask::Removed {
                round: 2,
                reason: "gone".into(),
            },
        ];
        for task in tasks {
            let wire = v1::Task::from(task.clone());
            assert_eq!(VerticalTask::from_proto(wire, 3).unwrap(), task);
        }
        let wire = v1::Task::from(VerticalTask::Embed(embed(4, vec![1], false)));
        let err = Task::from_proto(wire, &mlp()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol error: embed task for round 4: this is a horizontal node; vertical \
             federations need a vertical node"
        );
    }

    #[test]
    fn vertical_nodes_refuse_train_tasks_and_malformed_embed_tasks() {
        let wire = v1::Task::from(Task::Train(train(5, 4)));
        let err = VerticalTask::from_proto(wire, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol error: train task for round 5: this is a vertical node; horizontal \
             federations need a horizontal node"
        );
        let empty = v1::Task::from(VerticalTask::Embed(embed(6, vec![], false)));
        let err = VerticalTask::from_proto(empty, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol error: embed task for round 6 names no samples"
        );
        let wide = v1::Task::from(VerticalTask::Embed(embed(7, vec![0], false)));
        let err = VerticalTask::from_proto(wide, 10).unwrap_err();
        assert!(
            err.to_string()
                .contains("asks for 3 outputs but the party was enrolled with 10"),
            "{err}"
        );
        let err = VerticalTask::from_proto(v1::Task { kind: None }, 3).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    }

    #[test]
    fn model_specs_round_trip_and_invalid_ones_are_refused() {
        for spec in [mlp(), logreg()] {
            assert_eq!(
                model_spec_from_proto(&v1::ModelSpec::from(&spec)).unwrap(),
                spec
            );
        }
        let one_class = v1::ModelSpec {
            kind: Some(v1::model_spec::Kind::LogisticRegression(
                v1::LogisticRegressionSpec {
                    num_features: 4,
                    num_classes: 1,
                },
            )),
        };
        let err = model_spec_from_proto(&one_class).unwrap_err();
        assert!(
            err.to_string().contains("num_classes must be at least 2"),
            "{err}"
        );
        let err = model_spec_from_proto(&v1::ModelSpec { kind: None }).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    }

    fn sync(round: u64, v_g: Vec<f64>, payment: f64) -> BanditTask {
        BanditTask::Sync(BanditSync {
            round,
            v_g,
            b_g: vec![0.5, -0.5],
            selected: true,
            payment,
        })
    }

    #[test]
    fn bandit_tasks_round_trip_and_other_nodes_refuse_them() {
        let tasks = [
            BanditTask::Play { step: 7, t_last: 3 },
            BanditTask::Report { round: 2 },
            BanditTask::Upload { round: 2 },
            sync(2, vec![1.0, 0.25, 0.25, 2.0], 0.75),
            BanditTask::Wait {
                retry_after: Duration::from_millis(50),
                reason: "step 8 is client-0001's turn".into(),
            },
            BanditTask::Done {
                reason: "federation is finished".into(),
            },
        ];
        for task in tasks {
            let wire = v1::Task::from(task.clone());
            assert_eq!(BanditTask::from_proto(wire, 2).unwrap(), task);
        }
        let play = || v1::Task::from(BanditTask::Play { step: 1, t_last: 0 });
        assert_eq!(
            Task::from_proto(play(), &mlp()).unwrap_err().to_string(),
            "protocol error: bandit task: this is a horizontal node; bandit federations need \
             a bandit node (BanditClient)"
        );
        assert!(
            VerticalTask::from_proto(play(), 3)
                .unwrap_err()
                .to_string()
                .contains("this is a vertical node; bandit federations")
        );
        let embed = v1::Task::from(VerticalTask::Embed(embed(1, vec![0], false)));
        assert_eq!(
            BanditTask::from_proto(embed, 2).unwrap_err().to_string(),
            "protocol error: embed task: this is a bandit node; vertical federations need a \
             vertical node (VerticalClient)"
        );
    }

    #[test]
    fn malformed_bandit_tasks_are_protocol_errors() {
        let err = |task: BanditTask| BanditTask::from_proto(v1::Task::from(task), 2).unwrap_err();
        assert!(
            err(sync(1, vec![1.0; 3], 0.0))
                .to_string()
                .contains("v_g has 3 values, expected 4 (dimension 2)")
        );
        assert!(
            err(sync(1, vec![1.0, f64::NAN, 0.0, 1.0], 0.0))
                .to_string()
                .contains("v_g[1] is NaN")
        );
        assert!(
            err(sync(1, vec![1.0; 4], -1.0))
                .to_string()
                .contains("payment -1 is not a finite amount >= 0")
        );
        assert!(
            err(sync(0, vec![1.0; 4], 0.0))
                .to_string()
                .contains("round 0")
        );
        assert!(
            err(BanditTask::Play { step: 3, t_last: 3 })
                .to_string()
                .contains("t_last precedes the step")
        );
        let no_phase = v1::Task {
            kind: Some(v1::task::Kind::Bandit(v1::BanditTask { phase: None })),
        };
        assert!(matches!(
            BanditTask::from_proto(no_phase, 2),
            Err(ClientError::Protocol(_))
        ));
    }
}
