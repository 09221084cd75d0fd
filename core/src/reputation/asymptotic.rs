//! Fair yet asymptotically equal rewards (Lin et al., ICML 2023): reward clients by
//! contribution now, yet let every client converge to the same model eventually.
//!
//! - **Exploration**: each round [`round_contributions`] estimates every client's
//!   contribution `psi_i` from the gradients: for each coalition size `s = 0..n-1` it
//!   samples one coalition `S` of the other clients and adds
//!   `[cos(g_N, g_{S u i}) - cos(g_N, g_S)] / n`, where `g_S` is the data-size-weighted
//!   gradient of `S` and `cos(g_N, 0) = 0`. [`FairRewardState::record_round`] keeps the
//!   running mean `psi_t = (t/(t+1)) psi_{t-1} + psi_round/(t+1)` and stops exploring
//!   once a one-sample Hotelling T^2 test ([`crate::reputation::stats`]) of the last
//!   `window` per-round estimates against the mean of the rounds before them gives a
//!   p-value above `significance` (the estimates no longer move).
//! - **Exploitation**: [`selection_probabilities`] gives `p = softmax(beta psi)` smoothed
//!   by `+1e-30`, so every `p_i > 0`; each round [`select_recipients`] draws
//!   `floor(ratio n)` distinct clients by `p`, and only they receive the newest global
//!   model. Since every client is drawn infinitely often, all converge to the same model.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::stats::{HotellingTest, hotelling_one_sample};
use super::{ReputationError, common_length, cosine};

/// Added to every softmax probability so that no client's chance is exactly 0.
pub const PROBABILITY_FLOOR: f64 = 1e-30;

/// Slack when flooring `ratio * n`, so that e.g. `0.29 * 100` gives 29.
const ROUND_SLACK: f64 = 1e-9;

/// Settings of the fair yet asymptotically equal reward policy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FairRewardConfig {
    /// Softmax inverse temperature `beta` (paper: about 150), finite and >= 0.
    pub beta: f64,
    /// Fraction `r` of clients that receive the newest model each round (paper: 0.4), in
    /// `[0, 1]`.
    pub ratio: f64,
    /// Number of recent rounds the stationarity test looks at; must exceed the number of
    /// clients (the T^2 test needs more samples than dimensions).
    pub window: usize,
    /// Exploration stops when the test's p-value exceeds this (paper: 0.7 to 0.95), in
    /// `(0, 1)`.
    pub significance: f64,
}

impl FairRewardConfig {
    /// The paper's defaults (beta 150, ratio 0.4, significance 0.9) with a test window of
    /// `2 n + 1` rounds for `n` clients.
    pub fn for_clients(n: usize) -> Self {
        Self {
            beta: 150.0,
            ratio: 0.4,
            window: n.saturating_mul(2).saturating_add(1),
            significance: 0.9,
        }
    }

    /// Rejects out-of-range settings for a federation of `n` clients.
    pub fn validate(&self, n: usize) -> Result<(), ReputationError> {
        let invalid = |name, value, reason| {
            Err(ReputationError::InvalidConfig {
                name,
                value,
                reason,
            })
        };
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return invalid("beta", self.beta, "must be finite and >= 0");
        }
        if !(0.0..=1.0).contains(&self.ratio) {
            return invalid("ratio", self.ratio, "must be in [0, 1]");
        }
        if self.window <= n {
            return invalid(
                "window",
                self.window as f64,
                "must exceed the number of clients",
            );
        }
        if !(self.significance > 0.0 && self.significance < 1.0) {
            return invalid("significance", self.significance, "must be in (0, 1)");
        }
        Ok(())
    }
}

/// Whether the policy still estimates contributions or already selects by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Estimating `psi`; every client receives the newest model.
    Exploring,
    /// `psi` is frozen; recipients are drawn by [`selection_probabilities`].
    Exploiting {
        /// Number of recorded rounds when exploration stopped.
        after_rounds: u64,
    },
}

/// The policy's state between rounds, serialisable for per-round persistence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FairRewardState {
    /// Rounds recorded so far (`t`).
    pub rounds: u64,
    /// Running mean of the per-round contribution estimates.
    pub psi: Vec<f64>,
    /// The most recent per-round estimates, oldest first (at most `window`).
    pub recent: Vec<Vec<f64>>,
    /// Current phase.
    pub phase: Phase,
}

impl FairRewardState {
    /// A fresh state for `n` clients, exploring, all estimates 0.
    pub fn new(n: usize) -> Result<Self, ReputationError> {
        if n == 0 {
            return Err(ReputationError::NoClients);
        }
        Ok(Self {
            rounds: 0,
            psi: vec![0.0; n],
            recent: Vec::new(),
            phase: Phase::Exploring,
        })
    }

    /// True while contributions are still being estimated.
    pub fn is_exploring(&self) -> bool {
        self.phase == Phase::Exploring
    }

    /// Records one exploration round's estimates `psi_round` (from
    /// [`round_contributions`]) into the running mean, then runs the stationarity test
    /// once `window` recent rounds and at least one earlier round exist; a p-value above
    /// `cfg.significance` ends exploration. Returns the test, if it ran. Rounds recorded
    /// after exploration ended are ignored (`Ok(None)`): `psi` is frozen then.
    pub fn record_round(
        &mut self,
        cfg: &FairRewardConfig,
        psi_round: &[f64],
    ) -> Result<Option<HotellingTest>, ReputationError> {
        let n = self.psi.len();
        cfg.validate(n)?;
        if psi_round.len() != n {
            return Err(ReputationError::ClientCount {
                what: "psi_round",
                expected: n,
                got: psi_round.len(),
            });
        }
        if let Some(client) = psi_round.iter().position(|x| !x.is_finite()) {
            return Err(ReputationError::NonFinite {
                what: "contribution estimate",
                client,
            });
        }
        if !self.is_exploring() {
            return Ok(None);
        }
        let t = self.rounds as f64;
        for (mean, &x) in self.psi.iter_mut().zip(psi_round) {
            *mean = t / (t + 1.0) * *mean + x / (t + 1.0);
        }
        self.rounds += 1;
        self.recent.push(psi_round.to_vec());
        if self.recent.len() > cfg.window {
            let excess = self.recent.len() - cfg.window;
            self.recent.drain(..excess);
        }
        let window = self.recent.len() as u64;
        if window < cfg.window as u64 || self.rounds <= window {
            return Ok(None);
        }
        // Mean of the rounds before the window: (t psi_t - sum(window)) / (t - w).
        let earlier_rounds = (self.rounds - window) as f64;
        let earlier: Vec<f64> = (0..n)
            .map(|i| {
                let recent_sum: f64 = self.recent.iter().filter_map(|r| r.get(i)).sum();
                let total = self.psi.get(i).copied().unwrap_or(0.0) * self.rounds as f64;
                (total - recent_sum) / earlier_rounds
            })
            .collect();
        let test = hotelling_one_sample(&self.recent, &earlier)?;
        if test.p_value > cfg.significance {
            self.phase = Phase::Exploiting {
                after_rounds: self.rounds,
            };
        }
        Ok(Some(test))
    }
}

/// One exploration round's contribution estimates from the clients' `gradients` (all
/// of one length, finite) weighted by `data_sizes`: see the module docs. Uses `rng` to
/// sample one coalition of the other clients per size.
pub fn round_contributions(
    gradients: &[&[f32]],
    data_sizes: &[u64],
    rng: &mut impl Rng,
) -> Result<Vec<f64>, ReputationError> {
    let n = gradients.len();
    if n == 0 {
        return Err(ReputationError::NoClients);
    }
    if data_sizes.len() != n {
        return Err(ReputationError::ClientCount {
            what: "data_sizes",
            expected: n,
            got: data_sizes.len(),
        });
    }
    let dim = common_length(gradients, |_| true)?;
    // Cosine ignores scale, so the weighted sum stands in for the weighted mean.
    let add = |acc: &mut [f64], j: usize| {
        if let (Some(g), Some(&m)) = (gradients.get(j), data_sizes.get(j)) {
            let m = m as f64;
            acc.iter_mut()
                .zip(g.iter())
                .for_each(|(a, &x)| *a += m * f64::from(x));
        }
    };
    let mut grand = vec![0.0f64; dim];
    (0..n).for_each(|j| add(&mut grand, j));

    let mut psi = vec![0.0f64; n];
    for (i, psi_i) in psi.iter_mut().enumerate() {
        let others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        for size in 0..n {
            let mut coalition = vec![0.0f64; dim];
            for k in rand::seq::index::sample(rng, others.len(), size.min(others.len())) {
                if let Some(&j) = others.get(k) {
                    add(&mut coalition, j);
                }
            }
            let without = cosine(&coalition, &grand);
            add(&mut coalition, i);
            let with = cosine(&coalition, &grand);
            *psi_i += (with - without) / n as f64;
        }
    }
    Ok(psi)
}

/// Selection probabilities `p = softmax(beta psi) + 1e-30` (computed stably by shifting
/// by the largest `psi`): they sum to 1 up to rounding and every `p_i > 0`.
pub fn selection_probabilities(psi: &[f64], beta: f64) -> Result<Vec<f64>, ReputationError> {
    if !(beta.is_finite() && beta >= 0.0) {
        return Err(ReputationError::InvalidConfig {
            name: "beta",
            value: beta,
            reason: "must be finite and >= 0",
        });
    }
    if let Some(client) = psi.iter().position(|x| !x.is_finite()) {
        return Err(ReputationError::NonFinite {
            what: "contribution estimate",
            client,
        });
    }
    let max = psi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = psi.iter().map(|&x| (beta * (x - max)).exp()).collect();
    let total: f64 = exp.iter().sum();
    Ok(exp.iter().map(|e| e / total + PROBABILITY_FLOOR).collect())
}

/// Draws `floor(ratio n)` distinct clients, one after another, each with probability
/// proportional to its `p` among those not yet drawn (`p` from
/// [`selection_probabilities`]; entries must be finite and >= 0, and each gets +1e-30 so an
/// all-zero `p` still draws). Returns them ascending.
pub fn select_recipients(
    p: &[f64],
    ratio: f64,
    rng: &mut impl Rng,
) -> Result<Vec<usize>, ReputationError> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(ReputationError::InvalidConfig {
            name: "ratio",
            value: ratio,
            reason: "must be in [0, 1]",
        });
    }
    if let Some(client) = p.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
        return Err(ReputationError::NonFinite {
            what: "selection probability (finite, >= 0)",
            client,
        });
    }
    let n = p.len();
    let count = ((ratio * n as f64 + ROUND_SLACK).floor() as usize).min(n);
    let mut remaining: Vec<(usize, f64)> = p
        .iter()
        .enumerate()
        .map(|(i, &w)| (i, w + PROBABILITY_FLOOR))
        .collect();
    let mut chosen = Vec::with_capacity(count);
    for _ in 0..count {
        let total: f64 = remaining.iter().map(|&(_, w)| w).sum();
        let mut x = rng.random::<f64>() * total;
        // Falls back to the last candidate if rounding leaves x above every weight.
        let mut pick = remaining.len().saturating_sub(1);
        for (k, &(_, w)) in remaining.iter().enumerate() {
            if x < w {
                pick = k;
                break;
            }
            x -= w;
        }
        if pick < remaining.len() {
            chosen.push(remaining.swap_remove(pick).0);
        }
    }
    chosen.sort_unstable();
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn identical_gradients_get_equal_contributions() {
        let g: [&[f32]; 4] = [&[1.0, 2.0, -1.0]; 4];
        let psi = round_contributions(&g, &[10; 4], &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        // Only the empty coalition changes the cosine: (1 - 0) / n each.
        for &p in &psi {
            assert!((p - 0.25).abs() < 1e-12, "{psi:?}");
        }
    }

    #[test]
    fn an_opposing_client_gets_the_lowest_contribution() {
        let g: [&[f32]; 4] = [&[1.0, 0.1], &[0.9, 0.2], &[1.1, -0.1], &[-1.0, 0.0]];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let psi = round_contributions(&g, &[10, 10, 10, 10], &mut rng).unwrap();
        let lowest = psi.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(psi[3], lowest);
        assert!(psi[3] < 0.0 && psi[..3].iter().all(|&p| p > 0.0), "{psi:?}");
        // Zero data size: the client's gradient counts for nothing.
        let psi = round_contributions(&g, &[10, 10, 10, 0], &mut rng).unwrap();
        assert_eq!(psi[3], 0.0);
        assert!(round_contributions(&g, &[1, 1], &mut rng).is_err());
    }

    #[test]
    fn probabilities_sum_to_one_and_are_positive() {
        let psi = [0.0, 0.01, 0.5, 10.0, -3.0];
        let p = selection_probabilities(&psi, 150.0).unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p.iter().all(|&x| x > 0.0), "{p:?}"); // exp(-1500) underflows; floor keeps it
        assert!(p[3] > 0.999);
        let uniform = selection_probabilities(&psi, 0.0).unwrap();
        assert!(uniform.iter().all(|&x| (x - 0.2).abs() < 1e-12));
        assert!(selection_probabilities(&[f64::NAN], 1.0).is_err());
        assert!(selection_probabilities(&psi, -1.0).is_err());
    }

    #[test]
    fn recipients_are_distinct_and_seeded() {
        let p = selection_probabilities(
            &[0.0, 0.01, 0.02, 0.0, 0.05, 0.0, 0.01, 0.0, 0.0, 0.03],
            150.0,
        )
        .unwrap();
        let draw = |seed| select_recipients(&p, 0.4, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        for seed in 0..20 {
            let chosen = draw(seed);
            assert_eq!(chosen.len(), 4);
            assert!(chosen.windows(2).all(|w| w[0] < w[1]), "{chosen:?}");
            assert!(chosen.iter().all(|&i| i < 10));
            assert_eq!(draw(seed), chosen);
        }
        // floor(0.29 * 100) = 29 despite 0.29 * 100 = 28.999999999999996.
        let chosen =
            select_recipients(&[0.01; 100], 0.29, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        assert_eq!(chosen.len(), 29);
        assert!(select_recipients(&p, 1.5, &mut ChaCha8Rng::seed_from_u64(0)).is_err());
        // All clients when ratio = 1, even with zero probabilities.
        let all = select_recipients(&[0.0; 5], 1.0, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn selection_frequencies_follow_p() {
        let p = selection_probabilities(&[0.0, 0.005, 0.01, 0.02], 150.0).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut counts = [0usize; 4];
        let draws = 20_000;
        for _ in 0..draws {
            for i in select_recipients(&p, 0.25, &mut rng).unwrap() {
                counts[i] += 1;
            }
        }
        for (c, &pi) in counts.iter().zip(&p) {
            let freq = *c as f64 / f64::from(draws);
            assert!((freq - pi).abs() < 0.015, "freq {freq} vs p {pi}");
        }
    }

    #[test]
    fn running_mean_and_stopping() {
        let n = 2;
        let cfg = FairRewardConfig::for_clients(n);
        assert_eq!(cfg.window, 5);
        let mut state = FairRewardState::new(n).unwrap();
        for x in [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]] {
            assert_eq!(state.record_round(&cfg, &x).unwrap(), None);
        }
        assert_eq!(state.psi, vec![3.0, 2.0]);

        // A steadily drifting estimate never looks stationary.
        let mut drifting = FairRewardState::new(n).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for t in 0..100 {
            let t = f64::from(t);
            let noise: f64 = rng.random_range(-0.01..0.01);
            drifting
                .record_round(&cfg, &[0.1 * t + noise, -0.1 * t - noise * 0.5])
                .unwrap();
        }
        assert!(drifting.is_exploring());

        // Stationary noise eventually passes the test; psi is then frozen.
        let mut stationary = FairRewardState::new(n).unwrap();
        let mut last = None;
        for _ in 0..500 {
            let x = [
                0.3 + rng.random_range(-0.1..0.1),
                0.1 + rng.random_range(-0.1..0.1),
            ];
            last = stationary.record_round(&cfg, &x).unwrap().or(last);
            if !stationary.is_exploring() {
                break;
            }
        }
        let Phase::Exploiting { after_rounds } = stationary.phase else {
            panic!("never stopped exploring");
        };
        assert!(after_rounds > cfg.window as u64);
        assert!(last.is_some_and(|t| t.p_value > cfg.significance));
        let frozen = stationary.psi.clone();
        assert_eq!(stationary.record_round(&cfg, &[9.0, 9.0]).unwrap(), None);
        assert_eq!(stationary.psi, frozen);
        // Bad input is rejected.
        assert!(stationary.record_round(&cfg, &[f64::NAN, 0.0]).is_err());
        let small = FairRewardConfig { window: 2, ..cfg };
        assert!(
            FairRewardState::new(n)
                .unwrap()
                .record_round(&small, &[0.0, 0.0])
                .is_err()
        );
    }

    #[test]
    fn state_round_trips_through_serde() {
        let cfg = FairRewardConfig::for_clients(2);
        let mut state = FairRewardState::new(2).unwrap();
        state.record_round(&cfg, &[0.25, -0.5]).unwrap();
        let back: FairRewardState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(back, state);
    }
}
