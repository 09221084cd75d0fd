//! The one-sample Hotelling T^2 test, used to decide when contribution estimates have
//! become stationary (fair yet asymptotically equal rewards stop exploring then).
//!
//! For `m` samples `x_1..x_m` of dimension `p` and a hypothesised mean `mu0`:
//! `T^2 = m (xbar - mu0)^T S^-1 (xbar - mu0)` with `S` the sample covariance (divisor
//! `m - 1`), and `F = (m - p) / (p (m - 1)) T^2` follows `F(p, m - p)` under the null, so
//! the p-value is `1 - F_cdf(F) = I_{1-z}((m-p)/2, p/2)` with `z = pF / (pF + m - p)` and
//! `I` the regularised incomplete beta function (continued fraction, Lentz's method).
//!
//! Two numerical choices: `S` gets a ridge of `1e-10 * trace(S) / p` on its diagonal so
//! a singular covariance (identical clients give identical coordinates) still inverts;
//! a coordinate with zero variance then contributes 0 if its mean equals `mu0` and an
//! enormous `T^2` (p-value 0) otherwise. If `S` is entirely 0, the p-value is 1 when
//! `xbar == mu0` and 0 otherwise.

use serde::{Deserialize, Serialize};

use super::ReputationError;
use crate::linalg;

/// Relative ridge added to the covariance diagonal.
const RIDGE: f64 = 1e-10;

/// Result of a one-sample Hotelling T^2 test.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HotellingTest {
    /// The T^2 statistic (may be infinite for a degenerate covariance).
    pub t2: f64,
    /// The F statistic `(m - p) / (p (m - 1)) T^2`.
    pub f: f64,
    /// Numerator degrees of freedom `p`.
    pub df1: f64,
    /// Denominator degrees of freedom `m - p`.
    pub df2: f64,
    /// Probability of an F at least this large if the true mean is `mu0`.
    pub p_value: f64,
}

/// One-sample Hotelling T^2 test of `samples` (each of dimension `mu0.len()`) against
/// the mean `mu0`. Needs `m > p >= 1` samples, all of dimension `p` and finite.
pub fn hotelling_one_sample(
    samples: &[Vec<f64>],
    mu0: &[f64],
) -> Result<HotellingTest, ReputationError> {
    let (m, p) = (samples.len(), mu0.len());
    if p == 0 || m <= p {
        return Err(ReputationError::TooFewSamples {
            needed: p + 1,
            got: m,
            dim: p,
        });
    }
    for (client, s) in samples.iter().enumerate() {
        if s.len() != p {
            return Err(ReputationError::LengthMismatch {
                client,
                expected: p,
                got: s.len(),
            });
        }
        if s.iter().any(|x| !x.is_finite()) {
            return Err(ReputationError::NonFinite {
                what: "sample",
                client,
            });
        }
    }
    if let Some(client) = mu0.iter().position(|x| !x.is_finite()) {
        return Err(ReputationError::NonFinite {
            what: "hypothesised mean",
            client,
        });
    }
    let mf = m as f64;
    let mut mean = vec![0.0; p];
    for s in samples {
        mean.iter_mut().zip(s).for_each(|(a, &x)| *a += x / mf);
    }
    // Covariance, row-major p x p.
    let mut cov = vec![0.0; p * p];
    for s in samples {
        for (a, (&xa, &ma)) in s.iter().zip(&mean).enumerate() {
            for (b, (&xb, &mb)) in s.iter().zip(&mean).enumerate() {
                if let Some(c) = cov.get_mut(a * p + b) {
                    *c += (xa - ma) * (xb - mb) / (mf - 1.0);
                }
            }
        }
    }
    let diff: Vec<f64> = mean.iter().zip(mu0).map(|(a, b)| a - b).collect();
    let trace: f64 = (0..p).filter_map(|a| cov.get(a * p + a)).sum();
    let t2 = if trace > 0.0 {
        let ridge = RIDGE * trace / p as f64;
        (0..p).for_each(|a| {
            if let Some(c) = cov.get_mut(a * p + a) {
                *c += ridge;
            }
        });
        mf * quadratic_form_inverse(&cov, &diff, p)
    } else if diff.iter().all(|&d| d == 0.0) {
        0.0
    } else {
        f64::INFINITY
    };
    let (df1, df2) = (p as f64, (m - p) as f64);
    let f = df2 / (df1 * (mf - 1.0)) * t2;
    let p_value = if f.is_finite() {
        let z = df1 * f / (df1 * f + df2);
        regularized_beta(1.0 - z, df2 / 2.0, df1 / 2.0)
    } else {
        0.0
    };
    Ok(HotellingTest {
        t2,
        f,
        df1,
        df2,
        p_value,
    })
}

/// `v^T A^-1 v` for a symmetric positive definite `A` (row-major `p x p`, `v` of length
/// `p`) by Cholesky: `|L^-1 v|^2`; infinite if `A` is not numerically positive definite.
fn quadratic_form_inverse(a: &[f64], v: &[f64], p: usize) -> f64 {
    let mut l = a.to_vec();
    if linalg::cholesky_in_place(&mut l, p).is_err() {
        return f64::INFINITY;
    }
    let mut y = v.to_vec();
    linalg::forward_substitute(&l, p, &mut y);
    linalg::dot(&y, &y)
}

/// Natural log of the gamma function for `x > 0` (Lanczos, g = 7, 9 terms; relative
/// error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = COEF
        .iter()
        .enumerate()
        .skip(1)
        .fold(COEF[0], |acc, (i, &c)| acc + c / (x + i as f64));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// Regularised incomplete beta function `I_x(a, b)` for `a, b > 0`, `x` clamped to
/// `[0, 1]`.
pub(crate) fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    if x == 0.0 || x == 1.0 {
        return x;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry
    // otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0));
    let mut h = d;
    for m in 1..=500 {
        let m = f64::from(m);
        let aa = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_beta_matches_closed_forms() {
        // I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 - (1 - x)^b.
        for &x in &[0.1, 0.37, 0.5, 0.9] {
            assert!((regularized_beta(x, 1.0, 1.0) - x).abs() < 1e-12);
            assert!((regularized_beta(x, 3.0, 1.0) - x.powi(3)).abs() < 1e-12);
            assert!((regularized_beta(x, 1.0, 4.0) - (1.0 - (1.0 - x).powi(4))).abs() < 1e-12);
        }
        // ln Gamma(5) = ln 24, ln Gamma(0.5) = ln sqrt(pi).
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn hotelling_in_one_dimension_is_the_squared_t_test() {
        // Samples 1, 2, 3, 4 against mu0 = 0: mean 2.5, variance 5/3, t^2 = 4 * 6.25 / (5/3)
        // = 15; F(1, 3) = 15 (ridge negligible), p = I_{3/18}(3/2, 1/2).
        let samples: Vec<Vec<f64>> = (1..=4).map(|x| vec![f64::from(x)]).collect();
        let test = hotelling_one_sample(&samples, &[0.0]).unwrap();
        assert!((test.t2 - 15.0).abs() < 1e-6);
        assert!((test.f - 15.0).abs() < 1e-6);
        assert_eq!((test.df1, test.df2), (1.0, 3.0));
        // Two-sided t-test with 3 df at |t| = sqrt(15) = 3.873: p = 0.030466 (tables).
        assert!((test.p_value - 0.030466).abs() < 1e-5, "{}", test.p_value);
        // F(2, 2) has cdf x / (1 + x): p-value 1 / (1 + F).
        let samples = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![-1.0, 0.0],
            vec![0.0, -1.0],
        ];
        let test = hotelling_one_sample(&samples, &[0.5, 0.0]).unwrap();
        assert!((test.p_value - 1.0 / (1.0 + test.f)).abs() < 1e-12);
        // Too few samples.
        assert!(hotelling_one_sample(&samples[..2], &[0.0, 0.0]).is_err());
    }
}
