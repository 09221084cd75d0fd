//! `fedval-client`: run one federated node from the command line.
//!
//! Loads a local numeric CSV (label in the last column), enrolls in a federation (or resumes
//! an identity), trains the federation's model on the local data every round it is asked
//! to, and prints the final global model's metrics on the local data. In a FACT federation
//! `--cost-per-point C` reports the node's marginal cost per data point at enrollment; the
//! node then trains on (and reports) the first `ceil(m*)` of its samples each round.
//!
//! With `--vertical` it runs a party of a vertical federation instead: the CSV holds
//! `id,features...` (ids `0..N-1` in any order, each once; no label, the server holds the
//! labels), the node enrolls announcing its column count and embeds, exchanges and applies
//! gradients until the federation is done.
//!
//! With `--bandit` it runs a client of a bandit federation on fedval-core's synthetic
//! linear environment (`--arms` fresh unit arms per step, reward noise `--noise-sd`, the
//! shared `theta*` drawn from `--seed`, this client's own stream `--env-client`) and prices
//! every communication round at `--round-cost`, reported times `--report-factor`; no data
//! file is read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use fedval_client::party::load_party_csv;
use fedval_client::{
    BanditClient, FederationClient, FixedCost, ModelTrainer, NodeEvent, PartyTrainer, RunOptions,
    VerticalClient, VerticalTraining, connect, run_bandit_node, run_node, run_vertical_node,
};
use fedval_core::data::{Dataset, Standardizer, load_csv};
use fedval_core::incentive::environment::LinearEnvironment;
use fedval_core::model::ModelSpec;

/// Run a fedval federated node on local data.
#[derive(Debug, Parser)]
#[command(name = "fedval-client", version)]
struct Args {
    /// Coordinator URL.
    #[arg(long, env = "FEDVAL_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Federation to join.
    #[arg(long)]
    federation: String,
    /// Enrollment secret of the federation (not needed with --token).
    #[arg(long, env = "FEDVAL_SECRET", required_unless_present = "token")]
    secret: Option<String>,
    /// This node's name, unique in the federation.
    #[arg(long, required_unless_present = "token")]
    name: Option<String>,
    /// Local data: numeric CSV (optionally .gz), label in the last column; with
    /// --vertical, `id,features...` (ids 0..N-1, each once). Not used with --bandit.
    #[arg(long, required_unless_present = "bandit")]
    data: Option<PathBuf>,
    /// Run a party of a vertical federation on a CSV of `id,features...`.
    #[arg(long, conflicts_with_all = ["client_id", "standardize"])]
    vertical: bool,
    /// Run a client of a bandit federation on a synthetic linear environment.
    #[arg(
        long,
        conflicts_with_all = ["vertical", "client_id", "standardize", "cost_per_point"]
    )]
    bandit: bool,
    /// --bandit: arms per step.
    #[arg(long, default_value_t = 10, requires = "bandit")]
    arms: usize,
    /// --bandit: standard deviation of the reward noise.
    #[arg(long, default_value_t = 0.1, requires = "bandit")]
    noise_sd: f64,
    /// --bandit: this client's stream of the environment (clients of one seed share
    /// theta* and differ in their contexts).
    #[arg(long, default_value_t = 0, requires = "bandit")]
    env_client: u64,
    /// --bandit: the true cost of taking part in a communication round.
    #[arg(long, default_value_t = 1.0, requires = "bandit")]
    round_cost: f64,
    /// --bandit: reported cost over true cost (1 = truthful).
    #[arg(long, default_value_t = 1.0, requires = "bandit")]
    report_factor: f64,
    /// Z-score the features of the local data before training.
    #[arg(long)]
    standardize: bool,
    /// This node's seed, mixed with the round and the server's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// FACT federations: this node's marginal cost per data point (finite, > 0), reported
    /// at enrollment; it sets the points the node must train on, m* = sqrt(offset / (2 C)).
    #[arg(long, value_name = "C", conflicts_with_all = ["vertical", "client_id"])]
    cost_per_point: Option<f64>,
    /// Resume an identity from an earlier enrollment: its client id.
    #[arg(long, requires_all = ["token", "model"])]
    client_id: Option<String>,
    /// Resume an identity from an earlier enrollment: its bearer token.
    #[arg(long, env = "FEDVAL_TOKEN", requires = "client_id")]
    token: Option<String>,
    /// The federation's model when resuming (enrollment reports it otherwise):
    /// `logreg:FEATURES:CLASSES` or `mlp:FEATURES:HIDDEN:CLASSES`.
    #[arg(long, value_parser = parse_model, requires = "client_id")]
    model: Option<ModelSpec>,
}

impl Args {
    /// The local data file (clap requires `--data` unless `--bandit`, which reads none).
    fn data_path(&self) -> &Path {
        self.data.as_deref().unwrap_or(Path::new(""))
    }

    /// The enrollment secret and name; without them an error says they are needed to
    /// `enroll` (e.g. "enroll a bandit client").
    fn credentials(&self, enroll: &str) -> anyhow::Result<(&str, &str)> {
        match (&self.secret, &self.name) {
            (Some(secret), Some(name)) => Ok((secret, name)),
            _ => bail!("--secret and --name are needed to {enroll}"),
        }
    }

    /// The context of a refused enrollment.
    fn enrollment_failed(&self) -> String {
        format!("cannot enroll in federation {:?}", self.federation)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the data, joins the federation and runs the node to the end.
async fn run(args: Args) -> anyhow::Result<()> {
    if args.vertical {
        return run_vertical(&args).await;
    }
    if args.bandit {
        return run_bandit(&args).await;
    }
    let data = load_data(&args)?;
    let channel = connect(&args.server).await?;
    let mut client = match (&args.client_id, &args.token, &args.model) {
        (Some(client_id), Some(token), Some(model)) => {
            FederationClient::resume(channel, &args.federation, client_id, token, model.clone())?
        }
        (None, None, None) => {
            let (secret, name) =
                args.credentials("enroll (or resume with --client-id, --token and --model)")?;
            let samples = data.len() as u64;
            let enrolled = match args.cost_per_point {
                Some(cost) => {
                    FederationClient::enroll_with_cost(
                        channel,
                        &args.federation,
                        secret,
                        name,
                        samples,
                        cost,
                    )
                    .await
                }
                None => {
                    FederationClient::enroll(channel, &args.federation, secret, name, samples).await
                }
            };
            let client = enrolled.with_context(|| args.enrollment_failed())?;
            println!(
                "enrolled in {} as client {}",
                args.federation,
                client.client_id()
            );
            eprintln!(
                "token (shown once; resume with --client-id {} --token <token> --model ...): {}",
                client.client_id(),
                client.token()
            );
            client
        }
        _ => bail!("resuming needs --client-id, --token and --model together"),
    };
    let model = client.model().clone();
    println!("model: {}", describe(&model));
    let trainer = ModelTrainer::new(model, data, args.seed).with_context(|| {
        format!(
            "local data {} does not fit the federation's model",
            args.data_path().display()
        )
    })?;

    let opts = RunOptions {
        on_event: Some(Arc::new(print_event)),
        ..RunOptions::default()
    };
    let summary = run_node(&mut client, trainer, &opts).await?;
    println!(
        "trained {} rounds; final model version {} on local data: {}",
        summary.rounds_trained,
        summary.final_model_version,
        metrics(&summary.final_metrics)
    );
    Ok(())
}

/// `--vertical`: loads the party's block, enrolls with its column count and runs the
/// vertical task loop.
async fn run_vertical(args: &Args) -> anyhow::Result<()> {
    let path = args.data_path();
    let block = load_party_csv(path).with_context(|| format!("party data {}", path.display()))?;
    println!(
        "loaded {}: {} samples, {} features",
        path.display(),
        block.nrows(),
        block.ncols()
    );
    let (secret, name) = args.credentials("enroll a vertical party")?;
    let num_features = u32::try_from(block.ncols()).context("too many feature columns")?;
    let channel = connect(&args.server).await?;
    let mut client = VerticalClient::enroll(channel, &args.federation, secret, name, num_features)
        .await
        .with_context(|| args.enrollment_failed())?;
    let party = client.party().clone();
    println!(
        "enrolled in {} as party {}: {} embedding, {} outputs, {} training",
        args.federation,
        client.client_id(),
        match party.hidden {
            0 => "linear".to_string(),
            h => format!("mlp ({h} hidden)"),
        },
        party.output_dim,
        match party.training {
            VerticalTraining::Sync => "synchronous",
            VerticalTraining::Async => "asynchronous",
        }
    );
    let trainer = PartyTrainer::new(&party, block)
        .with_context(|| format!("party data {} is unusable", path.display()))?;
    let opts = RunOptions {
        on_event: Some(Arc::new(print_event)),
        ..RunOptions::default()
    };
    let (_, summary) = run_vertical_node(&mut client, trainer, &opts).await?;
    let loss = |l: Option<f64>| l.map_or("n/a".to_string(), |l| format!("{l:.4}"));
    println!(
        "vertical federation done ({}): {} rounds trained, last batch loss {}, evaluation loss {}",
        summary.reason,
        summary.rounds_trained,
        loss(summary.last_loss),
        loss(summary.eval_loss)
    );
    Ok(())
}

/// `--bandit`: enrolls in a bandit federation and plays on a synthetic linear environment.
async fn run_bandit(args: &Args) -> anyhow::Result<()> {
    let (secret, name) = args.credentials("enroll a bandit client")?;
    let channel = connect(&args.server).await?;
    let mut client = BanditClient::enroll(channel, &args.federation, secret, name)
        .await
        .with_context(|| args.enrollment_failed())?;
    let agent = client.agent().clone();
    println!(
        "enrolled in {} as bandit client {}: d = {}, lambda = {}, alpha = {}, threshold = {}, horizon {} steps",
        args.federation,
        client.client_id(),
        agent.dim,
        agent.lambda,
        agent.alpha,
        agent.threshold,
        agent.horizon
    );
    let mut env = LinearEnvironment::new(
        agent.dim,
        args.arms,
        args.noise_sd,
        args.seed,
        args.env_client,
    )
    .context("the synthetic environment")?;
    let mut costs = FixedCost {
        true_cost: args.round_cost,
        report_factor: args.report_factor,
    };
    let trace = run_bandit_node(&mut client, &mut env, &mut costs, &RunOptions::default()).await?;
    let regret: f64 = trace.steps.iter().filter_map(|s| s.regret).sum();
    let paid: f64 = trace.rounds.iter().map(|r| r.payment).sum();
    let incurred: f64 = trace
        .rounds
        .iter()
        .filter(|r| r.selected)
        .map(|r| r.true_cost)
        .sum();
    println!(
        "bandit federation done: {} steps played (regret {regret:.3}), {} rounds, selected in {}, paid {paid:.4}, utility {:.4}",
        trace.steps.len(),
        trace.rounds.len(),
        trace.rounds.iter().filter(|r| r.selected).count(),
        paid - incurred
    );
    Ok(())
}

/// Loads the CSV and standardises it when asked.
fn load_data(args: &Args) -> anyhow::Result<Dataset> {
    let mut data = load_csv(args.data_path())?;
    if args.standardize {
        Standardizer::fit(&data).apply(&mut data)?;
    }
    println!(
        "loaded {}: {} rows, {} features",
        args.data_path().display(),
        data.len(),
        data.num_features()
    );
    Ok(data)
}

/// Prints one progress line per event.
fn print_event(event: NodeEvent) {
    match event {
        NodeEvent::Trained { round, metrics: m } => {
            println!("round {round}: trained ({})", metrics(&m))
        }
        NodeEvent::Uploaded { round } => println!("round {round}: update uploaded"),
        NodeEvent::UploadRejected { round, reason } => {
            println!("round {round}: update refused by the server: {reason}")
        }
        NodeEvent::Waiting { .. } => {}
        NodeEvent::Exchanged {
            round,
            loss,
            evaluate_only,
        } => {
            if evaluate_only {
                println!("evaluation: loss={loss:.4}");
            } else {
                println!("round {round}: gradients applied (batch loss={loss:.4})");
            }
        }
        NodeEvent::ExchangeRejected { round, reason } => {
            println!("round {round}: embeddings refused by the server: {reason}")
        }
        NodeEvent::Done {
            final_model_version,
        } => {
            println!("federation done: final model version {final_model_version}")
        }
    }
}

/// `name=value` pairs, 4 decimals.
fn metrics(m: &[(String, f64)]) -> String {
    m.iter()
        .map(|(name, value)| format!("{name}={value:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A short human description of a model spec.
fn describe(spec: &ModelSpec) -> String {
    match spec {
        ModelSpec::LogisticRegression {
            num_features,
            num_classes,
        } => format!("logistic regression, {num_features} features, {num_classes} classes"),
        ModelSpec::Mlp {
            num_features,
            hidden,
            num_classes,
        } => format!("mlp, {num_features} features, {hidden} hidden, {num_classes} classes"),
    }
}

/// Parses `logreg:F:C` or `mlp:F:H:C` into a validated spec.
fn parse_model(s: &str) -> Result<ModelSpec, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |p: &str| {
        p.parse::<usize>()
            .map_err(|e| format!("bad number {p:?} in model {s:?}: {e}"))
    };
    let spec = match parts.as_slice() {
        ["logreg", f, c] => ModelSpec::LogisticRegression {
            num_features: num(f)?,
            num_classes: num(c)?,
        },
        ["mlp", f, h, c] => ModelSpec::Mlp {
            num_features: num(f)?,
            hidden: num(h)?,
            num_classes: num(c)?,
        },
        _ => {
            return Err(format!(
                "bad model {s:?}: expected logreg:FEATURES:CLASSES or mlp:FEATURES:HIDDEN:CLASSES"
            ));
        }
    };
    spec.validate()
        .map_err(|e| format!("bad model {s:?}: {e}"))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_specs() {
        assert_eq!(
            parse_model("mlp:64:32:10").unwrap(),
            ModelSpec::Mlp {
                num_features: 64,
                hidden: 32,
                num_classes: 10
            }
        );
        assert_eq!(
            parse_model("logreg:4:3").unwrap(),
            ModelSpec::LogisticRegression {
                num_features: 4,
                num_classes: 3
            }
        );
        assert!(
            parse_model("mlp:64:10")
                .unwrap_err()
                .contains("expected logreg")
        );
        assert!(
            parse_model("logreg:x:3")
                .unwrap_err()
                .contains("bad number \"x\"")
        );
        assert!(
            parse_model("logreg:4:1")
                .unwrap_err()
                .contains("num_classes")
        );
    }

    /// The arguments of an enrollment without data.
    const ENROLL: [&str; 7] = [
        "fedval-client",
        "--federation",
        "f",
        "--secret",
        "s",
        "--name",
        "n",
    ];

    #[test]
    fn cost_per_point_is_parsed_for_horizontal_enrollments_only() {
        let base: Vec<&str> = ENROLL.iter().chain(&["--data", "x.csv"]).copied().collect();
        let args = Args::try_parse_from(base.iter().chain(&["--cost-per-point", "2.5e-5"]))
            .expect("parses");
        assert_eq!(args.cost_per_point, Some(2.5e-5));
        assert_eq!(
            Args::try_parse_from(base.iter())
                .expect("parses")
                .cost_per_point,
            None
        );
        assert!(
            Args::try_parse_from(base.iter().chain(&["--cost-per-point", "1", "--vertical"]))
                .is_err()
        );
    }

    #[test]
    fn bandit_clients_need_no_data_file() {
        let args =
            Args::try_parse_from(ENROLL.iter().chain(&["--bandit", "--report-factor", "1.5"]))
                .expect("parses");
        assert!(args.bandit && args.data.is_none());
        assert_eq!((args.arms, args.report_factor), (10, 1.5));
        assert!(
            Args::try_parse_from(ENROLL).is_err(),
            "--data is required otherwise"
        );
        assert!(
            Args::try_parse_from(ENROLL.iter().chain(&["--data", "x", "--arms", "3"])).is_err()
        );
        assert!(Args::try_parse_from(ENROLL.iter().chain(&["--bandit", "--vertical"])).is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
