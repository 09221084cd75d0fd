//! A bandit client's task loop: play LinUCB steps on the client's own environment, report
//! costs, upload when selected, download aggregates, until the federation is done.
//!
//! [`run_bandit_node`] shares the other loops' policy ([`RunOptions`]): `Wait` sleeps for
//! the server's delay capped at `max_wait`; retryable failures are repeated with bounded
//! exponential back-off. Everything the node sends is decided once and remembered, so a
//! lost acknowledgement (or a task asked again after a server restart) is answered with
//! the SAME answer: a step is never re-played, a round's cost is drawn once
//! ([`CostModel::cost`] is called once per round), and an aggregate is applied once. An
//! answer refused because the protocol moved on (`FAILED_PRECONDITION`, e.g. a round that
//! closed) is logged and the loop goes on: the next task says what to do.
//!
//! A step answered after the server's play deadline (`round_timeout_ms`) was skipped: the
//! server refuses it ("step t was skipped after N ms without an answer; pull the next
//! task"). The node then drops its cached answer, marks the step skipped in its trace
//! ([`StepLog::skipped`]) and pulls its next task. Its LinUCB agent keeps the observation
//! it made: that is local data like any other, part of the pending statistics it reports
//! and uploads in later rounds.

use std::collections::BTreeMap;

use fedval_core::incentive::environment::Environment;
use fedval_core::incentive::truthfedban::LinUcbClient;
use tracing::{debug, info};

use crate::bandit::{BanditAgentSettings, BanditAnswer, BanditClient};
use crate::error::ClientError;
use crate::run::{RunOptions, retry, wait};
use crate::task::{BanditSync, BanditTask};

/// A client's cost of participating in one communication round: what participating really
/// costs it, and what it reports (a truthful client reports its true cost).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundCost {
    /// The true cost (borne if selected).
    pub true_cost: f64,
    /// The reported cost (finite, `>= 0`).
    pub reported: f64,
}

/// How a client prices its participation in a communication round.
pub trait CostModel: Send {
    /// The cost of round `round`; called once per round the client reports in.
    fn cost(&mut self, round: u64) -> RoundCost;
}

/// The same true cost every round, reported as `report_factor x` the true cost (1: truthful).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixedCost {
    /// The true cost of every round.
    pub true_cost: f64,
    /// Reported cost over true cost.
    pub report_factor: f64,
}

impl CostModel for FixedCost {
    fn cost(&mut self, _round: u64) -> RoundCost {
        RoundCost {
            true_cost: self.true_cost,
            reported: self.true_cost * self.report_factor,
        }
    }
}

/// One step this client played.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    /// The global step.
    pub step: u64,
    /// The reward observed.
    pub reward: f64,
    /// The environment's pseudo-regret of the step, when it knows it.
    pub regret: Option<f64>,
    /// Whether the step triggered a communication round.
    pub triggered: bool,
    /// The server had skipped the step when the answer arrived (past its deadline): the
    /// step is not part of the run, though the agent kept the observation.
    pub skipped: bool,
}

/// One communication round as this client saw it (logged when it downloaded the round's
/// aggregate).
#[derive(Clone, Debug, PartialEq)]
pub struct RoundLog {
    /// The round.
    pub round: u64,
    /// Its true cost (0 if it did not report in the round).
    pub true_cost: f64,
    /// Its reported cost (0 if it did not report in the round).
    pub reported_cost: f64,
    /// Whether the aggregate holds its data (it was selected and uploaded).
    pub selected: bool,
    /// What it was paid.
    pub payment: f64,
}

/// What a bandit client's participation produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BanditTrace {
    /// Every step it played, in order.
    pub steps: Vec<StepLog>,
    /// Every round whose aggregate it downloaded, in order.
    pub rounds: Vec<RoundLog>,
}

/// What the server's refusal of a step it skipped says (server `bandit::skipped_error`).
const SKIPPED_REFUSAL: &str = "was skipped after";

/// Which task an answer answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Play(u64),
    Report(u64),
    Upload(u64),
    Synced(u64),
}

/// The node's state between tasks: its LinUCB agent and what it already decided.
pub(crate) struct Node {
    agent: LinUcbClient,
    threshold: f64,
    /// The last answer, to repeat it when its task comes again.
    last: Option<(Key, BanditAnswer)>,
    /// The cost of each round reported in and not yet downloaded.
    costs: BTreeMap<u64, RoundCost>,
    /// The last step played.
    played: u64,
    /// The last round downloaded.
    synced: u64,
    trace: BanditTrace,
}

impl Node {
    /// A node with a fresh agent of `settings` acting on `env`, which must have the
    /// federation's dimension.
    pub(crate) fn new(
        settings: &BanditAgentSettings,
        env: &dyn Environment,
    ) -> Result<Self, ClientError> {
        if env.dim() != settings.dim {
            return Err(ClientError::InvalidInput(format!(
                "the environment has dimension {} but the federation's contexts have {}",
                env.dim(),
                settings.dim
            )));
        }
        Ok(Self {
            agent: settings.linucb()?,
            threshold: settings.threshold,
            last: None,
            costs: BTreeMap::new(),
            played: 0,
            synced: 0,
            trace: BanditTrace::default(),
        })
    }

    /// The answer to `task` (`None` for Wait and Done), deciding it at most once: a task
    /// seen before is answered as before.
    pub(crate) fn answer(
        &mut self,
        task: &BanditTask,
        env: &mut dyn Environment,
        costs: &mut dyn CostModel,
    ) -> Result<Option<BanditAnswer>, ClientError> {
        let key = match task {
            BanditTask::Play { step, .. } => Key::Play(*step),
            BanditTask::Report { round } => Key::Report(*round),
            BanditTask::Upload { round } => Key::Upload(*round),
            BanditTask::Sync(s) => Key::Synced(s.round),
            BanditTask::Wait { .. } | BanditTask::Done { .. } => return Ok(None),
        };
        if let Some((k, answer)) = &self.last
            && *k == key
        {
            return Ok(Some(answer.clone()));
        }
        let answer = match task {
            BanditTask::Play { step, t_last } => self.play(*step, *t_last, env)?,
            BanditTask::Report { round } => {
                let round = *round;
                let cost = match self.costs.get(&round) {
                    Some(c) => *c,
                    None => {
                        let c = costs.cost(round);
                        if !(c.reported.is_finite() && c.reported >= 0.0 && c.true_cost.is_finite())
                        {
                            return Err(ClientError::InvalidInput(format!(
                                "the cost model priced round {round} at {c:?}: both costs must be \
                                 finite and the reported one >= 0"
                            )));
                        }
                        self.costs.insert(round, c);
                        c
                    }
                };
                BanditAnswer::Report {
                    round,
                    cost: cost.reported,
                    gram_update: self.agent.pending_gram().to_vec(),
                }
            }
            BanditTask::Upload { round } => BanditAnswer::Upload {
                round: *round,
                b_update: self.agent.pending_b().to_vec(),
            },
            BanditTask::Sync(s) => self.sync(s)?,
            BanditTask::Wait { .. } | BanditTask::Done { .. } => return Ok(None),
        };
        self.last = Some((key, answer.clone()));
        Ok(Some(answer))
    }

    /// Plays step `step`: arms, LinUCB's choice, the reward, the update and the trigger.
    fn play(
        &mut self,
        step: u64,
        t_last: u64,
        env: &mut dyn Environment,
    ) -> Result<BanditAnswer, ClientError> {
        if step <= self.played {
            return Err(ClientError::Protocol(format!(
                "asked to play step {step}, but this client already played step {}",
                self.played
            )));
        }
        let local = |e: fedval_core::incentive::IncentiveError| {
            ClientError::InvalidInput(format!("step {step}: the environment: {e}"))
        };
        let arms = env.arms(step);
        let arm = self.agent.choose(&arms).map_err(local)?;
        let feedback = env.play(step, arm);
        let x = arms
            .get(arm)
            .ok_or_else(|| ClientError::InvalidInput(format!("step {step}: arm {arm} vanished")))?;
        self.agent.observe(x, feedback.reward).map_err(local)?;
        let (t, t0) = (wire_usize(step)?, wire_usize(t_last)?);
        let statistic = self
            .agent
            .trigger_statistic(t, t0)
            .map_err(|e| ClientError::Trainer(Box::new(e)))?;
        let triggered = statistic > self.threshold;
        self.played = step;
        self.trace.steps.push(StepLog {
            step,
            reward: feedback.reward,
            regret: feedback.regret,
            triggered,
            skipped: false,
        });
        debug!(
            step,
            reward = feedback.reward,
            statistic,
            triggered,
            "step played"
        );
        Ok(BanditAnswer::Step {
            step,
            reward: feedback.reward,
            trigger_statistic: statistic,
            triggered,
        })
    }

    /// Applies the aggregate of a round not yet downloaded (a repeat is only acknowledged).
    fn sync(&mut self, s: &BanditSync) -> Result<BanditAnswer, ClientError> {
        if s.round > self.synced {
            self.agent.download(&s.v_g, &s.b_g).map_err(|e| {
                ClientError::Protocol(format!("the aggregate of round {}: {e}", s.round))
            })?;
            if s.selected {
                self.agent.clear_pending();
            }
            let cost = self.costs.get(&s.round).copied();
            self.trace.rounds.push(RoundLog {
                round: s.round,
                true_cost: cost.map_or(0.0, |c| c.true_cost),
                reported_cost: cost.map_or(0.0, |c| c.reported),
                selected: s.selected,
                payment: s.payment,
            });
            self.synced = s.round;
            // Rounds before this one will never be asked for again.
            self.costs = self.costs.split_off(&s.round);
            info!(
                round = s.round,
                selected = s.selected,
                payment = s.payment,
                "aggregate downloaded"
            );
        }
        Ok(BanditAnswer::Synced { round: s.round })
    }

    /// Takes the server's FAILED_PRECONDITION refusal of `answer`. A step the server had
    /// skipped is marked skipped in the trace and its cached answer dropped (the server
    /// never hands that step out again; the agent keeps its observation). Any other refusal
    /// changes nothing: the next task says what to do.
    pub(crate) fn refused(&mut self, answer: &BanditAnswer, reason: &str) {
        let BanditAnswer::Step { step, .. } = answer else {
            return;
        };
        if !reason.contains(&format!("step {step} {SKIPPED_REFUSAL}")) {
            return;
        }
        if let Some(log) = self.trace.steps.iter_mut().rev().find(|l| l.step == *step) {
            log.skipped = true;
        }
        if matches!(self.last, Some((Key::Play(t), _)) if t == *step) {
            self.last = None;
        }
        info!(step, %reason, "step skipped by the server; its observation stays local");
    }

    /// The trace so far.
    pub(crate) fn into_trace(self) -> BanditTrace {
        self.trace
    }
}

/// A step number as the core agent's `usize`.
fn wire_usize(n: u64) -> Result<usize, ClientError> {
    usize::try_from(n)
        .map_err(|_| ClientError::Protocol(format!("step {n} does not fit this platform")))
}

/// Runs the bandit task loop for `client` on its environment `env`, pricing rounds with
/// `costs`, until the federation is done; returns the trace of its steps and rounds, or the
/// first error that is neither retryable (within `opts.max_retries`) nor a refused answer.
pub async fn run_bandit_node(
    client: &mut BanditClient,
    env: &mut dyn Environment,
    costs: &mut dyn CostModel,
    opts: &RunOptions,
) -> Result<BanditTrace, ClientError> {
    let mut node = Node::new(client.agent(), env)?;
    loop {
        let task = retry(opts, "pull task", || {
            let mut c = client.clone();
            async move { c.pull_task().await }
        })
        .await?;
        match &task {
            BanditTask::Wait {
                retry_after,
                reason,
            } => {
                wait(opts, *retry_after, reason.clone()).await;
                continue;
            }
            BanditTask::Done { reason } => {
                info!(%reason, "federation done");
                return Ok(node.into_trace());
            }
            _ => {}
        }
        let Some(answer) = node.answer(&task, env, costs)? else {
            continue;
        };
        let sent = retry(opts, "bandit answer", || {
            let mut c = client.clone();
            let answer = &answer;
            async move { c.submit(answer).await }
        })
        .await;
        match sent {
            Ok(()) => {}
            Err(ClientError::FailedPrecondition(reason)) => {
                // The protocol moved on (a step skipped, a round closed, the run stopped):
                // the next task says what to do.
                info!(?task, %reason, "answer refused; moving on");
                node.refused(&answer, &reason);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use fedval_core::incentive::environment::Feedback;

    use super::*;

    /// Two fixed arms; counts every call so re-plays show.
    struct Counting {
        arms_calls: u64,
        plays: u64,
    }

    impl Environment for Counting {
        fn dim(&self) -> usize {
            2
        }
        fn arms(&mut self, _step: u64) -> Vec<Vec<f64>> {
            self.arms_calls += 1;
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        }
        fn play(&mut self, step: u64, arm: usize) -> Feedback {
            self.plays += 1;
            Feedback {
                reward: step as f64 + arm as f64,
                regret: Some(0.5),
            }
        }
    }

    /// Costs 1, 2, 3, ... by call, reported doubled.
    struct Counter(f64);

    impl CostModel for Counter {
        fn cost(&mut self, _round: u64) -> RoundCost {
            self.0 += 1.0;
            RoundCost {
                true_cost: self.0,
                reported: 2.0 * self.0,
            }
        }
    }

    fn settings() -> BanditAgentSettings {
        BanditAgentSettings {
            dim: 2,
            lambda: 1.0,
            alpha: 0.0,
            threshold: 0.1,
            horizon: 10,
        }
    }

    #[test]
    fn every_answer_is_decided_once() {
        let mut env = Counting {
            arms_calls: 0,
            plays: 0,
        };
        let mut costs = Counter(0.0);
        let mut node = Node::new(&settings(), &env).unwrap();
        let play = BanditTask::Play { step: 3, t_last: 0 };
        let first = node.answer(&play, &mut env, &mut costs).unwrap();
        let again = node.answer(&play, &mut env, &mut costs).unwrap();
        assert_eq!(first, again, "a repeated play task is answered as before");
        assert_eq!((env.arms_calls, env.plays), (1, 1), "played once");
        let Some(BanditAnswer::Step {
            step: 3,
            reward,
            triggered: true,
            ..
        }) = first
        else {
            panic!("unexpected {first:?}");
        };
        // alpha = 0 and theta = 0: ties go to the first arm.
        assert_eq!(reward, 3.0);

        let report = BanditTask::Report { round: 1 };
        let r1 = node.answer(&report, &mut env, &mut costs).unwrap();
        // Another task in between: the round's cost is still drawn once.
        node.answer(&BanditTask::Upload { round: 1 }, &mut env, &mut costs)
            .unwrap();
        let r2 = node.answer(&report, &mut env, &mut costs).unwrap();
        assert_eq!(r1, r2);
        assert_eq!(
            r1,
            Some(BanditAnswer::Report {
                round: 1,
                cost: 2.0,
                gram_update: vec![1.0, 0.0, 0.0, 0.0],
            })
        );
        assert!(matches!(
            node.answer(
                &BanditTask::Play { step: 2, t_last: 0 },
                &mut env,
                &mut costs
            ),
            Err(ClientError::Protocol(_))
        ));

        let sync = BanditTask::Sync(BanditSync {
            round: 1,
            v_g: vec![1.0, 0.0, 0.0, 0.0],
            b_g: vec![3.0, 0.0],
            selected: true,
            payment: 2.5,
        });
        for _ in 0..2 {
            assert_eq!(
                node.answer(&sync, &mut env, &mut costs).unwrap(),
                Some(BanditAnswer::Synced { round: 1 })
            );
            // Not the last answer any more: a repeat after another task is acknowledged
            // without being applied twice.
            node.answer(&BanditTask::Upload { round: 1 }, &mut env, &mut costs)
                .unwrap();
        }
        assert_eq!(
            node.agent.pending_gram(),
            &[0.0; 4],
            "cleared once selected"
        );
        let theta = node.agent.theta().unwrap();
        // V = I + e1 e1^T and b = 3 e1 (through a Cholesky solve).
        assert!(
            (theta[0] - 1.5).abs() < 1e-12 && theta[1] == 0.0,
            "{theta:?}"
        );
        let trace = node.into_trace();
        assert_eq!(
            trace.rounds,
            vec![RoundLog {
                round: 1,
                true_cost: 1.0,
                reported_cost: 2.0,
                selected: true,
                payment: 2.5,
            }]
        );
        assert_eq!(
            trace.steps,
            vec![StepLog {
                step: 3,
                reward: 3.0,
                regret: Some(0.5),
                triggered: true,
                skipped: false,
            }]
        );
    }

    /// A step answered after the server skipped it is refused with FAILED_PRECONDITION:
    /// the node drops the step, marks it skipped, keeps the observation and plays its next
    /// step from there.
    #[test]
    fn a_step_refused_as_skipped_is_dropped_and_the_next_task_is_played() {
        let mut env = Counting {
            arms_calls: 0,
            plays: 0,
        };
        let mut costs = Counter(0.0);
        let mut node = Node::new(&settings(), &env).unwrap();
        let play = BanditTask::Play { step: 2, t_last: 0 };
        let answer = node.answer(&play, &mut env, &mut costs).unwrap().unwrap();
        // Another refusal of the step (not a skip) changes nothing.
        node.refused(&answer, "step 2 is not open for play; pull a task first");
        assert!(node.last.is_some() && !node.trace.steps[0].skipped);
        node.refused(
            &answer,
            "step 2 was skipped after 500 ms without an answer; pull the next task",
        );
        assert!(node.last.is_none(), "the cached step is dropped");
        assert_eq!(node.agent.pending_gram(), &[1.0, 0.0, 0.0, 0.0], "kept");
        // The next task (the node's next step) is played on the agent that kept step 2.
        let next = node
            .answer(
                &BanditTask::Play { step: 5, t_last: 0 },
                &mut env,
                &mut costs,
            )
            .unwrap();
        assert!(
            matches!(next, Some(BanditAnswer::Step { step: 5, .. })),
            "{next:?}"
        );
        assert_eq!(node.agent.pending_gram(), &[2.0, 0.0, 0.0, 0.0]);
        assert_eq!((env.arms_calls, env.plays), (2, 2));
        // A report covers both observations, the skipped one included.
        let report = node
            .answer(&BanditTask::Report { round: 1 }, &mut env, &mut costs)
            .unwrap();
        assert!(
            matches!(&report, Some(BanditAnswer::Report { gram_update, .. }) if gram_update == &[2.0, 0.0, 0.0, 0.0]),
            "{report:?}"
        );
        let steps: Vec<(u64, bool)> = node
            .into_trace()
            .steps
            .iter()
            .map(|l| (l.step, l.skipped))
            .collect();
        assert_eq!(steps, [(2, true), (5, false)]);
    }

    #[test]
    fn a_mismatched_environment_or_cost_is_refused() {
        struct Wide;
        impl Environment for Wide {
            fn dim(&self) -> usize {
                3
            }
            fn arms(&mut self, _: u64) -> Vec<Vec<f64>> {
                Vec::new()
            }
            fn play(&mut self, _: u64, _: usize) -> Feedback {
                Feedback {
                    reward: 0.0,
                    regret: None,
                }
            }
        }
        assert!(matches!(
            Node::new(&settings(), &Wide),
            Err(ClientError::InvalidInput(m)) if m.contains("dimension 3")
        ));
        let mut env = Counting {
            arms_calls: 0,
            plays: 0,
        };
        let mut node = Node::new(&settings(), &env).unwrap();
        let mut nan = FixedCost {
            true_cost: f64::NAN,
            report_factor: 1.0,
        };
        let err = node
            .answer(&BanditTask::Report { round: 1 }, &mut env, &mut nan)
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidInput(_)), "{err:?}");
    }

    /// Steps `dim = 2` contexts for the loop test: two fixed arms, reward `0.5 + arm / 4`;
    /// the first `play` blocks until the server's step log records the step as skipped.
    struct Stalling {
        store: fedval_server::store::Store,
        stalled: Option<u64>,
    }

    impl Environment for Stalling {
        fn dim(&self) -> usize {
            2
        }
        fn arms(&mut self, _step: u64) -> Vec<Vec<f64>> {
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        }
        fn play(&mut self, step: u64, arm: usize) -> Feedback {
            if self.stalled.is_none() {
                self.stalled = Some(step);
                // Blocks this node (not the server) until its step was skipped.
                for _ in 0..6000 {
                    let logged = self.store.get_bandit_step("stall", step).expect("read");
                    if logged.is_some_and(|s| s.skipped) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            Feedback {
                reward: 0.5 + arm as f64 / 4.0,
                regret: Some(0.0),
            }
        }
    }

    /// Two nodes against the real server (play deadline 300 ms); one blocks in its first
    /// step until the server skipped it. Its late answer is refused with
    /// FAILED_PRECONDITION: the node marks the step skipped, pulls its next task and both
    /// nodes reach Done, every other step played.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_node_moves_on_after_its_step_was_skipped() {
        use fedval_proto::v1 as pb;
        use fedval_server::store::Store;
        use fedval_server::{RunningServer, ServerSettings};

        const HORIZON: u64 = 16;
        let store = Store::memory();
        let config = pb::FederationConfig {
            id: "stall".into(),
            enrollment_secret: "s".into(),
            min_clients: 2,
            round_timeout_ms: 300,
            seed: 4,
            bandit: Some(pb::BanditConfig {
                dim: 2,
                horizon: HORIZON,
                threshold: Some(1.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut settings = ServerSettings::new(store.clone(), "admin");
        settings.federations = vec![config.try_into().expect("valid")];
        let server = RunningServer::start(([127, 0, 0, 1], 0).into(), settings)
            .await
            .expect("server");
        let url = server.url();
        let mut nodes = Vec::new();
        for i in 0..2 {
            let channel = crate::connect(&url).await.expect("connect");
            let mut client = BanditClient::enroll(channel, "stall", "s", &format!("n{i}"))
                .await
                .expect("enrolled");
            let store = store.clone();
            nodes.push(tokio::spawn(async move {
                let mut costs = FixedCost {
                    true_cost: 1.0,
                    report_factor: 1.0,
                };
                let opts = RunOptions::default();
                if i == 0 {
                    let mut env = Stalling {
                        store,
                        stalled: None,
                    };
                    let trace = run_bandit_node(&mut client, &mut env, &mut costs, &opts).await;
                    (trace, env.stalled)
                } else {
                    let mut env = Counting {
                        arms_calls: 0,
                        plays: 0,
                    };
                    let trace = run_bandit_node(&mut client, &mut env, &mut costs, &opts).await;
                    (trace, None)
                }
            }));
        }
        let mut traces = Vec::new();
        let mut stalled = None;
        for node in nodes {
            let (trace, s) = tokio::time::timeout(std::time::Duration::from_secs(120), node)
                .await
                .expect("the nodes finish")
                .expect("node task");
            traces.push(trace.expect("the node reached Done"));
            stalled = stalled.or(s);
        }
        let stalled = stalled.expect("the stalling node had a step");
        let skipped: Vec<u64> = traces[0]
            .steps
            .iter()
            .filter(|l| l.skipped)
            .map(|l| l.step)
            .collect();
        assert_eq!(skipped, [stalled], "only the stalled step was skipped");
        assert!(traces[1].steps.iter().all(|l| !l.skipped));
        let played = traces.iter().flat_map(|t| &t.steps).filter(|l| !l.skipped);
        assert_eq!(
            played.count() as u64,
            HORIZON - 1,
            "every other step played"
        );
        for t in 1..=HORIZON {
            let logged = store
                .get_bandit_step("stall", t)
                .expect("read")
                .expect("logged");
            assert_eq!(logged.skipped, t == stalled, "step {t}");
        }
        drop(server);
    }
}
