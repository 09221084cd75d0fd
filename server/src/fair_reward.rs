//! Closing a round of a federation with the fair yet asymptotically equal reward policy
//! (Lin et al., ICML 2023; ALGORITHMS.md section 5): reward clients by their contribution
//! now, yet let every client converge to the same model eventually.
//!
//! The policy sits on top of a normal round; per round `t`:
//!
//! - **Training and aggregation.** Every client trains from its own model (served by
//!   `Federation::model_for`) and uploads its delta. The deltas are aggregated with the
//!   federation's configured `aggregator` into the global model exactly like a plain
//!   round (`round_close::close_round`: `theta_{t+1} = theta_t + aggregate`, same
//!   FedAvg fallback, same metrics and validation scores); the valuation values that
//!   round as usual.
//! - **Exploration** (while `FairRewardState::is_exploring`): the round's contribution
//!   estimates come from `round_contributions` on the uploaded deltas (the data-size
//!   weights are the uploads' `num_samples`, the same weights the aggregator uses; cosine
//!   similarity ignores the deltas' sign and scale), then `record_round` folds them into
//!   the running mean `psi` and runs the stationarity test. Every participant receives
//!   `theta_{t+1}` as its own model.
//! - **Exploitation** (once the test's p-value exceeded `significance`): `psi` is frozen,
//!   `p = selection_probabilities(psi, beta)` over every enrolled client, and
//!   `select_recipients` draws `floor(ratio m)` of the round's `m` participants with
//!   probabilities `p` restricted to them (renormalised). With full participation this is
//!   the paper's `floor(ratio n)` draw. Only those recipients receive `theta_{t+1}`; every
//!   other client keeps its current own model (stored again under the new version).
//! - **A client that missed the round** (not selected, or a straggler) is never a
//!   recipient and keeps its own model. While exploring, its slot of the round's estimate
//!   is 0 (its gradient enters `round_contributions` as zeros with data size 0, so it
//!   changes no other client's estimate either) and the running mean records that 0: the
//!   core state needs one estimate per client and round, and sitting out contributes
//!   nothing.
//! - **Randomness.** The coalition sampling (exploration) and the recipient draw
//!   (exploitation) use a ChaCha8 stream derived from `(fair_reward.seed or the
//!   federation's seed, round)` only ([`round_rng`]), so a round re-closed after a restart
//!   (from its durable updates and the committed state) makes the same draw.
//! - **Membership** is fixed by round 1: `FairRewardState` is sized by the enrolled
//!   clients when the first round closes and cannot grow, so enrollment is refused once
//!   round 1 has opened (as under RFFL), and the window must exceed the number of clients.
//!
//! The state is committed atomically with each round (`FederationRecord::fair_reward`),
//! and every `RoundRecord` carries a [`FairRewardRound`]: the phase, the test's p-value,
//! and per client `psi`, whether it received the new model, and (exploiting) its
//! selection probability.

use fedval_core::data::Dataset;
use fedval_core::reputation::{
    FairRewardState, ReputationError, round_contributions, select_recipients,
    selection_probabilities,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{FairRewardSettings, FederationConfig};
use crate::error::{ServiceError, ServiceResult};
use crate::federation::AcceptedUpdate;
use crate::round_close::{Aggregated, close_round};
use crate::store::{ClientFairReward, FairRewardRound};

/// The inputs of a fair-reward round that the federation holds.
#[derive(Debug)]
pub struct FairRewardInputs {
    /// Every enrolled client, in enrollment order (the policy's client indices).
    pub clients: Vec<String>,
    /// The state after the previous round (`None` before the first round: it is then
    /// created for `clients`).
    pub state: Option<FairRewardState>,
}

/// What the policy decided for one round, without the model (see [`policy_step`]).
#[derive(Debug)]
pub struct PolicyOutcome {
    /// Clients whose own model becomes the round's new global model, in enrollment order.
    pub recipients: Vec<String>,
    /// The state after this round.
    pub state: FairRewardState,
    /// What the round record keeps.
    pub record: FairRewardRound,
}

/// What closing a fair-reward round produced.
#[derive(Debug)]
pub struct FairRewardClosed {
    /// Global parameters and metrics, exactly as [`close_round`] computes them.
    pub aggregated: Aggregated,
    /// The policy's decision.
    pub outcome: PolicyOutcome,
}

/// The RNG of round `round`: stream `round` of ChaCha8 seeded with `seed`, so each
/// round's draws depend on nothing but the seed and the round number.
pub fn round_rng(seed: u64, round: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(round);
    rng
}

/// Closes round `round` of a fair-reward federation: aggregates like a plain round, then
/// applies the policy (see the module docs).
pub fn close_fair_reward_round(
    config: &FederationConfig,
    settings: &FairRewardSettings,
    validation: Option<&Dataset>,
    global: &[f32],
    inputs: FairRewardInputs,
    updates: &[AcceptedUpdate],
    round: u64,
) -> ServiceResult<FairRewardClosed> {
    let aggregated = close_round(config, validation, global, updates, round)?;
    let seed = settings.seed.unwrap_or(config.seed);
    let outcome = policy_step(settings, seed, inputs, updates, global.len(), round)?;
    Ok(FairRewardClosed {
        aggregated,
        outcome,
    })
}

/// The policy's step for round `round` on its updates (each `dim` values long): records
/// contributions while exploring, or draws the recipients once exploiting.
pub fn policy_step(
    settings: &FairRewardSettings,
    seed: u64,
    inputs: FairRewardInputs,
    updates: &[AcceptedUpdate],
    dim: usize,
    round: u64,
) -> ServiceResult<PolicyOutcome> {
    let internal = |e: ReputationError| {
        ServiceError::Internal(format!("round {round}: fair reward step: {e}"))
    };
    let n = inputs.clients.len();
    let mut state = match inputs.state {
        Some(s) => s,
        None => FairRewardState::new(n).map_err(internal)?,
    };
    if state.psi.len() != n {
        return Err(ServiceError::Internal(format!(
            "round {round}: the fair reward state has {} clients but {n} are enrolled",
            state.psi.len()
        )));
    }
    let cfg = settings.to_core(n);
    let mut slots: Vec<Option<&AcceptedUpdate>> = vec![None; n];
    for u in updates {
        let slot = inputs
            .clients
            .iter()
            .position(|id| *id == u.record.client_id)
            .and_then(|i| slots.get_mut(i))
            .ok_or_else(|| {
                ServiceError::Internal(format!(
                    "round {round}: update from unknown client {}",
                    u.record.client_id
                ))
            })?;
        if u.delta.len() != dim {
            return Err(ServiceError::Internal(format!(
                "round {round}: the update of {} has {} values but the model has {dim}",
                u.record.client_id,
                u.delta.len()
            )));
        }
        *slot = Some(u);
    }
    let mut rng = round_rng(seed, round);
    let exploring = state.is_exploring();
    let (received, probabilities, p_value) = if exploring {
        let zeros = vec![0.0f32; dim];
        let gradients: Vec<&[f32]> = slots
            .iter()
            .map(|s| s.map_or(zeros.as_slice(), |u| u.delta.as_slice()))
            .collect();
        let sizes: Vec<u64> = slots
            .iter()
            .map(|s| s.map_or(0, |u| u.record.num_samples))
            .collect();
        let psi_round = round_contributions(&gradients, &sizes, &mut rng).map_err(internal)?;
        let test = state.record_round(&cfg, &psi_round).map_err(internal)?;
        let received: Vec<bool> = slots.iter().map(Option::is_some).collect();
        (received, None, test.map(|t| t.p_value))
    } else {
        let p = selection_probabilities(&state.psi, cfg.beta).map_err(internal)?;
        let participants: Vec<usize> = (0..n)
            .filter(|&i| slots.get(i).is_some_and(Option::is_some))
            .collect();
        let restricted: Vec<f64> = participants
            .iter()
            .map(|&i| p.get(i).copied().unwrap_or(0.0))
            .collect();
        let drawn = select_recipients(&restricted, cfg.ratio, &mut rng).map_err(internal)?;
        let mut received = vec![false; n];
        for k in drawn {
            if let Some(r) = participants.get(k).and_then(|&i| received.get_mut(i)) {
                *r = true;
            }
        }
        (received, Some(p), None)
    };
    let clients = inputs
        .clients
        .iter()
        .enumerate()
        .map(|(i, client_id)| ClientFairReward {
            client_id: client_id.clone(),
            psi: state.psi.get(i).copied().unwrap_or(0.0),
            received_model: received.get(i).copied().unwrap_or(false),
            probability: probabilities.as_ref().and_then(|p| p.get(i).copied()),
        })
        .collect::<Vec<_>>();
    let recipients = clients
        .iter()
        .filter(|c| c.received_model)
        .map(|c| c.client_id.clone())
        .collect();
    Ok(PolicyOutcome {
        recipients,
        state,
        record: FairRewardRound {
            exploring,
            p_value,
            clients,
        },
    })
}

#[cfg(test)]
mod tests {
    use fedval_core::reputation::Phase;

    use super::*;
    use crate::federation::tests::config;
    use crate::round_close::tests::update;

    /// `config(1)` with the policy on (paper defaults) and `seed`.
    fn fair_config() -> (FederationConfig, FairRewardSettings) {
        let settings = FairRewardSettings {
            window: Some(11),
            seed: Some(5),
            ..FairRewardSettings::default()
        };
        let cfg = FederationConfig {
            fair_reward: Some(settings),
            ..config(1)
        };
        cfg.validate().expect("valid");
        (cfg, settings)
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exploration_records_psi_and_every_participant_receives() {
        let (cfg, settings) = fair_config();
        let global = vec![0.0f32; 9];
        // a and b agree, c opposes them; d sits the round out.
        let updates = [
            update("a", vec![1.0; 9]),
            update("b", vec![2.0; 9]),
            update("c", vec![-1.0; 9]),
        ];
        let inputs = FairRewardInputs {
            clients: ids(&["a", "b", "c", "d"]),
            state: None,
        };
        let closed = close_fair_reward_round(&cfg, &settings, None, &global, inputs, &updates, 1)
            .expect("closes");
        // FedAvg as in a plain round: (1 + 2 - 1) / 3.
        let plain = close_round(&cfg, None, &global, &updates, 1).expect("closes");
        assert_eq!(closed.aggregated.params, plain.params);
        assert_eq!(closed.aggregated.params, vec![2.0 / 3.0; 9]);
        let out = closed.outcome;
        assert!(out.record.exploring);
        assert_eq!(out.record.p_value, None);
        assert_eq!(out.recipients, ids(&["a", "b", "c"]));
        assert_eq!(out.state.rounds, 1);
        // The recorded psi is the state's running mean after one round: this round's
        // estimates, which the core computes from the same seeded stream.
        let d = [1.0f32; 9];
        let (two, minus, zeros) = ([2.0f32; 9], [-1.0f32; 9], [0.0f32; 9]);
        let expected = round_contributions(
            &[&d, &two, &minus, &zeros],
            &[1, 1, 1, 0],
            &mut round_rng(5, 1),
        )
        .expect("estimates");
        let psi: Vec<f64> = out.record.clients.iter().map(|c| c.psi).collect();
        assert_eq!(psi, expected);
        assert_eq!(out.state.psi, expected);
        // The absent client's estimate is exactly 0; the opposing one is the lowest.
        assert_eq!(psi[3], 0.0);
        assert!(psi[2] < 0.0 && psi[0] > 0.0 && psi[1] > 0.0, "{psi:?}");
        let received: Vec<bool> = out
            .record
            .clients
            .iter()
            .map(|c| c.received_model)
            .collect();
        assert_eq!(received, vec![true, true, true, false]);
        assert!(out.record.clients.iter().all(|c| c.probability.is_none()));
    }

    #[test]
    fn exploitation_draws_floor_ratio_n_recipients_by_psi() {
        let (_, settings) = fair_config();
        let names = ids(&["a", "b", "c", "d", "e"]);
        let mut state = FairRewardState::new(5).expect("state");
        state.psi = vec![0.3, 0.0, 0.1, -0.2, 0.05];
        state.rounds = 10;
        state.phase = Phase::Exploiting { after_rounds: 10 };
        let updates: Vec<AcceptedUpdate> = names.iter().map(|c| update(c, vec![0.5; 9])).collect();
        let p = selection_probabilities(&state.psi, 150.0).expect("p");
        for round in 11..31 {
            let step = |state: &FairRewardState| {
                policy_step(
                    &settings,
                    5,
                    FairRewardInputs {
                        clients: names.clone(),
                        state: Some(state.clone()),
                    },
                    &updates,
                    9,
                    round,
                )
                .expect("step")
            };
            let out = step(&state);
            // floor(0.4 * 5) = 2 recipients, the same for a re-closed round. beta psi
            // is 45 for a, 15 for c, 7.5 for e: a, then c, are (almost surely) drawn.
            assert_eq!(out.recipients, ids(&["a", "c"]), "round {round}");
            assert_eq!(step(&state).recipients, out.recipients);
            assert!(!out.record.exploring);
            assert_eq!(out.state, state, "psi is frozen while exploiting");
            let probs: Vec<f64> = out
                .record
                .clients
                .iter()
                .map(|c| c.probability.expect("exploiting"))
                .collect();
            assert_eq!(probs, p);
        }
    }

    #[test]
    fn absent_clients_are_never_recipients_while_exploiting() {
        let (_, settings) = fair_config();
        let names = ids(&["a", "b", "c", "d", "e"]);
        let mut state = FairRewardState::new(5).expect("state");
        state.psi = vec![0.3, 0.2, 0.1, 0.0, 0.0];
        state.phase = Phase::Exploiting { after_rounds: 4 };
        // The two highest-psi clients miss the round: floor(0.4 * 3) = 1 recipient among
        // c, d, e.
        let updates: Vec<AcceptedUpdate> = ["c", "d", "e"]
            .iter()
            .map(|c| update(c, vec![0.5; 9]))
            .collect();
        let out = policy_step(
            &settings,
            1,
            FairRewardInputs {
                clients: names,
                state: Some(state),
            },
            &updates,
            9,
            7,
        )
        .expect("step");
        assert_eq!(out.recipients, ids(&["c"]), "psi 0.1 beats 0.0 by e^15");
        assert!(out.record.clients[..2].iter().all(|c| !c.received_model));
    }

    #[test]
    fn inconsistent_inputs_are_errors_not_panics() {
        let (_, settings) = fair_config();
        let step = |clients: &[&str], state, updates: &[AcceptedUpdate]| {
            policy_step(
                &settings,
                0,
                FairRewardInputs {
                    clients: ids(clients),
                    state,
                },
                updates,
                9,
                3,
            )
            .map(|o| o.recipients)
        };
        let err = step(&["a"], None, &[update("x", vec![0.0; 9])]).expect_err("unknown");
        assert!(err.to_string().contains("unknown client x"), "{err}");
        let err = step(&["a"], None, &[update("a", vec![0.0; 8])]).expect_err("length");
        assert!(err.to_string().contains("has 8 values"), "{err}");
        let two = FairRewardState::new(2).expect("state");
        let err = step(&["a"], Some(two), &[]).expect_err("size");
        assert!(err.to_string().contains("has 2 clients but 1"), "{err}");
        let err = step(&[], None, &[]).expect_err("no clients");
        assert!(err.to_string().contains("at least one client"), "{err}");
    }
}
