//! Truth-FedBan (Wei et al., ICLR 2024, arXiv 2402.04485): truthful incentives for federated
//! linear contextual bandits, plus the non-truthful Inc-FedUCB-style baseline and a synthetic
//! simulation loop.
//!
//! N clients share one unknown `theta*`. At each step one client is active: it plays LinUCB on
//! its own statistics ([`LinUcbClient`]) and, after its update, checks the event trigger
//! `(t - t_last) * log(det V / det(V - dV)) > D_c` ([`LinUcbClient::trigger_statistic`]). A
//! trigger opens a communication round: every client reports a cost and its not-yet-uploaded
//! Gram update `dV_j`; [`SelectionProblem::select`] greedily picks participants by log-det gain
//! per reported cost until `g(S) = log det(lambda I + V_g + sum_S dV_j)` reaches
//! `g(all) + log(beta)`; [`SelectionProblem::payments`] pays each participant its critical
//! value (closed form, cross-checked by [`SelectionProblem::critical_value_by_bisection`]);
//! participants upload, the server aggregates and every client downloads. [`simulate`] runs the
//! whole protocol on a seeded synthetic linear environment; [`utility_table`] gives the
//! truthful-vs-misreport utilities of both mechanisms.
//!
//! # What follows the paper and what is reconstructed
//! Only the paper's abstract, introduction and its public reviews were available to check
//! against (the search tool's stored copy holds the paper's start only). From those:
//! - **Follows the paper**: the setting (shared linear `theta*`, one active client per step,
//!   LinUCB on `V = lambda I + sum x x^T`), the objective inherited from Inc-FedUCB (minimise
//!   total reported cost subject to a determinant-based constraint on the aggregate), a
//!   monotone selection rule with critical-value (Myerson) payments so that a participant's
//!   payment does not depend on its own report, the "essential client" notion and the bound of
//!   Lemma 7 (no client is essential once `beta <= (1 + t L^2 / (lambda d))^{-d}`, see
//!   [`no_essential_beta`]), and every client exchanging `O(d^2)` numbers per round.
//! - **Reconstructed** (ALGORITHMS.md section 7, not verified line by line): the exact form of
//!   the trigger (taken from Inc-FedUCB / DisLinUCB with the elapsed-time factor), the greedy
//!   "gain per reported cost" rule with its tie, zero-gain and zero-cost rules, the relative
//!   target `g(all) + log(beta)`, the closed form of the critical value, the cap for essential
//!   clients, the baseline payment `max(c^_i - w * value_i, 0)`, and all constants (`alpha`,
//!   `D_c`, `beta`, `lambda`) used by [`SimConfig`]'s defaults, which are ours, not the
//!   paper's. The paper's valuation function `f(dV)` is represented here by the log-det gain.
//!
//! # Limits
//! Truthfulness is per round: with the round's state fixed, no misreport beats the truth
//! (tested exactly). Over a whole run a misreport changes who uploads when, hence later
//! states, trigger times and essential caps, and the run-level utility of a misreporting
//! client is not guaranteed to peak at the truth (the paper claims no such thing either);
//! `truthfedban_simulation_misreport_tables` prints it. Essential clients are paid the fixed
//! cap, independent of their report (truthful but not cost-covering if the cap is low).

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::environment::unit_vector;
use super::{IncentiveError, check_agent_values};
use crate::linalg::{self, dot};

/// Relative tolerance for comparing log-det values (gains below it count as zero, targets
/// within it count as met).
pub const LOG_DET_TOLERANCE: f64 = 1e-9;

// ---------------------------------------------------------------------------------------------
// Small dense linear algebra on row-major `d x d` matrices.

/// Checks that `v` has `expected` finite entries.
fn check_vec(what: &'static str, v: &[f64], expected: usize) -> Result<(), IncentiveError> {
    if v.len() != expected {
        return Err(IncentiveError::Dimension {
            what,
            expected,
            got: v.len(),
        });
    }
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(IncentiveError::InvalidParameter {
            name: what,
            value: *bad,
            reason: "entries must be finite",
        });
    }
    Ok(())
}

/// Checks that a parameter is finite and strictly positive.
fn check_positive(name: &'static str, value: f64) -> Result<(), IncentiveError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(IncentiveError::InvalidParameter {
            name,
            value,
            reason: "must be finite and > 0",
        })
    }
}

/// Cholesky factor `L` of the symmetric matrix `a` (`d x d`, length checked by the caller;
/// only the lower triangle of the result is the factor).
fn cholesky(a: &[f64], d: usize, what: &'static str) -> Result<Vec<f64>, IncentiveError> {
    let mut l = a.to_vec();
    linalg::cholesky_in_place(&mut l, d)
        .map_err(|e| IncentiveError::NotPositiveDefinite {
            what,
            pivot: e.pivot,
            value: e.value,
        })
        .map(|()| l)
}

/// `log det A` from its Cholesky factor.
fn log_det_from_factor(l: &[f64], d: usize) -> f64 {
    (0..d).map(|j| l[j * d + j].ln()).sum::<f64>() * 2.0
}

/// `log det A` of a symmetric positive definite matrix.
fn log_det(a: &[f64], d: usize, what: &'static str) -> Result<f64, IncentiveError> {
    Ok(log_det_from_factor(&cholesky(a, d, what)?, d))
}

/// Solves `A x = b` given `A = L L^T`.
fn cholesky_solve(l: &[f64], d: usize, b: &[f64]) -> Vec<f64> {
    let mut x = b.to_vec();
    linalg::cholesky_solve(l, d, &mut x);
    x
}

/// `lambda * I` as a row-major `d x d` matrix.
fn scaled_identity(d: usize, lambda: f64) -> Vec<f64> {
    let mut m = vec![0.0; d * d];
    for i in 0..d {
        m[i * d + i] = lambda;
    }
    m
}

/// `acc += m` element-wise.
fn add_assign(acc: &mut [f64], m: &[f64]) {
    for (a, b) in acc.iter_mut().zip(m) {
        *a += b;
    }
}

/// `acc += x x^T`.
fn add_outer(acc: &mut [f64], x: &[f64]) {
    let d = x.len();
    for i in 0..d {
        for j in 0..d {
            acc[i * d + j] += x[i] * x[j];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LinUCB client.

/// One client's LinUCB state: `V = base + dV`, `b = b_base + db`, where `base = lambda I + V_g`
/// is the last downloaded aggregate and `dV, db` are the client's own not-yet-uploaded data.
#[derive(Clone, Debug, PartialEq)]
pub struct LinUcbClient {
    dim: usize,
    lambda: f64,
    alpha: f64,
    base: Vec<f64>,
    b_base: Vec<f64>,
    dv: Vec<f64>,
    db: Vec<f64>,
}

impl LinUcbClient {
    /// A fresh client of dimension `dim` with ridge `lambda > 0` and exploration `alpha >= 0`.
    pub fn new(dim: usize, lambda: f64, alpha: f64) -> Result<Self, IncentiveError> {
        if dim == 0 {
            return Err(IncentiveError::InvalidParameter {
                name: "dim",
                value: 0.0,
                reason: "must be >= 1",
            });
        }
        check_positive("lambda", lambda)?;
        if !(alpha.is_finite() && alpha >= 0.0) {
            return Err(IncentiveError::InvalidParameter {
                name: "alpha",
                value: alpha,
                reason: "must be finite and >= 0",
            });
        }
        Ok(Self {
            dim,
            lambda,
            alpha,
            base: scaled_identity(dim, lambda),
            b_base: vec![0.0; dim],
            dv: vec![0.0; dim * dim],
            db: vec![0.0; dim],
        })
    }

    /// The full Gram matrix `V` the client acts on.
    pub fn gram(&self) -> Vec<f64> {
        let mut v = self.base.clone();
        add_assign(&mut v, &self.dv);
        v
    }

    /// The ridge estimate `theta = V^-1 b`.
    pub fn theta(&self) -> Result<Vec<f64>, IncentiveError> {
        let l = cholesky(&self.gram(), self.dim, "client gram V")?;
        let mut b = self.b_base.clone();
        add_assign(&mut b, &self.db);
        Ok(cholesky_solve(&l, self.dim, &b))
    }

    /// The LinUCB arm `argmax_x x^T theta + alpha |x|_{V^-1}` (ties: lowest index).
    pub fn choose(&self, arms: &[Vec<f64>]) -> Result<usize, IncentiveError> {
        if arms.is_empty() {
            return Err(IncentiveError::InvalidParameter {
                name: "arm count",
                value: 0.0,
                reason: "must be >= 1",
            });
        }
        let l = cholesky(&self.gram(), self.dim, "client gram V")?;
        let mut b = self.b_base.clone();
        add_assign(&mut b, &self.db);
        let theta = cholesky_solve(&l, self.dim, &b);
        let mut best = (0, f64::NEG_INFINITY);
        for (k, x) in arms.iter().enumerate() {
            check_vec("arm", x, self.dim)?;
            let mut z = x.to_vec();
            linalg::forward_substitute(&l, self.dim, &mut z);
            let ucb = dot(x, &theta) + self.alpha * dot(&z, &z).sqrt();
            if ucb > best.1 {
                best = (k, ucb);
            }
        }
        Ok(best.0)
    }

    /// Adds the observation `(x, y)` to the client's own pending statistics.
    pub fn observe(&mut self, x: &[f64], y: f64) -> Result<(), IncentiveError> {
        check_vec("context x", x, self.dim)?;
        if !y.is_finite() {
            return Err(IncentiveError::InvalidParameter {
                name: "reward y",
                value: y,
                reason: "must be finite",
            });
        }
        add_outer(&mut self.dv, x);
        for (acc, xi) in self.db.iter_mut().zip(x) {
            *acc += y * xi;
        }
        Ok(())
    }

    /// The trigger statistic `(t - t_last) * log(det V / det(V - dV))`; a round starts when it
    /// exceeds `D_c`. `t_last` is the step of the previous round of any client (`t >= t_last`).
    pub fn trigger_statistic(&self, t: usize, t_last: usize) -> Result<f64, IncentiveError> {
        statistic(&self.base, &self.dv, self.dim, t, t_last)
    }

    /// The pending (not yet uploaded) Gram update `dV` (row-major `d x d`).
    pub fn pending_gram(&self) -> &[f64] {
        &self.dv
    }

    /// The pending (not yet uploaded) reward vector `db`.
    pub fn pending_b(&self) -> &[f64] {
        &self.db
    }

    /// Forgets the pending statistics after they were uploaded.
    pub fn clear_pending(&mut self) {
        self.dv.iter_mut().for_each(|v| *v = 0.0);
        self.db.iter_mut().for_each(|v| *v = 0.0);
    }

    /// Replaces the downloaded part with the server aggregate `(V_g, b_g)`; pending data stay.
    pub fn download(&mut self, v_g: &[f64], b_g: &[f64]) -> Result<(), IncentiveError> {
        check_vec("aggregate V_g", v_g, self.dim * self.dim)?;
        check_vec("aggregate b_g", b_g, self.dim)?;
        let mut base = scaled_identity(self.dim, self.lambda);
        add_assign(&mut base, v_g);
        cholesky(&base, self.dim, "lambda I + V_g")?;
        self.base = base;
        self.b_base = b_g.to_vec();
        Ok(())
    }
}

/// The trigger statistic of a client whose last downloaded aggregate is `V_g` and whose
/// pending Gram update is `dV`:
/// `(t - t_last) * (log det(lambda I + V_g + dV) - log det(lambda I + V_g))`.
/// It is what [`LinUcbClient::trigger_statistic`] returns, bit for bit (same sums in the same
/// order, same factorisations), so a server that holds the client's reported `dV` and knows
/// what it downloaded can verify a claimed trigger.
pub fn trigger_statistic(
    dim: usize,
    lambda: f64,
    v_g: &[f64],
    dv: &[f64],
    t: usize,
    t_last: usize,
) -> Result<f64, IncentiveError> {
    check_positive("lambda", lambda)?;
    check_vec("aggregate V_g", v_g, dim * dim)?;
    check_vec("update dV", dv, dim * dim)?;
    // As `LinUcbClient::download` builds its base (a fresh client's `lambda I` is the same
    // matrix: `lambda + 0` and `0 + 0` are exact).
    let mut base = scaled_identity(dim, lambda);
    add_assign(&mut base, v_g);
    statistic(&base, dv, dim, t, t_last)
}

/// `(t - t_last) * (log det(base + dv) - log det(base))`, the one implementation of the trigger.
fn statistic(
    base: &[f64],
    dv: &[f64],
    dim: usize,
    t: usize,
    t_last: usize,
) -> Result<f64, IncentiveError> {
    if t < t_last {
        return Err(IncentiveError::InvalidParameter {
            name: "t - t_last",
            value: t as f64 - t_last as f64,
            reason: "the current step must not precede the last round",
        });
    }
    let mut gram = base.to_vec();
    add_assign(&mut gram, dv);
    let ratio = log_det(&gram, dim, "client gram V")? - log_det(base, dim, "client base V - dV")?;
    Ok((t - t_last) as f64 * ratio)
}

// ---------------------------------------------------------------------------------------------
// Participant selection and payments.

/// Settings of one mechanism round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MechanismConfig {
    /// Target ratio `beta` in `(0, 1]`: participants must reach `g(all) + log(beta)`.
    pub beta: f64,
    /// Payment to an essential client (one without whom the target is unreachable, whose
    /// critical value is unbounded); such payments are flagged `capped`.
    pub essential_cap: f64,
    /// Weight `w` converting the baseline's log-det value of received data into cost units.
    pub baseline_value_weight: f64,
}

impl MechanismConfig {
    fn validate(&self) -> Result<(), IncentiveError> {
        if !(self.beta.is_finite() && self.beta > 0.0 && self.beta <= 1.0) {
            return Err(IncentiveError::InvalidParameter {
                name: "beta",
                value: self.beta,
                reason: "must be in (0, 1]",
            });
        }
        for (name, value) in [
            ("essential_cap", self.essential_cap),
            ("baseline_value_weight", self.baseline_value_weight),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(IncentiveError::InvalidParameter {
                    name,
                    value,
                    reason: "must be finite and >= 0",
                });
            }
        }
        Ok(())
    }
}

/// Which payment rule a round uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// Critical-value payments (truthful).
    TruthFedBan,
    /// Inc-FedUCB-style: reported cost minus the value of the data received (not truthful).
    Baseline,
}

/// The outcome of the greedy selection.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Participants in the order the greedy added them.
    pub selected: Vec<usize>,
    /// `g(S)` of the selected set.
    pub value: f64,
    /// The target `g(all) + log(beta)`.
    pub target: f64,
}

/// A participant's payment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Payment {
    /// Client index.
    pub client: usize,
    /// Amount paid.
    pub amount: f64,
    /// True when the client is essential and the amount is the configured cap.
    pub capped: bool,
    /// Baseline only: `w * value` of the data the client receives, which the baseline deducts
    /// from the reported cost and counts as compensation (0 under Truth-FedBan).
    pub credited_value: f64,
}

impl Payment {
    /// The client's utility `amount + credited_value - true_cost`.
    pub fn utility(&self, true_cost: f64) -> f64 {
        self.amount + self.credited_value - true_cost
    }
}

/// A client's critical value: the supremum of reports at which it is still selected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CriticalValue {
    /// Selected exactly for reports below this value.
    Finite(f64),
    /// Selected whatever it reports (the others cannot reach the target).
    Essential,
}

/// One round's reported Gram updates over the server's aggregate: the monotone submodular
/// function `g(S) = log det(lambda I + V_g + sum_{j in S} dV_j)`.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectionProblem {
    dim: usize,
    base: Vec<f64>,
    updates: Vec<Vec<f64>>,
}

impl SelectionProblem {
    /// Validates shapes and positive definiteness of `lambda I + V_g`.
    pub fn new(
        dim: usize,
        lambda: f64,
        v_g: &[f64],
        updates: Vec<Vec<f64>>,
    ) -> Result<Self, IncentiveError> {
        check_positive("lambda", lambda)?;
        check_vec("aggregate V_g", v_g, dim * dim)?;
        for u in &updates {
            check_vec("update dV", u, dim * dim)?;
        }
        let mut base = scaled_identity(dim, lambda);
        add_assign(&mut base, v_g);
        cholesky(&base, dim, "lambda I + V_g")?;
        Ok(Self { dim, base, updates })
    }

    /// Number of clients.
    pub fn clients(&self) -> usize {
        self.updates.len()
    }

    /// `g(S)`.
    pub fn value(&self, set: &[usize]) -> Result<f64, IncentiveError> {
        let mut m = self.base.clone();
        for &j in set {
            add_assign(&mut m, self.update(j)?);
        }
        log_det(&m, self.dim, SUM)
    }

    /// The target `g(all) + log(beta)`.
    pub fn target(&self, beta: f64) -> Result<f64, IncentiveError> {
        let all: Vec<usize> = (0..self.clients()).collect();
        Ok(self.value(&all)? + beta.ln())
    }

    fn check_costs(&self, costs: &[f64]) -> Result<(), IncentiveError> {
        check_agent_values("reported costs", "reported cost", costs, self.clients())
    }

    /// `dV_j`, or [`IncentiveError::AgentOutOfRange`].
    fn update(&self, j: usize) -> Result<&[f64], IncentiveError> {
        self.updates
            .get(j)
            .map(Vec::as_slice)
            .ok_or(IncentiveError::AgentOutOfRange {
                agent: j,
                agents: self.updates.len(),
            })
    }

    /// `g(S u {j})` for every client `j` outside `S` (`None` for the members), where `matrix`
    /// holds `lambda I + V_g + sum_{j in S} dV_j` summed in `S`'s order: one addition and one
    /// Cholesky factorisation per candidate.
    fn candidates(
        &self,
        matrix: &[f64],
        member: &[bool],
    ) -> Result<Vec<Option<f64>>, IncentiveError> {
        let mut m = vec![0.0; matrix.len()];
        self.updates
            .iter()
            .zip(member)
            .map(|(u, &inside)| {
                if inside {
                    return Ok(None);
                }
                m.copy_from_slice(matrix);
                add_assign(&mut m, u);
                log_det(&m, self.dim, SUM).map(Some)
            })
            .collect()
    }

    /// Greedy run towards `target` that never picks `excluded` but still evaluates it at every
    /// step (its gains along the run are what its critical value needs).
    ///
    /// Memoised: the matrix of `S_{k-1}` is kept, so a candidate costs one addition and one
    /// factorisation, and `g(S_{k-1})` is the previous step's value. With
    /// `resume = Some((run, k))` the run starts from the first `k` steps of `run` (same costs
    /// and target) and reuses `run`'s candidate values at its step `k + 1`; this is the run
    /// from scratch as long as `excluded` is not among those `k` clients, because removing a
    /// client the greedy did not pick changes none of its picks (the order [`prefers`] is
    /// strict). Every value comes from the same sums in the same order as [`Self::value`],
    /// so results are bit for bit those of the plain greedy.
    fn greedy(
        &self,
        costs: &[f64],
        target: f64,
        excluded: Option<usize>,
        resume: Option<(&Greedy, usize)>,
    ) -> Result<Greedy, IncentiveError> {
        let tol = LOG_DET_TOLERANCE * target.abs().max(1.0);
        let (start, mut steps, mut known) = match resume {
            Some((run, k)) => (
                run.start,
                run.steps.get(..k).unwrap_or(&run.steps).to_vec(),
                run.steps.get(k).map(|s| s.with.clone()),
            ),
            None => (log_det(&self.base, self.dim, SUM)?, Vec::new(), None),
        };
        let mut matrix = self.base.clone();
        let mut member = vec![false; self.clients()];
        for s in &steps {
            add_assign(&mut matrix, self.update(s.client)?);
            if let Some(m) = member.get_mut(s.client) {
                *m = true;
            }
        }
        let mut current = steps.last().map_or(start, |s| s.after);
        while current < target - tol {
            let with = match known.take() {
                Some(with) => with,
                None => self.candidates(&matrix, &member)?,
            };
            let mut best: Option<(usize, f64, f64)> = None; // (client, gain, value after)
            for (j, (after, &cost)) in with.iter().zip(costs).enumerate() {
                let Some(after) = *after else {
                    continue;
                };
                if Some(j) == excluded {
                    continue;
                }
                let gain = after - current;
                if gain <= tol {
                    continue; // zero-gain clients are never added
                }
                let better = match best {
                    None => true,
                    Some((b, bgain, _)) => prefers((j, gain, cost), (b, bgain, costs[b])),
                };
                if better {
                    best = Some((j, gain, after));
                }
            }
            let Some((j, gain, after)) = best else {
                return Ok(Greedy {
                    start,
                    steps,
                    value: current,
                    reached: false,
                });
            };
            add_assign(&mut matrix, self.update(j)?);
            if let Some(m) = member.get_mut(j) {
                *m = true;
            }
            steps.push(Step {
                client: j,
                gain,
                before: current,
                after,
                with,
            });
            current = after;
        }
        Ok(Greedy {
            start,
            steps,
            value: current,
            reached: true,
        })
    }

    /// Checks `costs` and `beta`, and runs the greedy over every client: the run and the
    /// target `g(all) + log(beta)`.
    fn full_run(&self, costs: &[f64], beta: f64) -> Result<(Greedy, f64), IncentiveError> {
        self.check_costs(costs)?;
        check_beta(beta)?;
        let target = self.target(beta)?;
        Ok((self.greedy(costs, target, None, None)?, target))
    }

    /// Greedy selection: repeatedly add the client with the largest gain per reported cost
    /// (zero cost first, by gain; ties by lower id; zero gain never) until `g(S)` reaches
    /// `g(all) + log(beta)`.
    pub fn select(&self, costs: &[f64], beta: f64) -> Result<Selection, IncentiveError> {
        let (run, target) = self.full_run(costs, beta)?;
        Ok(run.selection(target))
    }

    /// Closed-form critical value of client `i`: run the greedy without `i` to the same target
    /// and take `max_k c_{j_k} * gain_i(S_{k-1}) / gain_{j_k}(S_{k-1})`.
    pub fn critical_value(
        &self,
        costs: &[f64],
        beta: f64,
        i: usize,
    ) -> Result<CriticalValue, IncentiveError> {
        let (full, target) = self.full_run(costs, beta)?;
        self.critical_value_in(&full, costs, target, i)
    }

    /// [`Self::critical_value`] of `i` given the greedy run `full` over every client: the run
    /// without `i` is `full` itself if `i` was not picked, else `full`'s steps before `i`
    /// followed by a greedy without `i` from there.
    fn critical_value_in(
        &self,
        full: &Greedy,
        costs: &[f64],
        target: f64,
        i: usize,
    ) -> Result<CriticalValue, IncentiveError> {
        if i >= self.clients() {
            return Err(IncentiveError::AgentOutOfRange {
                agent: i,
                agents: self.clients(),
            });
        }
        let tol = LOG_DET_TOLERANCE * target.abs().max(1.0);
        let rerun;
        let without = match full.steps.iter().position(|s| s.client == i) {
            None => full,
            Some(k) => {
                rerun = self.greedy(costs, target, Some(i), Some((full, k)))?;
                &rerun
            }
        };
        if !without.reached {
            return Ok(CriticalValue::Essential);
        }
        let mut best = 0.0_f64;
        for step in &without.steps {
            // `i` is never in the run without it, so its value was computed at every step.
            let Some(with_i) = step.with.get(i).copied().flatten() else {
                continue;
            };
            let gain_i = with_i - step.before;
            if gain_i > tol {
                best = best.max(costs[step.client] * gain_i / step.gain);
            }
        }
        Ok(CriticalValue::Finite(best))
    }

    /// The critical value by bisection on client `i`'s report over `[0, upper]` (valid because
    /// the selection is monotone); returns `upper` when `i` is still selected there.
    pub fn critical_value_by_bisection(
        &self,
        costs: &[f64],
        beta: f64,
        i: usize,
        upper: f64,
        iterations: usize,
    ) -> Result<f64, IncentiveError> {
        check_positive("upper", upper)?;
        if i >= self.clients() {
            return Err(IncentiveError::AgentOutOfRange {
                agent: i,
                agents: self.clients(),
            });
        }
        let mut report = costs.to_vec();
        let selected_at = |c: f64, report: &mut Vec<f64>| -> Result<bool, IncentiveError> {
            if let Some(slot) = report.get_mut(i) {
                *slot = c;
            }
            Ok(self.select(report, beta)?.selected.contains(&i))
        };
        if selected_at(upper, &mut report)? {
            return Ok(upper);
        }
        let (mut lo, mut hi) = (0.0, upper);
        for _ in 0..iterations {
            let mid = 0.5 * (lo + hi);
            if selected_at(mid, &mut report)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(0.5 * (lo + hi))
    }

    /// Payments of the selected participants under `mechanism`.
    pub fn payments(
        &self,
        costs: &[f64],
        config: &MechanismConfig,
        mechanism: Mechanism,
    ) -> Result<(Selection, Vec<Payment>), IncentiveError> {
        config.validate()?;
        let (full, target) = self.full_run(costs, config.beta)?;
        let selection = full.selection(target);
        let mut payments = Vec::with_capacity(selection.selected.len());
        for &i in &selection.selected {
            let payment = match mechanism {
                Mechanism::TruthFedBan => match self.critical_value_in(&full, costs, target, i)? {
                    CriticalValue::Finite(p) => Payment {
                        client: i,
                        amount: p,
                        capped: false,
                        credited_value: 0.0,
                    },
                    CriticalValue::Essential => Payment {
                        client: i,
                        amount: config.essential_cap,
                        capped: true,
                        credited_value: 0.0,
                    },
                },
                Mechanism::Baseline => {
                    // Value of the received data: log det of the aggregate the client downloads
                    // over log det of what it held (lambda I + V_g + its own dV).
                    let own = self.value(&[i])?;
                    let credit = config.baseline_value_weight * (selection.value - own).max(0.0);
                    Payment {
                        client: i,
                        amount: (costs[i] - credit).max(0.0),
                        capped: false,
                        credited_value: credit,
                    }
                }
            };
            payments.push(payment);
        }
        Ok((selection, payments))
    }
}

/// What [`SelectionProblem::value`] calls the matrix it factors.
const SUM: &str = "lambda I + V_g + sum dV";

/// A greedy run: `g({})`, its steps, the value it reached and whether that meets the target.
#[derive(Clone, Debug)]
struct Greedy {
    start: f64,
    steps: Vec<Step>,
    value: f64,
    reached: bool,
}

impl Greedy {
    /// The run as a [`Selection`] towards `target`.
    fn selection(&self, target: f64) -> Selection {
        Selection {
            selected: self.steps.iter().map(|s| s.client).collect(),
            value: self.value,
            target,
        }
    }
}

/// One greedy step `k`: the client `j_k` added, its gain, `g(S_{k-1})`, `g(S_k)`, and
/// `g(S_{k-1} u {j})` of every client `j` (`None` for the members of `S_{k-1}`).
#[derive(Clone, Debug)]
struct Step {
    client: usize,
    gain: f64,
    before: f64,
    after: f64,
    with: Vec<Option<f64>>,
}

/// Whether candidate `a = (id, gain, cost)` beats `b` in the greedy order.
fn prefers(a: (usize, f64, f64), b: (usize, f64, f64)) -> bool {
    let key = |(_, gain, cost): (usize, f64, f64)| -> (bool, f64) {
        if cost == 0.0 {
            (true, gain)
        } else {
            (false, gain / cost)
        }
    };
    let (ka, kb) = (key(a), key(b));
    if ka.0 != kb.0 {
        return ka.0;
    }
    if ka.1 != kb.1 {
        return ka.1 > kb.1;
    }
    a.0 < b.0
}

fn check_beta(beta: f64) -> Result<(), IncentiveError> {
    if beta.is_finite() && beta > 0.0 && beta <= 1.0 {
        Ok(())
    } else {
        Err(IncentiveError::InvalidParameter {
            name: "beta",
            value: beta,
            reason: "must be in (0, 1]",
        })
    }
}

/// The paper's Lemma 7 bound: with `t` observations of norm at most `max_norm` in total, no
/// client is essential once `beta <= (1 + t max_norm^2 / (lambda d))^{-d}`.
pub fn no_essential_beta(t: usize, max_norm: f64, lambda: f64, dim: usize) -> f64 {
    let d = dim.max(1) as f64;
    (1.0 + t as f64 * max_norm * max_norm / (lambda * d)).powf(-d)
}

// ---------------------------------------------------------------------------------------------
// Truthful-vs-misreport utilities.

/// One row of the misreport table: client `client` reports `factor * c_true`, the others tell
/// the truth; utility is [`Payment::utility`] if selected, else 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UtilityRow {
    /// Client index.
    pub client: usize,
    /// Misreport factor (1 = truthful).
    pub factor: f64,
    /// Utility under Truth-FedBan.
    pub truthful_mechanism: f64,
    /// Utility under the baseline.
    pub baseline: f64,
}

/// Utilities of every client for every misreport factor under both mechanisms.
pub fn utility_table(
    problem: &SelectionProblem,
    true_costs: &[f64],
    factors: &[f64],
    config: &MechanismConfig,
) -> Result<Vec<UtilityRow>, IncentiveError> {
    problem.check_costs(true_costs)?;
    let mut rows = Vec::new();
    for client in 0..problem.clients() {
        let c_true = true_costs[client];
        for &factor in factors {
            if !(factor.is_finite() && factor >= 0.0) {
                return Err(IncentiveError::InvalidParameter {
                    name: "misreport factor",
                    value: factor,
                    reason: "must be finite and >= 0",
                });
            }
            let mut report = true_costs.to_vec();
            report[client] = factor * c_true;
            let utility = |mechanism| -> Result<f64, IncentiveError> {
                let (_, pays) = problem.payments(&report, config, mechanism)?;
                Ok(pays
                    .iter()
                    .find(|p| p.client == client)
                    .map_or(0.0, |p| p.utility(c_true)))
            };
            rows.push(UtilityRow {
                client,
                factor,
                truthful_mechanism: utility(Mechanism::TruthFedBan)?,
                baseline: utility(Mechanism::Baseline)?,
            });
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Synthetic linear environment and the protocol loop.

/// Settings of a synthetic Truth-FedBan run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Context dimension `d`.
    pub dim: usize,
    /// Number of clients `N`.
    pub clients: usize,
    /// Arms per step (fresh unit vectors each step).
    pub arms: usize,
    /// Horizon `T` (total steps over all clients).
    pub horizon: usize,
    /// Ridge `lambda`.
    pub lambda: f64,
    /// LinUCB exploration `alpha`.
    pub alpha: f64,
    /// Reward noise standard deviation.
    pub noise_sd: f64,
    /// Trigger threshold `D_c`.
    pub threshold: f64,
    /// Mechanism settings (`beta`, cap, baseline weight).
    pub mechanism: MechanismConfig,
    /// Payment rule.
    pub rule: Mechanism,
    /// True per-round participation costs are drawn uniformly from `[cost_low, cost_high]`.
    pub cost_low: f64,
    /// Upper end of the true cost range.
    pub cost_high: f64,
    /// Per-client report factor (`reported = factor * true`); empty = all truthful.
    pub report_factors: Vec<f64>,
    /// Seed of the environment, arm sets, noise, costs and active-client draws.
    pub seed: u64,
}

impl SimConfig {
    /// A small default instance (`d = 5`, 10 clients, 10 arms); constants are ours.
    pub fn small(horizon: usize, seed: u64) -> Self {
        Self {
            dim: 5,
            clients: 10,
            arms: 10,
            horizon,
            lambda: 1.0,
            alpha: 1.0,
            noise_sd: 0.1,
            threshold: 20.0,
            mechanism: MechanismConfig {
                beta: 0.5,
                essential_cap: 5.0,
                baseline_value_weight: 1.0,
            },
            rule: Mechanism::TruthFedBan,
            cost_low: 0.5,
            cost_high: 1.5,
            report_factors: Vec::new(),
            seed,
        }
    }
}

/// What happened in one communication round.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRecord {
    /// Step `t` (1-based) at which the trigger fired.
    pub step: usize,
    /// The active client whose trigger fired.
    pub trigger_client: usize,
    /// Participants in greedy order.
    pub selected: Vec<usize>,
    /// Their payments.
    pub payments: Vec<Payment>,
    /// `g(S)` reached and the target.
    pub value: f64,
    /// `g(all) + log(beta)`.
    pub target: f64,
}

/// The record of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimOutcome {
    /// Cumulative pseudo-regret after each step (`len = horizon`).
    pub cumulative_regret: Vec<f64>,
    /// Every communication round.
    pub rounds: Vec<RoundRecord>,
    /// Total payment received per client.
    pub paid: Vec<f64>,
    /// Total value credited per client by the baseline (0 under Truth-FedBan).
    pub credited: Vec<f64>,
    /// Total true cost incurred per client (when selected).
    pub incurred: Vec<f64>,
    /// Social cost: sum of true costs of all participants over all rounds.
    pub social_cost: f64,
}

impl SimOutcome {
    /// Each client's utility `paid + credited - incurred`.
    pub fn utilities(&self) -> Vec<f64> {
        self.paid
            .iter()
            .zip(&self.credited)
            .zip(&self.incurred)
            .map(|((p, v), c)| p + v - c)
            .collect()
    }
}

/// Runs Truth-FedBan (or the baseline) on a seeded synthetic linear environment.
pub fn simulate(config: &SimConfig) -> Result<SimOutcome, IncentiveError> {
    config.mechanism.validate()?;
    let (d, n) = (config.dim, config.clients);
    if n == 0 {
        return Err(IncentiveError::TooFewAgents {
            mechanism: "truth-fedban simulation",
            needed: 1,
            got: 0,
        });
    }
    if !(config.noise_sd.is_finite() && config.noise_sd >= 0.0) {
        return Err(IncentiveError::InvalidParameter {
            name: "noise_sd",
            value: config.noise_sd,
            reason: "must be finite and >= 0",
        });
    }
    if !(config.cost_low.is_finite()
        && config.cost_low >= 0.0
        && config.cost_high >= config.cost_low
        && config.cost_high.is_finite())
    {
        return Err(IncentiveError::InvalidParameter {
            name: "cost_high",
            value: config.cost_high,
            reason: "need 0 <= cost_low <= cost_high, both finite",
        });
    }
    if !config.report_factors.is_empty() {
        check_agent_values("report_factors", "report factor", &config.report_factors, n)?;
    }
    check_positive("threshold", config.threshold)?;
    let noise =
        Normal::new(0.0, config.noise_sd).map_err(|_| IncentiveError::InvalidParameter {
            name: "noise_sd",
            value: config.noise_sd,
            reason: "must be finite and >= 0",
        })?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let theta_star = unit_vector(&mut rng, d);
    let mut agents = (0..n)
        .map(|_| LinUcbClient::new(d, config.lambda, config.alpha))
        .collect::<Result<Vec<_>, _>>()?;
    let mut v_g = vec![0.0; d * d];
    let mut b_g = vec![0.0; d];
    let mut outcome = SimOutcome {
        cumulative_regret: Vec::with_capacity(config.horizon),
        rounds: Vec::new(),
        paid: vec![0.0; n],
        credited: vec![0.0; n],
        incurred: vec![0.0; n],
        social_cost: 0.0,
    };
    let mut regret = 0.0;
    let mut t_last = 0;
    for t in 1..=config.horizon {
        let i = rng.random_range(0..n);
        let arms: Vec<Vec<f64>> = (0..config.arms.max(1))
            .map(|_| unit_vector(&mut rng, d))
            .collect();
        let agent = agents.get_mut(i).ok_or(IncentiveError::AgentOutOfRange {
            agent: i,
            agents: n,
        })?;
        let k = agent.choose(&arms)?;
        let x = &arms[k];
        let mean = dot(x, &theta_star);
        let best = arms
            .iter()
            .map(|a| dot(a, &theta_star))
            .fold(f64::NEG_INFINITY, f64::max);
        regret += best - mean;
        outcome.cumulative_regret.push(regret);
        agent.observe(x, mean + noise.sample(&mut rng))?;
        if agent.trigger_statistic(t, t_last)? <= config.threshold {
            continue;
        }
        // Communication round.
        let true_costs: Vec<f64> = (0..n)
            .map(|_| rng.random_range(config.cost_low..=config.cost_high))
            .collect();
        let reported: Vec<f64> = true_costs
            .iter()
            .enumerate()
            .map(|(j, c)| c * config.report_factors.get(j).copied().unwrap_or(1.0))
            .collect();
        let problem = SelectionProblem::new(
            d,
            config.lambda,
            &v_g,
            agents.iter().map(|a| a.pending_gram().to_vec()).collect(),
        )?;
        let (selection, payments) = problem.payments(&reported, &config.mechanism, config.rule)?;
        for p in &payments {
            outcome.paid[p.client] += p.amount;
            outcome.credited[p.client] += p.credited_value;
        }
        for &j in &selection.selected {
            outcome.incurred[j] += true_costs[j];
            outcome.social_cost += true_costs[j];
            add_assign(&mut v_g, agents[j].pending_gram());
            add_assign(&mut b_g, agents[j].pending_b());
            agents[j].clear_pending();
        }
        for a in &mut agents {
            a.download(&v_g, &b_g)?;
        }
        outcome.rounds.push(RoundRecord {
            step: t,
            trigger_client: i,
            selected: selection.selected,
            payments,
            value: selection.value,
            target: selection.target,
        });
        t_last = t;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random round: an aggregate from 20 unit contexts, `clients` updates of
    /// `contexts(rng)` unit contexts each and costs uniform in `[0.5, 1.5]`.
    fn random_round(
        seed: u64,
        clients: usize,
        dim: usize,
        mut contexts: impl FnMut(&mut ChaCha8Rng) -> usize,
    ) -> (SelectionProblem, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut v_g = vec![0.0; dim * dim];
        for _ in 0..20 {
            add_outer(&mut v_g, &unit_vector(&mut rng, dim));
        }
        let updates = (0..clients)
            .map(|_| {
                let mut u = vec![0.0; dim * dim];
                for _ in 0..contexts(&mut rng) {
                    add_outer(&mut u, &unit_vector(&mut rng, dim));
                }
                u
            })
            .collect();
        let costs = (0..clients).map(|_| rng.random_range(0.5..=1.5)).collect();
        let problem = SelectionProblem::new(dim, 1.0, &v_g, updates).unwrap();
        (problem, costs)
    }

    /// A random round whose client updates hold 1..=6 contexts.
    fn instance(seed: u64, clients: usize, dim: usize) -> (SelectionProblem, Vec<f64>) {
        random_round(seed, clients, dim, |rng| rng.random_range(1..=6))
    }

    const BETA: f64 = 0.6;

    fn config() -> MechanismConfig {
        MechanismConfig {
            beta: BETA,
            essential_cap: 5.0,
            baseline_value_weight: 1.0,
        }
    }

    /// A worst-case round for the selection's cost: `clients` updates of three random unit
    /// contexts each over an aggregate of 20, `beta = 1` (every client with a positive gain is
    /// selected and essential, so every critical-value rerun runs to exhaustion).
    fn worst_case(clients: usize, dim: usize) -> (SelectionProblem, Vec<f64>, MechanismConfig) {
        let (problem, costs) = random_round(5, clients, dim, |_| 3);
        let config = MechanismConfig {
            beta: 1.0,
            ..config()
        };
        (problem, costs, config)
    }

    /// Wall time of one round's selection and critical-value payments at a few sizes (run
    /// with `--ignored --nocapture`; prints, asserts only that every client was paid).
    #[test]
    #[ignore = "a measurement, not a check: run by hand"]
    fn truthfedban_selection_cost_measurement() {
        for (clients, dim) in [(10, 170), (4, 256), (10, 256), (30, 164), (100, 73)] {
            let (p, costs, cfg) = worst_case(clients, dim);
            let start = std::time::Instant::now();
            let (s, pays) = p.payments(&costs, &cfg, Mechanism::TruthFedBan).unwrap();
            let took = start.elapsed();
            println!(
                "n {clients} d {dim}: {} selected, {:.3} s, d^3 n^2 = {:.3e}",
                s.selected.len(),
                took.as_secs_f64(),
                (dim as f64).powi(3) * (clients as f64).powi(2)
            );
            assert_eq!(pays.len(), s.selected.len());
        }
    }

    /// A step of [`reference_greedy`]: `(j_k, gain_k, S_{k-1})`.
    type ReferenceStep = (usize, f64, Vec<usize>);

    /// The greedy as it was before memoisation: every candidate's `g` from scratch with
    /// [`SelectionProblem::value`]; returns the steps `(j_k, gain_k, S_{k-1})`, the value and
    /// whether the target was reached.
    fn reference_greedy(
        p: &SelectionProblem,
        costs: &[f64],
        pool: &[usize],
        target: f64,
    ) -> (Vec<ReferenceStep>, f64, bool) {
        let tol = LOG_DET_TOLERANCE * target.abs().max(1.0);
        let mut chosen: Vec<usize> = Vec::new();
        let mut current = p.value(&chosen).unwrap();
        let mut steps = Vec::new();
        while current < target - tol {
            let mut best: Option<(usize, f64, f64)> = None;
            for &j in pool {
                if chosen.contains(&j) {
                    continue;
                }
                let mut with = chosen.clone();
                with.push(j);
                let after = p.value(&with).unwrap();
                let gain = after - current;
                if gain <= tol {
                    continue;
                }
                if best
                    .is_none_or(|(b, bgain, _)| prefers((j, gain, costs[j]), (b, bgain, costs[b])))
                {
                    best = Some((j, gain, after));
                }
            }
            let Some((j, gain, after)) = best else {
                return (steps, current, false);
            };
            steps.push((j, gain, chosen.clone()));
            chosen.push(j);
            current = after;
        }
        (steps, current, true)
    }

    /// The critical value as it was before memoisation (a greedy without `i` from scratch).
    fn reference_critical_value(
        p: &SelectionProblem,
        costs: &[f64],
        beta: f64,
        i: usize,
    ) -> CriticalValue {
        let target = p.target(beta).unwrap();
        let tol = LOG_DET_TOLERANCE * target.abs().max(1.0);
        let pool: Vec<usize> = (0..p.clients()).filter(|&j| j != i).collect();
        let (steps, _, reached) = reference_greedy(p, costs, &pool, target);
        if !reached {
            return CriticalValue::Essential;
        }
        let mut best = 0.0_f64;
        for (client, gain, before) in &steps {
            let b = p.value(before).unwrap();
            let mut with = before.clone();
            with.push(i);
            let gain_i = p.value(&with).unwrap() - b;
            if gain_i > tol {
                best = best.max(costs[*client] * gain_i / gain);
            }
        }
        CriticalValue::Finite(best)
    }

    /// The memoised greedy (kept factor sums, the full run's prefix reused by every
    /// critical-value rerun) gives exactly what the plain greedy gave: same selections, same
    /// values, same critical values bit for bit, on random rounds with zero costs, tied costs,
    /// empty updates and every beta from tiny to 1.
    #[test]
    fn truthfedban_memoised_greedy_equals_the_plain_one() {
        let mut compared = 0;
        for seed in 0..12 {
            let (p, mut costs) = instance(seed, 9, 4);
            if seed % 3 == 1 {
                costs[seed as usize % 9] = 0.0;
            }
            if seed % 3 == 2 {
                let c = costs[0];
                costs.iter_mut().step_by(2).for_each(|x| *x = c);
            }
            for beta in [0.05, 0.3, BETA, 0.9, 1.0] {
                let target = p.target(beta).unwrap();
                let pool: Vec<usize> = (0..9).collect();
                let (steps, value, _) = reference_greedy(&p, &costs, &pool, target);
                let s = p.select(&costs, beta).unwrap();
                let expected: Vec<usize> = steps.iter().map(|s| s.0).collect();
                assert_eq!((&s.selected, s.value, s.target), (&expected, value, target));
                for i in 0..9 {
                    assert_eq!(
                        p.critical_value(&costs, beta, i).unwrap(),
                        reference_critical_value(&p, &costs, beta, i),
                        "seed {seed} beta {beta} client {i}"
                    );
                    compared += 1;
                }
            }
        }
        // A client with an empty update and one whose update alone reaches the target.
        let d = 2;
        let updates = vec![
            vec![0.0; 4],
            vec![9.0, 0.0, 0.0, 9.0],
            vec![0.5, 0.0, 0.0, 0.0],
        ];
        let p = SelectionProblem::new(d, 1.0, &[0.0; 4], updates).unwrap();
        for i in 0..3 {
            assert_eq!(
                p.critical_value(&[0.0, 1.0, 2.0], 0.5, i).unwrap(),
                reference_critical_value(&p, &[0.0, 1.0, 2.0], 0.5, i)
            );
        }
        assert!(compared >= 500);
    }

    /// The server's recomputation of a trigger (`trigger_statistic` from `V_g` and `dV`) is
    /// bit for bit the client's, fresh and after downloads.
    #[test]
    fn truthfedban_trigger_statistic_recomputed_bit_for_bit() {
        let (d, lambda) = (4, 0.7);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut client = LinUcbClient::new(d, lambda, 1.0).unwrap();
        let mut v_g = vec![0.0; d * d];
        let mut checked = 0;
        for t in 1..=60_usize {
            let x = unit_vector(&mut rng, d);
            client.observe(&x, rng.random_range(-1.0..1.0)).unwrap();
            let t_last = t - t % 7;
            let expected = client.trigger_statistic(t, t_last).unwrap();
            let again =
                trigger_statistic(d, lambda, &v_g, client.pending_gram(), t, t_last).unwrap();
            assert_eq!(expected.to_bits(), again.to_bits(), "step {t}");
            checked += usize::from(expected > 0.0);
            if t % 10 == 0 {
                // A round: the client uploads and downloads an aggregate with others' data.
                add_assign(&mut v_g, client.pending_gram());
                add_outer(&mut v_g, &unit_vector(&mut rng, d));
                client.clear_pending();
                client.download(&v_g, &[0.0; 4]).unwrap();
            }
        }
        assert!(checked >= 40);
        assert!(trigger_statistic(d, lambda, &v_g, &[0.0; 3], 2, 1).is_err());
        assert!(trigger_statistic(d, lambda, &v_g, &[0.0; 16], 1, 2).is_err());
    }

    #[test]
    fn truthfedban_cholesky_log_det_and_solve() {
        // A = [[4, 2], [2, 3]]: det 8, A^-1 [2, 1] = [0.5, 0].
        let a = [4.0, 2.0, 2.0, 3.0];
        let l = cholesky(&a, 2, "a").unwrap();
        assert!((log_det_from_factor(&l, 2) - 8.0_f64.ln()).abs() < 1e-12);
        let x = cholesky_solve(&l, 2, &[2.0, 1.0]);
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
        assert!(matches!(
            cholesky(&[1.0, 2.0, 2.0, 1.0], 2, "b"),
            Err(IncentiveError::NotPositiveDefinite { pivot: 1, .. })
        ));
    }

    #[test]
    fn truthfedban_linucb_trigger_and_errors() {
        let mut c = LinUcbClient::new(2, 1.0, 0.0).unwrap();
        assert_eq!(c.trigger_statistic(5, 0).unwrap(), 0.0);
        c.observe(&[1.0, 0.0], 2.0).unwrap();
        // det V / det(V - dV) = 2 / 1.
        assert!((c.trigger_statistic(3, 1).unwrap() - 2.0 * 2.0_f64.ln()).abs() < 1e-12);
        let theta = c.theta().unwrap();
        assert!((theta[0] - 1.0).abs() < 1e-12 && theta[1].abs() < 1e-12);
        assert_eq!(c.choose(&[vec![0.0, 1.0], vec![1.0, 0.0]]).unwrap(), 1);
        assert!(matches!(
            c.observe(&[1.0], 0.0),
            Err(IncentiveError::Dimension {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert!(matches!(
            c.observe(&[f64::NAN, 0.0], 0.0),
            Err(IncentiveError::InvalidParameter { .. })
        ));
        assert!(c.trigger_statistic(1, 2).is_err());
        c.clear_pending();
        assert_eq!(c.trigger_statistic(9, 0).unwrap(), 0.0);
    }

    #[test]
    fn truthfedban_target_met_and_costs_validated() {
        for seed in 0..5 {
            let (p, costs) = instance(seed, 8, 4);
            for beta in [0.2, 0.5, 0.9, 1.0] {
                let s = p.select(&costs, beta).unwrap();
                assert!(s.value >= s.target - 1e-8, "seed {seed} beta {beta}");
                assert!(!s.selected.is_empty());
            }
        }
        let (p, mut costs) = instance(0, 4, 3);
        costs[2] = -1.0;
        assert!(matches!(
            p.select(&costs, 0.5),
            Err(IncentiveError::InvalidAgentValue { agent: 2, .. })
        ));
        assert!(p.select(&costs[..3], 0.5).is_err());
        assert!(p.select(&[1.0; 4], 1.5).is_err());
    }

    #[test]
    fn truthfedban_selection_is_monotone() {
        for seed in 0..6 {
            let (p, costs) = instance(seed, 8, 4);
            let s = p.select(&costs, BETA).unwrap();
            for i in 0..8 {
                let selected = s.selected.contains(&i);
                for f in [0.0, 0.1, 0.5, 0.9, 1.1, 2.0, 10.0] {
                    let mut r = costs.clone();
                    r[i] *= f;
                    let now = p.select(&r, BETA).unwrap().selected.contains(&i);
                    if f < 1.0 && selected {
                        assert!(now, "lower report un-selected {i} (seed {seed}, f {f})");
                    }
                    if f > 1.0 && !selected {
                        assert!(!now, "higher report selected {i} (seed {seed}, f {f})");
                    }
                }
            }
        }
    }

    #[test]
    fn truthfedban_payment_invariant_and_at_least_cost() {
        let mut checked = 0;
        for seed in 0..6 {
            let (p, costs) = instance(seed, 8, 4);
            let (s, pays) = p
                .payments(&costs, &config(), Mechanism::TruthFedBan)
                .unwrap();
            assert_eq!(pays.len(), s.selected.len());
            for pay in pays.iter().filter(|p| !p.capped) {
                let i = pay.client;
                assert!(
                    pay.amount >= costs[i],
                    "payment {} < cost {}",
                    pay.amount,
                    costs[i]
                );
                for f in [0.05, 0.3, 0.6, 0.95] {
                    let mut r = costs.clone();
                    r[i] = f * pay.amount;
                    let (s2, pays2) = p.payments(&r, &config(), Mechanism::TruthFedBan).unwrap();
                    assert!(s2.selected.contains(&i));
                    let again = pays2.iter().find(|q| q.client == i).unwrap();
                    assert!((again.amount - pay.amount).abs() < 1e-9 * pay.amount.max(1.0));
                }
                checked += 1;
            }
        }
        assert!(checked >= 5, "only {checked} non-capped payments checked");
    }

    #[test]
    fn truthfedban_closed_form_equals_bisection() {
        let mut checked = 0;
        for seed in 0..4 {
            let (p, costs) = instance(seed, 7, 3);
            for i in 0..7 {
                let closed = p.critical_value(&costs, BETA, i).unwrap();
                let search = p
                    .critical_value_by_bisection(&costs, BETA, i, 1e3, 80)
                    .unwrap();
                match closed {
                    CriticalValue::Finite(v) => {
                        assert!((v - search).abs() < 1e-7 * v.max(1.0), "{v} vs {search}");
                        checked += 1;
                    }
                    CriticalValue::Essential => assert_eq!(search, 1e3),
                }
            }
        }
        assert!(checked >= 10);
    }

    #[test]
    fn truthfedban_essential_client_is_capped() {
        // Client 0 holds all the information; with beta = 0.9 nobody else can reach the target.
        let d = 2;
        let big = vec![50.0, 0.0, 0.0, 50.0];
        let small = vec![0.01, 0.0, 0.0, 0.01];
        let p = SelectionProblem::new(d, 1.0, &[0.0; 4], vec![big, small.clone(), small]).unwrap();
        let cfg = MechanismConfig {
            beta: 0.9,
            essential_cap: 7.0,
            baseline_value_weight: 1.0,
        };
        assert_eq!(
            p.critical_value(&[3.0, 1.0, 1.0], 0.9, 0).unwrap(),
            CriticalValue::Essential
        );
        let (_, pays) = p
            .payments(&[3.0, 1.0, 1.0], &cfg, Mechanism::TruthFedBan)
            .unwrap();
        assert_eq!(
            pays[0],
            Payment {
                client: 0,
                amount: 7.0,
                capped: true,
                credited_value: 0.0
            }
        );
        assert!(no_essential_beta(100, 1.0, 1.0, 5) < 1e-5);
    }

    const FACTORS: [f64; 7] = [0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0];

    #[test]
    fn truthfedban_truthful_report_maximises_utility_baseline_does_not() {
        let mut baseline_gain_found = false;
        for seed in 0..4 {
            let (p, costs) = instance(seed, 8, 4);
            let table = utility_table(&p, &costs, &FACTORS, &config()).unwrap();
            for i in 0..8 {
                let rows: Vec<&UtilityRow> = table.iter().filter(|r| r.client == i).collect();
                let truth = rows.iter().find(|r| r.factor == 1.0).unwrap();
                for r in &rows {
                    assert!(
                        r.truthful_mechanism <= truth.truthful_mechanism + 1e-9,
                        "seed {seed} client {i} factor {} gains {} > {}",
                        r.factor,
                        r.truthful_mechanism,
                        truth.truthful_mechanism
                    );
                    if r.baseline > truth.baseline + 1e-6 {
                        baseline_gain_found = true;
                    }
                }
                assert!(truth.truthful_mechanism >= -1e-12, "individual rationality");
            }
        }
        assert!(
            baseline_gain_found,
            "the baseline should reward some misreport"
        );
    }

    #[test]
    fn truthfedban_print_utility_table() {
        let (p, costs) = instance(1, 8, 4);
        let table = utility_table(&p, &costs, &FACTORS, &config()).unwrap();
        let selected = p.select(&costs, BETA).unwrap().selected;
        println!("true costs {costs:?}; truthful selection {selected:?}");
        println!("client factor truth-fedban baseline");
        for r in &table {
            println!(
                "{} {:.2} {:.4} {:.4}",
                r.client, r.factor, r.truthful_mechanism, r.baseline
            );
        }
        assert_eq!(table.len(), 8 * FACTORS.len());
    }

    #[test]
    fn truthfedban_regret_sublinear_and_communication_sparse() {
        let horizon = 8000;
        let out = simulate(&SimConfig::small(horizon, 7)).unwrap();
        let ratio = |t: usize| out.cumulative_regret[t - 1] / (t as f64).sqrt();
        let ratios: Vec<f64> = [1000, 2000, 4000, 8000].iter().map(|&t| ratio(t)).collect();
        println!(
            "regret/sqrt(T) at 1000/2000/4000/8000: {ratios:?}; rounds {}; social cost {:.2}; paid {:.2}",
            out.rounds.len(),
            out.social_cost,
            out.paid.iter().sum::<f64>()
        );
        assert!(ratios[3] <= 1.5 * ratios[0], "{ratios:?}");
        assert!(
            out.rounds.len() * 10 < horizon,
            "{} rounds",
            out.rounds.len()
        );
        assert!(!out.rounds.is_empty());
        for r in &out.rounds {
            assert!(r.value >= r.target - 1e-8);
        }
        // Every client's realised utility is non-negative: payments cover true costs.
        for u in out.utilities() {
            assert!(u >= -1e-9, "{u}");
        }
    }

    #[test]
    fn truthfedban_simulation_is_deterministic_per_seed() {
        let a = simulate(&SimConfig::small(600, 3)).unwrap();
        let b = simulate(&SimConfig::small(600, 3)).unwrap();
        let c = simulate(&SimConfig::small(600, 4)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.cumulative_regret, c.cumulative_regret);
    }

    #[test]
    fn truthfedban_simulation_misreport_tables() {
        for rule in [Mechanism::TruthFedBan, Mechanism::Baseline] {
            let mut line = Vec::new();
            for f in FACTORS {
                let mut cfg = SimConfig::small(2000, 11);
                cfg.rule = rule;
                cfg.report_factors = vec![1.0; cfg.clients];
                cfg.report_factors[0] = f;
                let out = simulate(&cfg).unwrap();
                line.push((f, out.utilities()[0]));
            }
            println!("{rule:?} client 0 utility by factor: {line:?}");
            // Truth-FedBan's run-level line is printed only: its guarantee is per round.
            if rule == Mechanism::Baseline {
                // Under the baseline, doubling the report pays more than the truth.
                assert!(line[6].1 > line[3].1 + 1e-6, "{line:?}");
            }
        }
    }
}
