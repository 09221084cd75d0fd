//! Runs a simulation: an embedded server on a free loopback port (or a remote one),
//! one federation created through the Admin API, one task per client with its own gRPC
//! channel running the client SDK's task loop, and a progress bar fed by the Admin
//! event stream. Returns the [`Report`].
//!
//! Every client runs an [`AdversaryTrainer`] (honest clients with [`Attack::Honest`]).
//! Late joiners are held back until the event stream reports round `late_join_round`
//! committed, then enroll like the others. Clients enroll one after another in the
//! scenario's order (each connects at once but waits for its turn), because the server's
//! enrollment order indexes per-client state and seeded draws: the same config and seed
//! then give the same run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fedval_client::{Contribution, FederationClient, ModelTrainer, RunOptions, connect, run_node};
use fedval_core::data::Dataset;
use fedval_core::model::{EvalMetrics, ModelSpec, TrainConfig};
use fedval_core::tensor;
use fedval_proto::v1 as pb;
use fedval_proto::v1::admin_client::AdminClient;
use fedval_server::store::Store;
use fedval_server::{RunningServer, ServerSettings};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::oneshot;
use tonic::Streaming;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::SimError;
use crate::adversary::{AdversaryTrainer, Attack, SybilGroup};
use crate::fact::FactClient;
use crate::metrics::{self, RunMetrics};
use crate::report::{ClientRow, Report, RoundRow};
use crate::scenario::{Behaviour, ModelChoice, SimConfig};
use crate::setup::{ClientPlan, Prepared, prepare};

/// Where and how to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The scenario.
    pub config: SimConfig,
    /// A remote server's URL; `None` starts an embedded one.
    pub server: Option<String>,
    /// The admin token (of the remote server, or given to the embedded one).
    pub admin_token: String,
    /// Show a progress bar.
    pub progress: bool,
}

/// An Admin client that sends the admin token with every call.
pub type Admin = AdminClient<InterceptedService<Channel, BearerAuth>>;

/// Adds `authorization: Bearer <token>` to every Admin call.
#[derive(Clone)]
pub struct BearerAuth(AsciiMetadataValue);

impl tonic::service::Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// An Admin client that authenticates with `token`.
pub fn admin_client(channel: Channel, token: &str) -> Result<Admin, SimError> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| SimError::Config("the admin token must be printable ASCII".into()))?;
    Ok(AdminClient::with_interceptor(channel, BearerAuth(value))
        .max_decoding_message_size(64 << 20))
}

/// The model a scenario trains, sized for `data`.
pub fn model_spec(choice: ModelChoice, data: &Dataset) -> ModelSpec {
    let (num_features, num_classes) = (data.num_features(), data.num_classes);
    match choice {
        ModelChoice::Logreg => ModelSpec::LogisticRegression {
            num_features,
            num_classes,
        },
        ModelChoice::Mlp { hidden } => ModelSpec::Mlp {
            num_features,
            hidden,
            num_classes,
        },
    }
}

/// The federation the scenario asks the server for.
pub fn federation_config(
    id: &str,
    secret: &str,
    config: &SimConfig,
    prepared: &Prepared,
) -> pb::FederationConfig {
    let spec = model_spec(config.model, &prepared.validation);
    let features: Vec<f32> = prepared.validation.features.iter().copied().collect();
    pb::FederationConfig {
        id: id.to_string(),
        enrollment_secret: secret.to_string(),
        model: Some(pb::ModelSpec::from(&spec)),
        rounds: config.rounds as u32,
        min_clients: config.initial_clients() as u32,
        clients_per_round: 0,
        round_timeout_ms: config.round_timeout_ms,
        training: Some(pb::TrainingParams {
            local_epochs: config.local_epochs,
            batch_size: config.batch_size,
            learning_rate: config.learning_rate,
            seed: config.seed,
        }),
        valuation: Some(pb::ValuationConfig {
            method: config.valuation.clone(),
            exact_max_players: 12,
            budget: config.valuation_budget,
            seed: config.seed,
            metric: config.utility.clone(),
            // Unset: the server's defaults (tolerances, Beta(16, 1), every core, lag 1).
            ..Default::default()
        }),
        validation: Some(pb::InlineDataset {
            num_features: prepared.validation.num_features() as u32,
            features: tensor::to_le_bytes(&features).into(),
            labels: prepared.validation.labels.clone(),
        }),
        seed: config.seed,
        reputation: config.reputation.as_ref().map(Into::into),
        fair_reward: config.fair_reward.as_ref().map(Into::into),
        vertical: None,
        fact: config.fact.as_ref().map(|f| (&f.settings()).into()),
        bandit: None,
        aggregator: Some(fedval_server::convert::aggregator_to_proto(
            &config.aggregator,
        )),
    }
}

struct ClientResult {
    index: usize,
    client_id: String,
    final_model: Vec<f32>,
    final_accuracy: f64,
}

/// Where the nodes of a run connect and how their task loops retry: the server's URL,
/// the run's federation id and enrollment secret, and the loops' options.
#[derive(Clone)]
pub(crate) struct Launch {
    pub(crate) url: String,
    pub(crate) federation_id: String,
    pub(crate) secret: String,
    pub(crate) run_opts: RunOptions,
}

type ClientTask = tokio::task::JoinHandle<Result<ClientResult, SimError>>;

/// The trainer seed of client `index`: `seed + 1 + index`, except that every Sybil
/// identity uses the first identity's seed (one party, one training run).
fn trainer_seed(config: &SimConfig, prepared: &Prepared, index: usize) -> u64 {
    let source = match prepared.clients.get(index).map(|c| c.behaviour) {
        Some(Behaviour::Sybil) => prepared
            .clients
            .iter()
            .position(|c| c.behaviour == Behaviour::Sybil)
            .unwrap_or(index),
        _ => index,
    };
    config.seed.wrapping_add(1 + source as u64)
}

/// The attack a behaviour uploads with.
fn attack(behaviour: Behaviour, config: &SimConfig, sybil: &SybilGroup) -> Attack {
    match behaviour {
        Behaviour::FreeRiderNoise => Attack::FreeRiderNoise,
        Behaviour::FreeRiderZero => Attack::FreeRiderZero,
        Behaviour::SignFlip => Attack::SignFlip,
        Behaviour::ScaledNoise => Attack::ScaledNoise {
            factor: config.adversaries.noise_scale,
        },
        Behaviour::Sybil => Attack::Sybil(sybil.clone()),
        Behaviour::Honest
        | Behaviour::Noisy
        | Behaviour::Tiny
        | Behaviour::LabelFlip
        | Behaviour::LateJoiner => Attack::Honest,
    }
}

/// An enrollment turn: a node enrolls once the previous one has (`wait`), then lets the
/// next one go (`done`), so that the server's enrollment order, which indexes per-client
/// state and seeded draws, is the scenario's node order in every run.
pub(crate) struct Turn {
    wait: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
}

impl Turn {
    /// Runs `enroll` in this turn: once the previous node has enrolled, then lets the next
    /// one go, whatever the outcome.
    pub(crate) async fn enroll<T>(self, enroll: impl Future<Output = T>) -> T {
        if let Some(wait) = self.wait {
            // An error means the previous node failed before enrolling; its task reports
            // that, and this one need not wait any longer.
            let _ = wait.await;
        }
        let enrolled = enroll.await;
        let _ = self.done.send(());
        enrolled
    }
}

/// Hands out [`Turn`]s in the order they are taken: each waits for the one before it.
#[derive(Default)]
pub(crate) struct Turns(Option<oneshot::Receiver<()>>);

impl Turns {
    /// The next turn.
    pub(crate) fn next(&mut self) -> Turn {
        let (done, next) = oneshot::channel();
        Turn {
            wait: self.0.replace(next),
            done,
        }
    }
}

/// Starts client `index`: enroll (in its turn; in a FACT run reporting the cost of `fact`),
/// run the task loop (contributing as `fact`'s behaviour says), evaluate the final model.
fn spawn_client(
    launch: &Launch,
    index: usize,
    plan: ClientPlan,
    seed: u64,
    attack: Attack,
    fact: Option<FactClient>,
    turn: Turn,
) -> ClientTask {
    let launch = launch.clone();
    tokio::spawn(async move {
        let channel = connect(&launch.url).await?;
        let samples = plan.data.len() as u64;
        let (fed, secret, name) = (&launch.federation_id, &launch.secret, &plan.name);
        let mut client = turn
            .enroll(async {
                match &fact {
                    Some(f) => {
                        let cost = f.reported_cost;
                        FederationClient::enroll_with_cost(
                            channel, fed, secret, name, samples, cost,
                        )
                        .await
                    }
                    None => FederationClient::enroll(channel, fed, secret, name, samples).await,
                }
            })
            .await?;
        let contribution = fact.map_or(Contribution::Honest, |f| f.behaviour.contribution());
        let inner = ModelTrainer::new(client.model().clone(), plan.data, seed)?
            .with_contribution(contribution)?;
        let trainer = AdversaryTrainer::new(inner, attack, seed);
        let summary = run_node(&mut client, trainer, &launch.run_opts).await?;
        let final_accuracy = summary
            .final_metrics
            .iter()
            .find(|(n, _)| n == "accuracy")
            .map_or(f64::NAN, |(_, v)| *v);
        Ok::<_, SimError>(ClientResult {
            index,
            client_id: client.client_id().to_string(),
            final_model: summary.final_model,
            final_accuracy,
        })
    })
}

/// Standalone test accuracy of every client (see [`metrics`]), in index order.
fn standalone_accuracies(
    config: &SimConfig,
    prepared: &Prepared,
    spec: &ModelSpec,
) -> Result<Vec<f64>, SimError> {
    let cfg = TrainConfig {
        epochs: (config.rounds as usize).saturating_mul(config.local_epochs as usize),
        batch_size: config.batch_size as usize,
        learning_rate: config.learning_rate,
        l2: 0.0,
    };
    prepared
        .clients
        .iter()
        .enumerate()
        .map(|(index, plan)| {
            let seed = trainer_seed(config, prepared, index);
            Ok(metrics::standalone_accuracy(
                spec,
                &plan.data,
                &prepared.test,
                &cfg,
                config.seed,
                seed,
            )?)
        })
        .collect()
}

/// The server a run talks to: an embedded one (shut down by [`finish`]) or a remote one,
/// where its nodes connect ([`Launch`]: the URL, the run's federation created there, its
/// enrollment secret), an Admin client and the federation's event stream.
pub(crate) struct Target {
    pub(crate) embedded: Option<RunningServer>,
    pub(crate) launch: Launch,
    pub(crate) admin: Admin,
    pub(crate) events: Streaming<pb::FederationEvent>,
}

/// Starts the embedded server unless `opts` names a remote one, picks the federation id
/// (`sim` on an embedded server, unique on a remote one) and the enrollment secret,
/// creates the federation `federation(id, secret)` describes and subscribes to its events
/// (before any node enrolls, so no round event is missed).
pub(crate) async fn target(
    opts: &SimOptions,
    federation: impl FnOnce(&str, &str) -> pb::FederationConfig,
) -> Result<Target, SimError> {
    let config = &opts.config;
    let embedded = match &opts.server {
        Some(_) => None,
        None => {
            let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
            let settings = ServerSettings::new(Store::memory(), opts.admin_token.clone());
            Some(RunningServer::start(addr, settings).await?)
        }
    };
    let url = match (&opts.server, &embedded) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => server.url(),
        (None, None) => unreachable!("an embedded server exists when no URL is given"),
    };
    let federation_id = match embedded {
        Some(_) => "sim".to_string(),
        None => format!(
            "sim-{}-{}",
            config.seed,
            fedval_server::federation::now_ms()
        ),
    };
    let secret = format!("enroll-{}", config.seed);
    let mut admin = admin_client(connect(&url).await?, &opts.admin_token)?;
    admin
        .create_federation(pb::CreateFederationRequest {
            config: Some(federation(&federation_id, &secret)),
        })
        .await?;
    let events = admin
        .watch_events(pb::WatchEventsRequest {
            federation_id: federation_id.clone(),
        })
        .await?
        .into_inner();
    let run_opts = RunOptions {
        max_retries: 8,
        max_wait: Duration::from_secs(2),
        ..RunOptions::default()
    };
    Ok(Target {
        embedded,
        launch: Launch {
            url,
            federation_id,
            secret,
            run_opts,
        },
        admin,
        events,
    })
}

/// The template of a progress bar over a run's rounds.
pub(crate) const ROUNDS_BAR: &str = "{spinner} round {pos}/{len} [{bar:30}] {elapsed} {msg}";

/// A progress bar of `len` steps drawn with `template` (hidden unless `show`).
pub(crate) fn progress_bar(show: bool, len: u64, template: &str) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Calls `on_commit` with every round the federation commits until it ends; subscribe
/// before any node enrolls so no round is missed.
pub(crate) async fn follow_rounds(
    events: &mut Streaming<pb::FederationEvent>,
    mut on_commit: impl FnMut(&pb::RoundRecord),
) -> Result<(), SimError> {
    while let Some(event) = events.message().await? {
        match event.kind {
            Some(pb::federation_event::Kind::RoundCommitted(r)) => on_commit(&r),
            Some(pb::federation_event::Kind::Ended(_)) => break,
            _ => {}
        }
    }
    Ok(())
}

/// What a finished run leaves: every node's result (in node order), and the rounds,
/// contributions and ledger the server recorded.
pub(crate) struct Finished<T> {
    pub(crate) results: Vec<T>,
    pub(crate) rounds: Vec<pb::RoundRecord>,
    pub(crate) contributions: Vec<pb::ClientContribution>,
    pub(crate) ledger: pb::ListLedgerResponse,
}

/// Ends a run: joins every node task (`what` names the nodes in a panic's error), sorts
/// the results by `index`, reads the federation's rounds, contributions and ledger
/// (complete: the federation has ended), and shuts the embedded server down (if any).
pub(crate) async fn finish<T>(
    tasks: Vec<tokio::task::JoinHandle<Result<T, SimError>>>,
    what: &str,
    index: impl Fn(&T) -> usize,
    admin: &mut Admin,
    federation_id: &str,
    embedded: Option<RunningServer>,
) -> Result<Finished<T>, SimError> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(
            task.await
                .map_err(|e| SimError::Client(format!("{what} task panicked: {e}")))??,
        );
    }
    results.sort_by_key(|r| index(r));
    let rounds = admin
        .list_rounds(pb::ListRoundsRequest {
            federation_id: federation_id.to_owned(),
        })
        .await?
        .into_inner()
        .rounds;
    let contributions = admin
        .get_contributions(pb::GetContributionsRequest {
            federation_id: federation_id.to_owned(),
        })
        .await?
        .into_inner()
        .contributions;
    let ledger = admin
        .list_ledger(pb::ListLedgerRequest {
            federation_id: federation_id.to_owned(),
            client_id: None,
        })
        .await?
        .into_inner();
    if let Some(server) = embedded {
        server.shutdown().await?;
    }
    Ok(Finished {
        results,
        rounds,
        contributions,
        ledger,
    })
}

/// Runs the whole simulation and returns its report (files are written by the caller);
/// a vertical scenario runs with [`crate::vertical::run`].
pub async fn run(opts: &SimOptions) -> Result<Report, SimError> {
    let started = Instant::now();
    let config = &opts.config;
    if config.vertical.is_some() {
        return crate::vertical::run(opts, started).await;
    }
    let prepared = prepare(config)?;
    let Target {
        embedded,
        launch,
        mut admin,
        mut events,
    } = target(opts, |id, secret| {
        federation_config(id, secret, config, &prepared)
    })
    .await?;
    let sybil = SybilGroup::new();
    // FACT: every client's true and reported cost and behaviour, fixed before the run.
    let fact = config.fact.as_ref().map(|f| {
        let shards: Vec<usize> = prepared.clients.iter().map(|c| c.data.len()).collect();
        (f.mean_cost(&shards), f.clients(&shards, config.seed))
    });
    let fact_client = |index: usize| fact.as_ref().and_then(|(_, c)| c.get(index).copied());
    let mut tasks = Vec::with_capacity(prepared.clients.len());
    let mut late = Vec::new();
    let mut turns = Turns::default();
    for (index, plan) in prepared.clients.iter().cloned().enumerate() {
        let seed = trainer_seed(config, &prepared, index);
        let attack = attack(plan.behaviour, config, &sybil);
        if plan.behaviour == Behaviour::LateJoiner {
            late.push((index, plan, seed, attack));
        } else {
            let (f, turn) = (fact_client(index), turns.next());
            tasks.push(spawn_client(&launch, index, plan, seed, attack, f, turn));
        }
    }

    let bar = progress_bar(opts.progress, config.rounds, ROUNDS_BAR);
    bar.set_message("waiting for clients");
    follow_rounds(&mut events, |r| {
        let acc = r
            .metrics
            .iter()
            .find(|m| m.name == "val_accuracy")
            .map_or(f64::NAN, |m| m.value);
        bar.set_position(r.round);
        bar.set_message(format!("val acc {acc:.3}"));
        if r.round >= config.adversaries.late_join_round {
            for (index, plan, seed, attack) in late.drain(..) {
                let (f, turn) = (fact_client(index), turns.next());
                tasks.push(spawn_client(&launch, index, plan, seed, attack, f, turn));
            }
        }
    })
    .await?;
    bar.finish_and_clear();

    let Finished {
        results,
        rounds,
        contributions,
        ledger,
    } = finish(
        tasks,
        "client",
        |r| r.index,
        &mut admin,
        &launch.federation_id,
        embedded,
    )
    .await?;

    let spec = model_spec(config.model, &prepared.test);
    // Every client's final model on the test set, evaluated once.
    let tests = results
        .iter()
        .map(|r| spec.evaluate(&r.final_model, &prepared.test))
        .collect::<Result<Vec<_>, _>>()?;
    let test = final_test(config, &prepared, &results, &tests);
    let standalone = {
        let (config, prepared, spec) = (config.clone(), prepared.clone(), spec.clone());
        tokio::task::spawn_blocking(move || standalone_accuracies(&config, &prepared, &spec))
            .await
            .map_err(|e| SimError::Client(format!("standalone training panicked: {e}")))??
    };
    let test_accuracy: Vec<f64> = tests.iter().map(|m| m.accuracy).collect();

    let names: HashMap<String, String> = results
        .iter()
        .map(|r| (r.client_id.clone(), prepared.clients[r.index].name.clone()))
        .collect();
    let round_rows = rounds.iter().map(|r| round_row(r, &names)).collect();
    let clients: Vec<ClientRow> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let plan = &prepared.clients[r.index];
            let contribution = contributions.iter().find(|c| c.client_id == r.client_id);
            ClientRow {
                name: plan.name.clone(),
                client_id: r.client_id.clone(),
                behaviour: plan.behaviour.as_str().to_string(),
                adversary: plan.behaviour.is_adversary(),
                samples: plan.data.len(),
                shapley: contribution.map_or(0.0, |c| c.cumulative_value),
                rounds_participated: contribution.map_or(0, |c| c.rounds_participated),
                final_accuracy: r.final_accuracy,
                standalone_accuracy: standalone.get(r.index).copied().unwrap_or(f64::NAN),
                test_accuracy: test_accuracy.get(i).copied().unwrap_or(f64::NAN),
                removal_round: removal_round(&rounds, &r.client_id),
                columns: None,
            }
        })
        .collect();
    let run_metrics = run_metrics(config, &spec, &prepared, &results, &clients)?;
    let fact = match (&config.fact, &fact) {
        (Some(sim), Some((mean_cost, plans))) => {
            let run: Vec<crate::fact::RunClient> = clients
                .iter()
                .map(|c| crate::fact::RunClient {
                    name: c.name.clone(),
                    client_id: c.client_id.clone(),
                    samples: c.samples,
                    rounds: c.rounds_participated,
                    shapley: c.shapley,
                })
                .collect();
            let plans: Vec<FactClient> = results
                .iter()
                .filter_map(|r| plans.get(r.index).copied())
                .collect();
            Some(crate::fact::outcome(
                sim,
                *mean_cost,
                &plans,
                &run,
                &ledger.entries,
                &rounds,
            ))
        }
        _ => None,
    };
    Ok(Report {
        config: config.clone(),
        federation_id: launch.federation_id,
        server: launch.url,
        wall_time_s: started.elapsed().as_secs_f64(),
        final_test_accuracy: test.0,
        final_test_loss: test.1,
        rounds: round_rows,
        clients,
        metrics: run_metrics,
        vertical: None,
        fact,
    })
}

/// Test accuracy and loss of the final model: the shared global model, or with personal
/// models (RFFL, fair rewards) the mean over the honest clients' own models (an adversary's model says
/// nothing about what the federation delivers).
fn final_test(
    config: &SimConfig,
    prepared: &Prepared,
    results: &[ClientResult],
    tests: &[EvalMetrics],
) -> (f64, f64) {
    let chosen: Vec<&EvalMetrics> = if personalised(config) {
        results
            .iter()
            .zip(tests)
            .filter(|(r, _)| {
                prepared
                    .clients
                    .get(r.index)
                    .is_some_and(|c| !c.behaviour.is_adversary())
            })
            .map(|(_, m)| m)
            .collect()
    } else {
        tests.first().into_iter().collect()
    };
    let n = chosen.len().max(1) as f64;
    let accuracy: f64 = chosen.iter().map(|m| m.accuracy).sum();
    let loss: f64 = chosen.iter().map(|m| m.loss).sum();
    (accuracy / n, loss / n)
}

/// True when every client ends with its own model (RFFL, fair rewards) rather than the
/// shared global one.
pub fn personalised(config: &SimConfig) -> bool {
    config.reputation.is_some() || config.fair_reward.is_some()
}

/// Fairness, honest accuracy and label-flip success over the honest clients.
fn run_metrics(
    config: &SimConfig,
    spec: &ModelSpec,
    prepared: &Prepared,
    results: &[ClientResult],
    clients: &[ClientRow],
) -> Result<RunMetrics, SimError> {
    let honest: Vec<usize> = (0..clients.len())
        .filter(|&i| !clients[i].adversary)
        .collect();
    let standalone: Vec<f64> = honest
        .iter()
        .map(|&i| clients[i].standalone_accuracy)
        .collect();
    let final_acc: Vec<f64> = honest.iter().map(|&i| clients[i].test_accuracy).collect();
    let (fairness_acc, fairness_basis) = if personalised(config) {
        (final_acc.clone(), "own final models".to_string())
    } else {
        let cfg = TrainConfig {
            epochs: config.local_epochs as usize,
            batch_size: config.batch_size as usize,
            learning_rate: config.learning_rate,
            l2: 0.0,
        };
        let mut tuned = Vec::with_capacity(honest.len());
        for &i in &honest {
            let index = results[i].index;
            let data = &prepared.clients[index].data;
            // A seed apart from the client's training seed; any fixed one reproduces.
            let seed = trainer_seed(config, prepared, index) ^ 0x5eed_f17e;
            tuned.push(metrics::trained_accuracy(
                spec,
                results[i].final_model.clone(),
                data,
                &prepared.test,
                &cfg,
                seed,
            )?);
        }
        (
            tuned,
            "the shared final model fine-tuned for one round on each client's data".to_string(),
        )
    };
    let (fairness, fairness_note) = metrics::fairness(&standalone, &fairness_acc);
    let honest_accuracy = final_acc.iter().sum::<f64>() / final_acc.len().max(1) as f64;
    let honest_accuracy_best = final_acc.iter().copied().fold(f64::NAN, f64::max);
    let attack_success_rate = if config.adversaries.label_flip > 0 {
        let mut rates = Vec::with_capacity(honest.len());
        for &i in &honest {
            if let Some(rate) =
                metrics::flip_success_rate(spec, &results[i].final_model, &prepared.test)?
            {
                rates.push(rate);
            }
        }
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
    } else {
        None
    };
    Ok(RunMetrics {
        fairness,
        fairness_note,
        fairness_basis,
        honest_accuracy,
        honest_accuracy_best,
        attack_success_rate,
    })
}

/// The report row of a round record, values keyed by client name.
pub(crate) fn round_row(r: &pb::RoundRecord, names: &HashMap<String, String>) -> RoundRow {
    let metric = |name: &str| {
        r.metrics
            .iter()
            .find(|m| m.name == name)
            .map_or(f64::NAN, |m| m.value)
    };
    RoundRow {
        round: r.round,
        val_accuracy: metric("val_accuracy"),
        val_loss: metric("val_loss"),
        client_loss: metric("client_train_loss"),
        participants: r.participants.len(),
        stragglers: r.stragglers.len(),
        valuation_method: r.valuation_method.clone(),
        valuation_status: r.valuation_status.clone(),
        valuation_stop: r.valuation_stop.clone(),
        evaluations: r.evaluations,
        valuation_ms: r.valuation_ms,
        utility_full: r.utility_full,
        utility_empty: r.utility_empty,
        fair_reward: r.fair_reward.as_ref().map(|f| {
            (
                f.exploring,
                f.clients.iter().filter(|c| c.received_model).count(),
            )
        }),
        values: r
            .values
            .iter()
            .map(|v| {
                (
                    names
                        .get(&v.client_id)
                        .cloned()
                        .unwrap_or_else(|| v.client_id.clone()),
                    v.value,
                )
            })
            .collect(),
    }
}

/// The first round whose recorded reputations mark `client_id` removed (RFFL), if any.
fn removal_round(rounds: &[pb::RoundRecord], client_id: &str) -> Option<u64> {
    rounds
        .iter()
        .find(|r| {
            r.reputations
                .iter()
                .any(|c| c.client_id == client_id && c.removed)
        })
        .map(|r| r.round)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_round_is_the_first_round_marking_the_client_removed() {
        let round = |n: u64, removed: bool| pb::RoundRecord {
            round: n,
            reputations: vec![
                pb::ClientReputation {
                    client_id: "a".into(),
                    reputation: 0.0,
                    phi: 0.0,
                    removed,
                },
                pb::ClientReputation {
                    client_id: "b".into(),
                    reputation: 1.0,
                    phi: 1.0,
                    removed: false,
                },
            ],
            ..Default::default()
        };
        let rounds = [round(1, false), round(2, true), round(3, true)];
        assert_eq!(removal_round(&rounds, "a"), Some(2));
        assert_eq!(removal_round(&rounds, "b"), None);
        assert_eq!(removal_round(&[], "a"), None);
    }
}
