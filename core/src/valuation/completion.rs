//! Low-rank matrix completion by alternating least squares (ALS), the tool VerFedSV uses
//! to fill the embeddings a synchronous vertical round never observed (ALGORITHMS.md 3).
//!
//! Given the observed entries `Omega` of a `rows x cols` matrix `H`, it minimises
//!
//! ```text
//! f(X, Y) = sum_{(t, i) in Omega} (H_ti - x_t^T y_i)^2 + lambda (|X|_F^2 + |Y|_F^2)
//! ```
//!
//! over `X` (`rows x r`) and `Y` (`cols x r`), and returns `X Y^T` as the estimate of
//! every entry. Each half-step is exact: with `X` fixed, column `i` solves the ridge
//! system `(sum_{t in Omega_i} x_t x_t^T + lambda I) y_i = sum_{t in Omega_i} H_ti x_t`
//! (an `r x r` Cholesky solve), and symmetrically for the rows, so `f` never increases.
//! `X` starts from a seeded Gaussian draw scaled to the data; ALS stops when the
//! relative decrease of `f` falls below the tolerance or after the iteration cap.
//!
//! Inputs are either a list of observed `(row, col, value)` entries ([`complete`]) or a
//! dense matrix with an observation mask ([`complete_masked`]). Defaults follow the
//! VerFedSV reference code: rank 3, `lambda = 0.1`.

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::linalg;

/// Parameters of [`complete`]; check them with [`validate`](Self::validate) (the
/// completion functions do).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompletionSettings {
    /// Rank `r` of the factorisation (`>= 1`; default 3).
    pub rank: usize,
    /// Ridge weight `lambda` on `|X|^2 + |Y|^2` (`> 0` and finite; default 0.1). It
    /// makes every half-step well posed, also for rows or columns with fewer than `r`
    /// observations (those shrink towards zero).
    pub lambda: f64,
    /// Cap on ALS sweeps (one sweep updates `Y`, then `X`; `>= 1`; default 500).
    pub max_iterations: usize,
    /// Stop when `(f_prev - f) <= tolerance * f_prev` (`>= 0` and finite; default 1e-7).
    pub tolerance: f64,
    /// Seed of the initial `X`.
    pub seed: u64,
}

impl Default for CompletionSettings {
    fn default() -> Self {
        Self {
            rank: 3,
            lambda: 0.1,
            max_iterations: 500,
            tolerance: 1e-7,
            seed: 0,
        }
    }
}

impl CompletionSettings {
    /// Checks every parameter, naming the first invalid one.
    pub fn validate(&self) -> Result<(), CompletionError> {
        let invalid = |setting: &'static str, value: String, expected: &'static str| {
            Err(CompletionError::InvalidSetting {
                setting,
                value,
                expected,
            })
        };
        if self.rank == 0 {
            return invalid("rank", "0".into(), "at least 1");
        }
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return invalid("lambda", self.lambda.to_string(), "positive and finite");
        }
        if self.max_iterations == 0 {
            return invalid("max_iterations", "0".into(), "at least 1");
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return invalid(
                "tolerance",
                self.tolerance.to_string(),
                "non-negative and finite",
            );
        }
        Ok(())
    }
}

/// One observed entry `H[row, col] = value`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Row index.
    pub row: usize,
    /// Column index.
    pub col: usize,
    /// The observed value (finite).
    pub value: f64,
}

/// The result of a completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// `X Y^T`: the low-rank estimate of every entry, observed or not (`rows x cols`).
    pub matrix: Array2<f64>,
    /// The row factors `X` (`rows x r`).
    pub row_factors: Array2<f64>,
    /// The column factors `Y` (`cols x r`).
    pub col_factors: Array2<f64>,
    /// Root mean squared fit error on the observed entries (the fit residual).
    pub rmse: f64,
    /// The final objective `f(X, Y)` (squared error plus ridge).
    pub objective: f64,
    /// ALS sweeps run.
    pub iterations: usize,
    /// Whether the tolerance was met before the iteration cap.
    pub converged: bool,
}

/// Errors of matrix completion: invalid settings or inputs, each naming the offender.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CompletionError {
    /// A setting is out of range.
    #[error("invalid completion setting {setting} = {value}: expected {expected}")]
    InvalidSetting {
        /// The setting's field name.
        setting: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        expected: &'static str,
    },
    /// The matrix has no rows or no columns.
    #[error("cannot complete an empty {rows} x {cols} matrix")]
    EmptyMatrix {
        /// Rows requested.
        rows: usize,
        /// Columns requested.
        cols: usize,
    },
    /// Nothing was observed.
    #[error("no observed entries: a {rows} x {cols} matrix cannot be completed from nothing")]
    NoObservations {
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// An observation lies outside the matrix.
    #[error("observation ({row}, {col}) lies outside the {rows} x {cols} matrix")]
    OutOfBounds {
        /// Row of the observation.
        row: usize,
        /// Column of the observation.
        col: usize,
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// The same entry was observed twice.
    #[error("entry ({row}, {col}) is observed more than once")]
    DuplicateObservation {
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
    },
    /// An observed value is NaN or infinite.
    #[error("observed entry ({row}, {col}) is {value}; observations must be finite")]
    NonFinite {
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// The mask and the matrix differ in shape.
    #[error("mask is {mask_rows} x {mask_cols} but the matrix is {rows} x {cols}")]
    MaskShape {
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
        /// Rows of the mask.
        mask_rows: usize,
        /// Columns of the mask.
        mask_cols: usize,
    },
    /// A ridge system lost positive definiteness (values so large that rounding wins).
    #[error(
        "alternating least squares broke down at sweep {iteration}: a ridge system is not \
         positive definite (observed values too large?)"
    )]
    NumericalBreakdown {
        /// The sweep that failed (1-based).
        iteration: usize,
    },
}

/// Completes a `rows x cols` matrix from the entries `observed` (any order, each entry
/// at most once, finite values).
pub fn complete(
    rows: usize,
    cols: usize,
    observed: &[Observation],
    settings: &CompletionSettings,
) -> Result<Completion, CompletionError> {
    settings.validate()?;
    if rows == 0 || cols == 0 {
        return Err(CompletionError::EmptyMatrix { rows, cols });
    }
    if observed.is_empty() {
        return Err(CompletionError::NoObservations { rows, cols });
    }
    let by_row = Lists::new(rows, cols, observed, false)?;
    let by_col = Lists::new(cols, rows, observed, true)?;
    Als::new(rows, cols, settings).run(&by_row, &by_col, settings)
}

/// Completes `matrix` from its entries where `mask` is true (values elsewhere are
/// ignored, NaN included).
pub fn complete_masked(
    matrix: ArrayView2<f64>,
    mask: ArrayView2<bool>,
    settings: &CompletionSettings,
) -> Result<Completion, CompletionError> {
    let (rows, cols) = matrix.dim();
    if mask.dim() != (rows, cols) {
        return Err(CompletionError::MaskShape {
            rows,
            cols,
            mask_rows: mask.nrows(),
            mask_cols: mask.ncols(),
        });
    }
    let observed: Vec<Observation> = matrix
        .indexed_iter()
        .zip(mask.iter())
        .filter(|(_, seen)| **seen)
        .map(|(((row, col), &value), _)| Observation { row, col, value })
        .collect();
    complete(rows, cols, &observed, settings)
}

/// The observations grouped by one axis: `lists[k]` holds `(other index, value)` pairs
/// of line `k` (a row, or a column when `transpose`).
struct Lists {
    lists: Vec<Vec<(usize, f64)>>,
}

impl Lists {
    /// Groups `observed` by row (or by column), validating bounds, finiteness and
    /// uniqueness.
    fn new(
        lines: usize,
        others: usize,
        observed: &[Observation],
        transpose: bool,
    ) -> Result<Self, CompletionError> {
        let mut lists = vec![Vec::new(); lines];
        for o in observed {
            let (line, other) = if transpose {
                (o.col, o.row)
            } else {
                (o.row, o.col)
            };
            let list = match lists.get_mut(line) {
                Some(list) if other < others => list,
                _ => {
                    let (rows, cols) = if transpose {
                        (others, lines)
                    } else {
                        (lines, others)
                    };
                    return Err(CompletionError::OutOfBounds {
                        row: o.row,
                        col: o.col,
                        rows,
                        cols,
                    });
                }
            };
            if !o.value.is_finite() {
                return Err(CompletionError::NonFinite {
                    row: o.row,
                    col: o.col,
                    value: o.value,
                });
            }
            list.push((other, o.value));
        }
        for (line, list) in lists.iter_mut().enumerate() {
            list.sort_by_key(|&(other, _)| other);
            if let Some(pair) = list.windows(2).find(|w| w[0].0 == w[1].0) {
                let (row, col) = if transpose {
                    (pair[0].0, line)
                } else {
                    (line, pair[0].0)
                };
                return Err(CompletionError::DuplicateObservation { row, col });
            }
        }
        Ok(Self { lists })
    }
}

/// The ALS state: both factors plus scratch for the `r x r` systems.
struct Als {
    x: Array2<f64>,
    y: Array2<f64>,
    gram: Vec<f64>,
    rhs: Vec<f64>,
}

impl Als {
    /// Seeded Gaussian `X`, zero `Y`.
    fn new(rows: usize, cols: usize, settings: &CompletionSettings) -> Self {
        let r = settings.rank;
        let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
        let x = Array2::from_shape_simple_fn((rows, r), || StandardNormal.sample(&mut rng));
        Self {
            x,
            y: Array2::zeros((cols, r)),
            gram: vec![0.0; r * r],
            rhs: vec![0.0; r],
        }
    }

    /// Runs the sweeps; `by_row` and `by_col` are the same observations grouped both ways.
    fn run(
        mut self,
        by_row: &Lists,
        by_col: &Lists,
        settings: &CompletionSettings,
    ) -> Result<Completion, CompletionError> {
        // Scale X so that x^T y starts near the data's magnitude: |x|^2 ~ |y|^2 ~ rms.
        let count: usize = by_row.lists.iter().map(Vec::len).sum();
        let mean_square = by_row
            .lists
            .iter()
            .flatten()
            .map(|&(_, v)| v * v)
            .sum::<f64>()
            / count as f64;
        self.spectral_start(by_row, by_col);
        // Q has unit columns (entries ~ 1/sqrt(rows)); rescale so |x_t|^2 ~ |y_i|^2 ~ rms.
        let scale =
            (mean_square.sqrt() / settings.rank as f64).sqrt() * (self.x.nrows() as f64).sqrt();
        if scale > 0.0 && scale.is_finite() {
            self.x.mapv_inplace(|v| v * scale);
        }
        let mut previous = f64::INFINITY;
        let mut objective = f64::INFINITY;
        let mut iterations = 0;
        let mut converged = false;
        while iterations < settings.max_iterations {
            iterations += 1;
            let breakdown = CompletionError::NumericalBreakdown {
                iteration: iterations,
            };
            if !self.half_step(by_col, false, settings.lambda) {
                return Err(breakdown);
            }
            if !self.half_step(by_row, true, settings.lambda) {
                return Err(breakdown);
            }
            self.balance();
            objective = self.objective(by_row, settings.lambda);
            if !objective.is_finite() {
                return Err(breakdown);
            }
            if previous.is_finite() && previous - objective <= settings.tolerance * previous {
                converged = true;
                break;
            }
            previous = objective;
        }
        let squared_error = self.squared_error(by_row);
        let matrix = self.x.dot(&self.y.t());
        Ok(Completion {
            matrix,
            row_factors: self.x,
            col_factors: self.y,
            rmse: (squared_error / count as f64).sqrt(),
            objective,
            iterations,
            converged,
        })
    }

    /// Replaces the Gaussian `X` by an orthonormal basis of the dominant `r`-dimensional
    /// column space of the zero-filled observed matrix `A` (subspace iteration on
    /// `A A^T` from the seeded draw). Random starts can leave ALS in a poor local
    /// minimum when the singular values are spread (a training history is dominated by
    /// its growing direction); this spectral start is the standard remedy (Jain, Netrapalli
    /// & Sanghavi 2013).
    fn spectral_start(&mut self, by_row: &Lists, by_col: &Lists) {
        let r = self.rhs.len();
        orthonormalise(&mut self.x);
        for _ in 0..SPECTRAL_ITERATIONS {
            // W = A^T Q (cols x r), then Q = orth(A W).
            let mut w = Array2::<f64>::zeros((by_col.lists.len(), r));
            for (mut out, list) in w.rows_mut().into_iter().zip(&by_col.lists) {
                for &(t, value) in list {
                    out.scaled_add(value, &self.x.row(t));
                }
            }
            let mut q = Array2::<f64>::zeros(self.x.dim());
            for (mut out, list) in q.rows_mut().into_iter().zip(&by_row.lists) {
                for &(i, value) in list {
                    out.scaled_add(value, &w.row(i));
                }
            }
            orthonormalise(&mut q);
            self.x = q;
        }
    }

    /// Re-solves every line of one factor (`Y` from `X`, or `X` from `Y` when
    /// `update_rows`); false if a system is not positive definite.
    fn half_step(&mut self, lists: &Lists, update_rows: bool, lambda: f64) -> bool {
        let r = self.rhs.len();
        let (target, fixed) = if update_rows {
            (&mut self.x, &self.y)
        } else {
            (&mut self.y, &self.x)
        };
        for (mut out, list) in target.rows_mut().into_iter().zip(&lists.lists) {
            self.gram.fill(0.0);
            self.rhs.fill(0.0);
            for &(other, value) in list {
                let f = fixed.row(other);
                for a in 0..r {
                    self.rhs[a] += value * f[a];
                    for b in 0..=a {
                        self.gram[a * r + b] += f[a] * f[b];
                    }
                }
            }
            for a in 0..r {
                self.gram[a * r + a] += lambda;
            }
            if !cholesky_solve(&mut self.gram, &mut self.rhs, r) {
                return false;
            }
            for (o, v) in out.iter_mut().zip(&self.rhs) {
                *o = *v;
            }
        }
        true
    }

    /// Re-balances the factors without changing `X Y^T`: replaces `(X, Y)` by
    /// `(X G, Y G^-T)` with `G` chosen so that `X^T X = Y^T Y`, which minimises the ridge
    /// term `|X|^2 + |Y|^2` over all such factorisations (it becomes twice the nuclear
    /// norm of `X Y^T`). Without it, a small `lambda` leaves ALS drifting for hundreds of
    /// sweeps along this scale ambiguity, and the objective never meets the tolerance.
    ///
    /// With `A = X^T X = L L^T` and `L^T (Y^T Y) L = W D W^T`:
    /// `G = L^-T W D^(1/4)` and `G^-T = L W D^(-1/4)`, so both Gram matrices become
    /// `D^(1/2)`. Skipped when a factor is rank deficient.
    fn balance(&mut self) {
        let r = self.rhs.len();
        let mut l: Vec<f64> = self.x.t().dot(&self.x).iter().copied().collect();
        if linalg::cholesky_in_place(&mut l, r).is_err() {
            return;
        }
        let l = Array2::from_shape_fn((r, r), |(i, j)| if j <= i { l[i * r + j] } else { 0.0 });
        let b = self.y.t().dot(&self.y);
        let (d, w) = symmetric_eigen(&l.t().dot(&b).dot(&l));
        if d.iter().any(|v| !(*v > 0.0 && v.is_finite())) {
            return;
        }
        let mut right = w.clone(); // W D^(1/4), then L^-T W D^(1/4) by back substitution
        let mut left = l.dot(&w); // L W D^(-1/4)
        for (k, dk) in d.iter().enumerate() {
            right.column_mut(k).mapv_inplace(|v| v * dk.powf(0.25));
            left.column_mut(k).mapv_inplace(|v| v * dk.powf(-0.25));
        }
        for mut col in right.columns_mut() {
            for i in (0..r).rev() {
                let mut s = col[i];
                for k in i + 1..r {
                    s -= l[[k, i]] * col[k];
                }
                col[i] = s / l[[i, i]];
            }
        }
        let x = self.x.dot(&right);
        let y = self.y.dot(&left);
        if x.iter().chain(y.iter()).all(|v| v.is_finite()) {
            self.x = x;
            self.y = y;
        }
    }

    /// Sum of squared errors on the observed entries.
    fn squared_error(&self, by_row: &Lists) -> f64 {
        by_row
            .lists
            .iter()
            .enumerate()
            .map(|(t, list)| {
                let x = self.x.row(t);
                list.iter()
                    .map(|&(i, value)| {
                        let e = value - x.dot(&self.y.row(i));
                        e * e
                    })
                    .sum::<f64>()
            })
            .sum()
    }

    /// The ALS objective `f(X, Y)`.
    fn objective(&self, by_row: &Lists, lambda: f64) -> f64 {
        let ridge = self
            .x
            .iter()
            .chain(self.y.iter())
            .map(|v| v * v)
            .sum::<f64>();
        self.squared_error(by_row) + lambda * ridge
    }
}

/// Subspace iterations of [`Als::spectral_start`].
const SPECTRAL_ITERATIONS: usize = 20;

/// Makes the columns of `q` orthonormal (modified Gram-Schmidt); a column that is
/// (numerically) in the span of the previous ones is left as its small remainder.
fn orthonormalise(q: &mut Array2<f64>) {
    for j in 0..q.ncols() {
        for k in 0..j {
            let dot = q.column(j).dot(&q.column(k));
            let prev = q.column(k).to_owned();
            q.column_mut(j).scaled_add(-dot, &prev);
        }
        let norm = q.column(j).dot(&q.column(j)).sqrt();
        if norm > 1e-300 {
            q.column_mut(j).mapv_inplace(|v| v / norm);
        }
    }
}

/// Solves `A z = b` for a symmetric positive definite `r x r` matrix `A` (only the lower
/// triangle of row-major `a` is read; it is overwritten by its Cholesky factor) and
/// writes `z` into `b`. False if `A` is not numerically positive definite.
fn cholesky_solve(a: &mut [f64], b: &mut [f64], r: usize) -> bool {
    if linalg::cholesky_in_place(a, r).is_err() {
        return false;
    }
    linalg::cholesky_solve(a, r, b);
    true
}

/// Eigen-decomposition `C = W diag(d) W^T` of a small symmetric matrix by cyclic Jacobi
/// rotations; returns `(d, W)` with the eigenvectors as the columns of `W`.
fn symmetric_eigen(c: &Array2<f64>) -> (Vec<f64>, Array2<f64>) {
    let r = c.nrows();
    let mut a = c.clone();
    let mut w = Array2::<f64>::eye(r);
    let scale = a.iter().map(|v| v * v).sum::<f64>();
    for _ in 0..100 {
        let off: f64 = (0..r)
            .flat_map(|p| (0..r).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[[p, q]] * a[[p, q]])
            .sum();
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..r {
            for q in p + 1..r {
                let apq = a[[p, q]];
                if apq == 0.0 {
                    continue;
                }
                // The rotation angle that zeroes a[p, q] (Golub & Van Loan, 8.4).
                let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let cos = 1.0 / (t * t + 1.0).sqrt();
                let sin = t * cos;
                for k in 0..r {
                    let (akp, akq) = (a[[k, p]], a[[k, q]]);
                    a[[k, p]] = cos * akp - sin * akq;
                    a[[k, q]] = sin * akp + cos * akq;
                }
                for k in 0..r {
                    let (apk, aqk) = (a[[p, k]], a[[q, k]]);
                    a[[p, k]] = cos * apk - sin * aqk;
                    a[[q, k]] = sin * apk + cos * aqk;
                }
                for k in 0..r {
                    let (wkp, wkq) = (w[[k, p]], w[[k, q]]);
                    w[[k, p]] = cos * wkp - sin * wkq;
                    w[[k, q]] = sin * wkp + cos * wkq;
                }
            }
        }
    }
    ((0..r).map(|k| a[[k, k]]).collect(), w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// A random `rows x cols` matrix of rank `rank` (Gaussian factors).
    fn low_rank(rows: usize, cols: usize, rank: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |r, c| {
            Array2::from_shape_simple_fn((r, c), || -> f64 { StandardNormal.sample(&mut rng) })
        };
        let u = draw(rows, rank);
        let v = draw(cols, rank);
        u.dot(&v.t())
    }

    /// A mask with each entry observed independently with probability `p`.
    fn random_mask(rows: usize, cols: usize, p: f64, seed: u64) -> Array2<bool> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_simple_fn((rows, cols), || rng.random_bool(p))
    }

    /// `|A - B|_F / |B|_F`.
    fn relative_error(estimate: &Array2<f64>, truth: &Array2<f64>) -> f64 {
        let diff = (estimate - truth).mapv(|v| v * v).sum().sqrt();
        diff / truth.mapv(|v| v * v).sum().sqrt()
    }

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2], [2, 3]], b = [2, 1] -> z = [0.5, 0].
        let mut a = vec![4.0, 0.0, 2.0, 3.0];
        let mut b = vec![2.0, 1.0];
        assert!(cholesky_solve(&mut a, &mut b, 2));
        assert!((b[0] - 0.5).abs() < 1e-15 && b[1].abs() < 1e-15, "{b:?}");
        let mut singular = vec![1.0, 0.0, 1.0, 1.0];
        assert!(!cholesky_solve(&mut singular, &mut [1.0, 1.0], 2));
    }

    #[test]
    fn jacobi_eigen_decomposes_a_symmetric_matrix() {
        let c = ndarray::arr2(&[[4.0, 1.0, -2.0], [1.0, 3.0, 0.5], [-2.0, 0.5, 5.0]]);
        let (d, w) = symmetric_eigen(&c);
        let rebuilt = w
            .dot(&Array2::from_diag(&ndarray::Array1::from(d.clone())))
            .dot(&w.t());
        assert!((&rebuilt - &c).iter().all(|v| v.abs() < 1e-12), "{rebuilt}");
        let identity = w.t().dot(&w) - Array2::<f64>::eye(3);
        assert!(identity.iter().all(|v| v.abs() < 1e-12));
        // The trace is preserved.
        assert!((d.iter().sum::<f64>() - 12.0).abs() < 1e-12);
    }

    #[test]
    fn rank_three_from_thirty_percent_of_entries_within_five_percent() {
        // 60 x 200 of rank 3, 30% observed uniformly at random. lambda = 1e-3 (small
        // against ~18 observations of unit-variance factors per column) so the ridge
        // bias stays far below the 5% bar of issue 5.
        let truth = low_rank(60, 200, 3, 1);
        let mask = random_mask(60, 200, 0.3, 2);
        let observed = mask.iter().filter(|m| **m).count() as f64 / mask.len() as f64;
        assert!(
            (observed - 0.3).abs() < 0.02,
            "observed fraction {observed}"
        );
        let settings = CompletionSettings {
            lambda: 1e-3,
            ..CompletionSettings::default()
        };
        let c = complete_masked(truth.view(), mask.view(), &settings).unwrap();
        let error = relative_error(&c.matrix, &truth);
        eprintln!(
            "30% observed: relative error {error}, rmse {}, sweeps {}",
            c.rmse, c.iterations
        );
        assert!(error < 0.05, "relative error on all entries {error}");
        assert!(c.converged, "{} sweeps", c.iterations);
        assert!(c.rmse < 0.05, "observed-entry rmse {}", c.rmse);
        // The reference code's default lambda = 0.1 also passes the bar here.
        let default =
            complete_masked(truth.view(), mask.view(), &CompletionSettings::default()).unwrap();
        let default_error = relative_error(&default.matrix, &truth);
        eprintln!(
            "30% observed, lambda 0.1: relative error {default_error}, sweeps {}",
            default.iterations
        );
        assert!(
            default_error < 0.05,
            "lambda 0.1: relative error {default_error}"
        );
        // The factors are balanced (X^T X = Y^T Y), which is what lets ALS converge fast.
        let gap = c.row_factors.t().dot(&c.row_factors) - c.col_factors.t().dot(&c.col_factors);
        assert!(gap.iter().all(|v| v.abs() < 1e-6), "{gap}");
        // The reported objective is the squared error plus the ridge term.
        let count = mask.iter().filter(|m| **m).count() as f64;
        let ridge = c.row_factors.mapv(|v| v * v).sum() + c.col_factors.mapv(|v| v * v).sum();
        let expected = c.rmse * c.rmse * count + 1e-3 * ridge;
        assert!((c.objective - expected).abs() <= 1e-9 * expected.max(1.0));
    }

    #[test]
    fn fully_observed_low_rank_matrix_is_recovered() {
        let truth = low_rank(20, 30, 3, 7);
        let mask = Array2::from_elem((20, 30), true);
        let settings = CompletionSettings {
            lambda: 1e-10,
            tolerance: 1e-14,
            ..CompletionSettings::default()
        };
        let c = complete_masked(truth.view(), mask.view(), &settings).unwrap();
        let error = relative_error(&c.matrix, &truth);
        assert!(error < 1e-6, "relative error {error}");
        assert_eq!(c.matrix.dim(), (20, 30));
        assert_eq!(c.row_factors.dim(), (20, 3));
        assert_eq!(c.col_factors.dim(), (30, 3));
    }

    #[test]
    fn sparse_and_masked_inputs_agree_and_runs_are_deterministic() {
        let truth = low_rank(15, 25, 2, 3);
        let mask = random_mask(15, 25, 0.5, 4);
        let mut observed: Vec<Observation> = truth
            .indexed_iter()
            .filter(|((r, c), _)| mask[[*r, *c]])
            .map(|((row, col), &value)| Observation { row, col, value })
            .collect();
        observed.reverse();
        let settings = CompletionSettings {
            seed: 11,
            ..CompletionSettings::default()
        };
        let a = complete(15, 25, &observed, &settings).unwrap();
        let b = complete_masked(truth.view(), mask.view(), &settings).unwrap();
        assert_eq!(a, b, "the order of observations does not matter");
        assert_eq!(
            a,
            complete(15, 25, &observed, &settings).unwrap(),
            "same seed, same result"
        );
        let other = CompletionSettings {
            seed: 12,
            max_iterations: 1,
            ..settings
        };
        assert_ne!(
            complete(15, 25, &observed, &other).unwrap().matrix,
            a.matrix
        );
    }

    #[test]
    fn iteration_cap_is_respected() {
        let truth = low_rank(10, 10, 3, 5);
        let mask = random_mask(10, 10, 0.5, 6);
        let settings = CompletionSettings {
            max_iterations: 2,
            tolerance: 0.0,
            ..CompletionSettings::default()
        };
        let c = complete_masked(truth.view(), mask.view(), &settings).unwrap();
        assert_eq!((c.iterations, c.converged), (2, false));
    }

    #[test]
    fn unobserved_lines_shrink_to_zero() {
        // Row 2 and column 3 are never observed: the ridge sets their factors to zero.
        let observed = [
            Observation {
                row: 0,
                col: 0,
                value: 1.0,
            },
            Observation {
                row: 1,
                col: 1,
                value: 2.0,
            },
            Observation {
                row: 0,
                col: 2,
                value: -1.0,
            },
        ];
        let c = complete(3, 4, &observed, &CompletionSettings::default()).unwrap();
        assert!(c.row_factors.row(2).iter().all(|v| *v == 0.0));
        assert!(c.col_factors.row(3).iter().all(|v| *v == 0.0));
        assert!(c.matrix.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn invalid_settings_and_inputs_are_refused() {
        let ok = CompletionSettings::default();
        let one = [Observation {
            row: 0,
            col: 0,
            value: 1.0,
        }];
        let bad = |s: CompletionSettings| complete(2, 2, &one, &s).unwrap_err();
        let err = bad(CompletionSettings {
            rank: 0,
            ..ok.clone()
        });
        assert!(matches!(
            err,
            CompletionError::InvalidSetting {
                setting: "rank",
                ..
            }
        ));
        assert!(err.to_string().contains("rank = 0"), "{err}");
        for lambda in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = bad(CompletionSettings {
                lambda,
                ..ok.clone()
            });
            assert!(matches!(
                err,
                CompletionError::InvalidSetting {
                    setting: "lambda",
                    ..
                }
            ));
        }
        let err = bad(CompletionSettings {
            max_iterations: 0,
            ..ok.clone()
        });
        assert!(matches!(
            err,
            CompletionError::InvalidSetting {
                setting: "max_iterations",
                ..
            }
        ));
        let err = bad(CompletionSettings {
            tolerance: f64::NAN,
            ..ok.clone()
        });
        assert!(matches!(
            err,
            CompletionError::InvalidSetting {
                setting: "tolerance",
                ..
            }
        ));

        assert_eq!(
            complete(0, 3, &one, &ok),
            Err(CompletionError::EmptyMatrix { rows: 0, cols: 3 })
        );
        assert_eq!(
            complete(2, 2, &[], &ok),
            Err(CompletionError::NoObservations { rows: 2, cols: 2 })
        );
        let outside = [Observation {
            row: 0,
            col: 5,
            value: 1.0,
        }];
        let err = complete(2, 2, &outside, &ok).unwrap_err();
        assert_eq!(
            err,
            CompletionError::OutOfBounds {
                row: 0,
                col: 5,
                rows: 2,
                cols: 2
            }
        );
        assert!(err.to_string().contains("(0, 5)"), "{err}");
        let below = [Observation {
            row: 7,
            col: 0,
            value: 1.0,
        }];
        assert!(matches!(
            complete(2, 2, &below, &ok),
            Err(CompletionError::OutOfBounds { row: 7, .. })
        ));
        let nan = [Observation {
            row: 1,
            col: 1,
            value: f64::NAN,
        }];
        assert!(matches!(
            complete(2, 2, &nan, &ok),
            Err(CompletionError::NonFinite { row: 1, col: 1, .. })
        ));
        let twice = [
            one[0],
            Observation {
                row: 0,
                col: 0,
                value: 2.0,
            },
        ];
        assert_eq!(
            complete(2, 2, &twice, &ok),
            Err(CompletionError::DuplicateObservation { row: 0, col: 0 })
        );

        let m = Array2::<f64>::zeros((2, 3));
        let mask = Array2::from_elem((3, 2), true);
        assert!(matches!(
            complete_masked(m.view(), mask.view(), &ok),
            Err(CompletionError::MaskShape { mask_rows: 3, .. })
        ));
        // NaN where the mask is false is ignored; where it is true it is refused.
        let mut m = Array2::from_elem((2, 2), 1.0);
        m[[1, 0]] = f64::NAN;
        let mut mask = Array2::from_elem((2, 2), true);
        assert!(complete_masked(m.view(), mask.view(), &ok).is_err());
        mask[[1, 0]] = false;
        assert!(complete_masked(m.view(), mask.view(), &ok).is_ok());
    }
}
