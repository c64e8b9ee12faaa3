//! Similar blocks: a 32-bit feature per stored memory block, and XOR against a similar
//! block found through it.
//!
//! Two guests booted from one image hold many pages that differ in a few words
//! (kernel data structures, page tables, slab pages with other pointers), at unrelated
//! offsets, so neither dedup nor a delta on the page at the same place finds them. Each
//! new block of a memory payload gets a *feature*: a min-hash over its non-zero 8-byte
//! words, cut to 32 bits. Blocks sharing a word set are likely to share their minimum,
//! and so their feature. Index files keep the feature of every block that may serve as
//! a reference ([`crate::index`]); a new block whose feature names a stored block is
//! XORed with it when that clears at least half of its non-zero words, and goes into its
//! shared frame in that form ([`crate::format::codec::Codec::ZstdFrameXor`]), where the runs of
//! zeros compress to little. `tools/mem-delta-study.py` measured this on guest memory.

/// Multiplier of the word mix (the 64-bit golden ratio, odd).
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

fn words(block: &[u8]) -> impl Iterator<Item = u64> + '_ {
    block
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
}

/// The feature of `block`: the smallest mix of its non-zero 8-byte words, low 32 bits;
/// never 0, which stands for "no feature" (a block without a non-zero word has none).
pub fn feature(block: &[u8]) -> u32 {
    // Without branches: a third of a page's words are zero, at random places.
    let min = words(block)
        .map(|w| {
            let mut x = w.wrapping_mul(MIX);
            x ^= x >> 29;
            if w == 0 {
                u64::MAX
            } else {
                x.wrapping_mul(MIX)
            }
        })
        .fold(u64::MAX, u64::min);
    // A non-zero word mixing to u64::MAX (odds 2^-64 a word) counts as none.
    match (min == u64::MAX, min as u32) {
        (true, _) => 0,
        (false, 0) => 1,
        (false, f) => f,
    }
}

/// Whether storing `data` as its XOR with `reference` pays: both the same length, and
/// the XOR has at most half as many non-zero 8-byte words as `data` (a word-count
/// test, which the study found as good as compressing both forms, and far cheaper).
pub fn xor_pays(data: &[u8], reference: &[u8]) -> bool {
    if data.len() != reference.len() || data.len() < 8 {
        return false;
    }
    let (mut mine, mut left) = (0usize, 0usize);
    for (a, b) in words(data).zip(words(reference)) {
        mine += usize::from(a != 0);
        left += usize::from(a != b);
    }
    mine > 0 && 2 * left <= mine
}

/// `a` XOR `b` into `out`; all three the same length.
pub fn xor_to(a: &[u8], b: &[u8], out: &mut [u8]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_blocks_have_no_feature_and_others_one() {
        assert_eq!(feature(&[0u8; 4096]), 0);
        assert_ne!(feature(&[1u8; 4096]), 0);
        assert_eq!(feature(&[]), 0);
    }

    proptest! {
        /// XOR is its own inverse; a block XORs to nothing against itself (which
        /// pays), and never pays against a block of another length.
        #[test]
        fn xor_round_trips(a in proptest::collection::vec(any::<u8>(), 0..600), seed in any::<u64>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let b: Vec<u8> = a.iter().map(|_| rng.u8(..)).collect();
            let mut x = vec![0; a.len()];
            xor_to(&a, &b, &mut x);
            let mut back = vec![0; a.len()];
            xor_to(&x, &b, &mut back);
            prop_assert_eq!(&back, &a);
            let nonzero = a.chunks_exact(8).any(|w| w.iter().any(|&v| v != 0));
            prop_assert_eq!(xor_pays(&a, &a), nonzero);
            let mut longer = a.clone();
            longer.extend_from_slice(&[1; 8]);
            prop_assert!(!xor_pays(&a, &longer));
        }

        /// The feature depends on the set of non-zero words only: reordering the
        /// words or overwriting zero words with zeros keeps it; a page that shares
        /// its words with another except a few usually keeps it too (a min-hash).
        #[test]
        fn features_follow_the_word_set(words in proptest::collection::vec(any::<u64>(), 1..512), seed in any::<u64>()) {
            let page: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let mut shuffled = words.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            shuffled.push(0);
            let other: Vec<u8> = shuffled.iter().flat_map(|w| w.to_le_bytes()).collect();
            prop_assert_eq!(feature(&page), feature(&other));
        }
    }

    #[test]
    fn near_copies_usually_share_a_feature() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut same = 0;
        for _ in 0..200 {
            let page: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
            let mut edit = page.clone();
            for _ in 0..4 {
                let at = rng.usize(..512) * 8;
                edit[at..at + 8].copy_from_slice(&rng.u64(..).to_le_bytes());
            }
            same += usize::from(feature(&page) == feature(&edit));
            assert!(xor_pays(&edit, &page));
        }
        // Four of 512 words changed: the minimum moves with probability about 8/516.
        assert!(same >= 180, "{same} of 200 kept their feature");
    }
}
