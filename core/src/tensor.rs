//! Flat f32 tensors on the wire.
//!
//! Models and updates travel between server and clients as flat `f32` vectors encoded as
//! little-endian bytes, split into chunks (default 1 MiB) so that no tensor hits a gRPC
//! message limit, and checked with a SHA-256 digest. This module holds the encoding, the
//! chunk arithmetic, a strict in-order [`Reassembler`] for incoming streams and the NaN/inf
//! check every received tensor goes through.

use std::ops::Range;

use sha2::{Digest, Sha256};

/// Default size of one tensor chunk on the wire: 1 MiB (256 Ki floats).
///
/// Chunks of 256 KiB-1 MiB are as fast as bigger ones and stay well below tonic's default
/// 4 MiB decode limit.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

/// Errors from decoding, checking or reassembling a tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    /// A byte length is not a whole number of f32 values.
    #[error("tensor byte length {len} is not a multiple of 4 (f32 values are 4 bytes each)")]
    Misaligned {
        /// The offending byte length.
        len: usize,
    },
    /// A value is NaN or infinite.
    #[error("tensor value at index {index} is {value}: only finite values are accepted")]
    NonFinite {
        /// Index of the first non-finite value.
        index: usize,
        /// The value itself (NaN, inf or -inf).
        value: f32,
    },
    /// The announced size exceeds the configured maximum.
    #[error("tensor of {expected} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced size in bytes.
        expected: usize,
        /// Configured maximum in bytes.
        max: usize,
    },
    /// A chunk did not start where the previous one ended.
    #[error("chunk at offset {offset} arrived out of order: expected offset {expected}")]
    OutOfOrder {
        /// Offset the next chunk must start at (bytes received so far).
        expected: u64,
        /// Offset the chunk claimed.
        offset: u64,
    },
    /// A chunk would take the tensor past its announced size.
    #[error("chunks overflow the announced tensor size: expected {expected} bytes, got {got}")]
    Overflow {
        /// Announced size in bytes.
        expected: usize,
        /// Size the tensor would have with this chunk.
        got: usize,
    },
    /// The stream ended before the announced size was reached.
    #[error("tensor incomplete: expected {expected} bytes, received {received}")]
    Incomplete {
        /// Announced size in bytes.
        expected: usize,
        /// Bytes received.
        received: usize,
    },
}

/// Encodes values as concatenated little-endian f32 bytes (4 bytes per value).
pub fn to_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes concatenated little-endian f32 bytes; fails if the length is not a multiple of 4.
///
/// No finiteness check happens here: call [`check_finite`] on anything a peer sent.
pub fn from_le_bytes(bytes: &[u8]) -> Result<Vec<f32>, TensorError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(TensorError::Misaligned { len: bytes.len() });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Lower-case hex SHA-256 digest of `bytes`: the checksum carried with every upload.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fails on the first NaN or infinite value, naming its index and value.
pub fn check_finite(values: &[f32]) -> Result<(), TensorError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(TensorError::NonFinite {
            index,
            value: values[index],
        }),
    }
}

/// Byte ranges that split a tensor of `total_bytes` into chunks of at most `chunk_bytes`.
///
/// `chunk_bytes` is rounded down to a multiple of 4 (and at least 4) so that no f32 value
/// straddles two chunks. Zero bytes give no ranges.
pub fn chunk_ranges(total_bytes: usize, chunk_bytes: usize) -> impl Iterator<Item = Range<usize>> {
    let step = (chunk_bytes / 4 * 4).max(4);
    (0..total_bytes)
        .step_by(step)
        .map(move |start| start..(start + step).min(total_bytes))
}

/// Rebuilds a tensor from chunks that must arrive in order, without trusting the sender.
///
/// The announced size is checked against a limit before any memory is reserved, each
/// chunk must start exactly where the previous one ended, and the total may neither exceed
/// nor fall short of the announced size.
#[derive(Debug)]
pub struct Reassembler {
    expected: usize,
    buf: Vec<u8>,
}

impl Reassembler {
    /// Starts a reassembly of `expected_bytes`, refusing sizes over `max_bytes` or not a
    /// multiple of 4.
    pub fn new(expected_bytes: usize, max_bytes: usize) -> Result<Self, TensorError> {
        if expected_bytes > max_bytes {
            return Err(TensorError::TooLarge {
                expected: expected_bytes,
                max: max_bytes,
            });
        }
        if !expected_bytes.is_multiple_of(4) {
            return Err(TensorError::Misaligned {
                len: expected_bytes,
            });
        }
        Ok(Self {
            expected: expected_bytes,
            buf: Vec::with_capacity(expected_bytes),
        })
    }

    /// Appends a chunk that claims to start at byte `offset`.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Result<(), TensorError> {
        let received = self.buf.len();
        if offset != received as u64 {
            return Err(TensorError::OutOfOrder {
                expected: received as u64,
                offset,
            });
        }
        let got = received.saturating_add(data.len());
        if got > self.expected {
            return Err(TensorError::Overflow {
                expected: self.expected,
                got,
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.buf.len()
    }

    /// The announced size in bytes.
    pub fn expected(&self) -> usize {
        self.expected
    }

    /// Returns the whole tensor's bytes, or `Incomplete` if chunks are missing.
    pub fn finish(self) -> Result<Vec<u8>, TensorError> {
        if self.buf.len() != self.expected {
            return Err(TensorError::Incomplete {
                expected: self.expected,
                received: self.buf.len(),
            });
        }
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes, chunks, reassembles and decodes `values`.
    fn round_trip(values: &[f32], chunk_bytes: usize) -> Vec<f32> {
        let bytes = to_le_bytes(values);
        let mut r = Reassembler::new(bytes.len(), bytes.len()).unwrap();
        for range in chunk_ranges(bytes.len(), chunk_bytes) {
            assert!(range.len() <= chunk_bytes.max(4));
            assert_eq!(range.len() % 4, 0);
            r.push(range.start as u64, &bytes[range]).unwrap();
        }
        let out = r.finish().unwrap();
        assert_eq!(sha256_hex(&out), sha256_hex(&bytes));
        from_le_bytes(&out).unwrap()
    }

    #[test]
    fn round_trip_odd_chunk_sizes() {
        let values: Vec<f32> = (0..2000).map(|i| i as f32 * 0.37 - 100.0).collect();
        for chunk in [1, 4, 7, 12, 1000, 1001, 4096 + 4, DEFAULT_CHUNK_BYTES] {
            assert_eq!(round_trip(&values, chunk), values, "chunk size {chunk}");
        }
        assert_eq!(round_trip(&[], 16), Vec::<f32>::new());
    }

    #[test]
    fn chunk_ranges_cover_exactly() {
        let r: Vec<_> = chunk_ranges(20, 10).collect();
        assert_eq!(r, vec![0..8, 8..16, 16..20]);
        let r: Vec<_> = chunk_ranges(8, 0).collect();
        assert_eq!(r, vec![0..4, 4..8]);
        assert_eq!(chunk_ranges(0, 8).count(), 0);
    }

    #[test]
    fn le_encoding_is_exact() {
        assert_eq!(to_le_bytes(&[1.0]), vec![0x00, 0x00, 0x80, 0x3f]);
        assert_eq!(
            from_le_bytes(&[1, 2, 3]),
            Err(TensorError::Misaligned { len: 3 })
        );
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn check_finite_names_first_bad_value() {
        assert!(check_finite(&[0.0, -1.0, f32::MAX]).is_ok());
        let err = check_finite(&[0.0, f32::INFINITY, f32::NAN]).unwrap_err();
        assert_eq!(
            err,
            TensorError::NonFinite {
                index: 1,
                value: f32::INFINITY
            }
        );
        assert!(err.to_string().contains("index 1 is inf"));
        let err = check_finite(&[f32::NAN]).unwrap_err();
        assert!(err.to_string().contains("index 0 is NaN"), "{err}");
    }

    #[test]
    fn reassembler_rejects_bad_sizes() {
        assert_eq!(
            Reassembler::new(16, 8).unwrap_err(),
            TensorError::TooLarge {
                expected: 16,
                max: 8
            }
        );
        assert_eq!(
            Reassembler::new(6, 8).unwrap_err(),
            TensorError::Misaligned { len: 6 }
        );
    }

    #[test]
    fn reassembler_rejects_out_of_order_overflow_incomplete() {
        let mut r = Reassembler::new(8, 100).unwrap();
        assert_eq!(
            r.push(4, &[0; 4]),
            Err(TensorError::OutOfOrder {
                expected: 0,
                offset: 4
            })
        );
        r.push(0, &[0; 4]).unwrap();
        assert_eq!(r.received(), 4);
        assert_eq!(
            r.push(0, &[0; 4]),
            Err(TensorError::OutOfOrder {
                expected: 4,
                offset: 0
            })
        );
        assert_eq!(
            r.push(4, &[0; 8]),
            Err(TensorError::Overflow {
                expected: 8,
                got: 12
            })
        );
        assert_eq!(r.received(), 4, "rejected chunks leave no trace");
        assert_eq!(
            r.finish(),
            Err(TensorError::Incomplete {
                expected: 8,
                received: 4
            })
        );
    }

    proptest! {
        #[test]
        fn prop_round_trip(values in proptest::collection::vec(any::<f32>(), 0..600),
                           chunk in 1usize..300) {
            let back = round_trip(&values, chunk);
            prop_assert_eq!(back.len(), values.len());
            for (a, b) in back.iter().zip(&values) {
                prop_assert_eq!(a.to_bits(), b.to_bits());
            }
        }
    }
}
