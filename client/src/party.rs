//! The [`VerticalTrainer`] hook: the local half of a vertical party, and [`PartyTrainer`],
//! its implementation over fedval-core's [`PartyModel`].
//!
//! A party holds a feature block whose row `i` is sample id `i` (the operator aligned the
//! ids across parties; private set intersection is out of scope). The task loop
//! ([`run_vertical_node`](crate::run_vertical_node)) asks the trainer to embed the rows a
//! task names and later to apply the server's per-sample gradients to the same rows; it
//! owns all the networking. [`load_party_csv`] reads a block from the `id,features...`
//! files the `fedval-client --vertical` binary takes.

use std::path::{Path, PathBuf};

use fedval_core::vertical::{PartyModel, VerticalError};
use ndarray::{Array2, ArrayView2, Axis};

use crate::error::ClientError;
use crate::trainer::TrainerError;
use crate::vertical::VerticalParty;

/// The local computation of a vertical party, plugged into the task loop.
///
/// Both methods run on a blocking thread, so they may take as long as they need.
pub trait VerticalTrainer: Send + 'static {
    /// Embeddings of `sample_ids` with the current model: one row per id, in that order,
    /// `output_dim` columns.
    fn embed(&mut self, sample_ids: &[u32]) -> Result<Array2<f32>, TrainerError>;

    /// One SGD step on the rows `sample_ids` with their per-sample gradients `dl/dh`
    /// (`gradients` row `k` belongs to `sample_ids[k]`; not divided by the batch size),
    /// step `lr` and weight decay `l2`: `W <- (1 - lr l2) W - lr/|B| sum_i g_i x_i^T`.
    fn apply(
        &mut self,
        sample_ids: &[u32],
        gradients: ArrayView2<'_, f32>,
        lr: f32,
        l2: f32,
    ) -> Result<(), TrainerError>;
}

/// A [`VerticalTrainer`] over a [`PartyModel`] and the party's feature block.
#[derive(Clone, Debug, PartialEq)]
pub struct PartyTrainer {
    model: PartyModel,
    features: Array2<f32>,
}

impl PartyTrainer {
    /// A fresh model for `party` (linear or MLP, seeded by the server's seed) over
    /// `features`, whose row `i` is sample id `i`. Fails with
    /// [`ClientError::InvalidInput`] on a block without rows or columns, a NaN/inf value
    /// or a model the core refuses.
    pub fn new(party: &VerticalParty, features: Array2<f32>) -> Result<Self, ClientError> {
        let spec = party.spec(features.ncols());
        let model = PartyModel::new(spec, party.seed)
            .map_err(|e| ClientError::InvalidInput(format!("party model: {e}")))?;
        Self::from_model(model, features)
    }

    /// A trainer continuing `model` (e.g. restored from a checkpoint) over `features`;
    /// fails like [`new`](Self::new), and when the block's column count is not the
    /// model's.
    pub fn from_model(model: PartyModel, features: Array2<f32>) -> Result<Self, ClientError> {
        let bad = |what: String| Err(ClientError::InvalidInput(what));
        if features.nrows() == 0 || features.ncols() == 0 {
            return bad(format!(
                "the party's feature block is {} x {}: it needs rows and columns",
                features.nrows(),
                features.ncols()
            ));
        }
        if features.ncols() != model.spec().num_features() {
            return bad(format!(
                "the party's feature block has {} columns but its model takes {}",
                features.ncols(),
                model.spec().num_features()
            ));
        }
        if let Some(((row, col), v)) = features.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return bad(format!(
                "feature at sample {row}, column {col} is {v}: features must be finite"
            ));
        }
        Ok(Self { model, features })
    }

    /// The current model.
    pub fn model(&self) -> &PartyModel {
        &self.model
    }

    /// The feature block (row `i` is sample id `i`).
    pub fn features(&self) -> ArrayView2<'_, f32> {
        self.features.view()
    }

    /// The rows `sample_ids` of the block; an id past the last row is
    /// [`VerticalError::SampleOutOfRange`].
    fn rows(&self, sample_ids: &[u32]) -> Result<Array2<f32>, VerticalError> {
        let num_samples = self.features.nrows();
        let rows: Vec<usize> = sample_ids.iter().map(|&id| id as usize).collect();
        if let Some(&sample) = rows.iter().find(|&&r| r >= num_samples) {
            return Err(VerticalError::SampleOutOfRange {
                sample,
                num_samples,
            });
        }
        Ok(self.features.select(Axis(0), &rows))
    }
}

impl VerticalTrainer for PartyTrainer {
    /// [`PartyModel::embed`] of the named rows.
    fn embed(&mut self, sample_ids: &[u32]) -> Result<Array2<f32>, TrainerError> {
        let x = self.rows(sample_ids)?;
        Ok(self.model.embed(x.view())?)
    }

    /// [`PartyModel::apply_gradients`] on the named rows (the model is unchanged when it
    /// fails).
    fn apply(
        &mut self,
        sample_ids: &[u32],
        gradients: ArrayView2<'_, f32>,
        lr: f32,
        l2: f32,
    ) -> Result<(), TrainerError> {
        let x = self.rows(sample_ids)?;
        Ok(self.model.apply_gradients(x.view(), gradients, lr, l2)?)
    }
}

/// Why a party CSV (`id,features...`) was refused; every content error names its 1-based
/// line.
#[derive(Debug, thiserror::Error)]
pub enum PartyCsvError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no data rows.
    #[error("no data rows: a party CSV holds one `id,features...` line per sample")]
    Empty,
    /// A line has only an id, or a different number of fields than the first data line.
    #[error("line {line}: {found} fields, expected {expected} (id then the features)")]
    Width {
        /// 1-based line.
        line: usize,
        /// Fields found.
        found: usize,
        /// Fields of the first data line (at least 2).
        expected: usize,
    },
    /// The id field is not a non-negative integer.
    #[error("line {line}: sample id {value:?} is not a non-negative integer")]
    BadId {
        /// 1-based line.
        line: usize,
        /// The field.
        value: String,
    },
    /// An id is not below the number of data rows.
    #[error("line {line}: sample id {id} is out of range: {rows} rows need ids 0..{rows}")]
    IdOutOfRange {
        /// 1-based line.
        line: usize,
        /// The id.
        id: u64,
        /// Number of data rows.
        rows: usize,
    },
    /// An id appears twice.
    #[error("line {line}: sample id {id} already appeared on line {first}")]
    DuplicateId {
        /// 1-based line of the repeat.
        line: usize,
        /// The id.
        id: u64,
        /// 1-based line where it first appeared.
        first: usize,
    },
    /// A feature is not a number, or is NaN/inf.
    #[error("line {line}, column {column}: {value:?} is not a finite number")]
    BadValue {
        /// 1-based line.
        line: usize,
        /// 1-based field (the id is field 1).
        column: usize,
        /// The field.
        value: String,
    },
}

/// Parses a party CSV: one line per sample, `id,feature_1,...,feature_d`, ids `0..N-1` in
/// any order, each exactly once (`N` data lines). Blank lines are skipped; a first line
/// whose id field is not a number (e.g. `id,x1,x2`) is a header. Returns the block with
/// row `i` holding sample `i`'s features.
pub fn parse_party_csv(text: &str) -> Result<Array2<f32>, PartyCsvError> {
    let mut lines: Vec<(usize, Vec<&str>)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.split(',').map(str::trim).collect()))
        .collect();
    if let Some((_, fields)) = lines.first()
        && fields.first().is_some_and(|f| f.parse::<u64>().is_err())
        && fields.first().is_some_and(|f| f.parse::<f64>().is_err())
    {
        lines.remove(0);
    }
    let Some((_, first)) = lines.first() else {
        return Err(PartyCsvError::Empty);
    };
    let expected = first.len();
    let (rows, cols) = (lines.len(), expected.saturating_sub(1));
    let mut seen: Vec<Option<usize>> = vec![None; rows];
    let mut block = Array2::<f32>::zeros((rows, cols));
    for (line, fields) in &lines {
        let line = *line;
        if fields.len() != expected || fields.len() < 2 {
            return Err(PartyCsvError::Width {
                line,
                found: fields.len(),
                expected: expected.max(2),
            });
        }
        let id_field = fields.first().copied().unwrap_or_default();
        let id: u64 = id_field.parse().map_err(|_| PartyCsvError::BadId {
            line,
            value: id_field.to_owned(),
        })?;
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| seen.get_mut(i).map(|s| (i, s)));
        let Some((row, slot)) = slot else {
            return Err(PartyCsvError::IdOutOfRange { line, id, rows });
        };
        if let Some(first) = *slot {
            return Err(PartyCsvError::DuplicateId { line, id, first });
        }
        *slot = Some(line);
        for (k, field) in fields.iter().enumerate().skip(1) {
            let value = field
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| PartyCsvError::BadValue {
                    line,
                    column: k + 1,
                    value: (*field).to_owned(),
                })?;
            if let Some(cell) = block.get_mut((row, k - 1)) {
                *cell = value;
            }
        }
    }
    Ok(block)
}

/// Reads `path` with [`parse_party_csv`].
pub fn load_party_csv(path: &Path) -> Result<Array2<f32>, PartyCsvError> {
    let text = std::fs::read_to_string(path).map_err(|source| PartyCsvError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_party_csv(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedval_core::vertical::PartyModelSpec;
    use ndarray::array;

    use crate::vertical::VerticalTraining;

    fn party(hidden: usize) -> VerticalParty {
        VerticalParty {
            output_dim: 3,
            hidden,
            learning_rate: 0.5,
            l2: 0.1,
            seed: 9,
            training: VerticalTraining::Sync,
        }
    }

    fn block() -> Array2<f32> {
        array![[1.0f32, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 1.0]]
    }

    #[test]
    fn embed_and_apply_act_on_the_named_rows() {
        let start = vec![1.0, 0.0, 0.0, 2.0, -1.0, 1.0];
        let spec = PartyModelSpec::Linear {
            num_features: 2,
            output_dim: 3,
        };
        let model = PartyModel::from_params(spec, start).unwrap();
        let mut t = PartyTrainer::from_model(model.clone(), block()).unwrap();
        let ids = [3u32, 1];
        let x = array![[-2.0f32, 1.0], [3.0, -1.0]];
        assert_eq!(t.embed(&ids).unwrap(), model.embed(x.view()).unwrap());
        let g = array![[1.0f32, 0.0, 2.0], [0.0, -1.0, 1.0]];
        t.apply(&ids, g.view(), 0.5, 0.1).unwrap();
        let mut by_hand = model;
        by_hand
            .apply_gradients(x.view(), g.view(), 0.5, 0.1)
            .unwrap();
        assert_eq!(t.model(), &by_hand);
        assert_ne!(t.model().params(), &[1.0, 0.0, 0.0, 2.0, -1.0, 1.0][..]);
    }

    #[test]
    fn out_of_range_ids_are_typed_errors_and_change_nothing() {
        let mut t = PartyTrainer::new(&party(0), block()).unwrap();
        let before = t.clone();
        for err in [
            t.embed(&[0, 4]).unwrap_err(),
            t.apply(&[4], Array2::zeros((1, 3)).view(), 0.1, 0.0)
                .unwrap_err(),
        ] {
            assert_eq!(
                err.downcast_ref::<VerticalError>(),
                Some(&VerticalError::SampleOutOfRange {
                    sample: 4,
                    num_samples: 4
                })
            );
        }
        assert_eq!(t, before);
    }

    #[test]
    fn new_builds_the_partys_model_and_refuses_unusable_blocks() {
        let t = PartyTrainer::new(&party(5), block()).unwrap();
        let want = PartyModel::new(
            PartyModelSpec::Mlp {
                num_features: 2,
                hidden: 5,
                output_dim: 3,
            },
            9,
        )
        .unwrap();
        assert_eq!(t.model(), &want);
        let err = PartyTrainer::new(&party(0), Array2::zeros((0, 2))).unwrap_err();
        assert!(err.to_string().contains("is 0 x 2"), "{err}");
        let mut bad = block();
        bad[[2, 1]] = f32::INFINITY;
        let err = PartyTrainer::new(&party(0), bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("feature at sample 2, column 1 is inf"),
            "{err}"
        );
        let err = PartyTrainer::from_model(t.model().clone(), Array2::zeros((2, 3))).unwrap_err();
        assert!(
            err.to_string()
                .contains("has 3 columns but its model takes 2"),
            "{err}"
        );
    }

    #[test]
    fn party_csv_puts_each_id_in_its_row() {
        let text = "id,a,b\n2, 0.5,0.5\n\n0,1,2\n1,3,-1\n";
        assert_eq!(
            parse_party_csv(text).unwrap(),
            array![[1.0f32, 2.0], [3.0, -1.0], [0.5, 0.5]]
        );
        assert_eq!(parse_party_csv("0,7\n").unwrap(), array![[7.0f32]]);
    }

    #[test]
    fn party_csv_errors_name_the_line() {
        let msg = |text: &str| parse_party_csv(text).unwrap_err().to_string();
        assert_eq!(
            msg("0,1,2\n1,3\n"),
            "line 2: 2 fields, expected 3 (id then the features)"
        );
        assert_eq!(
            msg("0\n"),
            "line 1: 1 fields, expected 2 (id then the features)"
        );
        assert_eq!(
            msg("0,1\n2,1\n"),
            "line 2: sample id 2 is out of range: 2 rows need ids 0..2"
        );
        assert_eq!(
            msg("id,x\n1,1\n1,2\n"),
            "line 3: sample id 1 already appeared on line 2"
        );
        assert_eq!(
            msg("0,1\n-1,2\n"),
            "line 2: sample id \"-1\" is not a non-negative integer"
        );
        assert_eq!(
            msg("0,1\n1.5,2\n"),
            "line 2: sample id \"1.5\" is not a non-negative integer"
        );
        assert_eq!(
            msg("0,1,NaN\n1,2,3\n"),
            "line 1, column 3: \"NaN\" is not a finite number"
        );
        assert_eq!(
            msg("0,1\n1,x\n"),
            "line 2, column 2: \"x\" is not a finite number"
        );
        assert!(matches!(
            parse_party_csv("id,x\n\n"),
            Err(PartyCsvError::Empty)
        ));
        let err = load_party_csv(Path::new("/nonexistent/party.csv")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/party.csv")
        );
    }
}
