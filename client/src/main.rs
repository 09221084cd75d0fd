//! `fedval-client`: run one federated node from the command line.
//!
//! Loads a local numeric CSV (label in the last column), enrolls in a federation (or resumes
//! an identity), trains the federation's model on the local data every round it is asked
//! to, and prints the final global model's metrics on the local data.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use fedval_client::{FederationClient, ModelTrainer, NodeEvent, RunOptions, connect, run_node};
use fedval_core::data::{Dataset, Standardizer, load_csv};
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
    /// Local data: numeric CSV (optionally .gz), label in the last column.
    #[arg(long)]
    data: PathBuf,
    /// Z-score the features of the local data before training.
    #[arg(long)]
    standardize: bool,
    /// This node's seed, mixed with the round and the server's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    let data = load_data(&args)?;
    let channel = connect(&args.server).await?;
    let mut client = match (&args.client_id, &args.token, &args.model) {
        (Some(client_id), Some(token), Some(model)) => {
            FederationClient::resume(channel, &args.federation, client_id, token, model.clone())?
        }
        (None, None, None) => {
            let (Some(secret), Some(name)) = (&args.secret, &args.name) else {
                bail!(
                    "--secret and --name are needed to enroll (or resume with --client-id, --token and --model)"
                );
            };
            let client = FederationClient::enroll(
                channel,
                &args.federation,
                secret,
                name,
                data.len() as u64,
            )
            .await
            .with_context(|| format!("cannot enroll in federation {:?}", args.federation))?;
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
            args.data.display()
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

/// Loads the CSV and standardises it when asked.
fn load_data(args: &Args) -> anyhow::Result<Dataset> {
    let mut data = load_csv(&args.data)?;
    if args.standardize {
        Standardizer::fit(&data).apply(&mut data)?;
    }
    println!(
        "loaded {}: {} rows, {} features",
        args.data.display(),
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

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
