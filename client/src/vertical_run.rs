//! A vertical party's task loop: pull a task, embed, exchange the embeddings for gradients,
//! apply them, repeat until the federation is done.
//!
//! [`run_vertical_node`] shares the horizontal loop's policy ([`RunOptions`]): `Wait`
//! sleeps for the server's delay capped at `max_wait`; retryable failures are repeated with
//! bounded exponential back-off. A lost exchange answer is retried with the SAME
//! embeddings (the server answers a committed round again, so nothing is applied twice);
//! an exchange refused because the round closed (`FAILED_PRECONDITION`) is reported and
//! the loop goes on; the evaluation pass (`evaluate_only`) never touches the model; `Done`
//! and `Removed` end the loop with a [`VerticalSummary`] and the trainer.

use std::sync::Arc;

use ndarray::Array2;
use tracing::{debug, info};

use crate::error::ClientError;
use crate::party::VerticalTrainer;
use crate::run::{NodeEvent, RunOptions, blocking, retry, wait};
use crate::task::{EmbedTask, VerticalTask};
use crate::vertical::{Gradients, VerticalClient};

/// What a vertical party's participation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct VerticalSummary {
    /// Exchanges whose gradients were applied (training rounds or steps).
    pub rounds_trained: u64,
    /// The server's batch loss of the last applied exchange, if any.
    pub last_loss: Option<f64>,
    /// Evaluation passes answered.
    pub evaluations: u64,
    /// The server's loss of the last evaluation pass, if any.
    pub eval_loss: Option<f64>,
    /// Why the federation ended for this party (the server's reason).
    pub reason: String,
}

/// Runs the vertical task loop for `client` with `trainer` until the federation is done;
/// returns the trainer (with its final model) and the summary, or the first error that is
/// neither retryable (within `opts.max_retries`) nor a refused exchange.
pub async fn run_vertical_node<T: VerticalTrainer>(
    client: &mut VerticalClient,
    trainer: T,
    opts: &RunOptions,
) -> Result<(T, VerticalSummary), ClientError> {
    let mut trainer = trainer;
    let mut summary = VerticalSummary {
        rounds_trained: 0,
        last_loss: None,
        evaluations: 0,
        eval_loss: None,
        reason: String::new(),
    };
    let (lr, l2) = (client.party().learning_rate, client.party().l2);
    loop {
        let task = retry(opts, "pull task", || {
            let mut c = client.clone();
            async move { c.pull_task().await }
        })
        .await?;
        match task {
            VerticalTask::Wait {
                retry_after,
                reason,
            } => wait(opts, retry_after, reason).await,
            VerticalTask::Embed(task) => {
                let task = Arc::new(task);
                let embed_task = Arc::clone(&task);
                let (back, embeddings) =
                    blocking(trainer, move |t| t.embed(&embed_task.sample_ids)).await?;
                trainer = back;
                let Some(answer) = exchange(client, &task, embeddings, opts).await? else {
                    continue;
                };
                let (round, loss) = (answer.round, answer.loss);
                if task.evaluate_only {
                    summary.evaluations += 1;
                    summary.eval_loss = Some(loss);
                    info!(round, loss, "evaluation pass answered");
                } else {
                    let apply_task = Arc::clone(&task);
                    let gradients = answer.gradients;
                    let (back, ()) = blocking(trainer, move |t| {
                        t.apply(&apply_task.sample_ids, gradients.view(), lr, l2)
                    })
                    .await?;
                    trainer = back;
                    summary.rounds_trained += 1;
                    summary.last_loss = Some(loss);
                    debug!(round, loss, "gradients applied");
                }
                opts.emit(NodeEvent::Exchanged {
                    round,
                    loss,
                    evaluate_only: task.evaluate_only,
                });
            }
            VerticalTask::Done { reason } => {
                info!(%reason, "federation done");
                summary.reason = reason;
                return Ok((trainer, summary));
            }
            VerticalTask::Removed { round, reason } => {
                info!(round, %reason, "removed from the federation");
                summary.reason = reason;
                return Ok((trainer, summary));
            }
        }
    }
}

/// Exchanges one task's embeddings (retrying the same bytes after transient failures);
/// `None` when the server refused them because the round had closed.
async fn exchange(
    client: &mut VerticalClient,
    task: &EmbedTask,
    embeddings: Array2<f32>,
    opts: &RunOptions,
) -> Result<Option<Gradients>, ClientError> {
    let result = retry(opts, "embedding exchange", || {
        let mut c = client.clone();
        let embeddings = &embeddings;
        async move { c.exchange_embeddings(task, embeddings).await }
    })
    .await;
    match result {
        Ok(answer) => Ok(Some(answer)),
        Err(ClientError::FailedPrecondition(reason)) => {
            // Expected when a round closed first or asynchronous training just ended: the
            // next task says what to do.
            info!(round = task.round, %reason, "embeddings refused; moving on");
            opts.emit(NodeEvent::ExchangeRejected {
                round: task.round,
                reason,
            });
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use fedval_core::model::ModelSpec;
    use fedval_core::tensor::to_le_bytes;
    use fedval_core::vertical::{PartyModel, PartyModelSpec, VerticalError};
    use fedval_proto::v1;
    use ndarray::{Array2, array};
    use tonic::Status;

    use super::*;
    use crate::fake::{self, ExchangeReply};
    use crate::party::PartyTrainer;

    const LR: f32 = 0.5;
    const L2: f32 = 0.1;

    fn party() -> v1::VerticalParty {
        v1::VerticalParty {
            output_dim: 3,
            hidden: 0,
            learning_rate: LR,
            l2: L2,
            seed: 1,
            training: "sync".into(),
        }
    }

    /// Party block: 4 samples, 2 columns.
    fn block() -> Array2<f32> {
        array![[1.0f32, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 1.0]]
    }

    fn spec() -> PartyModelSpec {
        PartyModelSpec::Linear {
            num_features: 2,
            output_dim: 3,
        }
    }

    /// A non-zero starting model, so embeddings are not all zero.
    fn start_model() -> PartyModel {
        PartyModel::from_params(spec(), vec![0.5, -0.25, 0.0, 1.0, -1.0, 0.75]).unwrap()
    }

    fn embed(round: u64, ids: &[u32], evaluate_only: bool) -> Result<v1::Task, Status> {
        Ok(VerticalTask::Embed(EmbedTask {
            round,
            sample_ids: ids.to_vec(),
            output_dim: 3,
            evaluate_only,
            deadline: Duration::from_secs(5),
        })
        .into())
    }

    fn done() -> Result<v1::Task, Status> {
        Ok(VerticalTask::Done {
            reason: "all rounds done".into(),
        }
        .into())
    }

    async fn start(
        tasks: Vec<Result<v1::Task, Status>>,
        replies: Vec<ExchangeReply>,
    ) -> (fake::Running, VerticalClient) {
        let f = fake::start(
            ModelSpec::LogisticRegression {
                num_features: 2,
                num_classes: 3,
            },
            fake::Script {
                vertical: Some(party()),
                tasks: VecDeque::from(tasks),
                exchanges: VecDeque::from(replies),
                ..Default::default()
            },
        )
        .await;
        let channel = crate::connect(&f.url).await.unwrap();
        let client = VerticalClient::enroll(channel, "demo", "secret", "p", 2)
            .await
            .unwrap();
        (f, client)
    }

    fn trainer() -> PartyTrainer {
        PartyTrainer::from_model(start_model(), block()).unwrap()
    }

    /// The block's rows `ids`.
    fn rows(ids: &[usize]) -> Array2<f32> {
        block().select(ndarray::Axis(0), ids)
    }

    #[tokio::test]
    async fn gradients_are_applied_exactly_and_evaluation_changes_nothing() {
        let g1 = array![[1.0f32, 0.0, -2.0], [0.5, -1.0, 1.0]];
        let g2 = array![[0.25f32, 0.25, -0.5], [-1.0, 2.0, 0.0], [0.0, 0.5, 1.5]];
        let (f, mut client) = start(
            vec![
                Ok(VerticalTask::Wait {
                    retry_after: Duration::from_secs(3600),
                    reason: "waiting for parties".into(),
                }
                .into()),
                embed(1, &[2, 0], false),
                embed(2, &[1, 3, 2], false),
                embed(3, &[3, 0], true),
                done(),
            ],
            vec![
                ExchangeReply::gradients(1, &g1, 1.25),
                ExchangeReply::gradients(2, &g2, 0.75),
                ExchangeReply::evaluation(3, 0.5),
            ],
        )
        .await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let (trainer, summary) =
            run_vertical_node(&mut client, trainer(), &fake::run_options(&events))
                .await
                .unwrap();

        // The same steps by hand with the core model.
        let mut m = start_model();
        let e1 = m.embed(rows(&[2, 0]).view()).unwrap();
        m.apply_gradients(rows(&[2, 0]).view(), g1.view(), LR, L2)
            .unwrap();
        let e2 = m.embed(rows(&[1, 3, 2]).view()).unwrap();
        m.apply_gradients(rows(&[1, 3, 2]).view(), g2.view(), LR, L2)
            .unwrap();
        let e3 = m.embed(rows(&[3, 0]).view()).unwrap();
        assert_eq!(
            trainer.model(),
            &m,
            "evaluation left the model as round 2 did"
        );

        let s = f.script();
        let sent: Vec<(u64, u32, Vec<u8>)> = s
            .embeddings
            .iter()
            .map(|(h, b)| (h.round, h.rows, b.clone()))
            .collect();
        let bytes = |e: &Array2<f32>| to_le_bytes(&e.iter().copied().collect::<Vec<_>>());
        assert_eq!(
            sent,
            vec![(1, 2, bytes(&e1)), (2, 3, bytes(&e2)), (3, 2, bytes(&e3))]
        );
        for (h, b) in &s.embeddings {
            assert_eq!(h.sha256, fedval_core::tensor::sha256_hex(b));
            assert_eq!((h.output_dim, h.total_bytes), (3, b.len() as u64));
            assert_eq!(
                (h.federation_id.as_str(), h.client_id.as_str()),
                ("demo", fake::CLIENT_ID)
            );
        }
        assert_eq!(
            summary,
            VerticalSummary {
                rounds_trained: 2,
                last_loss: Some(0.75),
                evaluations: 1,
                eval_loss: Some(0.5),
                reason: "all rounds done".into(),
            }
        );
        let events = events.lock().unwrap().clone();
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(
            events[3],
            NodeEvent::Exchanged {
                round: 3,
                loss: 0.5,
                evaluate_only: true
            }
        );
    }

    #[tokio::test]
    async fn a_dropped_exchange_is_retried_with_the_same_embeddings() {
        let g = array![[1.0f32, -1.0, 0.5]];
        let (f, mut client) = start(
            vec![embed(1, &[1], false), done()],
            vec![
                ExchangeReply::Fail(Status::unavailable("connection reset")),
                ExchangeReply::gradients(1, &g, 1.0),
            ],
        )
        .await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let (trainer, summary) =
            run_vertical_node(&mut client, trainer(), &fake::run_options(&events))
                .await
                .unwrap();
        let s = f.script();
        assert_eq!(s.embeddings.len(), 2, "the exchange was sent twice");
        assert_eq!(
            s.embeddings[0], s.embeddings[1],
            "the same header and bytes"
        );
        let mut m = start_model();
        m.apply_gradients(rows(&[1]).view(), g.view(), LR, L2)
            .unwrap();
        assert_eq!(trainer.model(), &m, "applied exactly once");
        assert_eq!(summary.rounds_trained, 1);
    }

    #[tokio::test]
    async fn a_closed_round_is_skipped_without_touching_the_model() {
        let (f, mut client) = start(
            vec![embed(4, &[0, 1], false), done()],
            vec![ExchangeReply::Fail(Status::failed_precondition(
                "round 4 is closed",
            ))],
        )
        .await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let (trainer, summary) =
            run_vertical_node(&mut client, trainer(), &fake::run_options(&events))
                .await
                .unwrap();
        assert_eq!(trainer.model(), &start_model());
        assert_eq!(summary.rounds_trained, 0);
        assert_eq!(f.script().embeddings.len(), 1);
        assert_eq!(
            events.lock().unwrap()[0],
            NodeEvent::ExchangeRejected {
                round: 4,
                reason: "round 4 is closed".into()
            }
        );
    }

    /// Runs one embed task against `reply` and returns the loop's error.
    async fn failing(task: Result<v1::Task, Status>, reply: ExchangeReply) -> ClientError {
        let (_f, mut client) = start(vec![task, done()], vec![reply]).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        run_vertical_node(&mut client, trainer(), &fake::run_options(&events))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn malformed_answers_are_protocol_errors() {
        let g = array![[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0]];
        let mut bad_sha = ExchangeReply::gradients(1, &g, 1.0);
        if let ExchangeReply::Gradients { header, .. } = &mut bad_sha {
            header.sha256 = "00".repeat(32);
        }
        let err = failing(embed(1, &[0, 1], false), bad_sha).await;
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("protocol error: gradients for round 1: checksum mismatch"),
            "{err}"
        );

        let three = array![[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let err = failing(
            embed(1, &[0, 1], false),
            ExchangeReply::gradients(1, &three, 1.0),
        )
        .await;
        assert_eq!(
            err.to_string(),
            "protocol error: gradients for round 1: the header announces 3 rows but the task \
             has 2"
        );

        let wide = array![[1.0f32, 0.0], [0.0, 1.0]];
        let err = failing(
            embed(1, &[0, 1], false),
            ExchangeReply::gradients(1, &wide, 1.0),
        )
        .await;
        assert!(
            err.to_string()
                .contains("the header announces 2 outputs but the task has 3"),
            "{err}"
        );

        let err = failing(
            embed(2, &[0, 1], false),
            ExchangeReply::gradients(1, &g, 1.0),
        )
        .await;
        assert!(
            err.to_string().contains("the header names round 1"),
            "{err}"
        );

        // An evaluation pass must not send gradients back.
        let err = failing(
            embed(5, &[0, 1], true),
            ExchangeReply::gradients(5, &g, 1.0),
        )
        .await;
        assert!(
            err.to_string()
                .contains("announces 2 rows but the evaluation pass expects 0"),
            "{err}"
        );

        let mut nan = g.clone();
        nan[[1, 1]] = f32::NAN;
        let err = failing(
            embed(1, &[0, 1], false),
            ExchangeReply::gradients(1, &nan, 1.0),
        )
        .await;
        assert!(err.to_string().contains("index 4 is NaN"), "{err}");
    }

    #[tokio::test]
    async fn a_trainer_failure_ends_the_loop_with_its_typed_cause() {
        let (f, mut client) = start(vec![embed(1, &[0, 9], false), done()], vec![]).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let err = run_vertical_node(&mut client, trainer(), &fake::run_options(&events))
            .await
            .unwrap_err();
        let ClientError::Trainer(cause) = &err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(
            cause.downcast_ref::<VerticalError>(),
            Some(&VerticalError::SampleOutOfRange {
                sample: 9,
                num_samples: 4
            })
        );
        assert!(f.script().embeddings.is_empty(), "nothing was sent");
    }
}
