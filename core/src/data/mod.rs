//! Labelled data sets: the in-memory [`Dataset`], CSV loading, the shipped UCI sets and the
//! partitioners that split a data set across simulated clients.
//!
//! A [`Dataset`] is a dense `rows x features` f32 matrix plus one integer label per row.
//! [`Dataset::new`] checks the invariants (matching row count, labels below `num_classes`,
//! finite features) once, so models can rely on them. [`Standardizer`] z-scores features,
//! which the unscaled breast-cancer and wine sets need to train well with plain SGD.

pub mod builtin;
pub mod csv;
pub mod partition;

use std::path::PathBuf;

use ndarray::{Array2, Axis};

pub use builtin::by_name;
pub use csv::{load_csv, parse_csv, to_csv};
pub use partition::{dirichlet_label_skew, iid, quantity_skew, train_test_split};

/// Errors from building, loading or partitioning data sets.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Feature rows and labels disagree in number.
    #[error("data set has {rows} feature rows but {labels} labels")]
    RowCountMismatch {
        /// Rows of the feature matrix.
        rows: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label is not below the number of classes.
    #[error("label {label} of row {row} is out of range: the data set has {num_classes} classes")]
    LabelOutOfRange {
        /// Row index (0-based).
        row: usize,
        /// The label.
        label: u32,
        /// Number of classes.
        num_classes: usize,
    },
    /// A feature is NaN or infinite.
    #[error("feature {col} of row {row} is {value}: features must be finite")]
    NonFiniteFeature {
        /// Row index (0-based).
        row: usize,
        /// Column index (0-based).
        col: usize,
        /// The value.
        value: f32,
    },
    /// Two data sets (or a data set and a fitted transform) disagree in feature count.
    #[error("expected {expected} features, got {got}")]
    FeatureCountMismatch {
        /// Feature count expected.
        expected: usize,
        /// Feature count found.
        got: usize,
    },
    /// A CSV line could not be parsed.
    #[error("line {line}: {reason}: `{text}`")]
    Csv {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
        /// The offending text (truncated to 80 characters).
        text: String,
    },
    /// A CSV text holds no data rows.
    #[error("no data rows found (expected numeric lines `feature,...,feature,label`)")]
    NoRows,
    /// A file could not be read or decompressed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file was read but its contents are invalid.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its contents.
        source: Box<DataError>,
    },
    /// No shipped data set has this name.
    #[error("unknown data set `{name}`: expected one of {}", builtin::NAMES.join(", "))]
    UnknownDataset {
        /// The requested name.
        name: String,
    },
    /// A partition was requested for zero clients.
    #[error("cannot partition data across 0 clients")]
    NoClients,
    /// A Dirichlet concentration is not a positive finite number.
    #[error("dirichlet alpha must be a positive finite number, got {alpha}")]
    InvalidAlpha {
        /// The rejected alpha.
        alpha: f64,
    },
    /// Too few samples to give every client its minimum.
    #[error(
        "{n} samples cannot give {clients} clients at least {min_per_client} each \
         (need {needed}); use fewer clients or a smaller minimum"
    )]
    TooFewSamples {
        /// Samples available.
        n: usize,
        /// Number of clients.
        clients: usize,
        /// Minimum samples per client.
        min_per_client: usize,
        /// `clients * min_per_client`.
        needed: usize,
    },
    /// Repeated Dirichlet draws never gave every client its minimum.
    #[error(
        "no dirichlet label split with alpha {alpha} gave all {clients} clients at least \
         {min_per_client} samples in {tries} tries; raise alpha or lower the minimum"
    )]
    SkewUnsatisfiable {
        /// Concentration used.
        alpha: f64,
        /// Number of clients.
        clients: usize,
        /// Minimum samples per client.
        min_per_client: usize,
        /// Draws attempted.
        tries: usize,
    },
}

/// A dense labelled data set: `features` is `rows x num_features`, one label per row.
///
/// Build it with [`Dataset::new`] so the invariants hold (the fields are public for cheap
/// read access; code that mutates them is responsible for keeping them).
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Feature matrix, one row per sample.
    pub features: Array2<f32>,
    /// Class label of each row, each `< num_classes`.
    pub labels: Vec<u32>,
    /// Number of classes of the task (labels present may be fewer).
    pub num_classes: usize,
}

impl Dataset {
    /// Builds a data set, checking rows == labels, every label < `num_classes` and finite
    /// features.
    pub fn new(
        features: Array2<f32>,
        labels: Vec<u32>,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        if features.nrows() != labels.len() {
            return Err(DataError::RowCountMismatch {
                rows: features.nrows(),
                labels: labels.len(),
            });
        }
        if let Some((row, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::LabelOutOfRange {
                row,
                label,
                num_classes,
            });
        }
        if let Some(((row, col), &value)) = features.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(DataError::NonFiniteFeature { row, col, value });
        }
        Ok(Self {
            features,
            labels,
            num_classes,
        })
    }

    /// Number of rows (samples).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if the data set has no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of feature columns.
    pub fn num_features(&self) -> usize {
        self.features.ncols()
    }

    /// The rows at `indices`, in that order, keeping `num_classes`.
    ///
    /// Internal helper for partitions produced by [`partition`]: the indices are assumed
    /// valid, and an index `>= len()` panics.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            features: self.features.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
        }
    }

    /// Number of rows of each class (length `num_classes`).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// Per-feature z-scoring: `x' = (x - mean) / std`, fitted on one data set (the training
/// split) and applied to others, so that features on very different scales train with one
/// learning rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    /// Per-feature mean.
    pub mean: Vec<f32>,
    /// Per-feature population standard deviation (constant features get 1).
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Fits means and standard deviations (accumulated in f64). An empty data set gives
    /// mean 0 and std 1 (the identity).
    pub fn fit(data: &Dataset) -> Self {
        let n = data.len() as f64;
        let mut mean = Vec::with_capacity(data.num_features());
        let mut std = Vec::with_capacity(data.num_features());
        for col in data.features.columns() {
            let m = if n > 0.0 {
                col.iter().map(|&v| f64::from(v)).sum::<f64>() / n
            } else {
                0.0
            };
            let var = if n > 0.0 {
                col.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / n
            } else {
                1.0
            };
            let s = var.sqrt();
            mean.push(m as f32);
            std.push(if s > 1e-12 && s.is_finite() {
                s as f32
            } else {
                1.0
            });
        }
        Self { mean, std }
    }

    /// Z-scores `data` in place; fails if its feature count differs from the fitted one.
    pub fn apply(&self, data: &mut Dataset) -> Result<(), DataError> {
        if data.num_features() != self.mean.len() {
            return Err(DataError::FeatureCountMismatch {
                expected: self.mean.len(),
                got: data.num_features(),
            });
        }
        for mut row in data.features.rows_mut() {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn new_checks_invariants() {
        let f = array![[1.0f32, 2.0], [3.0, 4.0]];
        assert!(Dataset::new(f.clone(), vec![0, 1], 2).is_ok());
        assert!(matches!(
            Dataset::new(f.clone(), vec![0], 2),
            Err(DataError::RowCountMismatch { rows: 2, labels: 1 })
        ));
        assert!(matches!(
            Dataset::new(f, vec![0, 2], 2),
            Err(DataError::LabelOutOfRange {
                row: 1,
                label: 2,
                ..
            })
        ));
        let bad = array![[1.0f32, 2.0], [3.0, f32::NAN]];
        assert!(matches!(
            Dataset::new(bad, vec![0, 1], 2),
            Err(DataError::NonFiniteFeature { row: 1, col: 1, .. })
        ));
    }

    #[test]
    fn subset_and_counts() {
        let d = Dataset::new(array![[0.0f32], [1.0], [2.0]], vec![0, 1, 1], 3).unwrap();
        let s = d.subset(&[2, 0]);
        assert_eq!(s.features, array![[2.0f32], [0.0]]);
        assert_eq!(s.labels, vec![1, 0]);
        assert_eq!(s.num_classes, 3);
        assert_eq!(d.class_counts(), vec![1, 2, 0]);
        assert_eq!((d.len(), d.num_features(), d.is_empty()), (3, 1, false));
    }

    #[test]
    fn standardizer_z_scores() {
        let mut d = Dataset::new(
            array![[1.0f32, 5.0], [3.0, 5.0], [5.0, 5.0]],
            vec![0, 0, 1],
            2,
        )
        .unwrap();
        let s = Standardizer::fit(&d);
        assert_eq!(s.mean, vec![3.0, 5.0]);
        assert!((s.std[0] - (8.0f32 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!(s.std[1], 1.0, "constant feature keeps scale 1");
        s.apply(&mut d).unwrap();
        let col0: Vec<f32> = d.features.column(0).to_vec();
        assert!((col0.iter().sum::<f32>()).abs() < 1e-6);
        assert!((col0[2] - 2.0 / (8.0f32 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!(d.features.column(1).to_vec(), vec![0.0; 3]);
        let mut other = Dataset::new(array![[1.0f32]], vec![0], 2).unwrap();
        assert!(matches!(
            s.apply(&mut other),
            Err(DataError::FeatureCountMismatch {
                expected: 2,
                got: 1
            })
        ));
    }
}
