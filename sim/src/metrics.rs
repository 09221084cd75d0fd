//! Run-level metrics of an attacked federation (ALGORITHMS.md section 4): each client's
//! standalone accuracy, fairness as a Pearson correlation, honest clients' accuracy and
//! the success rate of label flipping.
//!
//! "Honest" clients are those whose behaviour is not an adversary's
//! ([`Behaviour::is_adversary`](crate::Behaviour::is_adversary)): honest, noisy, tiny and
//! late joiners. Definitions (all on the held-out test set):
//! - standalone accuracy: a model of the scenario's spec trained alone on the client's own
//!   local data (as the client holds it, behaviour applied) for `rounds * local_epochs`
//!   epochs with the scenario's batch size and learning rate, seeded per client;
//! - fairness: Pearson correlation between the honest clients' standalone accuracies and
//!   the test accuracies of their final models. With RFFL each client's final model is its
//!   own; with a shared-model aggregator (FedAvg, median, Krum, ...) every client ends
//!   with the same global model, which has no variance, so each client's final model is
//!   taken as that global model fine-tuned for one round (`local_epochs`) on its own data
//!   ([`trained_accuracy`]). Undefined (`None`) when either side has no variance;
//! - honest accuracy: mean (and best) test accuracy of the honest clients' final models
//!   (the global model itself for shared-model aggregators);
//! - attack success rate (label flipping): over the honest clients' final models, the mean
//!   fraction of test samples predicted as the flipped label `C - 1 - y`, counting only
//!   samples whose flipped label differs from `y` (the middle class of an odd `C` is its
//!   own flip and is left out).

use fedval_core::data::Dataset;
use fedval_core::model::{ModelError, ModelSpec, TrainConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Pearson correlation of paired samples; `None` for fewer than two pairs, different
/// lengths, non-finite values or zero variance on either side.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    // Spreads below this are rounding noise of identical values.
    let tiny = 1e-24 * n;
    if sxx <= tiny || syy <= tiny {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Test accuracy of a model trained alone on `data` from `spec.init_params(init_seed)`.
pub fn standalone_accuracy(
    spec: &ModelSpec,
    data: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
    init_seed: u64,
    seed: u64,
) -> Result<f64, ModelError> {
    trained_accuracy(spec, spec.init_params(init_seed), data, test, cfg, seed)
}

/// Test accuracy of `start` after training it on `data` with `cfg`: the "final model" of
/// a client in a federation where everyone ends with the same global model, fine-tuned
/// on the client's own data, so that fairness is defined for shared-model aggregators.
pub fn trained_accuracy(
    spec: &ModelSpec,
    mut start: Vec<f32>,
    data: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
    seed: u64,
) -> Result<f64, ModelError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    spec.train(&mut start, data, cfg, &mut rng)?;
    Ok(spec.evaluate(&start, test)?.accuracy)
}

/// Fraction of the test samples with `C - 1 - y != y` that `params` predicts as `C - 1 - y`;
/// `None` if there are no such samples.
pub fn flip_success_rate(
    spec: &ModelSpec,
    params: &[f32],
    test: &Dataset,
) -> Result<Option<f64>, ModelError> {
    let predicted = spec.predict(params, test.features.view())?;
    let top = test.num_classes.saturating_sub(1) as u32;
    let (mut hits, mut count) = (0usize, 0usize);
    for (&p, &y) in predicted.iter().zip(&test.labels) {
        let flipped = top.saturating_sub(y);
        if flipped != y {
            count += 1;
            hits += usize::from(p == flipped);
        }
    }
    Ok((count > 0).then(|| hits as f64 / count as f64))
}

/// The run-level metrics of a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunMetrics {
    /// Pearson(standalone, final test accuracy) over honest clients; `None` if undefined.
    pub fairness: Option<f64>,
    /// Why `fairness` is `None`, when it is.
    pub fairness_note: Option<String>,
    /// What fairness compares standalone accuracy with: the clients' own final models, or
    /// the shared global model fine-tuned on each client's data.
    pub fairness_basis: String,
    /// Mean final test accuracy of the honest clients.
    pub honest_accuracy: f64,
    /// Best final test accuracy among the honest clients.
    pub honest_accuracy_best: f64,
    /// Label-flipping success rate; `None` when the scenario has no label flippers.
    pub attack_success_rate: Option<f64>,
}

/// The fairness value and, when undefined, the reason.
pub fn fairness(standalone: &[f64], final_acc: &[f64]) -> (Option<f64>, Option<String>) {
    match pearson(standalone, final_acc) {
        Some(r) => (Some(r), None),
        None if standalone.len() < 2 => (None, Some("fewer than two honest clients".into())),
        None if final_acc.windows(2).all(|w| w[0] == w[1]) => (
            None,
            Some(
                "undefined: every honest client ends with the same final model (one global \
                 model, as with FedAvg), so final accuracies have no variance"
                    .into(),
            ),
        ),
        None => (
            None,
            Some("undefined: standalone accuracies have no variance".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use fedval_core::data::parse_csv;

    use super::*;

    #[test]
    fn pearson_matches_hand_computed_values() {
        // x = 1,2,3,4; y = 2,4,5,9: means 2.5 and 5; sxy = 4.5 + 0.5 + 0 + 6 = 11,
        // sxx = 5, syy = 9 + 1 + 0 + 16 = 26; r = 11 / sqrt(130).
        let r = pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 5.0, 9.0]).expect("defined");
        assert!((r - 11.0 / 130f64.sqrt()).abs() < 1e-12, "{r}");
        let r = pearson(&[1.0, 2.0, 3.0], &[6.0, 4.0, 2.0]).expect("defined");
        assert!((r + 1.0).abs() < 1e-12, "{r}");
        let r = pearson(&[0.1, 0.5], &[0.2, 0.3]).expect("defined");
        assert!((r - 1.0).abs() < 1e-12, "{r}");
    }

    #[test]
    fn pearson_is_undefined_without_variance_or_pairs() {
        assert_eq!(pearson(&[0.1, 0.5, 0.9], &[0.8, 0.8, 0.8]), None);
        assert_eq!(pearson(&[0.5], &[0.5]), None);
        assert_eq!(pearson(&[0.1, 0.2], &[0.1]), None);
        assert_eq!(pearson(&[0.1, f64::NAN], &[0.1, 0.2]), None);
        let (value, note) = fairness(&[0.1, 0.5, 0.9], &[0.8, 0.8, 0.8]);
        assert_eq!(value, None);
        assert!(note.expect("note").contains("same final model"));
    }

    #[test]
    fn flip_success_counts_predictions_of_the_flipped_label() {
        // Logistic regression with 1 feature and 3 classes: zero weights, biases pick class 2.
        let spec = ModelSpec::LogisticRegression {
            num_features: 1,
            num_classes: 3,
        };
        let mut params = vec![0.0; spec.num_params()];
        let last = params.len() - 1;
        params[last] = 5.0; // the bias of class 2 (the layout ends with the biases)
        let test = parse_csv("0,0\n0,0\n0,1\n0,2\n", None).expect("csv");
        // Labels 0,0,1,2 -> flipped 2,2,1,0; class 1 is its own flip and is skipped;
        // predictions are all 2: hits on the two rows labelled 0, out of 3 counted.
        let rate = flip_success_rate(&spec, &params, &test).expect("predict");
        assert_eq!(rate, Some(2.0 / 3.0));
    }
}
