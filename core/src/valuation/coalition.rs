//! Coalitions: sets of players stored as a bitset.
//!
//! A [`Coalition`] is the argument of every utility evaluation, the key of the memo
//! cache in [`Metered`](super::Metered) and the thing estimators mutate one player at
//! a time. Up to 64 players it is a single inline `u64` (no heap allocation, cheap to
//! hash and clone); beyond that it is a boxed slice of words. The representation is a
//! function of `n` alone and bits at or above `n` are always zero, so the derived
//! `Eq`/`Hash` compare sets.

use std::fmt;

/// Bits per storage word.
const WORD: usize = 64;

/// A set of players `0..n`, stored as a bitset (inline for `n <= 64`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Coalition {
    n: usize,
    bits: Bits,
}

/// Storage: one inline word for up to 64 players, else `ceil(n / 64)` words.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Bits {
    Small(u64),
    Large(Box<[u64]>),
}

/// The mask of the valid bits in a word holding players `0..k` (`k <= 64`).
fn low_mask(k: usize) -> u64 {
    if k >= WORD { u64::MAX } else { (1u64 << k) - 1 }
}

impl Coalition {
    /// The empty coalition of a game with `n` players.
    pub fn empty(n: usize) -> Self {
        let bits = if n <= WORD {
            Bits::Small(0)
        } else {
            Bits::Large(vec![0; n.div_ceil(WORD)].into_boxed_slice())
        };
        Self { n, bits }
    }

    /// The grand coalition `{0, ..., n-1}`.
    pub fn full(n: usize) -> Self {
        let mut c = Self::empty(n);
        let words = c.words_mut();
        let last = words.len().saturating_sub(1);
        for (w, word) in words.iter_mut().enumerate() {
            *word = if w == last {
                low_mask(n - w * WORD)
            } else {
                u64::MAX
            };
        }
        c
    }

    /// The coalition whose members are the set bits of `mask` (bit `i` = player `i`).
    /// Bits at or above `n` are ignored; for `n > 64` the mask fills players `0..64`.
    pub fn from_mask(n: usize, mask: u64) -> Self {
        let mut c = Self::empty(n);
        if let Some(word) = c.words_mut().first_mut() {
            *word = mask & low_mask(n);
        }
        c
    }

    /// The coalition holding the given players (duplicates are harmless).
    ///
    /// # Panics
    /// If a member is `>= n` (a programming error in the caller).
    pub fn from_members(n: usize, members: &[usize]) -> Self {
        let mut c = Self::empty(n);
        for &i in members {
            c.insert(i);
        }
        c
    }

    /// The number of players of the game this coalition belongs to.
    pub fn n_players(&self) -> usize {
        self.n
    }

    /// The members as a `u64` mask, when the game has at most 64 players.
    pub fn mask(&self) -> Option<u64> {
        match self.bits {
            Bits::Small(m) => Some(m),
            Bits::Large(_) => None,
        }
    }

    /// The raw storage words (player `i` is bit `i % 64` of word `i / 64`).
    pub fn words(&self) -> &[u64] {
        match &self.bits {
            Bits::Small(m) => std::slice::from_ref(m),
            Bits::Large(ws) => ws,
        }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        match &mut self.bits {
            Bits::Small(m) => std::slice::from_mut(m),
            Bits::Large(ws) => ws,
        }
    }

    /// Whether player `i` is a member (`false` for `i >= n`).
    pub fn contains(&self, i: usize) -> bool {
        i < self.n && self.words()[i / WORD] >> (i % WORD) & 1 == 1
    }

    /// Adds player `i`; returns whether it was absent before.
    ///
    /// # Panics
    /// If `i >= n` (a programming error in the caller).
    pub fn insert(&mut self, i: usize) -> bool {
        assert!(
            i < self.n,
            "player {i} out of range for a game with {} players",
            self.n
        );
        let word = &mut self.words_mut()[i / WORD];
        let bit = 1u64 << (i % WORD);
        let absent = *word & bit == 0;
        *word |= bit;
        absent
    }

    /// Removes player `i`; returns whether it was present. Out-of-range players are
    /// never present, so removing one is a no-op returning `false`.
    pub fn remove(&mut self, i: usize) -> bool {
        if i >= self.n {
            return false;
        }
        let word = &mut self.words_mut()[i / WORD];
        let bit = 1u64 << (i % WORD);
        let present = *word & bit != 0;
        *word &= !bit;
        present
    }

    /// Removes every member.
    pub fn clear(&mut self) {
        self.words_mut().iter_mut().for_each(|w| *w = 0);
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.words().iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the coalition has no members.
    pub fn is_empty(&self) -> bool {
        self.words().iter().all(|&w| w == 0)
    }

    /// The players not in this coalition (`N \ S`).
    pub fn complement(&self) -> Self {
        let mut c = Self::full(self.n);
        for (dst, src) in c.words_mut().iter_mut().zip(self.words()) {
            *dst &= !src;
        }
        c
    }

    /// Whether every member of `self` is a member of `other`.
    pub fn is_subset(&self, other: &Coalition) -> bool {
        let theirs = other.words();
        self.words()
            .iter()
            .enumerate()
            .all(|(w, &mine)| mine & !theirs.get(w).copied().unwrap_or(0) == 0)
    }

    /// The members in increasing order.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.words()
            .iter()
            .enumerate()
            .flat_map(|(w, &word)| SetBits(word).map(move |b| w * WORD + b))
    }
}

/// Iterator over the set bits of a word, lowest first.
struct SetBits(u64);

impl Iterator for SetBits {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(b)
    }
}

impl fmt::Display for Coalition {
    /// Formats as `{0, 3, 5}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (k, i) in self.members().enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{i}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn small_mask_round_trips_through_members() {
        let c = Coalition::from_mask(6, 0b10_1101);
        assert_eq!(c.members().collect::<Vec<_>>(), vec![0, 2, 3, 5]);
        assert_eq!(c.len(), 4);
        assert_eq!(c.mask(), Some(0b10_1101));
        assert_eq!(c, Coalition::from_members(6, &[5, 3, 2, 0, 3]));
        assert_eq!(c.to_string(), "{0, 2, 3, 5}");
    }

    #[test]
    fn bits_above_n_are_dropped() {
        let c = Coalition::from_mask(3, u64::MAX);
        assert_eq!(c, Coalition::full(3));
        assert!(!c.contains(3));
        assert!(!c.contains(1000));
    }

    #[test]
    fn full_and_empty_have_the_right_sizes() {
        for n in [0, 1, 63, 64, 65, 128, 130] {
            assert_eq!(Coalition::full(n).len(), n, "n = {n}");
            assert!(Coalition::empty(n).is_empty());
            assert_eq!(Coalition::full(n).complement(), Coalition::empty(n));
            assert_eq!(Coalition::full(n).members().last(), n.checked_sub(1));
        }
    }

    #[test]
    fn insert_and_remove_report_changes() {
        let mut c = Coalition::empty(130);
        assert!(c.insert(129));
        assert!(!c.insert(129));
        assert!(c.insert(64));
        assert!(c.contains(64) && c.contains(129) && !c.contains(63));
        assert_eq!(c.mask(), None);
        assert!(c.remove(64));
        assert!(!c.remove(64));
        assert!(!c.remove(500));
        assert_eq!(c.members().collect::<Vec<_>>(), vec![129]);
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    #[should_panic(expected = "player 5 out of range")]
    fn inserting_an_out_of_range_player_panics() {
        Coalition::empty(5).insert(5);
    }

    proptest! {
        #[test]
        fn set_operations_match_a_hash_set(
            n in 1usize..200,
            a in proptest::collection::vec(0usize..200, 0..40),
            b in proptest::collection::vec(0usize..200, 0..40),
        ) {
            let a: Vec<usize> = a.into_iter().filter(|&i| i < n).collect();
            let b: Vec<usize> = b.into_iter().filter(|&i| i < n).collect();
            let (ca, cb) = (Coalition::from_members(n, &a), Coalition::from_members(n, &b));
            let (sa, sb): (HashSet<usize>, HashSet<usize>) =
                (a.iter().copied().collect(), b.iter().copied().collect());
            prop_assert_eq!(ca.len(), sa.len());
            let mut sorted: Vec<usize> = sa.iter().copied().collect();
            sorted.sort_unstable();
            prop_assert_eq!(ca.members().collect::<Vec<_>>(), sorted);
            prop_assert_eq!(ca.is_subset(&cb), sa.is_subset(&sb));
            prop_assert_eq!(ca.complement().len(), n - sa.len());
            prop_assert!((0..n).all(|i| ca.contains(i) == sa.contains(&i)));
        }
    }
}
