//! [`BanditClient`]: a client of a bandit federation (ALGORITHMS.md section 7) and the
//! Coordinator calls it makes.
//!
//! A bandit client runs LinUCB on its own contexts. It enrolls and receives the
//! [`BanditAgentSettings`] (dimension, ridge, exploration, trigger threshold, horizon);
//! then it pulls [`BanditTask`]s and answers each with one [`BanditAnswer`] through
//! `SubmitBandit`: the step it played, its cost report and pending Gram update, its pending
//! reward vector when selected, the acknowledgement of a downloaded aggregate. The server
//! acknowledges an answer once it is durable, and acknowledges an identical repeat again,
//! so a lost acknowledgement is safely retried with the same answer.

use fedval_core::incentive::truthfedban::LinUcbClient;
use fedval_proto::v1;
use tonic::transport::Channel;

use crate::client::{CALL_TIMEOUT, Session, node_identity};
use crate::error::ClientError;
use crate::task::BanditTask;

pub use fedval_core::incentive::environment::MAX_BANDIT_DIM;

/// How a bandit client runs LinUCB and its trigger, from enrollment (mirrors
/// `fedval.v1.BanditAgent`, validated).
#[derive(Clone, Debug, PartialEq)]
pub struct BanditAgentSettings {
    /// Context dimension `d`.
    pub dim: usize,
    /// Ridge `lambda` of the Gram matrix.
    pub lambda: f64,
    /// LinUCB exploration weight `alpha`.
    pub alpha: f64,
    /// Trigger threshold `D_c`.
    pub threshold: f64,
    /// Total steps of the run (over all clients).
    pub horizon: u64,
}

impl BanditAgentSettings {
    /// Converts the server's description, refusing (as a protocol error: the server sent
    /// it) a dimension outside `1..=MAX_BANDIT_DIM`, a ridge or threshold that is not
    /// positive and finite, a negative or non-finite exploration weight and a zero horizon.
    pub fn from_proto(a: &v1::BanditAgent) -> Result<Self, ClientError> {
        let bad = |what: String| Err(ClientError::Protocol(format!("bandit agent: {what}")));
        let dim = a.dim as usize;
        if !(1..=MAX_BANDIT_DIM).contains(&dim) {
            return bad(format!("dimension {dim} is not in 1..={MAX_BANDIT_DIM}"));
        }
        for (what, value) in [("lambda", a.lambda), ("threshold", a.threshold)] {
            if !(value.is_finite() && value > 0.0) {
                return bad(format!("{what} {value} is not positive and finite"));
            }
        }
        if !(a.alpha.is_finite() && a.alpha >= 0.0) {
            return bad(format!("alpha {} is not non-negative and finite", a.alpha));
        }
        if a.horizon == 0 {
            return bad("the horizon is 0 steps".into());
        }
        Ok(Self {
            dim,
            lambda: a.lambda,
            alpha: a.alpha,
            threshold: a.threshold,
            horizon: a.horizon,
        })
    }

    /// A fresh LinUCB agent with these settings.
    pub fn linucb(&self) -> Result<LinUcbClient, ClientError> {
        LinUcbClient::new(self.dim, self.lambda, self.alpha)
            .map_err(|e| ClientError::Protocol(format!("bandit agent: {e}")))
    }
}

/// A bandit client's answer to one task (`fedval.v1.BanditSubmission`).
#[derive(Clone, Debug, PartialEq)]
pub enum BanditAnswer {
    /// The played step: the reward and the trigger statistic after the update.
    Step {
        /// The step.
        step: u64,
        /// The observed reward.
        reward: f64,
        /// `(step - t_last) log(det V / det(V - dV))`.
        trigger_statistic: f64,
        /// Whether the statistic exceeds the threshold.
        triggered: bool,
    },
    /// The cost report of a communication round.
    Report {
        /// The round.
        round: u64,
        /// The reported cost of participating.
        cost: f64,
        /// The pending Gram update `dV`, row-major `d x d`.
        gram_update: Vec<f64>,
    },
    /// A selected client's pending reward vector `db`.
    Upload {
        /// The round.
        round: u64,
        /// `db` (`d` values).
        b_update: Vec<f64>,
    },
    /// The aggregate of `round` was downloaded.
    Synced {
        /// The round.
        round: u64,
    },
}

impl BanditAnswer {
    /// The wire form.
    fn to_proto(&self) -> v1::bandit_submission::Kind {
        use v1::bandit_submission::Kind;
        match self {
            BanditAnswer::Step {
                step,
                reward,
                trigger_statistic,
                triggered,
            } => Kind::Step(v1::BanditStep {
                step: *step,
                reward: *reward,
                trigger_statistic: *trigger_statistic,
                triggered: *triggered,
            }),
            BanditAnswer::Report {
                round,
                cost,
                gram_update,
            } => Kind::Report(v1::BanditCostReport {
                round: *round,
                cost: *cost,
                gram_update: gram_update.clone(),
            }),
            BanditAnswer::Upload { round, b_update } => Kind::Upload(v1::BanditUpload {
                round: *round,
                b_update: b_update.clone(),
            }),
            BanditAnswer::Synced { round } => Kind::Synced(v1::BanditSynced { round: *round }),
        }
    }
}

/// A client enrolled in a bandit federation: its session plus the
/// [`BanditAgentSettings`] its LinUCB agent is built from.
#[derive(Clone, Debug)]
pub struct BanditClient {
    session: Session,
    agent: BanditAgentSettings,
}

impl BanditClient {
    /// Joins the bandit federation `federation_id` under the name `name`; returns the
    /// client's identity and its agent's settings ([`agent`](Self::agent)).
    ///
    /// Refuses the answer of a horizontal or vertical federation with a
    /// [`ClientError::Protocol`] that says which node to run instead.
    pub async fn enroll(
        channel: Channel,
        federation_id: &str,
        secret: &str,
        name: &str,
    ) -> Result<Self, ClientError> {
        let (session, resp) = Session::enroll(channel, federation_id, secret, name, 0, 0).await?;
        let agent = match &resp.bandit {
            Some(a) => BanditAgentSettings::from_proto(a)?,
            None => return Err(crate::client::wrong_kind(federation_id, &resp)),
        };
        Ok(Self { session, agent })
    }

    node_identity!(
        "client",
        agent: BanditAgentSettings,
        "How this client's LinUCB agent and trigger run."
    );

    /// Asks what to do next, checked against the agent's dimension
    /// ([`BanditTask::from_proto`]).
    pub async fn pull_task(&mut self) -> Result<BanditTask, ClientError> {
        let task = self.session.pull_task().await?;
        BanditTask::from_proto(task, self.agent.dim)
    }

    /// Sends `answer` and returns once the server acknowledged it as durable. Repeating
    /// an answer after a lost acknowledgement is safe: the server acknowledges an identical
    /// repeat again and refuses a different one (`ALREADY_EXISTS`).
    pub async fn submit(&mut self, answer: &BanditAnswer) -> Result<(), ClientError> {
        let mut req = self.session.authed(v1::BanditSubmission {
            federation_id: self.session.federation_id().to_owned(),
            client_id: self.session.client_id().to_owned(),
            kind: Some(answer.to_proto()),
        });
        req.set_timeout(CALL_TIMEOUT);
        let ack = self.session.inner.submit_bandit(req).await?.into_inner();
        if !ack.accepted {
            return Err(ClientError::Protocol(format!(
                "the server answered {answer:?} without accepting it"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> v1::BanditAgent {
        v1::BanditAgent {
            dim: 5,
            lambda: 1.0,
            alpha: 0.5,
            threshold: 20.0,
            horizon: 100,
        }
    }

    #[test]
    fn agent_settings_are_checked() {
        let ok = BanditAgentSettings::from_proto(&agent()).unwrap();
        assert_eq!(
            ok,
            BanditAgentSettings {
                dim: 5,
                lambda: 1.0,
                alpha: 0.5,
                threshold: 20.0,
                horizon: 100
            }
        );
        assert!(ok.linucb().is_ok());
        type Spoil = fn(&mut v1::BanditAgent);
        let cases: [(Spoil, &str); 5] = [
            (|a| a.dim = 0, "dimension 0"),
            (|a| a.dim = 257, "dimension 257"),
            (|a| a.lambda = f64::NAN, "lambda NaN"),
            (|a| a.alpha = -1.0, "alpha -1"),
            (|a| a.horizon = 0, "horizon is 0"),
        ];
        for (spoil, message) in cases {
            let mut a = agent();
            spoil(&mut a);
            let err = BanditAgentSettings::from_proto(&a).unwrap_err();
            assert!(
                matches!(&err, ClientError::Protocol(m) if m.contains(message)),
                "{err:?}"
            );
        }
    }
}
