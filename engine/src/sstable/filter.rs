//! The table's bloom filter over user keys.
//!
//! ```text
//! +---------------------------+-----------------+
//! | bit array (m bytes)       | num_probes u8   |
//! +---------------------------+-----------------+
//! ```
//!
//! Key hash: `xxh3_64(user_key)` split into two 32-bit halves `h1`, `h2`;
//! probe `i` sets bit `fastrange32(h1 + i * h2, 8m)` (double hashing, as in
//! Kirsch-Mitzenmacher). The hash and probe sequence are part of the format:
//! changing them makes every existing filter answer wrongly.
//!
//! This is not the `bloomfilter` crate: its bit layout depends on std's
//! `Hash` for byte slices (native-endian length prefix, not promised stable
//! across Rust releases) and it runs two SipHash passes plus a modulo per
//! probe; an on-disk filter needs a layout fixed forever, and a cheaper probe.

/// Probe counts above this are reserved: such a filter matches everything.
const MAX_PROBES: u8 = 30;

fn hash(user_key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user_key)
}

fn probes(h: u64, num_bits: u32, k: u8) -> impl Iterator<Item = u32> {
    let (h1, h2) = (h as u32, (h >> 32) as u32);
    (0..u32::from(k)).map(move |i| {
        let x = h1.wrapping_add(i.wrapping_mul(h2));
        ((u64::from(x) * u64::from(num_bits)) >> 32) as u32
    })
}

/// Collects key hashes while a table is built, then lays out the filter.
pub(crate) struct FilterBuilder {
    hashes: Vec<u64>,
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
        self.hashes.push(hash(user_key));
    }

    pub(crate) fn finish(&self) -> Vec<u8> {
        // ln 2 * bits per key probes minimise the false-positive rate.
        let k = ((f64::from(self.bits_per_key) * 0.69).round() as u8).clamp(1, MAX_PROBES);
        let bits = (self.hashes.len() as u64 * u64::from(self.bits_per_key)).max(64);
        let bytes = bits.div_ceil(8).min(u64::from(u32::MAX / 8)) as usize;
        let num_bits = (bytes * 8) as u32;
        let mut out = vec![0u8; bytes + 1];
        for &h in &self.hashes {
            for bit in probes(h, num_bits, k) {
                if let Some(byte) = out.get_mut((bit / 8) as usize) {
                    *byte |= 1 << (bit % 8);
                }
            }
        }
        if let Some(last) = out.last_mut() {
            *last = k;
        }
        out
    }
}

/// False when `user_key` is certainly not in the set the filter was built from.
pub(crate) fn may_contain(filter: &[u8], user_key: &[u8]) -> bool {
    let Some((&k, bitmap)) = filter.split_last() else {
        return true;
    };
    if k > MAX_PROBES || bitmap.is_empty() {
        return true;
    }
    let num_bits = (bitmap.len() * 8) as u32;
    probes(hash(user_key), num_bits, k).all(|bit| {
        bitmap
            .get((bit / 8) as usize)
            .is_some_and(|b| b & (1 << (bit % 8)) != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let mut b = FilterBuilder::new(10);
        for i in 0..10_000u32 {
            b.add_key(format!("key{i}").as_bytes());
        }
        let f = b.finish();
        for i in 0..10_000u32 {
            assert!(may_contain(&f, format!("key{i}").as_bytes()));
        }
        let fp = (0..10_000u32)
            .filter(|i| may_contain(&f, format!("other{i}").as_bytes()))
            .count();
        assert!(fp < 200, "false positives: {fp} / 10000");
    }

    #[test]
    fn empty_and_malformed_filters_match_everything() {
        assert!(may_contain(&[], b"x"));
        assert!(may_contain(&[0, 0, 31], b"x"));
        let empty = FilterBuilder::new(10).finish();
        assert!(!may_contain(&empty, b"x"));
    }

    #[test]
    fn hash_is_pinned() {
        // The filter format depends on this exact hash: it must never change.
        assert_eq!(hash(b""), 0x2d06800538d394c2);
    }
}
