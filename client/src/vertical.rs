//! [`VerticalClient`]: a party of a vertical federation (ALGORITHMS.md section 3) and the
//! Coordinator calls it makes.
//!
//! A vertical party holds some feature columns of samples whose labels only the server
//! holds. It enrolls announcing its column count and receives a [`VerticalParty`]: how to
//! build its embedding model. Each embed task it then embeds the named samples and sends the
//! embeddings up with [`VerticalClient::exchange_embeddings`] (an `EmbeddingHeader` with the
//! SHA-256, then 1 MiB chunks); the server answers with the per-sample gradients of the loss
//! (a `GradientHeader`, then chunks), which are checked here like a downloaded model:
//! announced sizes against the task, chunks in order, SHA-256, finite values.

use fedval_core::tensor::{Reassembler, check_finite, from_le_bytes};
use fedval_core::vertical::PartyModelSpec;
use fedval_proto::v1;
use ndarray::Array2;
use tonic::transport::Channel;

use crate::client::{
    CALL_TIMEOUT, MAX_MODEL_BYTES, Session, check_sha256, chunked_stream, encode, node_identity,
};
use crate::error::ClientError;
use crate::task::{EmbedTask, VerticalTask};

/// How the federation trains: every party embeds the same server-drawn batch each round,
/// or each party steps at its own pace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerticalTraining {
    /// One mini-batch per round, drawn by the server, embedded by every party.
    Sync,
    /// Every party steps at its own pace against the others' latest embeddings.
    Async,
}

/// What a vertical party needs to build and train its embedding model, from enrollment
/// (mirrors `fedval.v1.VerticalParty`, validated).
#[derive(Clone, Debug, PartialEq)]
pub struct VerticalParty {
    /// Embedding width: the number of classes, or 1 for regression.
    pub output_dim: usize,
    /// 0: linear embedding `h = W x` (zero-initialised); otherwise an MLP with this many
    /// hidden units.
    pub hidden: usize,
    /// SGD step of the party's model.
    pub learning_rate: f32,
    /// Weight decay of the party's weights.
    pub l2: f32,
    /// Seed of the model's initialisation.
    pub seed: u64,
    /// Synchronous or asynchronous training.
    pub training: VerticalTraining,
}

impl VerticalParty {
    /// Converts the server's description, refusing (as a protocol error: the server sent
    /// it) a zero output width, a step that is not positive and finite, a negative or
    /// non-finite weight decay and an unknown training mode (empty means `sync`).
    pub fn from_proto(p: &v1::VerticalParty) -> Result<Self, ClientError> {
        let bad = |what: String| Err(ClientError::Protocol(format!("vertical party: {what}")));
        if p.output_dim == 0 {
            return bad("output_dim is 0".into());
        }
        if !(p.learning_rate.is_finite() && p.learning_rate > 0.0) {
            return bad(format!(
                "learning rate {} is not positive and finite",
                p.learning_rate
            ));
        }
        if !(p.l2.is_finite() && p.l2 >= 0.0) {
            return bad(format!("l2 {} is not non-negative and finite", p.l2));
        }
        let training = match p.training.as_str() {
            "" | "sync" => VerticalTraining::Sync,
            "async" => VerticalTraining::Async,
            other => return bad(format!("unknown training mode {other:?}")),
        };
        Ok(Self {
            output_dim: p.output_dim as usize,
            hidden: p.hidden as usize,
            learning_rate: p.learning_rate,
            l2: p.l2,
            seed: p.seed,
            training,
        })
    }

    /// The embedding model of a party holding `num_features` columns.
    pub fn spec(&self, num_features: usize) -> PartyModelSpec {
        match self.hidden {
            0 => PartyModelSpec::Linear {
                num_features,
                output_dim: self.output_dim,
            },
            hidden => PartyModelSpec::Mlp {
                num_features,
                hidden,
                output_dim: self.output_dim,
            },
        }
    }
}

/// The server's answer to one exchange of embeddings.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// The round (or step) the answer is for.
    pub round: u64,
    /// `dl/dz_i` per sample of the task, in the task's order (`rows x output_dim`, not
    /// divided by the batch size); zero rows after an evaluation pass.
    pub gradients: Array2<f32>,
    /// The server's mean loss of the batch (informational).
    pub loss: f64,
}

/// A party enrolled in a vertical federation: its session plus the [`VerticalParty`]
/// description its model is built from.
#[derive(Clone, Debug)]
pub struct VerticalClient {
    session: Session,
    party: VerticalParty,
}

impl VerticalClient {
    /// Joins the vertical federation `federation_id` under the name `name`, announcing the
    /// `num_features` columns this party holds; returns the party's identity and the
    /// description of its model ([`party`](Self::party)).
    ///
    /// Refuses `num_features = 0` locally, and the answer of a horizontal or bandit
    /// federation with a [`ClientError::Protocol`] that says which node to run instead.
    pub async fn enroll(
        channel: Channel,
        federation_id: &str,
        secret: &str,
        name: &str,
        num_features: u32,
    ) -> Result<Self, ClientError> {
        if num_features == 0 {
            return Err(ClientError::InvalidInput(
                "a vertical party must hold at least one feature column".into(),
            ));
        }
        let (session, resp) =
            Session::enroll(channel, federation_id, secret, name, 0, num_features).await?;
        let party = match &resp.vertical {
            Some(p) => VerticalParty::from_proto(p)?,
            None => return Err(crate::client::wrong_kind(federation_id, &resp)),
        };
        Ok(Self { session, party })
    }

    node_identity!(
        "party",
        party: VerticalParty,
        "How to build and train this party's embedding model."
    );

    /// Asks what to do next: embed, wait, or stop.
    pub async fn pull_task(&mut self) -> Result<VerticalTask, ClientError> {
        let task = self.session.pull_task().await?;
        VerticalTask::from_proto(task, self.party.output_dim)
    }

    /// Sends `embeddings` (one row per id of `task`, `output_dim` columns, row-major) and
    /// returns the server's gradients, checked: the header comes first and names the
    /// task's round and width, `rows` is the task's sample count (0 for an evaluation
    /// pass), the chunks fill exactly `total_bytes`, the bytes hash to the announced
    /// SHA-256 and every value is finite. Anything else is a [`ClientError::Protocol`].
    ///
    /// Embeddings of the wrong shape or with NaN/inf are refused locally with
    /// [`ClientError::InvalidInput`]. The call waits up to the task's deadline plus
    /// [`CALL_TIMEOUT`] (synchronous training answers once every party is in); repeating
    /// it after a lost answer is safe: the server answers a committed round again.
    pub async fn exchange_embeddings(
        &mut self,
        task: &EmbedTask,
        embeddings: &Array2<f32>,
    ) -> Result<Gradients, ClientError> {
        let (round, rows, dim) = (task.round, task.sample_ids.len(), task.output_dim);
        if embeddings.dim() != (rows, dim) {
            return Err(ClientError::InvalidInput(format!(
                "embeddings for round {round} are {} x {} but the task needs {rows} x {dim}",
                embeddings.nrows(),
                embeddings.ncols()
            )));
        }
        let values: Vec<f32> = embeddings.iter().copied().collect();
        check_finite(&values).map_err(|e| {
            ClientError::InvalidInput(format!(
                "embeddings for round {round} are not sendable: {e}"
            ))
        })?;
        let (rows32, dim32) = (wire_u32(rows, "rows")?, wire_u32(dim, "output_dim")?);
        let (bytes, sha256) = encode(&values);
        let header = v1::EmbeddingHeader {
            federation_id: self.session.federation_id().to_owned(),
            client_id: self.session.client_id().to_owned(),
            round,
            rows: rows32,
            output_dim: dim32,
            total_bytes: bytes.len() as u64,
            sha256,
        };
        use v1::embedding_message::Kind;
        let first = v1::EmbeddingMessage {
            kind: Some(Kind::Header(header)),
        };
        let stream = chunked_stream(first, bytes, |c| v1::EmbeddingMessage {
            kind: Some(Kind::Chunk(c)),
        });
        let mut req = self.session.authed(stream);
        req.set_timeout(task.deadline.saturating_add(CALL_TIMEOUT));
        let mut stream = self
            .session
            .inner
            .exchange_embeddings(req)
            .await?
            .into_inner();
        receive_gradients(&mut stream, task).await
    }
}

/// `n` as a wire `u32`, refusing (locally) what does not fit.
fn wire_u32(n: usize, what: &str) -> Result<u32, ClientError> {
    u32::try_from(n)
        .map_err(|_| ClientError::InvalidInput(format!("{what} {n} does not fit the wire (u32)")))
}

/// Reads and checks the gradient stream of `task` (see
/// [`VerticalClient::exchange_embeddings`]).
async fn receive_gradients(
    stream: &mut tonic::Streaming<v1::GradientMessage>,
    task: &EmbedTask,
) -> Result<Gradients, ClientError> {
    use v1::gradient_message::Kind;
    let round = task.round;
    let bad = |what: String| ClientError::Protocol(format!("gradients for round {round}: {what}"));
    let header = match stream.message().await? {
        Some(v1::GradientMessage {
            kind: Some(Kind::Header(h)),
        }) => h,
        Some(_) => return Err(bad("the first message is not a header".into())),
        None => return Err(bad("the stream ended before the header".into())),
    };
    if header.round != round {
        return Err(bad(format!("the header names round {}", header.round)));
    }
    let want_rows = if task.evaluate_only {
        0
    } else {
        task.sample_ids.len()
    };
    if header.rows as usize != want_rows {
        return Err(bad(format!(
            "the header announces {} rows but the {} {want_rows}",
            header.rows,
            if task.evaluate_only {
                "evaluation pass expects"
            } else {
                "task has"
            }
        )));
    }
    if want_rows > 0 && header.output_dim as usize != task.output_dim {
        return Err(bad(format!(
            "the header announces {} outputs but the task has {}",
            header.output_dim, task.output_dim
        )));
    }
    let want_bytes = want_rows.saturating_mul(task.output_dim).saturating_mul(4);
    if header.total_bytes != want_bytes as u64 {
        return Err(bad(format!(
            "the header announces {} bytes but {want_rows} x {} gradients take {want_bytes}",
            header.total_bytes, task.output_dim
        )));
    }
    let mut buf = Reassembler::new(want_bytes, MAX_MODEL_BYTES).map_err(|e| bad(e.to_string()))?;
    while let Some(msg) = stream.message().await? {
        match msg.kind {
            Some(Kind::Chunk(chunk)) => buf
                .push(chunk.offset, &chunk.data)
                .map_err(|e| bad(e.to_string()))?,
            _ => return Err(bad("a message after the header is not a chunk".into())),
        }
    }
    let bytes = buf.finish().map_err(|e| bad(e.to_string()))?;
    if want_rows > 0 {
        check_sha256(&bytes, &header.sha256).map_err(bad)?;
    }
    let values = from_le_bytes(&bytes).map_err(|e| bad(e.to_string()))?;
    check_finite(&values).map_err(|e| bad(e.to_string()))?;
    if !header.loss.is_finite() {
        return Err(bad(format!("the batch loss is {}", header.loss)));
    }
    let gradients = Array2::from_shape_vec((want_rows, task.output_dim), values)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Gradients {
        round,
        gradients,
        loss: header.loss,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fake;
    use fedval_core::model::ModelSpec;

    fn party() -> v1::VerticalParty {
        v1::VerticalParty {
            output_dim: 3,
            hidden: 0,
            learning_rate: 0.5,
            l2: 0.1,
            seed: 4,
            training: "sync".into(),
        }
    }

    fn spec() -> ModelSpec {
        ModelSpec::LogisticRegression {
            num_features: 2,
            num_classes: 3,
        }
    }

    #[test]
    fn party_description_is_validated() {
        let p = VerticalParty::from_proto(&party()).unwrap();
        assert_eq!(
            p.spec(5),
            PartyModelSpec::Linear {
                num_features: 5,
                output_dim: 3
            }
        );
        let mlp = VerticalParty::from_proto(&v1::VerticalParty {
            hidden: 8,
            training: "async".into(),
            ..party()
        })
        .unwrap();
        assert_eq!(mlp.training, VerticalTraining::Async);
        assert_eq!(
            mlp.spec(2),
            PartyModelSpec::Mlp {
                num_features: 2,
                hidden: 8,
                output_dim: 3
            }
        );
        let default = v1::VerticalParty {
            training: String::new(),
            ..party()
        };
        assert_eq!(
            VerticalParty::from_proto(&default).unwrap().training,
            VerticalTraining::Sync
        );
        for (bad, what) in [
            (
                v1::VerticalParty {
                    output_dim: 0,
                    ..party()
                },
                "output_dim is 0",
            ),
            (
                v1::VerticalParty {
                    learning_rate: f32::NAN,
                    ..party()
                },
                "learning rate NaN",
            ),
            (
                v1::VerticalParty {
                    l2: -1.0,
                    ..party()
                },
                "l2 -1",
            ),
            (
                v1::VerticalParty {
                    training: "batch".into(),
                    ..party()
                },
                "unknown training mode \"batch\"",
            ),
        ] {
            let err = VerticalParty::from_proto(&bad).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[tokio::test]
    async fn each_kind_of_node_refuses_the_other_kind_of_federation() {
        let horizontal = fake::start(spec(), fake::Script::default()).await;
        let channel = crate::connect(&horizontal.url).await.unwrap();
        let err = VerticalClient::enroll(channel.clone(), "demo", "secret", "p", 4)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol error: federation \"demo\" is horizontal (the enrollment answer carries \
             a model): run a horizontal node (FederationClient::enroll)"
        );
        let err = VerticalClient::enroll(channel, "demo", "secret", "p", 0)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidInput(_)), "{err:?}");

        let vertical = fake::start(
            spec(),
            fake::Script {
                vertical: Some(party()),
                ..Default::default()
            },
        )
        .await;
        let channel = crate::connect(&vertical.url).await.unwrap();
        let err = crate::FederationClient::enroll(channel.clone(), "demo", "secret", "n", 4)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("federation \"demo\" is vertical")
                && err.to_string().contains("VerticalClient::enroll"),
            "{err}"
        );
        let c = VerticalClient::enroll(channel, "demo", "secret", "p", 2)
            .await
            .unwrap();
        assert_eq!(c.party(), &VerticalParty::from_proto(&party()).unwrap());
        assert_eq!(c.client_id(), fake::CLIENT_ID);
        assert_eq!(
            vertical.script().enrollments,
            vec![("n".to_owned(), 0u32), ("p".to_owned(), 2u32)],
            "the column count travels with a vertical enrollment only"
        );
    }

    #[tokio::test]
    async fn exchange_refuses_bad_embeddings_locally() {
        let f = fake::start(
            spec(),
            fake::Script {
                vertical: Some(party()),
                ..Default::default()
            },
        )
        .await;
        let channel = crate::connect(&f.url).await.unwrap();
        let mut c = VerticalClient::enroll(channel, "demo", "secret", "p", 2)
            .await
            .unwrap();
        let task = EmbedTask {
            round: 1,
            sample_ids: vec![0, 1],
            output_dim: 3,
            evaluate_only: false,
            deadline: Duration::ZERO,
        };
        let err = c
            .exchange_embeddings(&task, &Array2::zeros((1, 3)))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid input: embeddings for round 1 are 1 x 3 but the task needs 2 x 3"
        );
        let mut nan = Array2::zeros((2, 3));
        nan[[1, 2]] = f32::NAN;
        let err = c.exchange_embeddings(&task, &nan).await.unwrap_err();
        assert!(err.to_string().contains("index 5 is NaN"), "{err}");
        assert!(f.script().embeddings.is_empty());
    }
}
