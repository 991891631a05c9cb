//! What each member publishes for operators rather than for routing (its
//! version and its load on disk) and when this node last heard from it:
//! the columns of `kvnode status` that the ring does not need.
//!
//! Gossip keys (unsigned: a forged one misleads a status table, it grants
//! nothing and routes nothing):
//!
//! | key       | value                                                    |
//! |-----------|----------------------------------------------------------|
//! | `version` | the `kvnode` version, set once at start                   |
//! | `load`    | table + WAL bytes on disk, decimal, measured every [`LOAD_PUBLISH_EVERY`] |
//!
//! Kept apart from the [`ClusterView`](crate::view::ClusterView): last-heard
//! moves every gossip round and load every few seconds, and a new view
//! wakes every watcher of the routing. These only need to be fresh when an
//! operator looks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chitchat::ChitchatId;
use parking_lot::Mutex;
use strata_ring::NodeId;

/// The gossip key of a member's version.
pub(crate) const KEY_VERSION: &str = "version";
/// The gossip key of a member's load.
pub(crate) const KEY_LOAD: &str = "load";

/// How often a node measures its load and republishes it if it changed:
/// every change is a delta every peer must receive, and a status table
/// reads in seconds.
pub(crate) const LOAD_PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// What this node knows of one member, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberVitals {
    /// Its `kvnode` version, if it publishes one.
    pub(crate) version: Option<String>,
    /// Its table + WAL bytes, if it publishes them.
    pub(crate) load: Option<u64>,
    /// How long ago its heartbeat last moved, as this node saw it.
    pub(crate) last_heard: Duration,
    /// Where it gossips (its chitchat id's address).
    pub(crate) gossip_addr: std::net::SocketAddr,
}

#[derive(Debug)]
struct Heard {
    heartbeat: u64,
    at: Instant,
    version: Option<String>,
    load: Option<u64>,
}

/// The vitals of every member gossip holds, by chitchat id (one per
/// generation of a node).
#[derive(Debug, Default)]
pub(crate) struct Vitals {
    heard: Mutex<HashMap<ChitchatId, Heard>>,
}

impl Vitals {
    /// Records a member's gossiped state at `now`: its heartbeat counts as
    /// heard only when it moved since the last call.
    pub(crate) fn observe(
        &self,
        id: &ChitchatId,
        heartbeat: u64,
        version: Option<&str>,
        load: Option<&str>,
        now: Instant,
    ) {
        let version = version.filter(|v| !v.is_empty()).map(str::to_owned);
        let load = load.and_then(|l| l.parse().ok());
        let mut heard = self.heard.lock();
        match heard.get_mut(id) {
            Some(h) => {
                if heartbeat > h.heartbeat {
                    h.heartbeat = heartbeat;
                    h.at = now;
                }
                h.version = version;
                h.load = load;
            }
            None => {
                heard.insert(
                    id.clone(),
                    Heard {
                        heartbeat,
                        at: now,
                        version,
                        load,
                    },
                );
            }
        }
    }

    /// Forgets the members gossip no longer holds.
    pub(crate) fn forget_unless(&self, mut held: impl FnMut(&ChitchatId) -> bool) {
        self.heard.lock().retain(|id, _| held(id));
    }

    /// The vitals of the newest generation of `node`, as of `now`.
    pub(crate) fn get(&self, node: &NodeId, now: Instant) -> Option<MemberVitals> {
        let heard = self.heard.lock();
        heard
            .iter()
            .filter(|(id, _)| &*id.node_id == node.as_str())
            .max_by_key(|(id, _)| id.generation_id)
            .map(|(id, h)| MemberVitals {
                gossip_addr: id.gossip_advertise_addr,
                version: h.version.clone(),
                load: h.load,
                last_heard: now.saturating_duration_since(h.at),
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(node: &str, generation: u64) -> ChitchatId {
        ChitchatId::new(node.to_owned(), generation, "127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn last_heard_moves_only_with_the_heartbeat() {
        let vitals = Vitals::default();
        let t0 = Instant::now();
        let b = NodeId::from("b");
        vitals.observe(&id("b", 1), 7, Some("0.1.0"), Some("4096"), t0);
        let later = t0 + Duration::from_secs(3);
        // The same heartbeat again: a node that stopped, still in gossip.
        vitals.observe(&id("b", 1), 7, Some("0.1.0"), Some("8192"), later);
        let seen = vitals.get(&b, later).unwrap();
        assert_eq!(seen.last_heard, Duration::from_secs(3));
        assert_eq!(seen.load, Some(8192));
        assert_eq!(seen.gossip_addr, "127.0.0.1:1".parse().unwrap());
        vitals.observe(&id("b", 1), 8, Some("0.1.0"), Some("8192"), later);
        assert_eq!(vitals.get(&b, later).unwrap().last_heard, Duration::ZERO);
    }

    #[test]
    fn the_newest_generation_counts_and_junk_is_unknown() {
        let vitals = Vitals::default();
        let now = Instant::now();
        vitals.observe(&id("b", 1), 1, Some("0.0.9"), Some("1"), now);
        vitals.observe(&id("b", 2), 1, Some(""), Some("lots"), now);
        let b = vitals.get(&NodeId::from("b"), now).unwrap();
        assert_eq!((b.version, b.load), (None, None));
        vitals.forget_unless(|i| i.generation_id == 1);
        let b = vitals.get(&NodeId::from("b"), now).unwrap();
        assert_eq!((b.version.as_deref(), b.load), (Some("0.0.9"), Some(1)));
        assert_eq!(vitals.get(&NodeId::from("c"), now), None);
    }
}
