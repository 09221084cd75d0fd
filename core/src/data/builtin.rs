//! The UCI data sets shipped in the repository's `data/` directory, compiled into the
//! binary so that demos, tests and benchmarks run with no download or file path.
//!
//! `digits` is scaled into [0, 1] (pixels / 16) since that is how every consumer uses it;
//! the other sets keep their raw features (apply a [`super::Standardizer`] before training).

use super::csv::{decode_text, parse_csv};
use super::{DataError, Dataset};

/// Names accepted by [`by_name`].
pub const NAMES: [&str; 4] = ["digits", "breast_cancer", "wine", "iris"];

const DIGITS_GZ: &[u8] = include_bytes!("../../../data/digits.csv.gz");
const BREAST_CANCER: &[u8] = include_bytes!("../../../data/breast_cancer.csv");
const WINE: &[u8] = include_bytes!("../../../data/wine_data.csv");
const IRIS: &[u8] = include_bytes!("../../../data/iris.csv");

/// Loads a shipped data set by name: "digits", "breast_cancer", "wine" or "iris".
pub fn by_name(name: &str) -> Result<Dataset, DataError> {
    let (bytes, gzipped) = match name {
        "digits" => (DIGITS_GZ, true),
        "breast_cancer" => (BREAST_CANCER, false),
        "wine" => (WINE, false),
        "iris" => (IRIS, false),
        _ => {
            return Err(DataError::UnknownDataset {
                name: name.to_string(),
            });
        }
    };
    let path = || format!("<builtin {name}>").into();
    let text = decode_text(bytes, gzipped).map_err(|source| DataError::Io {
        path: path(),
        source,
    })?;
    let mut data = parse_csv(&text, None).map_err(|e| DataError::InFile {
        path: path(),
        source: Box::new(e),
    })?;
    if name == "digits" {
        data.features.mapv_inplace(|v| v / 16.0);
    }
    Ok(data)
}

/// Loads a shipped set whose bytes are compiled in and covered by this module's tests, so
/// parsing cannot fail at run time.
fn shipped(name: &str) -> Dataset {
    by_name(name).unwrap_or_else(|e| panic!("shipped data set {name} is corrupt: {e}"))
}

/// UCI optical digits: 1797 rows x 64 pixels scaled into [0, 1], 10 classes.
pub fn digits() -> Dataset {
    shipped("digits")
}

/// UCI breast cancer Wisconsin (diagnostic): 569 x 30 raw features, 2 classes
/// (0 malignant, 1 benign).
pub fn breast_cancer() -> Dataset {
    shipped("breast_cancer")
}

/// UCI wine: 178 x 13 raw features, 3 classes.
pub fn wine() -> Dataset {
    shipped("wine")
}

/// UCI iris: 150 x 4 raw features, 3 classes.
pub fn iris() -> Dataset {
    shipped("iris")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sets_have_documented_shapes() {
        let cases = [
            ("digits", 1797, 64, 10),
            ("breast_cancer", 569, 30, 2),
            ("wine", 178, 13, 3),
            ("iris", 150, 4, 3),
        ];
        for (name, rows, cols, classes) in cases {
            let d = by_name(name).unwrap();
            assert_eq!(
                (d.len(), d.num_features(), d.num_classes),
                (rows, cols, classes),
                "{name}"
            );
            assert!(d.class_counts().iter().all(|&c| c > 0), "{name}");
        }
        assert_eq!(iris().class_counts(), vec![50, 50, 50]);
        assert_eq!(breast_cancer().class_counts(), vec![212, 357]);
        assert_eq!(wine().class_counts(), vec![59, 71, 48]);
    }

    #[test]
    fn digits_are_scaled_to_unit_interval() {
        let d = digits();
        let max = d.features.iter().copied().fold(f32::MIN, f32::max);
        let min = d.features.iter().copied().fold(f32::MAX, f32::min);
        assert_eq!((min, max), (0.0, 1.0));
    }

    #[test]
    fn unknown_name_lists_choices() {
        let err = by_name("mnist").unwrap_err();
        assert!(err.to_string().contains("mnist"));
        assert!(err.to_string().contains("breast_cancer"));
    }
}
