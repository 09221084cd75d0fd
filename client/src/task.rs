//! Typed tasks: what the coordinator asks a node to do next, converted from (and to) the
//! `fedval.v1` messages at this edge so the rest of the SDK never touches prost types.
//!
//! The conversion also checks what the proto cannot: a task names exactly one kind, and a
//! model spec names a known architecture with non-zero sizes.
//!
//! Horizontal nodes convert with [`Task::from_proto`], which refuses embed tasks; vertical
//! nodes with [`VerticalTask::from_proto`], which refuses train tasks. Either way a node
//! enrolled in the wrong kind of federation stops with a message saying so.

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
                }))
            }
            Wire::Embed(e) => Err(ClientError::Protocol(format!(
                "embed task for round {}: this is a horizontal node; vertical federations \
                 need a vertical node",
                e.round
            ))),
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
                required_points: 0.0,
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

/// The task kinds horizontal and vertical nodes share (wait, done, removed), converted to
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
            Some(Kind::Bandit(_)) => {
                return Err(ClientError::Protocol(
                    "bandit tasks are not supported by this client yet".into(),
                ));
            }
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
    }

    #[test]
    fn train_task_without_model_uses_the_enrolled_one() {
        let mut wire = v1::Task::from(Task::Train(TrainTask {
            round: 1,
            model_version: 0,
            params: TrainParams {
                local_epochs: 1,
                batch_size: 8,
                learning_rate: 0.1,
                seed: 0,
            },
            deadline: Duration::ZERO,
            model: logreg(),
        }));
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
        let train = v1::Task::from(Task::Train(TrainTask {
            round: 5,
            model_version: 4,
            params: TrainParams {
                local_epochs: 1,
                batch_size: 8,
                learning_rate: 0.1,
                seed: 0,
            },
            deadline: Duration::ZERO,
            model: logreg(),
        }));
        let err = VerticalTask::from_proto(train, 3).unwrap_err();
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
}
