//! Vertical federated learning: parties hold different feature columns of the same samples,
//! and only the label holder (the server) holds the labels.
//!
//! Each party `m` maps its columns `x_i^m` to an embedding `h_i^m` in `R^C` with a local
//! model ([`party`]); the server combines `z_i = sum_m h_i^m + b`, evaluates the loss
//! ([`objective`]) and returns the per-sample gradients `dl/dz_i`, with which every party
//! updates its own model. [`split`] assigns a data set's columns to parties (the digits
//! quadrants, the breast-cancer measurement groups) and [`train`] holds in-process reference
//! training loops, synchronous and (deterministically simulated) asynchronous, which define
//! the semantics the server follows and record the embedding histories that VerFedSV
//! (ALGORITHMS.md section 3) values. Everything is pure and seeded; embeddings are
//! `Array2<f32>` with one row per sample and `output_dim()` columns.

pub mod objective;
pub mod party;
pub mod split;
pub mod train;

pub use objective::Objective;
pub use party::{PartyModel, PartyModelSpec};
pub use split::{ColumnSplit, project};
pub use train::{
    AsyncConfig, AsyncRun, ModelKind, Snapshot, SyncRound, SyncRun, VerticalConfig,
    VerticalMetrics, combine, evaluate, full_embeddings, score, train_async, train_sync,
};

/// Errors of the vertical module: invalid labels, targets, shapes, column splits, model
/// settings or non-finite values.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum VerticalError {
    /// Classification needs at least two classes.
    #[error("classification needs at least 2 classes, got {num_classes}")]
    TooFewClasses {
        /// The rejected class count.
        num_classes: usize,
    },
    /// A label is not below the class count.
    #[error("label {label} of sample {sample} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// Sample id.
        sample: usize,
        /// The label.
        label: u32,
        /// Number of classes.
        num_classes: usize,
    },
    /// A regression target is NaN or infinite.
    #[error("target of sample {sample} is {value}: regression targets must be finite")]
    NonFiniteTarget {
        /// Sample id.
        sample: usize,
        /// The value.
        value: f32,
    },
    /// The objective has no samples.
    #[error("the objective has no samples")]
    NoSamples,
    /// A matrix has the wrong shape.
    #[error("{what} has shape {rows} x {cols}, expected {expected_rows} x {expected_cols}")]
    ShapeMismatch {
        /// Which input.
        what: &'static str,
        /// Rows given.
        rows: usize,
        /// Columns given.
        cols: usize,
        /// Rows expected.
        expected_rows: usize,
        /// Columns expected.
        expected_cols: usize,
    },
    /// A sample id is not below the number of samples.
    #[error("sample id {sample} is out of range for {num_samples} samples")]
    SampleOutOfRange {
        /// The id.
        sample: usize,
        /// Number of samples.
        num_samples: usize,
    },
    /// A value is NaN or infinite.
    #[error("{what} holds {value} at row {row}, column {col}: values must be finite")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Row of the value.
        row: usize,
        /// Column of the value.
        col: usize,
        /// The value.
        value: f32,
    },
    /// A loss or an update over zero rows was requested.
    #[error("{what} is empty: at least one row is needed")]
    EmptyBatch {
        /// Which input.
        what: &'static str,
    },
    /// A column split is unusable.
    #[error("invalid column split: {reason}")]
    InvalidSplit {
        /// What is wrong.
        reason: String,
    },
    /// A party model spec or parameter vector is unusable.
    #[error("invalid party model: {reason}")]
    InvalidModel {
        /// What is wrong.
        reason: String,
    },
    /// A training setting is unusable.
    #[error("invalid vertical training config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A party update would make a parameter NaN or infinite (the model is left unchanged).
    #[error(
        "the update with learning rate {eta} makes parameters NaN/inf; lower the learning rate"
    )]
    UpdateDiverged {
        /// The learning rate used.
        eta: f32,
    },
    /// Parameters or the bias became NaN or infinite during training.
    #[error(
        "vertical training diverged at step {step} (parameters became NaN/inf); lower the \
         learning rate"
    )]
    Diverged {
        /// 0-based round (synchronous) or tick (asynchronous) at which it happened.
        step: usize,
    },
}

/// Fails with [`VerticalError::ShapeMismatch`] unless `m` is `rows x cols`.
fn check_shape(
    what: &'static str,
    m: ndarray::ArrayView2<f32>,
    rows: usize,
    cols: usize,
) -> Result<(), VerticalError> {
    if m.dim() != (rows, cols) {
        return Err(VerticalError::ShapeMismatch {
            what,
            rows: m.nrows(),
            cols: m.ncols(),
            expected_rows: rows,
            expected_cols: cols,
        });
    }
    Ok(())
}

/// Fails with [`VerticalError::NonFinite`] at the first NaN/inf entry of `m`.
fn check_finite(what: &'static str, m: ndarray::ArrayView2<f32>) -> Result<(), VerticalError> {
    match m.indexed_iter().find(|(_, v)| !v.is_finite()) {
        Some(((row, col), &value)) => Err(VerticalError::NonFinite {
            what,
            row,
            col,
            value,
        }),
        None => Ok(()),
    }
}
