//! RFFL (Xu & Lyu 2021): reputation-weighted aggregation that removes clients whose
//! updates disagree with the federation, without a validation set.
//!
//! Per round `t`, with `R` the clients not yet removed ([`RfflState::step`]):
//! 1. clients clip their update to L2 norm `gamma` ([`clip`]);
//! 2. `u = sum_i w_i d_i` with the weights of round `t - 1`
//!    ([`RfflState::aggregation_weights`]: data-size shares in round 0, the normalised
//!    reputations afterwards, 0 for removed clients);
//! 3. `phi_i = cos(d_i, u)`; `r_i <- alpha r_i + (1 - alpha) phi_i` (`r` starts at 0);
//!    `r_i = 0` for `i` not in `R`; `r <- r / sum r`;
//! 4. from round `warm_up_rounds` on: `beta_t = coefficient / |R|` (`|R|` before the
//!    removal pass); every `i` in `R` with `r_i < beta_t` is removed (`r_i <- 0`);
//!    renormalise;
//! 5. `q_i = r_i / max_j r_j`: the share of the aggregate client `i` downloads
//!    ([`crate::reputation::sparsify`]).
//!
//! Choices where the paper is silent (all documented on [`RfflState::step`]): negative
//! moving averages are clamped to 0 before normalisation; if every reputation is 0 they
//! become uniform over `R`; clients absent from a round keep their reputation and are
//! not judged that round.

use serde::{Deserialize, Serialize};

use super::{ReputationError, common_length, cosine};
use crate::aggregate::clip_to_norm;

/// Clips `update` in place to L2 norm at most `gamma` (`d <- gamma d / |d|` if
/// `|d| > gamma`), the client-side step of RFFL that bounds every client's influence.
///
/// A NaN `gamma` or an update whose norm is not finite leaves the update unchanged
/// ([`RfflState::step`] rejects non-finite updates); a negative `gamma` acts as 0.
pub fn clip(update: &mut [f32], gamma: f32) {
    if !gamma.is_nan() {
        clip_to_norm(update, f64::from(gamma.max(0.0)));
    }
}

/// RFFL settings; check them with [`RfflConfig::validate`] (done by every
/// [`RfflState::step`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RfflConfig {
    /// Moving-average weight of the old reputation, in `[0, 1)` (paper: 0.95).
    pub alpha: f64,
    /// Removal threshold coefficient `c` in `beta_t = c / |R|`, in `[0, 1)` (paper: 1/3).
    pub threshold_coefficient: f64,
    /// Rounds before removals start (paper: 10); round `t` removes iff
    /// `t >= warm_up_rounds`.
    pub warm_up_rounds: u64,
    /// Clipping norm `Gamma`, finite and > 0 (paper: 0.5 MNIST, 0.15 CIFAR-10, 1 text).
    pub gamma: f32,
}

impl RfflConfig {
    /// The paper's defaults (alpha 0.95, coefficient 1/3, 10 warm-up rounds) with the
    /// data-set-specific clipping norm `gamma`.
    pub fn with_gamma(gamma: f32) -> Self {
        Self {
            alpha: 0.95,
            threshold_coefficient: 1.0 / 3.0,
            warm_up_rounds: 10,
            gamma,
        }
    }

    /// Rejects out-of-range settings. The coefficient must stay below 1 so the removal
    /// pass can never remove every remaining client (their reputations sum to 1, so the
    /// largest is at least `1 / |R|`).
    pub fn validate(&self) -> Result<(), ReputationError> {
        let invalid = |name, value, reason| {
            Err(ReputationError::InvalidConfig {
                name,
                value,
                reason,
            })
        };
        if !(0.0..1.0).contains(&self.alpha) {
            return invalid("alpha", self.alpha, "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.threshold_coefficient) {
            return invalid(
                "threshold coefficient",
                self.threshold_coefficient,
                "must be in [0, 1)",
            );
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return invalid("gamma", f64::from(self.gamma), "must be finite and > 0");
        }
        Ok(())
    }
}

/// The whole RFFL state between rounds: serialisable so the server persists it per round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RfflState {
    /// The next round to run (0 before the first [`RfflState::step`]).
    pub round: u64,
    /// Normalised reputations (sum 1 over remaining clients once a round has run; all 0
    /// before). Removed clients hold 0.
    pub reputations: Vec<f64>,
    /// Round in which each client was removed, `None` while it remains.
    pub removed_at: Vec<Option<u64>>,
    /// Data sizes, which give the aggregation weights of round 0.
    pub data_sizes: Vec<u64>,
}

/// Everything one RFFL round computed, for the server to persist and report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundOutcome {
    /// The round this outcome belongs to.
    pub round: u64,
    /// Aggregate `u = sum_i w_i d_i`.
    pub aggregate: Vec<f32>,
    /// Weights `w` used for `u` (renormalised over the participants).
    pub weights: Vec<f64>,
    /// `phi_i = cos(d_i, u)`; 0 for absent or removed clients.
    pub phi: Vec<f64>,
    /// Reputations before the round.
    pub reputations_before: Vec<f64>,
    /// Reputations after the update, removals and renormalisation.
    pub reputations_after: Vec<f64>,
    /// Clients removed in this round, ascending.
    pub removed_now: Vec<usize>,
    /// Removal threshold `beta_t`; `None` during the warm-up.
    pub threshold: Option<f64>,
    /// Reward fractions `q_i = r_i / max_j r_j` (all 0 if every reputation is 0).
    pub q: Vec<f64>,
}

impl RfflState {
    /// A fresh federation of `data_sizes.len()` clients, none removed, reputations 0.
    pub fn new(data_sizes: &[u64]) -> Result<Self, ReputationError> {
        if data_sizes.is_empty() {
            return Err(ReputationError::NoClients);
        }
        let n = data_sizes.len();
        Ok(Self {
            round: 0,
            reputations: vec![0.0; n],
            removed_at: vec![None; n],
            data_sizes: data_sizes.to_vec(),
        })
    }

    /// Number of clients (remaining or removed).
    pub fn num_clients(&self) -> usize {
        self.reputations.len()
    }

    /// True if client `i` is removed (out-of-range indices count as removed).
    pub fn is_removed(&self, i: usize) -> bool {
        self.removed_at.get(i).is_none_or(Option::is_some)
    }

    /// Aggregation weights of the next round: data-size shares of the remaining clients
    /// in round 0 (uniform if every size is 0), the normalised reputations afterwards;
    /// removed clients weigh 0.
    pub fn aggregation_weights(&self) -> Vec<f64> {
        let raw: Vec<f64> = if self.round == 0 {
            self.data_sizes.iter().map(|&m| m as f64).collect()
        } else {
            self.reputations.clone()
        };
        self.normalise_over(raw, |i| !self.is_removed(i))
    }

    /// `values` restricted to the clients `keep` accepts (others 0) and scaled to sum 1;
    /// uniform over the kept clients if their values sum to 0 (or less).
    fn normalise_over(&self, mut values: Vec<f64>, keep: impl Fn(usize) -> bool) -> Vec<f64> {
        for (i, v) in values.iter_mut().enumerate() {
            if !keep(i) {
                *v = 0.0;
            }
        }
        let total: f64 = values.iter().sum();
        if total > 0.0 {
            values.iter_mut().for_each(|v| *v /= total);
        } else {
            let kept = (0..values.len()).filter(|&i| keep(i)).count();
            for (i, v) in values.iter_mut().enumerate() {
                *v = if keep(i) { 1.0 / kept as f64 } else { 0.0 };
            }
        }
        values
    }

    /// Runs one round on the clipped `updates` (one slot per client; slots of clients
    /// with `participating[i] == false` are ignored and may be empty).
    ///
    /// Edge cases, where the paper (which assumes everyone takes part) is silent:
    /// - the weights of the participants are renormalised to sum 1 (uniform if they are
    ///   all 0, e.g. every reputation is 0);
    /// - a zero-norm update (or a zero aggregate) has `phi = 0`;
    /// - a negative moving average is clamped to 0 before normalisation (the reference
    ///   code clamps to a small floor), so reputations stay a distribution;
    /// - if every remaining reputation is 0 after the update they become uniform over `R`
    ///   (nothing distinguishes the clients);
    /// - an absent client's reputation skips the moving-average step (it keeps its value
    ///   and is renormalised with the others), it still counts in `|R|`, and it is not
    ///   judged for removal in a round it missed;
    /// - a single remaining client has reputation 1 >= `beta_t`, so it is never removed;
    ///   and because the coefficient is below 1 a pass never removes all of `R`.
    ///
    /// Errors: invalid `cfg`, slices not of one entry per client, a removed client marked
    /// as participating, no remaining participant, unequal lengths or non-finite values
    /// among the participants' updates. On error the state is unchanged.
    pub fn step(
        &mut self,
        cfg: &RfflConfig,
        updates: &[&[f32]],
        participating: &[bool],
    ) -> Result<RoundOutcome, ReputationError> {
        cfg.validate()?;
        let n = self.num_clients();
        for (what, got) in [
            ("updates", updates.len()),
            ("participating", participating.len()),
        ] {
            if got != n {
                return Err(ReputationError::ClientCount {
                    what,
                    expected: n,
                    got,
                });
            }
        }
        let round = self.round;
        for (client, &p) in participating.iter().enumerate() {
            if let (true, Some(Some(removed))) = (p, self.removed_at.get(client)) {
                return Err(ReputationError::RemovedClient {
                    client,
                    round: *removed,
                });
            }
        }
        let active = |i: usize| participating.get(i).copied().unwrap_or(false);
        if !(0..n).any(active) {
            return Err(ReputationError::NoParticipants { round });
        }
        let dim = common_length(updates, active)?;

        // 2. Aggregate with the weights of the previous round.
        let weights = self.normalise_over(self.aggregation_weights(), active);
        let mut u = vec![0.0f64; dim];
        for (update, &w) in updates.iter().zip(&weights) {
            if w > 0.0 {
                for (acc, &x) in u.iter_mut().zip(update.iter()) {
                    *acc += w * f64::from(x);
                }
            }
        }

        // 3. Cosines and the moving average.
        let phi: Vec<f64> = (0..n)
            .map(|i| match updates.get(i) {
                Some(update) if active(i) => cosine(update, &u),
                _ => 0.0,
            })
            .collect();
        let before = self.reputations.clone();
        let mut r = before.clone();
        for (i, (ri, &p)) in r.iter_mut().zip(&phi).enumerate() {
            if self.is_removed(i) {
                *ri = 0.0;
            } else if active(i) {
                *ri = (cfg.alpha * *ri + (1.0 - cfg.alpha) * p).max(0.0);
            }
        }
        let mut r = self.normalise_over(r, |i| !self.is_removed(i));

        // 4. Removal after the warm-up.
        let mut removed_now = Vec::new();
        let mut threshold = None;
        if round >= cfg.warm_up_rounds {
            let remaining = (0..n).filter(|&i| !self.is_removed(i)).count();
            let beta = cfg.threshold_coefficient / remaining as f64;
            threshold = Some(beta);
            removed_now = (0..n)
                .filter(|&i| active(i) && r.get(i).is_some_and(|&ri| ri < beta))
                .collect();
            if removed_now.len() == remaining {
                // Unreachable with a coefficient below 1 (max r >= 1/|R|) unless rounding
                // bites; never empty the federation.
                removed_now.clear();
            }
        }
        for &i in &removed_now {
            if let Some(slot) = self.removed_at.get_mut(i) {
                *slot = Some(round);
            }
        }
        if !removed_now.is_empty() {
            r = self.normalise_over(r, |i| !self.is_removed(i));
        }

        // 5. Reward fractions.
        let max = r.iter().copied().fold(0.0f64, f64::max);
        let q = r
            .iter()
            .map(|&ri| if max > 0.0 { ri / max } else { 0.0 })
            .collect();

        self.reputations = r.clone();
        self.round = round + 1;
        Ok(RoundOutcome {
            round,
            aggregate: u.iter().map(|&x| x as f32).collect(),
            weights,
            phi,
            reputations_before: before,
            reputations_after: r,
            removed_now,
            threshold,
            q,
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn cfg(alpha: f64, warm_up_rounds: u64) -> RfflConfig {
        RfflConfig {
            alpha,
            threshold_coefficient: 1.0 / 3.0,
            warm_up_rounds,
            gamma: 1.0,
        }
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn clip_is_exact() {
        let mut d = [3.0f32, 4.0];
        clip(&mut d, 1.0);
        assert_eq!(d, [0.6, 0.8]); // |d| = 5 -> d / 5
        let mut small = [0.3f32, 0.4];
        clip(&mut small, 1.0); // |d| = 0.5 <= 1: unchanged
        assert_eq!(small, [0.3, 0.4]);
        let mut zero = [0.0f32; 3];
        clip(&mut zero, 0.5);
        assert_eq!(zero, [0.0; 3]);
        let mut d = [-6.0f32, 8.0];
        clip(&mut d, 0.5); // |d| = 10 -> d / 20
        assert_eq!(d, [-0.3, 0.4]);
    }

    #[test]
    fn config_validation() {
        assert!(RfflConfig::with_gamma(0.5).validate().is_ok());
        for bad in [
            RfflConfig {
                alpha: 1.0,
                ..cfg(0.5, 1)
            },
            RfflConfig {
                alpha: f64::NAN,
                ..cfg(0.5, 1)
            },
            RfflConfig {
                threshold_coefficient: 1.0,
                ..cfg(0.5, 1)
            },
            RfflConfig {
                threshold_coefficient: -0.1,
                ..cfg(0.5, 1)
            },
            RfflConfig {
                gamma: 0.0,
                ..cfg(0.5, 1)
            },
            RfflConfig {
                gamma: f32::INFINITY,
                ..cfg(0.5, 1)
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    /// Three clients in 2-D, alpha 0.5, coefficient 1/3, warm-up 1, data sizes (1, 1, 2).
    ///
    /// Round 0 (weights = data-size shares (1/4, 1/4, 1/2)):
    ///   d = (1, 0), (0.6, 0.8), (0, -1)
    ///   u = (0.25 + 0.15, 0.2 - 0.5) = (0.4, -0.3), |u| = 0.5
    ///   phi = (0.4 / 0.5, (0.24 - 0.24) / 0.5, 0.3 / 0.5) = (0.8, 0, 0.6)
    ///   r = 0.5 * 0 + 0.5 * phi = (0.4, 0, 0.3); sum 0.7 -> r = (4/7, 0, 3/7)
    ///   warm-up: no threshold, no removal; q = r / (4/7) = (1, 0, 0.75)
    /// Round 1 (weights = r of round 0):
    ///   d = (1, 0), (0.8, 0.6), (0, -1)
    ///   u = (4/7, -3/7), |u| = 5/7
    ///   phi = (0.8, (3.2/7 - 1.8/7) / (5/7) = 0.28, 0.6)
    ///   r = 0.5 * (4/7, 0, 3/7) + 0.5 * (0.8, 0.28, 0.6) = (2/7 + 0.4, 0.14, 3/14 + 0.3)
    ///     = (0.685714.., 0.14, 0.514285..); sum 1.34
    ///   -> r = (0.511727.., 0.104477.., 0.383795..)
    ///   beta_1 = (1/3) / 3 = 1/9 = 0.1111..: client 1 (0.1045 < 1/9) is removed
    ///   renormalise (0.685714.., 0, 0.514285..) / 1.2 = (4/7, 0, 3/7); q = (1, 0, 0.75)
    ///
    /// The inputs 0.6 and 0.8 are not exact in f32 (error ~1e-8), hence the 1e-7 tolerance.
    #[test]
    fn hand_computed_two_rounds() {
        let cfg = cfg(0.5, 1);
        let mut state = RfflState::new(&[1, 1, 2]).unwrap();
        assert_close(&state.aggregation_weights(), &[0.25, 0.25, 0.5], 0.0);
        let all = [true; 3];

        let round0: [&[f32]; 3] = [&[1.0, 0.0], &[0.6, 0.8], &[0.0, -1.0]];
        let out = state.step(&cfg, &round0, &all).unwrap();
        assert_eq!(out.round, 0);
        assert_close(&out.weights, &[0.25, 0.25, 0.5], 0.0);
        assert_close(
            &out.aggregate
                .iter()
                .map(|&x| f64::from(x))
                .collect::<Vec<_>>(),
            &[0.4, -0.3],
            1e-7,
        );
        assert_close(&out.phi, &[0.8, 0.0, 0.6], 1e-7);
        assert_close(&out.reputations_before, &[0.0; 3], 0.0);
        assert_close(&out.reputations_after, &[4.0 / 7.0, 0.0, 3.0 / 7.0], 1e-7);
        assert_eq!(out.threshold, None);
        assert!(out.removed_now.is_empty());
        assert_close(&out.q, &[1.0, 0.0, 0.75], 1e-7);
        assert_eq!(state.round, 1);

        let round1: [&[f32]; 3] = [&[1.0, 0.0], &[0.8, 0.6], &[0.0, -1.0]];
        let out = state.step(&cfg, &round1, &all).unwrap();
        assert_eq!(out.round, 1);
        assert_close(&out.weights, &[4.0 / 7.0, 0.0, 3.0 / 7.0], 1e-7);
        assert_close(
            &out.aggregate
                .iter()
                .map(|&x| f64::from(x))
                .collect::<Vec<_>>(),
            &[4.0 / 7.0, -3.0 / 7.0],
            1e-7,
        );
        assert_close(&out.phi, &[0.8, 0.28, 0.6], 1e-7);
        assert_close(&out.reputations_before, &[4.0 / 7.0, 0.0, 3.0 / 7.0], 1e-7);
        assert_eq!(out.threshold, Some(1.0 / 9.0));
        assert_eq!(out.removed_now, vec![1]);
        assert_close(&out.reputations_after, &[4.0 / 7.0, 0.0, 3.0 / 7.0], 1e-7);
        assert_close(&out.q, &[1.0, 0.0, 0.75], 1e-7);
        assert_eq!(state.removed_at, vec![None, Some(1), None]);

        // A removed client cannot take part any more; the state is left unchanged.
        let before = state.clone();
        let err = state.step(&cfg, &round1, &all).unwrap_err();
        assert_eq!(
            err,
            ReputationError::RemovedClient {
                client: 1,
                round: 1
            }
        );
        assert_eq!(state, before);
    }

    /// Honest clients send `base + noise`; returns clipped updates for one round.
    fn honest(rng: &mut ChaCha8Rng, base: &[f32], gamma: f32) -> Vec<f32> {
        let mut d: Vec<f32> = base
            .iter()
            .map(|&b| b + 0.5 * rng.random_range(-1.0f32..1.0))
            .collect();
        clip(&mut d, gamma);
        d
    }

    /// Runs 30 rounds of 6 clients (4 honest, `adversary` for clients 4 and 5) with the
    /// paper's defaults; returns the final state.
    fn run_attack(adversary: impl Fn(&mut ChaCha8Rng, &[f32]) -> Vec<f32>) -> RfflState {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let cfg = RfflConfig::with_gamma(0.5);
        let dim = 100;
        let mut state = RfflState::new(&[100, 120, 80, 100, 100, 100]).unwrap();
        for _ in 0..30 {
            let base: Vec<f32> = (0..dim)
                .map(|k| if k % 2 == 0 { 1.0 } else { -0.5 })
                .collect();
            let mut updates: Vec<Vec<f32>> =
                (0..4).map(|_| honest(&mut rng, &base, cfg.gamma)).collect();
            for _ in 4..6 {
                let mut d = adversary(&mut rng, &base);
                clip(&mut d, cfg.gamma);
                updates.push(d);
            }
            let participating: Vec<bool> = (0..6).map(|i| !state.is_removed(i)).collect();
            let refs: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
            state.step(&cfg, &refs, &participating).unwrap();
        }
        state
    }

    #[test]
    fn sign_flippers_are_removed_and_honest_clients_stay() {
        let state = run_attack(|rng, base| {
            let mut d = honest(rng, base, 0.5);
            d.iter_mut().for_each(|x| *x = -*x);
            d
        });
        // Removed at the first round after the warm-up, honest clients untouched.
        assert_eq!(
            state.removed_at,
            vec![None, None, None, None, Some(10), Some(10)]
        );
        assert_eq!(state.reputations[4..], [0.0, 0.0]);
        assert!((state.reputations.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn free_riders_sending_noise_are_removed() {
        let state = run_attack(|rng, base| {
            (0..base.len())
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect()
        });
        assert_eq!(state.removed_at[..4], [None, None, None, None]);
        assert!(state.removed_at[4].is_some() && state.removed_at[5].is_some());
        assert!(
            state.removed_at[4..]
                .iter()
                .all(|r| r.is_some_and(|t| t >= 10))
        );
    }

    #[test]
    fn edge_cases() {
        let cfg = cfg(0.5, 0);
        // Zero-norm updates everywhere: phi = 0, reputations uniform, nobody removed.
        let mut state = RfflState::new(&[1, 1]).unwrap();
        let zeros: [&[f32]; 2] = [&[0.0, 0.0], &[0.0, 0.0]];
        let out = state.step(&cfg, &zeros, &[true, true]).unwrap();
        assert_eq!(out.phi, vec![0.0, 0.0]);
        assert_eq!(out.reputations_after, vec![0.5, 0.5]);
        assert_eq!(out.threshold, Some(1.0 / 6.0));
        assert!(out.removed_now.is_empty());
        assert_eq!(out.q, vec![1.0, 1.0]);

        // A single client is never removed, whatever it sends.
        let mut single = RfflState::new(&[5]).unwrap();
        for _ in 0..3 {
            let out = single.step(&cfg, &[&[0.0, 0.0]], &[true]).unwrap();
            assert_eq!(out.reputations_after, vec![1.0]);
            assert!(out.removed_now.is_empty());
        }

        // An absent client keeps its reputation (renormalised) and is not judged.
        let mut state = RfflState::new(&[1, 1, 1]).unwrap();
        let r0: [&[f32]; 3] = [&[1.0, 0.0], &[1.0, 0.0], &[0.0, 1.0]];
        let out = state.step(&cfg, &r0, &[true; 3]).unwrap();
        // u = (2/3, 1/3); phi = (2/sqrt5, 2/sqrt5, 1/sqrt5); r = (2, 2, 1) / 5;
        // beta = 1/9 < 0.2, nobody removed.
        assert_close(&out.reputations_after, &[0.4, 0.4, 0.2], 1e-12);
        let r1: [&[f32]; 3] = [&[1.0, 0.0], &[1.0, 0.0], &[]];
        let out = state.step(&cfg, &r1, &[true, true, false]).unwrap();
        // Weights over participants (0.5, 0.5, 0); phi = (1, 1, 0);
        // r = (0.5*0.4 + 0.5, 0.5*0.4 + 0.5, 0.2 untouched) = (0.7, 0.7, 0.2) / 1.6.
        assert_close(&out.weights, &[0.5, 0.5, 0.0], 1e-12);
        assert_close(&out.phi, &[1.0, 1.0, 0.0], 1e-12);
        assert_close(&out.reputations_after, &[0.4375, 0.4375, 0.125], 1e-12);
        assert!(out.removed_now.is_empty());

        // Input errors leave the state unchanged.
        let before = state.clone();
        assert!(state.step(&cfg, &r1, &[false; 3]).is_err());
        assert!(state.step(&cfg, &r1[..2], &[true; 2]).is_err());
        let bad: [&[f32]; 3] = [&[1.0, 0.0], &[1.0], &[0.0, 1.0]];
        assert!(matches!(
            state.step(&cfg, &bad, &[true; 3]),
            Err(ReputationError::LengthMismatch { client: 1, .. })
        ));
        let nan: [&[f32]; 3] = [&[1.0, 0.0], &[f32::NAN, 0.0], &[0.0, 1.0]];
        assert!(state.step(&cfg, &nan, &[true; 3]).is_err());
        assert_eq!(state, before);
        assert_eq!(RfflState::new(&[]), Err(ReputationError::NoClients));
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut state = RfflState::new(&[3, 4, 5]).unwrap();
        let ups: [&[f32]; 3] = [&[1.0, 0.5], &[0.9, 0.4], &[-1.0, 0.0]];
        let out = state.step(&cfg(0.9, 0), &ups, &[true; 3]).unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let back: RfflState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        let json = serde_json::to_string(&out).unwrap();
        assert_eq!(serde_json::from_str::<RoundOutcome>(&json).unwrap(), out);
    }
}
