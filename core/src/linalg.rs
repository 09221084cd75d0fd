//! Small dense linear algebra on row-major `n x n` f64 matrices (flat slices), shared by
//! the bandit incentives ([`crate::incentive`]), matrix completion
//! ([`crate::valuation::completion`]) and the Hotelling test ([`crate::reputation`]): one
//! Cholesky factorisation and its triangular solves, so every caller factors and solves the
//! same way.

/// A Cholesky factorisation stopped at a non-positive (or non-finite) pivot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct NotPositiveDefinite {
    /// Index of the failing pivot.
    pub(crate) pivot: usize,
    /// The rejected pivot value.
    pub(crate) value: f64,
}

/// `a . b`.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Overwrites the lower triangle of the row-major `n x n` matrix `a` (symmetric; only the
/// lower triangle is read; `a.len() == n * n`) with its Cholesky factor `L` (`A = L L^T`).
/// The upper triangle is left as it was.
pub(crate) fn cholesky_in_place(a: &mut [f64], n: usize) -> Result<(), NotPositiveDefinite> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if !(d.is_finite() && d > 0.0) {
            return Err(NotPositiveDefinite { pivot: j, value: d });
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    Ok(())
}

/// Solves `L z = b` in place (forward substitution; only the lower triangle of the
/// row-major `n x n` factor `l` is read; `b.len() == n`).
pub(crate) fn forward_substitute(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// Solves `L^T x = b` in place (back substitution; only the lower triangle of `l` is read).
pub(crate) fn backward_substitute(l: &[f64], n: usize, b: &mut [f64]) {
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// Solves `A x = b` in place given the Cholesky factor `L` of `A` (`A = L L^T`).
pub(crate) fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) {
    forward_substitute(l, n, b);
    backward_substitute(l, n, b);
}
