//! Splitting a data set's feature columns among the parties of a vertical federation.
//!
//! A [`ColumnSplit`] is a list of column-index blocks, one per party: non-empty, in range and
//! pairwise disjoint (columns nobody holds are allowed, e.g. to drop features). Ready-made
//! splits for the shipped sets:
//! - [`ColumnSplit::digits_quadrants`]: digits are 8x8 images stored row-major (column
//!   `8 r + c` is pixel row `r`, column `c`), cut into four 4x4 quadrants of 16 columns:
//!   top-left, top-right, bottom-left, bottom-right.
//! - [`ColumnSplit::breast_cancer_groups`]: the breast-cancer columns are (as in
//!   scikit-learn's copy, checked against `data/breast_cancer.csv`) ten cell-nucleus
//!   measurements (radius, texture, perimeter, area, smoothness, compactness, concavity,
//!   concave points, symmetry, fractal dimension) first as their means (columns 0-9), then
//!   their standard errors (10-19), then their worst values (20-29); the three parties
//!   hold the mean, the standard-error and the worst block.
//!
//! [`project`] extracts one block's columns, which is what a party holds.

use ndarray::{Array2, Axis};

use super::VerticalError;
use crate::data::Dataset;

/// Column blocks, one per party: non-empty, within the feature count, pairwise disjoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnSplit {
    num_features: usize,
    blocks: Vec<Vec<usize>>,
}

impl ColumnSplit {
    /// A split of `num_features` columns into `blocks`; fails on no blocks, an empty block,
    /// a column `>= num_features` or a column in two blocks (or twice in one).
    pub fn new(num_features: usize, blocks: Vec<Vec<usize>>) -> Result<Self, VerticalError> {
        let invalid = |reason: String| Err(VerticalError::InvalidSplit { reason });
        if blocks.is_empty() {
            return invalid("at least one party block is needed".into());
        }
        let mut owner: Vec<Option<usize>> = vec![None; num_features];
        for (party, block) in blocks.iter().enumerate() {
            if block.is_empty() {
                return invalid(format!("block of party {party} is empty"));
            }
            for &col in block {
                match owner.get_mut(col) {
                    None => {
                        return invalid(format!(
                            "column {col} of party {party} is out of range for \
                             {num_features} features"
                        ));
                    }
                    Some(Some(first)) => {
                        return invalid(format!(
                            "column {col} is assigned to party {first} and again to party \
                             {party}"
                        ));
                    }
                    Some(slot) => *slot = Some(party),
                }
            }
        }
        Ok(Self {
            num_features,
            blocks,
        })
    }

    /// `parties` blocks of consecutive columns covering `0..num_features`, sizes differing
    /// by at most one (the first blocks get the extra columns); fails if `parties` is 0 or
    /// exceeds `num_features`.
    pub fn contiguous(num_features: usize, parties: usize) -> Result<Self, VerticalError> {
        if parties == 0 || parties > num_features {
            return Err(VerticalError::InvalidSplit {
                reason: format!(
                    "cannot split {num_features} columns into {parties} non-empty blocks"
                ),
            });
        }
        let (base, extra) = (num_features / parties, num_features % parties);
        let mut start = 0;
        let blocks = (0..parties)
            .map(|p| {
                let len = base + usize::from(p < extra);
                let block: Vec<usize> = (start..start + len).collect();
                start += len;
                block
            })
            .collect();
        Self::new(num_features, blocks)
    }

    /// The four 4x4 quadrants of the 8x8 digits images (64 columns, row-major): top-left,
    /// top-right, bottom-left, bottom-right, 16 columns each.
    pub fn digits_quadrants() -> Self {
        let quadrant = |row0: usize, col0: usize| -> Vec<usize> {
            (row0..row0 + 4)
                .flat_map(|r| (col0..col0 + 4).map(move |c| 8 * r + c))
                .collect()
        };
        Self {
            num_features: 64,
            blocks: vec![
                quadrant(0, 0),
                quadrant(0, 4),
                quadrant(4, 0),
                quadrant(4, 4),
            ],
        }
    }

    /// Breast cancer's 30 columns by statistic: the means (columns 0-9), the standard
    /// errors (10-19) and the worst values (20-29) of the ten measurements (module docs).
    pub fn breast_cancer_groups() -> Self {
        Self {
            num_features: 30,
            blocks: (0..3).map(|g| (10 * g..10 * g + 10).collect()).collect(),
        }
    }

    /// Number of parties (blocks).
    pub fn num_parties(&self) -> usize {
        self.blocks.len()
    }

    /// Column count of the data sets this split applies to.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// The column blocks, one per party.
    pub fn blocks(&self) -> &[Vec<usize>] {
        &self.blocks
    }

    /// Each party's columns of `data` (one `[rows x block len]` matrix per party); fails if
    /// `data` does not have [`num_features`](ColumnSplit::num_features) columns.
    pub fn project_all(&self, data: &Dataset) -> Result<Vec<Array2<f32>>, VerticalError> {
        if data.num_features() != self.num_features {
            return Err(VerticalError::InvalidSplit {
                reason: format!(
                    "the split is for {} columns but the data set has {}",
                    self.num_features,
                    data.num_features()
                ),
            });
        }
        self.blocks.iter().map(|b| project(data, b)).collect()
    }
}

/// The columns `block` of `data`, in the block's order (`[rows x block.len()]`); fails on a
/// column out of range.
pub fn project(data: &Dataset, block: &[usize]) -> Result<Array2<f32>, VerticalError> {
    if let Some(&col) = block.iter().find(|&&c| c >= data.num_features()) {
        return Err(VerticalError::InvalidSplit {
            reason: format!(
                "column {col} is out of range for a data set with {} features",
                data.num_features()
            ),
        });
    }
    Ok(data.features.select(Axis(1), block))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::builtin;
    use ndarray::array;

    #[test]
    fn digits_quadrants_cover_the_image() {
        let s = ColumnSplit::digits_quadrants();
        assert_eq!(s, ColumnSplit::new(64, s.blocks().to_vec()).unwrap());
        assert_eq!(s.num_parties(), 4);
        let b = s.blocks();
        assert_eq!(&b[0][..6], &[0, 1, 2, 3, 8, 9]);
        assert_eq!(b[1][..5], [4, 5, 6, 7, 12]);
        assert_eq!(b[2][0], 32);
        assert_eq!(b[3][15], 63);
        let mut all: Vec<usize> = b.concat();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
        // Pixel (r, c) is in quadrant 2 * (r / 4) + c / 4.
        for (q, block) in b.iter().enumerate() {
            assert!(block.iter().all(|&p| 2 * (p / 8 / 4) + (p % 8) / 4 == q));
        }
    }

    #[test]
    fn breast_cancer_groups_follow_the_file_layout() {
        let s = ColumnSplit::breast_cancer_groups();
        assert_eq!(s, ColumnSplit::new(30, s.blocks().to_vec()).unwrap());
        let data = builtin::breast_cancer();
        let parts = s.project_all(&data).unwrap();
        // First row of data/breast_cancer.csv: mean radius 17.99, radius standard error
        // 1.095, worst radius 25.38; mean area 1001, worst area 2019.
        assert_eq!(parts[0][[0, 0]], 17.99);
        assert_eq!(parts[1][[0, 0]], 1.095);
        assert_eq!(parts[2][[0, 0]], 25.38);
        assert_eq!((parts[0][[0, 3]], parts[2][[0, 3]]), (1001.0, 2019.0));
        // Worst values are maxima, so they dominate the means for radius, perimeter, area.
        for col in [0, 2, 3] {
            let (mean, worst) = (parts[0].column(col), parts[2].column(col));
            assert!(
                mean.iter().zip(worst).all(|(m, w)| w >= m),
                "measurement {col}"
            );
        }
    }

    #[test]
    fn contiguous_balances_blocks() {
        let s = ColumnSplit::contiguous(10, 3).unwrap();
        assert_eq!(
            s.blocks(),
            &[vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]
        );
        assert_eq!(ColumnSplit::contiguous(3, 3).unwrap().blocks().len(), 3);
        assert!(ColumnSplit::contiguous(3, 4).is_err());
        assert!(ColumnSplit::contiguous(3, 0).is_err());
    }

    #[test]
    fn new_rejects_invalid_blocks() {
        let reason = |r: Result<ColumnSplit, VerticalError>| match r {
            Err(VerticalError::InvalidSplit { reason }) => reason,
            other => panic!("expected InvalidSplit, got {other:?}"),
        };
        assert_eq!(
            reason(ColumnSplit::new(4, vec![vec![0, 1], vec![1, 2]])),
            "column 1 is assigned to party 0 and again to party 1"
        );
        assert_eq!(
            reason(ColumnSplit::new(4, vec![vec![0, 4]])),
            "column 4 of party 0 is out of range for 4 features"
        );
        assert_eq!(
            reason(ColumnSplit::new(4, vec![vec![0], vec![]])),
            "block of party 1 is empty"
        );
        assert!(ColumnSplit::new(4, vec![]).is_err());
        assert!(ColumnSplit::new(4, vec![vec![2, 2]]).is_err());
        // Unassigned columns are fine.
        assert!(ColumnSplit::new(4, vec![vec![3], vec![0]]).is_ok());
    }

    #[test]
    fn project_selects_columns_in_block_order() {
        let d = Dataset::new(array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]], vec![0, 1], 2).unwrap();
        assert_eq!(
            project(&d, &[2, 0]).unwrap(),
            array![[3.0f32, 1.0], [6.0, 4.0]]
        );
        assert!(matches!(
            project(&d, &[3]),
            Err(VerticalError::InvalidSplit { .. })
        ));
        let s = ColumnSplit::contiguous(2, 2).unwrap();
        assert!(
            s.project_all(&d).is_err(),
            "split for 2 columns, data has 3"
        );
    }
}
