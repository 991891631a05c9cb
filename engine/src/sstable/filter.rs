//! The table's bloom filter over user keys.
//!
//! ```text
//! +---------------------------+-----------------+
//! | bit array (m bytes)       | layout u8       |
//! +---------------------------+-----------------+
//! ```
//!
//! Key hash: `xxh3_64(user_key)`, split into its high and low 32-bit halves
//! `hi` and `lo`. The last byte says how the probes fall:
//!
//! - `0x80 | k` (written since 2026-12), **blocked**: the bit array is whole
//!   64-byte blocks; the key's block is `fastrange32(hi, blocks)` and its
//!   `k` probes lie in that block alone: probe `i` is bit `h_i >> 23` of
//!   it, where `h_0 = lo` and `h_{i+1} = h_i * 0x9e3779b9` (mod 2^32). A
//!   lookup touches one block (one or two cache lines) however many probes
//!   it makes, as RocksDB's cache-local filter does; its false positives
//!   rise a little (about 1% at 10 bits per key).
//! - `k` alone, **spread** (written until 2026-12): probe `i` sets bit
//!   `fastrange32(lo + i * hi, 8m)` of the whole array (Kirsch-Mitzenmacher
//!   double hashing); each probe a cache miss of its own.
//!
//! `k` above 30, in either layout, is reserved: such a filter matches
//! everything (so a reader older than the blocked layout takes `0x80 | k`
//! for a filter that matches everything). The hash
//! and probe sequences are part of the format: changing them makes every
//! existing filter answer wrongly.
//!
//! This is not the `bloomfilter` crate: its bit layout depends on std's
//! `Hash` for byte slices (native-endian length prefix, not promised stable
//! across Rust releases) and it runs two SipHash passes plus a modulo per
//! probe; an on-disk filter needs a layout fixed forever, and a cheaper probe.

/// Probe counts above this are reserved: such a filter matches everything.
const MAX_PROBES: u8 = 30;
/// Set in the last byte of a blocked filter.
const BLOCKED: u8 = 0x80;
/// Bytes in one block of a blocked filter: a cache line.
const BLOCK_BYTES: usize = 64;

/// A user key's filter hash, computed once per lookup and tested against
/// every table's filter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHash(u64);

impl KeyHash {
    pub(crate) fn of(user_key: &[u8]) -> Self {
        KeyHash(xxhash_rust::xxh3::xxh3_64(user_key))
    }

    fn halves(self) -> (u32, u32) {
        ((self.0 >> 32) as u32, self.0 as u32)
    }
}

/// `x` scaled from `0..2^32` to `0..n`, without a division.
fn fastrange32(x: u32, n: u32) -> u32 {
    ((u64::from(x) * u64::from(n)) >> 32) as u32
}

/// Bit positions within its block of a blocked filter's probes.
fn block_probes(lo: u32, k: u8) -> impl Iterator<Item = usize> {
    (0..k).scan(lo, |h, _| {
        let bit = (*h >> 23) as usize;
        *h = h.wrapping_mul(0x9e37_79b9);
        Some(bit)
    })
}

/// Bit positions of a spread filter's probes, over `num_bits`.
fn spread_probes(hi: u32, lo: u32, num_bits: u32, k: u8) -> impl Iterator<Item = u32> {
    (0..u32::from(k)).map(move |i| fastrange32(lo.wrapping_add(i.wrapping_mul(hi)), num_bits))
}

fn bit_is_set(bits: &[u8], bit: usize) -> bool {
    bits.get(bit / 8).is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

/// Collects key hashes while a table is built, then lays out the filter.
pub(crate) struct FilterBuilder {
    hashes: Vec<KeyHash>,
    bits_per_key: u32,
}

impl FilterBuilder {
    pub(crate) fn new(bits_per_key: u32) -> Self {
        FilterBuilder {
            hashes: Vec::new(),
            bits_per_key,
        }
    }

    pub(crate) fn add_key(&mut self, user_key: &[u8]) {
        self.hashes.push(KeyHash::of(user_key));
    }

    /// The filter in the blocked layout.
    pub(crate) fn finish(&self) -> Vec<u8> {
        // ln 2 * bits per key probes minimise the false-positive rate.
        let k = ((f64::from(self.bits_per_key) * 0.69).round() as u8).clamp(1, MAX_PROBES);
        let bits = self.hashes.len() as u64 * u64::from(self.bits_per_key);
        let max_blocks = u64::from(u32::MAX) / BLOCK_BYTES as u64;
        let blocks = bits.div_ceil(8 * BLOCK_BYTES as u64).clamp(1, max_blocks) as u32;
        let mut out = vec![0u8; blocks as usize * BLOCK_BYTES + 1];
        for h in &self.hashes {
            let (hi, lo) = h.halves();
            let start = fastrange32(hi, blocks) as usize * BLOCK_BYTES;
            if let Some(block) = out.get_mut(start..start + BLOCK_BYTES) {
                for bit in block_probes(lo, k) {
                    if let Some(byte) = block.get_mut(bit / 8) {
                        *byte |= 1 << (bit % 8);
                    }
                }
            }
        }
        if let Some(last) = out.last_mut() {
            *last = BLOCKED | k;
        }
        out
    }
}

/// False when the key hashed to `h` is certainly not in the set the filter
/// was built from.
pub(crate) fn may_contain(filter: &[u8], h: KeyHash) -> bool {
    let Some((&layout, bits)) = filter.split_last() else {
        return true;
    };
    let k = layout & !BLOCKED;
    if k > MAX_PROBES || bits.is_empty() {
        return true;
    }
    let (hi, lo) = h.halves();
    if layout & BLOCKED == 0 {
        let num_bits = (bits.len() * 8) as u32;
        return spread_probes(hi, lo, num_bits, k).all(|bit| bit_is_set(bits, bit as usize));
    }
    // A filter that cannot answer must say "maybe", never "absent".
    let Some(block) = key_block(bits, hi) else {
        return true;
    };
    block_probes(lo, k).all(|bit| bit_is_set(block, bit))
}

/// The block of a blocked filter's bit array that holds the probes of a key
/// whose hash's high half is `hi`; `None` when the array is not whole blocks.
fn key_block(bits: &[u8], hi: u32) -> Option<&[u8]> {
    let blocks = (bits.len() / BLOCK_BYTES) as u32;
    if blocks == 0 || !bits.len().is_multiple_of(BLOCK_BYTES) {
        return None;
    }
    let start = fastrange32(hi, blocks) as usize * BLOCK_BYTES;
    bits.get(start..start + BLOCK_BYTES)
}

/// Starts loading into the CPU cache the block of a blocked filter that
/// [`may_contain`] will probe for `h`. A lookup checks the filters of
/// several tables, each a cache miss; the next table's block is prefetched
/// while one is probed, so the misses overlap instead of following one
/// another. Spread filters (one miss per probe) are left alone.
pub(crate) fn prefetch(filter: &[u8], h: KeyHash) {
    let Some((&layout, bits)) = filter.split_last() else {
        return;
    };
    if layout & BLOCKED == 0 {
        return;
    }
    if let Some(block) = key_block(bits, h.halves().0) {
        // The block is 64 bytes but need not be aligned to a cache line.
        crate::prefetch::read(block.first());
        crate::prefetch::read(block.last());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_BLOCKED: &[usize] = &[
        24, 32, 53, 57, 61, 65, 75, 88, 145, 149, 221, 222, 232, 281, 283, 287, 301, 407, 418, 492,
        510,
    ];
    const PINNED_SPREAD: &[usize] = &[
        1, 3, 5, 7, 10, 19, 24, 26, 27, 29, 33, 37, 40, 46, 47, 48, 52, 56, 59,
    ];

    fn false_positives(f: &[u8]) -> usize {
        (0..10_000u32)
            .filter(|i| may_contain(f, KeyHash::of(format!("other{i}").as_bytes())))
            .count()
    }

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        for n in [1u32, 7, 100, 10_000] {
            let mut b = FilterBuilder::new(10);
            for i in 0..n {
                b.add_key(format!("key{i}").as_bytes());
            }
            let f = b.finish();
            for i in 0..n {
                assert!(may_contain(&f, KeyHash::of(format!("key{i}").as_bytes())));
            }
            if n == 10_000 {
                let fp = false_positives(&f);
                assert!(fp < 150, "false positives: {fp} / 10000");
            }
        }
    }

    /// A spread filter, laid out as tables written before the blocked
    /// layout hold it.
    fn spread_filter(keys: &[&[u8]], bits_per_key: u32) -> Vec<u8> {
        let k = (f64::from(bits_per_key) * 0.69).round() as u8;
        let bytes = (keys.len() as u64 * u64::from(bits_per_key))
            .max(64)
            .div_ceil(8) as usize;
        let mut out = vec![0u8; bytes + 1];
        for key in keys {
            let (hi, lo) = KeyHash::of(key).halves();
            for bit in spread_probes(hi, lo, (bytes * 8) as u32, k) {
                out[bit as usize / 8] |= 1 << (bit % 8);
            }
        }
        out[bytes] = k;
        out
    }

    #[test]
    fn spread_filters_of_older_tables_still_answer() {
        let keys: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| format!("key{i}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let f = spread_filter(&refs, 10);
        assert!(keys.iter().all(|k| may_contain(&f, KeyHash::of(k))));
        let fp = false_positives(&f);
        assert!((1..150).contains(&fp), "false positives: {fp} / 10000");
    }

    #[test]
    fn empty_and_malformed_filters_match_everything() {
        let x = KeyHash::of(b"x");
        assert!(may_contain(&[], x));
        assert!(may_contain(&[0, 0, 31], x));
        assert!(may_contain(&[0, 0, BLOCKED | 31], x));
        // A blocked filter whose bit array is not whole blocks.
        assert!(may_contain(&[0, 0, BLOCKED | 7], x));
        let empty = FilterBuilder::new(10).finish();
        assert!(!may_contain(&empty, x));
    }

    fn set_bits(filter: &[u8]) -> Vec<usize> {
        let bits = &filter[..filter.len() - 1];
        (0..bits.len() * 8)
            .filter(|&b| bit_is_set(bits, b))
            .collect()
    }

    #[test]
    fn both_layouts_are_pinned_bit_for_bit() {
        // Tables on disk hold these exact bits: a change to the hash halves,
        // the block choice, the probe sequence or the bit order within a
        // byte breaks every existing filter and must fail here.
        let mut blocked = FilterBuilder::new(10);
        for key in [&b"a"[..], b"bb", b"key-017"] {
            blocked.add_key(key);
        }
        let blocked = blocked.finish();
        assert_eq!(blocked.last(), Some(&(BLOCKED | 7)));
        assert_eq!(set_bits(&blocked), PINNED_BLOCKED);
        let spread = spread_filter(&[b"a", b"bb", b"key-017"], 10);
        assert_eq!(spread.last(), Some(&7));
        assert_eq!(set_bits(&spread), PINNED_SPREAD);
    }

    #[test]
    fn hash_and_probes_are_pinned() {
        // The filter format depends on these exact sequences: never change them.
        assert_eq!(KeyHash::of(b"").0, 0x2d06800538d394c2);
        assert_eq!(KeyHash::of(b"").halves(), (0x2d06_8005, 0x38d3_94c2));
        let probes: Vec<usize> = block_probes(0x1234_5678, 4).collect();
        assert_eq!(probes, vec![36, 272, 410, 327]);
        let spread: Vec<u32> = spread_probes(7, 1 << 31, 1000, 3).collect();
        assert_eq!(spread, vec![500, 500, 500]);
    }
}
