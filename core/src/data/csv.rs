//! Numeric CSV loading: `feature,...,feature,label` per line, label last.
//!
//! The format is the one of the shipped UCI files and of any plain numeric CSV: comma
//! separated numbers, the last column a non-negative integer label. An optional first line
//! that is not a data row (a header such as `569,30,malignant,benign`) is skipped; blank
//! lines are ignored. Errors name the 1-based line and quote the offending text.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use ndarray::Array2;

use super::{DataError, Dataset};

/// Longest excerpt of an offending line quoted in an error.
const MAX_QUOTE: usize = 80;

/// Parses numeric CSV text into a data set (label in the last column).
///
/// A first line is treated as a header and skipped if one of its fields is not a number or
/// if its field count differs from the next line's. Every data line must have the same
/// number of fields (at least two), finite features and a label that is a non-negative
/// integer (`3` or `3.0`). `num_classes` defaults to the largest label + 1; if given, every
/// label must be below it.
pub fn parse_csv(text: &str, num_classes: Option<usize>) -> Result<Dataset, DataError> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let skip = match lines.as_slice() {
        [(_, first), rest @ ..] => {
            let fields: Vec<&str> = first.split(',').map(str::trim).collect();
            let non_numeric = fields.iter().any(|f| f.parse::<f64>().is_err());
            let count_differs = rest
                .first()
                .is_some_and(|(_, second)| second.split(',').count() != fields.len());
            usize::from(non_numeric || count_differs)
        }
        [] => 0,
    };
    parse_rows(lines.get(skip..).unwrap_or_default(), num_classes)
}

/// Parses data rows (already stripped of blank lines and header) into a data set.
fn parse_rows(lines: &[(usize, &str)], num_classes: Option<usize>) -> Result<Dataset, DataError> {
    let mut width: Option<usize> = None;
    let mut features: Vec<f32> = Vec::new();
    let mut labels: Vec<u32> = Vec::new();
    let mut label_lines: Vec<usize> = Vec::new();

    for &(line, text) in lines {
        let err = |reason: String| DataError::Csv {
            line,
            reason,
            text: quote(text),
        };
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let expected = *width.get_or_insert(fields.len());
        if fields.len() < 2 {
            return Err(err(
                "expected at least one feature and a label, found one field".into(),
            ));
        }
        if fields.len() != expected {
            return Err(err(format!(
                "expected {expected} fields like the first data line, found {}",
                fields.len()
            )));
        }
        let (label_field, feature_fields) = match fields.split_last() {
            Some(split) => split,
            None => return Err(err("empty line".into())),
        };
        for (col, field) in feature_fields.iter().enumerate() {
            match field.parse::<f32>() {
                Ok(v) if v.is_finite() => features.push(v),
                Ok(v) => {
                    return Err(err(format!(
                        "feature {} is {v}: features must be finite",
                        col + 1
                    )));
                }
                Err(_) => {
                    return Err(err(format!(
                        "feature {} `{field}` is not a number",
                        col + 1
                    )));
                }
            }
        }
        let label = parse_label(label_field).ok_or_else(|| {
            err(format!(
                "label `{label_field}` is not a non-negative integer"
            ))
        })?;
        labels.push(label);
        label_lines.push(line);
    }

    let Some(width) = width else {
        return Err(DataError::NoRows);
    };
    let max_label = labels.iter().copied().max().unwrap_or(0) as usize;
    let num_classes = num_classes.unwrap_or(max_label + 1);
    let rows = labels.len();
    let features =
        Array2::from_shape_vec((rows, width - 1), features).map_err(|e| DataError::Csv {
            line: label_lines.last().copied().unwrap_or(0),
            reason: format!("internal shape error: {e}"),
            text: String::new(),
        })?;
    Dataset::new(features, labels, num_classes).map_err(|e| match e {
        // Re-express row-level errors with the file line number.
        DataError::LabelOutOfRange {
            row,
            label,
            num_classes,
        } => DataError::Csv {
            line: label_lines.get(row).copied().unwrap_or(0),
            reason: format!("label {label} is not below the {num_classes} classes requested"),
            text: label.to_string(),
        },
        other => other,
    })
}

/// Parses a label written as `3` or `3.0` (a non-negative integer that fits in u32).
fn parse_label(field: &str) -> Option<u32> {
    if let Ok(v) = field.parse::<u32>() {
        return Some(v);
    }
    let v = field.parse::<f64>().ok()?;
    (v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v)).then_some(v as u32)
}

/// Truncates a line for quoting in an error message.
fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Decodes file bytes to text, gunzipping first if `gzipped`.
pub(crate) fn decode_text(bytes: &[u8], gzipped: bool) -> std::io::Result<String> {
    if gzipped {
        let mut text = String::new();
        GzDecoder::new(bytes).read_to_string(&mut text)?;
        Ok(text)
    } else {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// Writes `data` in the format [`parse_csv`] reads: one row per line, the features, then
/// the integer label; no header. f32 values print in their shortest exact form, so the
/// round trip is lossless.
pub fn to_csv(data: &Dataset) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for (row, label) in data.features.rows().into_iter().zip(&data.labels) {
        for x in row {
            let _ = write!(s, "{x},");
        }
        let _ = writeln!(s, "{label}");
    }
    s
}

/// Loads a CSV file (see [`parse_csv`]); a `.gz` extension means gzip-compressed.
/// Errors carry the path.
pub fn load_csv(path: &Path) -> Result<Dataset, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io_err)?;
    let gzipped = path.extension().is_some_and(|e| e == "gz");
    let text = decode_text(&bytes, gzipped).map_err(io_err)?;
    parse_csv(&text, None).map_err(|e| DataError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_csv_round_trips_exactly() {
        let data = crate::data::builtin::wine();
        let back = parse_csv(&to_csv(&data), Some(data.num_classes)).expect("parses");
        assert_eq!(back.labels, data.labels);
        assert_eq!(back.features, data.features);
    }
    use ndarray::array;

    #[test]
    fn parses_plain_rows() {
        let d = parse_csv("1,2,0\n\n3.5, 4 ,1\n", None).unwrap();
        assert_eq!(d.features, array![[1.0f32, 2.0], [3.5, 4.0]]);
        assert_eq!(d.labels, vec![0, 1]);
        assert_eq!(d.num_classes, 2);
    }

    #[test]
    fn skips_header_with_other_field_count() {
        // All-numeric-looking prefix but a different field count (UCI style).
        let d = parse_csv("2,2,a,b\n1,2,0\n3,4,1\n", None).unwrap();
        assert_eq!(d.len(), 2);
        // Same count but numeric: a numeric header with a different count is still skipped.
        let d = parse_csv("2,2\n1,2,0\n3,4,1\n", None).unwrap();
        assert_eq!(d.len(), 2);
        // Non-numeric header with the same field count.
        let d = parse_csv("x,y,label\n1,2,0\n3,4,2\n", Some(5)).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.num_classes, 5);
        assert_eq!(d.labels, vec![0, 2]);
    }

    #[test]
    fn first_numeric_line_is_data() {
        let d = parse_csv("1,2,1\n3,4,0\n", None).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.labels, vec![1, 0]);
    }

    #[test]
    fn label_accepts_integral_float() {
        let d = parse_csv("1,2.0\n", None).unwrap();
        assert_eq!(d.labels, vec![2]);
        assert_eq!(d.num_classes, 3);
    }

    #[test]
    fn bad_line_error_names_line_and_text() {
        let err = parse_csv("h1,h2,h3\n1,2,0\n\n3,oops,1\n", None).unwrap_err();
        match &err {
            DataError::Csv { line, text, .. } => {
                assert_eq!(*line, 4);
                assert_eq!(text, "3,oops,1");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(err.to_string().contains("oops"), "{err}");

        // (With only two lines, a first line with another field count is a header.)
        let err = parse_csv("1,2,0\n3,4,1\n1,2\n", None).unwrap_err();
        assert!(matches!(err, DataError::Csv { line: 3, .. }), "{err}");
        let err = parse_csv("1,2,-1\n", None).unwrap_err();
        assert!(matches!(err, DataError::Csv { line: 1, .. }), "{err}");
        let err = parse_csv("1,2,0.5\n", None).unwrap_err();
        assert!(matches!(err, DataError::Csv { line: 1, .. }), "{err}");
        let err = parse_csv("1,inf,0\n", None).unwrap_err();
        assert!(err.to_string().contains("finite"), "{err}");
        let err = parse_csv("1,2,0\n1,2,3\n", Some(2)).unwrap_err();
        assert!(matches!(err, DataError::Csv { line: 2, .. }), "{err}");
        let err = parse_csv("5\n", None).unwrap_err();
        assert!(matches!(err, DataError::Csv { line: 1, .. }), "{err}");
    }

    #[test]
    fn empty_input_is_an_error() {
        assert!(matches!(parse_csv("", None), Err(DataError::NoRows)));
        assert!(matches!(
            parse_csv("a,b,c\n\n", None),
            Err(DataError::NoRows)
        ));
    }

    #[test]
    fn loads_gzipped_digits() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz");
        let d = load_csv(&path).unwrap();
        assert_eq!((d.len(), d.num_features(), d.num_classes), (1797, 64, 10));
        assert!(d.class_counts().iter().all(|&c| (170..=190).contains(&c)));
        assert_eq!(d.features.iter().copied().fold(0.0f32, f32::max), 16.0);
    }

    #[test]
    fn load_errors_carry_path() {
        let path = Path::new("/nonexistent/fedval/x.csv");
        let err = load_csv(path).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/fedval/x.csv"),
            "{err}"
        );
    }
}
