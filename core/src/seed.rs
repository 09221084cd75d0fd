//! Deterministic seed derivation: every random draw in fedval comes from an explicit seed, and
//! these are the two ways a seed is split into independent, reproducible parts.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Bits of the word offset reserved for one index of [`indexed_rng`]: every index owns
/// `2^24` 32-bit words (16 Mi) of its stream, far more than one step draws.
const INDEX_WORD_BITS: u32 = 24;

/// A seeded generator that is a pure function of `(seed, stream, index)`: ChaCha8 keyed by
/// `seed` (via [`SeedableRng::seed_from_u64`]), on stream `stream`, positioned at word
/// `index * 2^24`. Distinct `(stream, index)` pairs never share random words as long as each
/// draws fewer than `2^24` words and `index < 2^44` (larger indices wrap around the stream).
pub fn indexed_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng.set_word_pos(u128::from(index) << INDEX_WORD_BITS);
    rng
}

/// Mixes `seed` with `parts` into one seed for [`SeedableRng::seed_from_u64`]: the
/// SplitMix64 finaliser applied along the chain (`s = mix(seed)`, then `s = mix(s ^ part)`
/// for each part), so nearby inputs give unrelated seeds and the order of the parts
/// matters. The one seed derivation of fedval: a node's training seed from (node seed,
/// round, server seed), a FACT round's grouping seed from (base seed, round).
pub fn mix_seed(seed: u64, parts: &[u64]) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    parts
        .iter()
        .fold(splitmix(seed), |mixed, &part| splitmix(mixed ^ part))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mix_seed(0, [])` is SplitMix64's first output from state 0; the parts are
    /// chained in order.
    #[test]
    fn mix_seed_is_splitmix64_chained_over_the_parts() {
        assert_eq!(mix_seed(0, &[]), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix_seed(7, &[3, 9]), mix_seed(mix_seed(7, &[3]) ^ 9, &[]));
        assert_ne!(mix_seed(1, &[2, 3]), mix_seed(3, &[2, 1]));
        assert_ne!(mix_seed(0, &[0, 1]), mix_seed(0, &[1, 0]));
        assert_ne!(mix_seed(7, &[3]), mix_seed(7, &[4]));
    }
}
