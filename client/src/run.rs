//! The node's task loop: pull a task, act on it, repeat until the federation is done.
//!
//! [`run_node`] owns all the networking and the policy around it; the [`Trainer`] only
//! computes. Policy, in one place:
//! - `Removed` (RFFL removed the node) ends the loop like `Done`, with the node's own
//!   model of the last version it downloaded;
//! - `Wait` sleeps for the server's `retry_after`, capped at [`RunOptions::max_wait`];
//! - `Train` downloads the global model (the last version is cached), trains on a blocking
//!   thread while heartbeats keep going, and uploads the update;
//! - an upload refused as a duplicate (`ALREADY_EXISTS`) or too late (`FAILED_PRECONDITION`)
//!   is logged and the loop goes on: the round has moved past this node;
//! - retryable failures ([`ClientError::is_retryable`]) are repeated with bounded exponential
//!   back-off, anything else ends the loop with the error;
//! - `Done` downloads the final model, evaluates it locally and returns a [`RunSummary`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::client::FederationClient;
use crate::error::ClientError;
use crate::task::{Task, TrainTask};
use crate::trainer::{TrainOutput, Trainer, TrainerError};

/// Progress notifications a caller can observe (progress bars, simulators, logs).
#[derive(Clone, Debug, PartialEq)]
pub enum NodeEvent {
    /// Local training for `round` finished with these metrics.
    Trained {
        /// The round.
        round: u64,
        /// The trainer's metrics.
        metrics: Vec<(String, f64)>,
    },
    /// The update for `round` was acknowledged by the server.
    Uploaded {
        /// The round.
        round: u64,
    },
    /// The server refused the update for `round` because it was a duplicate or came after
    /// the round closed; the node carries on.
    UploadRejected {
        /// The round.
        round: u64,
        /// The server's reason.
        reason: String,
    },
    /// The server asked the node to wait.
    Waiting {
        /// How long the node sleeps (the server's delay, capped).
        retry_after: Duration,
        /// The server's reason.
        reason: String,
    },
    /// The federation is over; the final model was fetched and evaluated.
    Done {
        /// Version of the final global model.
        final_model_version: u64,
    },
    /// Vertical party: the server answered the embeddings of `round` (the gradients were
    /// applied unless it was the evaluation pass).
    Exchanged {
        /// The round (synchronous) or step (asynchronous).
        round: u64,
        /// The server's mean loss of the batch.
        loss: f64,
        /// True for the evaluation pass over held-out ids.
        evaluate_only: bool,
    },
    /// Vertical party: the server refused the embeddings of `round` because the round had
    /// closed; the party carries on.
    ExchangeRejected {
        /// The round.
        round: u64,
        /// The server's reason.
        reason: String,
    },
}

/// Callback receiving [`NodeEvent`]s.
pub type EventHook = Arc<dyn Fn(NodeEvent) + Send + Sync>;

/// Knobs of the task loop.
#[derive(Clone)]
pub struct RunOptions {
    /// How many times a retryable failure is repeated before the loop gives up.
    pub max_retries: u32,
    /// First back-off delay; it doubles on each retry, capped at `max_wait`.
    pub initial_backoff: Duration,
    /// Longest single sleep, whether asked by the server or for back-off.
    pub max_wait: Duration,
    /// Interval of heartbeats sent while the trainer runs; `None` sends none.
    pub heartbeat_interval: Option<Duration>,
    /// Optional observer of progress events.
    pub on_event: Option<EventHook>,
}

impl Default for RunOptions {
    /// 5 retries from 200 ms, sleeps of at most 5 s, heartbeats every 10 s, no observer.
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_backoff: Duration::from_millis(200),
            max_wait: Duration::from_secs(5),
            heartbeat_interval: Some(Duration::from_secs(10)),
            on_event: None,
        }
    }
}

impl fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunOptions")
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_wait", &self.max_wait)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("on_event", &self.on_event.as_ref().map(|_| "Fn(NodeEvent)"))
            .finish()
    }
}

impl RunOptions {
    /// Hands `event` to the observer, if any.
    pub(crate) fn emit(&self, event: NodeEvent) {
        if let Some(hook) = &self.on_event {
            hook(event);
        }
    }

    /// The back-off before retry number `attempt` (0-based): `initial_backoff * 2^attempt`,
    /// capped at `max_wait`.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_wait)
    }
}

/// What a node's participation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Rounds this node trained (whether or not the server took the update).
    pub rounds_trained: u64,
    /// Version of the final global model.
    pub final_model_version: u64,
    /// The final global model's parameters.
    pub final_model: Vec<f32>,
    /// The trainer's evaluation of the final model on local data.
    pub final_metrics: Vec<(String, f64)>,
}

/// Runs the task loop for `client` with `trainer` until the federation is done.
///
/// Returns the final model and its local evaluation, or the first error that is neither
/// retryable (within `opts.max_retries`) nor a refused upload.
pub async fn run_node<T: Trainer>(
    client: &mut FederationClient,
    trainer: T,
    opts: &RunOptions,
) -> Result<RunSummary, ClientError> {
    let mut trainer = trainer;
    let mut cache: Option<(u64, Arc<Vec<f32>>)> = None;
    let mut rounds_trained = 0u64;
    loop {
        match retry(opts, "pull task", || {
            let mut c = client.clone();
            async move { c.pull_task().await }
        })
        .await?
        {
            Task::Wait {
                retry_after,
                reason,
            } => wait(opts, retry_after, reason).await,
            Task::Train(task) => {
                let global = model(client, &mut cache, task.model_version, opts).await?;
                let round = task.round;
                info!(round, model_version = task.model_version, "training");
                let (back, output) = train(client, trainer, global, task.clone(), opts).await?;
                trainer = back;
                rounds_trained += 1;
                opts.emit(NodeEvent::Trained {
                    round,
                    metrics: output.metrics.clone(),
                });
                upload(client, &task, &output, opts).await?;
            }
            Task::Done {
                final_model_version,
                reason,
            } => {
                info!(final_model_version, %reason, "federation done");
                let params = model(client, &mut cache, final_model_version, opts).await?;
                drop(cache); // leaves `params` the only reference: no copy in `finish`
                return finish(trainer, params, final_model_version, rounds_trained, opts).await;
            }
            Task::Removed { round, reason } => {
                // The node ends with its own model of the last version it downloaded.
                let version = cache.as_ref().map_or(0, |(v, _)| *v);
                info!(round, version, %reason, "removed from the federation");
                let params = model(client, &mut cache, version, opts).await?;
                drop(cache);
                return finish(trainer, params, version, rounds_trained, opts).await;
            }
        }
    }
}

/// Evaluates the final `params` locally and builds the run's summary.
async fn finish<T: Trainer>(
    trainer: T,
    params: Arc<Vec<f32>>,
    final_model_version: u64,
    rounds_trained: u64,
    opts: &RunOptions,
) -> Result<RunSummary, ClientError> {
    let (_, (params, final_metrics)) = blocking(trainer, move |t| {
        let metrics = t.evaluate(&params)?;
        Ok((params, metrics))
    })
    .await?;
    let final_model = Arc::unwrap_or_clone(params);
    opts.emit(NodeEvent::Done {
        final_model_version,
    });
    Ok(RunSummary {
        rounds_trained,
        final_model_version,
        final_model,
        final_metrics,
    })
}

/// Answers a Wait task: reports it and sleeps `retry_after`, capped at `opts.max_wait`.
pub(crate) async fn wait(opts: &RunOptions, retry_after: Duration, reason: String) {
    let retry_after = retry_after.min(opts.max_wait);
    debug!(?retry_after, %reason, "waiting");
    opts.emit(NodeEvent::Waiting {
        retry_after,
        reason,
    });
    tokio::time::sleep(retry_after).await;
}

/// Runs `call` until it succeeds, fails for good, or `opts.max_retries` retries are spent.
///
/// Each attempt works on a clone of the client (cheap: channels are shared), which keeps
/// the futures `Send` so nodes can run on spawned tasks.
pub(crate) async fn retry<R, F, Fut>(
    opts: &RunOptions,
    what: &str,
    mut call: F,
) -> Result<R, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, ClientError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && attempt < opts.max_retries => {
                let delay = opts.backoff(attempt);
                warn!(error = %e, attempt = attempt + 1, ?delay, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Global model `version`, from the cache when it was the last one downloaded.
async fn model(
    client: &mut FederationClient,
    cache: &mut Option<(u64, Arc<Vec<f32>>)>,
    version: u64,
    opts: &RunOptions,
) -> Result<Arc<Vec<f32>>, ClientError> {
    if let Some((v, params)) = cache
        && *v == version
    {
        return Ok(Arc::clone(params));
    }
    let params = retry(opts, "model download", || {
        let mut c = client.clone();
        async move { c.download_model(version).await }
    })
    .await?;
    let params = Arc::new(params);
    *cache = Some((version, Arc::clone(&params)));
    Ok(params)
}

/// Trains on a blocking thread, sending heartbeats meanwhile; returns the trainer with its
/// output.
async fn train<T: Trainer>(
    client: &mut FederationClient,
    trainer: T,
    global: Arc<Vec<f32>>,
    task: TrainTask,
    opts: &RunOptions,
) -> Result<(T, TrainOutput), ClientError> {
    let mut handle = spawn(trainer, move |t| t.train(&global, &task));
    let joined = match opts.heartbeat_interval.filter(|d| !d.is_zero()) {
        None => handle.await,
        Some(every) => {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate
            loop {
                tokio::select! {
                    joined = &mut handle => break joined,
                    _ = ticker.tick() => {
                        if let Err(e) = client.heartbeat().await {
                            debug!(error = %e, "heartbeat failed");
                        }
                    }
                }
            }
        }
    };
    unjoin(joined)
}

/// Uploads one round's update; refused uploads are logged and reported, not fatal.
async fn upload(
    client: &mut FederationClient,
    task: &TrainTask,
    output: &TrainOutput,
    opts: &RunOptions,
) -> Result<(), ClientError> {
    let round = task.round;
    let result = retry(opts, "upload", || {
        let mut c = client.clone();
        async move {
            c.upload_update(
                round,
                task.model_version,
                &output.update,
                output.num_samples,
                &output.metrics,
            )
            .await
        }
    })
    .await;
    match result {
        Ok(ack) => {
            if ack.accepted {
                info!(round, "update uploaded");
            } else {
                warn!(round, "update acknowledged but not accepted");
            }
            opts.emit(NodeEvent::Uploaded { round });
            Ok(())
        }
        Err(ClientError::AlreadyExists(reason) | ClientError::FailedPrecondition(reason)) => {
            warn!(round, %reason, "update refused; moving on");
            opts.emit(NodeEvent::UploadRejected { round, reason });
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Runs `f` on the trainer (horizontal or vertical) on a blocking thread and gives the
/// trainer back.
pub(crate) async fn blocking<T: Send + 'static, R: Send + 'static>(
    trainer: T,
    f: impl FnOnce(&mut T) -> Result<R, TrainerError> + Send + 'static,
) -> Result<(T, R), ClientError> {
    unjoin(spawn(trainer, f).await)
}

/// A trainer handed back from a blocking thread, with what it computed.
type Returned<T, R> = (T, Result<R, TrainerError>);

/// Moves the trainer onto a blocking thread to run `f`.
fn spawn<T: Send + 'static, R: Send + 'static>(
    mut trainer: T,
    f: impl FnOnce(&mut T) -> Result<R, TrainerError> + Send + 'static,
) -> JoinHandle<Returned<T, R>> {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut trainer);
        (trainer, r)
    })
}

/// Turns a finished blocking trainer call into the trainer and its result; a panic or an
/// error becomes [`ClientError::Trainer`].
fn unjoin<T, R>(
    joined: Result<Returned<T, R>, tokio::task::JoinError>,
) -> Result<(T, R), ClientError> {
    match joined {
        Ok((trainer, Ok(r))) => Ok((trainer, r)),
        Ok((_, Err(e))) => Err(ClientError::Trainer(e)),
        Err(join) => Err(ClientError::Trainer(
            format!("trainer thread failed: {join}").into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use fedval_core::data::parse_csv;
    use fedval_core::model::ModelSpec;
    use fedval_core::tensor::{from_le_bytes, to_le_bytes};
    use fedval_proto::v1;
    use tonic::Status;

    use super::*;
    use crate::fake;
    use crate::task::TrainParams;
    use crate::trainer::ModelTrainer;

    fn spec() -> ModelSpec {
        ModelSpec::LogisticRegression {
            num_features: 2,
            num_classes: 2,
        }
    }

    fn data() -> fedval_core::data::Dataset {
        parse_csv("0.1,0.2,0\n0.3,0.1,0\n1.1,0.9,1\n0.9,1.2,1\n", None).unwrap()
    }

    fn train_task(round: u64) -> TrainTask {
        TrainTask {
            round,
            model_version: 0,
            params: TrainParams {
                local_epochs: 2,
                batch_size: 2,
                learning_rate: 0.5,
                seed: 1,
            },
            deadline: Duration::from_secs(30),
            model: spec(),
            required_points: None,
        }
    }

    /// A node enrolled in the fake coordinator at `url`.
    async fn enrolled(url: &str) -> FederationClient {
        let channel = crate::connect(url).await.unwrap();
        FederationClient::enroll(channel, "demo", "secret", "n", 4)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn loop_retries_waits_trains_tolerates_refusals_and_finishes() {
        let model = vec![0.1, -0.2, 0.3, 0.0, 0.05, -0.05];
        let tasks: VecDeque<Result<v1::Task, Status>> = VecDeque::from([
            Err(Status::unavailable("restarting")),
            Ok(Task::Wait {
                retry_after: Duration::from_secs(3600), // capped by max_wait
                reason: "round not open".into(),
            }
            .into()),
            Ok(Task::Train(train_task(1)).into()),
            Ok(Task::Train(train_task(2)).into()),
            Ok(Task::Done {
                final_model_version: 0,
                reason: "finished".into(),
            }
            .into()),
        ]);
        let f = fake::start(
            spec(),
            fake::Script {
                tasks,
                model: model.clone(),
                // Round 1 uploads fine; round 2 is refused as a duplicate.
                upload_replies: VecDeque::from([
                    None,
                    Some(Status::already_exists(
                        "update for round 2 already received",
                    )),
                ]),
                ..Default::default()
            },
        )
        .await;
        let mut client = enrolled(&f.url).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let trainer = ModelTrainer::new(spec(), data(), 7).unwrap();

        let opts = fake::run_options(&events);

        let summary = run_node(&mut client, trainer, &opts).await.unwrap();

        let mut expected_trainer = ModelTrainer::new(spec(), data(), 7).unwrap();
        let out1 = expected_trainer.train(&model, &train_task(1)).unwrap();
        let out2 = expected_trainer.train(&model, &train_task(2)).unwrap();
        let final_metrics = expected_trainer.evaluate(&model).unwrap();

        assert_eq!(summary.rounds_trained, 2);
        assert_eq!(summary.final_model_version, 0);
        assert_eq!(summary.final_model, model);
        assert_eq!(summary.final_metrics, final_metrics);

        let s = f.script();
        assert_eq!(
            s.downloads, 1,
            "model version 0 is cached after the first download"
        );
        assert_eq!(s.uploads.len(), 1);
        let (header, bytes) = &s.uploads[0];
        assert_eq!(header.round, 1);
        assert_eq!(header.num_samples, 4);
        assert_eq!(from_le_bytes(bytes).unwrap(), out1.update);
        assert_eq!(bytes, &to_le_bytes(&out1.update));

        let events = events.lock().unwrap().clone();
        assert_eq!(
            events,
            vec![
                NodeEvent::Waiting {
                    retry_after: Duration::from_millis(5),
                    reason: "round not open".into()
                },
                NodeEvent::Trained {
                    round: 1,
                    metrics: out1.metrics
                },
                NodeEvent::Uploaded { round: 1 },
                NodeEvent::Trained {
                    round: 2,
                    metrics: out2.metrics
                },
                NodeEvent::UploadRejected {
                    round: 2,
                    reason: "update for round 2 already received".into()
                },
                NodeEvent::Done {
                    final_model_version: 0
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_removed_node_ends_with_its_last_downloaded_model() {
        let model = vec![0.5, -0.25, 0.125, 0.0, 1.0, -1.0];
        let tasks: VecDeque<Result<v1::Task, Status>> = VecDeque::from([
            Ok(Task::Train(train_task(1)).into()),
            Ok(Task::Removed {
                round: 2,
                reason: "removed by reputation in round 2".into(),
            }
            .into()),
        ]);
        let f = fake::start(
            spec(),
            fake::Script {
                tasks,
                model: model.clone(),
                ..Default::default()
            },
        )
        .await;
        let mut client = enrolled(&f.url).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let trainer = ModelTrainer::new(spec(), data(), 7).unwrap();
        let summary = run_node(&mut client, trainer, &fake::run_options(&events))
            .await
            .unwrap();
        assert_eq!(summary.rounds_trained, 1);
        // Version 0 was the last one downloaded (for round 1); it is served from cache.
        assert_eq!(summary.final_model_version, 0);
        assert_eq!(summary.final_model, model);
        assert_eq!(f.script().downloads, 1);
        assert_eq!(
            events.lock().unwrap().last(),
            Some(&NodeEvent::Done {
                final_model_version: 0
            })
        );
    }

    #[tokio::test]
    async fn retries_are_bounded_and_fatal_errors_end_the_loop() {
        let unavailable = || Err(Status::unavailable("down"));
        let f = fake::start(
            spec(),
            fake::Script {
                tasks: VecDeque::from([unavailable(), unavailable(), unavailable()]),
                ..Default::default()
            },
        )
        .await;
        let mut client = enrolled(&f.url).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let trainer = ModelTrainer::new(spec(), data(), 7).unwrap();
        // max_retries = 2: three failures in a row give up with the last one.
        let err = run_node(&mut client, trainer, &fake::run_options(&events))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Unavailable(ref m) if m == "down"),
            "{err:?}"
        );
        assert!(f.script().tasks.is_empty());

        f.script()
            .tasks
            .push_back(Err(Status::permission_denied("removed")));
        let trainer = ModelTrainer::new(spec(), data(), 7).unwrap();
        let err = run_node(&mut client, trainer, &fake::run_options(&events))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::PermissionDenied(_)), "{err:?}");
        assert!(events.lock().unwrap().is_empty());
    }

    /// A trainer whose training always fails.
    struct Broken;

    impl Trainer for Broken {
        fn train(&mut self, _: &[f32], t: &TrainTask) -> Result<TrainOutput, TrainerError> {
            Err(format!("no data for round {}", t.round).into())
        }
        fn evaluate(&mut self, _: &[f32]) -> Result<Vec<(String, f64)>, TrainerError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn trainer_failure_ends_the_loop_with_its_cause() {
        let f = fake::start(
            spec(),
            fake::Script {
                tasks: VecDeque::from([Ok(Task::Train(train_task(3)).into())]),
                model: vec![0.0; 6],
                ..Default::default()
            },
        )
        .await;
        let mut client = enrolled(&f.url).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let err = run_node(&mut client, Broken, &fake::run_options(&events))
            .await
            .unwrap_err();
        let ClientError::Trainer(cause) = &err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(cause.to_string(), "no data for round 3");
        assert!(f.script().uploads.is_empty());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let o = RunOptions {
            initial_backoff: Duration::from_millis(100),
            max_wait: Duration::from_millis(350),
            ..RunOptions::default()
        };
        let got: Vec<u128> = (0..4).map(|a| o.backoff(a).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        assert_eq!(o.backoff(200), Duration::from_millis(350));
    }
}
