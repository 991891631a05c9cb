//! The hybrid logical clock that stamps every write with its version, and
//! the wall clock it (and the gossip transport) reads.
//!
//! # Version layout
//!
//! A version is one `u64`, compared as a plain integer:
//!
//! ```text
//!  63                                            16 15           8 7            0
//! +------------------------------------------------+--------------+--------------+
//! | wall-clock ms since the Unix epoch (48 bits)   | logical (8)  | node tag (8) |
//! +------------------------------------------------+--------------+--------------+
//! ```
//!
//! - **ms** ([`ms`]): 48 bits last until the year 10889. It sits where it
//!   always has (versions written before the node tag existed had a 16-bit
//!   logical counter below it), so every version on disk keeps its meaning
//!   and whatever reads a version's age (a tombstone grace) reads `v >> 16`.
//! - **logical**: counts the versions one node hands out within one ms. 256
//!   per ms is 256,000 writes a second from one coordinator, 30 times the
//!   QUORUM PUTs one coordinator served in the README's measurement (7,884
//!   a second) and above the ~90,000 requests a second of a node alone;
//!   past it the clock borrows the next ms
//!   (`(ms, 255)` is followed by `(ms + 1, 0)`), which keeps versions unique
//!   and monotonic and only runs this node's versions slightly ahead of its
//!   wall clock until the load drops.
//! - **node tag** ([`tag`]): who wrote it. Two coordinators writing the same
//!   key in the same ms with the same counter still produce different
//!   versions, so last-writer-wins never has to compare values. The tag is
//!   the low byte of the xxh3-64 of the node id ([`derived_tag`]) unless
//!   `--node-tag` sets it.
//!
//! Why 8 + 8: each bit moved from the counter to the tag halves the writes
//! per ms before the clock borrows, and at 4 counter bits (16,000 writes a
//! second) a busy coordinator's versions would drift ahead of its clock;
//! each bit moved the other way doubles the odds that two nodes derive one
//! tag, which at 8 bits are 1.2 % for 3 nodes and 16 % for 10 (birthday
//! odds over 256 values). Members publish their tags, a node warns when a
//! live member shares its own ([`TagWatch`]), and `--node-tag` settles it.
//! Nodes that share a tag tie only when they also write the same key in the
//! same ms with the same counter, and such a tie falls back to the
//! deterministic tie-break of `storage::Record::supersedes` (tombstone over
//! value, then the larger value bytes), as every tie did before tags.
//!
//! The ms and logical parts together are the clock proper: they strictly
//! increase, and [`Hlc::update`] folds in every version a node receives, so
//! a write that causally follows another (read it here, overwrite it there)
//! gets a larger version even if the second node's wall clock runs behind.
//! The tag only orders versions whose clock parts are equal.
//!
//! # Clock offset
//!
//! Folding in a version from a node whose clock runs far ahead drags this
//! node's versions ahead with it, and a write stamped by that node beats
//! writes made after it elsewhere. Such a version is still folded in
//! (refusing it would lose a replicated write), but one more than the
//! maximum clock offset ahead of this node's wall clock is counted
//! (`kvnode_hlc_remote_ahead_total`) and warned about, at most every
//! [`OFFSET_WARNING_EVERY_MS`]. Gossip refuses peers that far off outright
//! (`gossip_transport`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;

/// Bits of the node tag, the lowest of a version.
const TAG_BITS: u32 = 8;
/// Bits of the logical counter, above the tag.
const LOGICAL_BITS: u32 = 8;
/// Bits below the ms: where the ms field starts.
const MS_SHIFT: u32 = LOGICAL_BITS + TAG_BITS;

/// Warnings about one clock offset (a peer's, or the versions folded in)
/// come at most this often, in ms: a clock that is off stays off for a
/// while, and one line per datagram or write would bury everything else.
pub(crate) const OFFSET_WARNING_EVERY_MS: u64 = 10_000;

/// The wall-clock ms of a version.
pub(crate) fn ms(version: u64) -> u64 {
    version >> MS_SHIFT
}

/// The node tag of a version.
pub(crate) fn tag(version: u64) -> u8 {
    // The mask keeps exactly the tag's 8 bits.
    (version & 0xff) as u8
}

/// The tag of the node `node_id` when none is configured.
pub(crate) fn derived_tag(node_id: &str) -> u8 {
    // Every byte of the hash folded in: the low byte alone gives `node1`
    // and `node2`, the demo's own names, the same tag.
    xxhash_rust::xxh3::xxh3_64(node_id.as_bytes())
        .to_le_bytes()
        .iter()
        .fold(0, |tag, byte| tag ^ byte)
}

/// The wall clock, ms since the Unix epoch, shifted by a fixed skew that
/// only tests set (`--clock-skew-ms`) to play a host whose clock is off.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WallClock {
    skew_ms: i64,
}

impl WallClock {
    /// The system clock shifted by `skew_ms` (0 in production).
    pub(crate) fn skewed(skew_ms: i64) -> Self {
        Self { skew_ms }
    }

    /// Now, in ms since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        // A clock before 1970 is a broken host; counting from zero keeps the
        // HLC monotonic (the logical part carries it) instead of failing
        // writes.
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        u64::try_from(ms)
            .unwrap_or(u64::MAX >> MS_SHIFT)
            .saturating_add_signed(self.skew_ms)
    }
}

/// A thread-safe hybrid logical clock.
#[derive(Debug)]
pub(crate) struct Hlc {
    /// The clock part (`ms << 8 | logical`, a version without its tag) of
    /// the last version handed out or observed.
    last: AtomicU64,
    /// This node's tag, in every version it hands out.
    tag: u8,
    clock: WallClock,
    /// How far ahead of the wall clock a version folded in may be before
    /// it is counted and warned about.
    max_offset_ms: u64,
    /// `kvnode_hlc_remote_ahead_total`.
    ahead: Counter,
    /// Wall-clock ms of the last warning about a version ahead.
    warned_ms: AtomicU64,
}

impl Hlc {
    /// The clock of a node of `tag` reading `clock`; versions folded in
    /// that run more than `max_offset` ahead of it are counted on `ahead`.
    pub(crate) fn build(tag: u8, clock: WallClock, max_offset: Duration, ahead: Counter) -> Self {
        Self {
            last: AtomicU64::new(0),
            tag,
            clock,
            max_offset_ms: u64::try_from(max_offset.as_millis()).unwrap_or(u64::MAX),
            ahead,
            warned_ms: AtomicU64::new(0),
        }
    }

    /// A fresh version, larger than every one this clock returned or saw.
    pub(crate) fn now(&self) -> u64 {
        let wall = self.clock.now_ms() << LOGICAL_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next << TAG_BITS | u64::from(self.tag),
                Err(seen) => last = seen,
            }
        }
    }

    /// Folds in a version received from another node: the next
    /// [`Hlc::now`] is larger than it, whatever its tag. An older version
    /// changes nothing. One more than the maximum clock offset ahead of the
    /// wall clock is folded in all the same, and counted and warned about.
    pub(crate) fn update(&self, remote: u64) {
        self.last.fetch_max(remote >> TAG_BITS, Ordering::AcqRel);
        let wall = self.clock.now_ms();
        let ahead_ms = ms(remote).saturating_sub(wall);
        if ahead_ms <= self.max_offset_ms {
            return;
        }
        self.ahead.inc();
        let warned = self.warned_ms.load(Ordering::Relaxed);
        let due = wall.abs_diff(warned) >= OFFSET_WARNING_EVERY_MS;
        if due
            && self
                .warned_ms
                .compare_exchange(warned, wall, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                ahead_ms,
                max_offset_ms = self.max_offset_ms,
                writer_tag = tag(remote),
                "a version received is ahead of this node's wall clock by more than the \
                 maximum clock offset; folded in, so this node's versions run ahead too: \
                 check the clocks (NTP) of the node with this tag"
            );
        }
    }
}

/// Warns about live members whose node tag is this node's own: their
/// versions and this node's can tie (see the module doc). Once per member
/// while it stays live.
#[derive(Debug)]
pub(crate) struct TagWatch {
    own: u8,
    /// Members warned about, and still live at the last look.
    warned: Mutex<BTreeSet<String>>,
}

impl TagWatch {
    /// A watch for a node of tag `own`.
    pub(crate) fn new(own: u8) -> Self {
        Self {
            own,
            warned: Mutex::new(BTreeSet::new()),
        }
    }

    /// Looks at the live members (id, published tag) other than this node,
    /// warns about each new one that shares its tag, and returns those.
    pub(crate) fn observe<'a>(
        &self,
        live: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Vec<String> {
        let sharing: BTreeSet<&str> = live
            .into_iter()
            .filter(|(_, tag)| tag.and_then(|t| t.parse::<u8>().ok()) == Some(self.own))
            .map(|(id, _)| id)
            .collect();
        let mut warned = self.warned.lock();
        warned.retain(|id| sharing.contains(id.as_str()));
        let new: Vec<String> = sharing
            .into_iter()
            .filter(|id| !warned.contains(*id))
            .map(str::to_owned)
            .collect();
        for id in &new {
            tracing::warn!(
                node = %id,
                tag = self.own,
                "a live member has this node's node tag: writes of both to one key in the same \
                 ms can tie; give one of them another --node-tag"
            );
            warned.insert(id.clone());
        }
        new
    }
}

#[cfg(test)]
impl Hlc {
    /// A clock of tag 0 on the system clock, for tests elsewhere.
    pub(crate) fn new() -> Self {
        Self::tagged(0)
    }

    /// A clock of `tag` on the system clock, for tests that play several
    /// nodes.
    pub(crate) fn tagged(tag: u8) -> Self {
        Self::build(
            tag,
            WallClock::default(),
            Duration::from_millis(500),
            Counter::default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version of `ms`, `logical` and `tag`.
    fn version(ms: u64, logical: u8, tag: u8) -> u64 {
        ms << MS_SHIFT | u64::from(logical) << TAG_BITS | u64::from(tag)
    }

    fn logical(version: u64) -> u8 {
        (version >> TAG_BITS & 0xff) as u8
    }

    #[test]
    fn the_demo_node_names_derive_distinct_tags() {
        let tags: std::collections::BTreeSet<u8> =
            (1..=9).map(|i| derived_tag(&format!("node{i}"))).collect();
        assert_eq!(tags.len(), 9, "{tags:?}");
    }

    fn clock(tag: u8) -> Hlc {
        Hlc::build(
            tag,
            WallClock::default(),
            Duration::from_millis(500),
            Counter::default(),
        )
    }

    fn wall_ms() -> u64 {
        WallClock::default().now_ms()
    }

    #[test]
    fn the_layout_round_trips() {
        for (m, l, t) in [
            (0, 0, 0),
            (1, 2, 3),
            ((1 << 48) - 1, 255, 255),
            (1_700_000_000_000, 7, 200),
        ] {
            let v = version(m, l, t);
            assert_eq!((ms(v), logical(v), tag(v)), (m, l, t));
        }
        let v = clock(0xab).now();
        assert_eq!(tag(v), 0xab);
        assert!(ms(v).abs_diff(wall_ms()) < 5_000);
        // A version written before tags existed keeps its ms.
        let old = 1_700_000_000_123u64 << 16 | 0x0102;
        assert_eq!(ms(old), 1_700_000_000_123);
    }

    #[test]
    fn versions_strictly_increase() {
        let clock = clock(9);
        let mut prev = clock.now();
        for _ in 0..100_000 {
            let next = clock.now();
            assert!(next > prev);
            assert_eq!(tag(next), 9);
            prev = next;
        }
    }

    #[test]
    fn concurrent_callers_get_increasing_unique_versions() {
        let clock = std::sync::Arc::new(clock(1));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..20_000).map(|_| clock.now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let seen = h.join().unwrap_or_default();
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "per thread, increasing"
            );
            all.extend(seen);
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!((all.len(), n), (80_000, 80_000));
    }

    #[test]
    fn clocks_of_different_tags_never_tie_at_the_same_ms_and_counter() {
        let (a, b) = (clock(1), clock(2));
        let ahead = version(wall_ms() + 60_000, 17, 0);
        a.update(ahead);
        b.update(ahead);
        let (va, vb) = (a.now(), b.now());
        assert_eq!((ms(va), logical(va)), (ms(vb), logical(vb)), "same tick");
        assert_ne!(va, vb);
        // And concurrently, over many ms: no version is handed out twice.
        let clocks = std::sync::Arc::new([clock(3), clock(4)]);
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let clocks = clocks.clone();
                std::thread::spawn(move || (0..20_000).map(|_| clocks[i].now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 40_000);
    }

    #[test]
    fn update_moves_past_a_remote_version_whatever_its_tag() {
        let clock = clock(0);
        for remote_tag in [0, 1, 255] {
            let ahead = version(wall_ms() + 60_000, 3, remote_tag);
            clock.update(ahead);
            let next = clock.now();
            assert!(next > ahead, "tag {remote_tag}");
            assert_eq!(tag(next), 0);
        }
    }

    #[test]
    fn update_with_an_old_version_changes_nothing_visible() {
        // Run the clock ahead of the wall clock, so that each version is
        // exactly the previous one plus one tick: any effect an old version
        // had (pulling the clock back, or pushing it on) would show.
        let clock = clock(5);
        clock.update(version(wall_ms() + 60_000, 0, 0));
        let a = clock.now();
        let tick = 1 << TAG_BITS;
        clock.update(1);
        clock.update(a - tick);
        clock.update(a);
        assert_eq!(clock.now(), a + tick);
    }

    #[test]
    fn a_full_counter_borrows_the_next_ms() {
        let clock = clock(7);
        let m = wall_ms() + 60_000;
        clock.update(version(m, 253, 0));
        assert_eq!(clock.now(), version(m, 254, 7));
        assert_eq!(clock.now(), version(m, 255, 7));
        assert_eq!(clock.now(), version(m + 1, 0, 7));
        assert_eq!(clock.now(), version(m + 1, 1, 7));
    }

    #[test]
    fn versions_too_far_ahead_are_counted_yet_folded_in() {
        let clock = clock(0);
        clock.update(version(wall_ms() + 100, 0, 1));
        assert_eq!(clock.ahead.get(), 0, "within the offset");
        let far = version(wall_ms() + 5_000, 0, 1);
        clock.update(far);
        clock.update(far);
        assert_eq!(clock.ahead.get(), 2);
        assert!(clock.now() > far);
    }

    #[test]
    fn a_skewed_wall_clock_moves_versions() {
        let skewed = Hlc::build(
            0,
            WallClock::skewed(-3_600_000),
            Duration::from_millis(500),
            Counter::default(),
        );
        let behind = wall_ms() - ms(skewed.now());
        assert!((3_599_000..3_601_000).contains(&behind), "{behind}");
    }

    #[test]
    fn a_shared_tag_is_warned_about_once_per_live_member() {
        let watch = TagWatch::new(42);
        let live = [
            ("b", Some("42")),
            ("c", Some("41")),
            ("d", None),
            ("e", Some("x")),
        ];
        assert_eq!(watch.observe(live), vec!["b".to_owned()]);
        assert!(watch.observe(live).is_empty(), "already warned");
        assert!(watch.observe([("c", Some("41"))]).is_empty(), "b gone");
        assert_eq!(watch.observe(live), vec!["b".to_owned()], "b back");
        assert_eq!(derived_tag("node1"), derived_tag("node1"));
    }
}
