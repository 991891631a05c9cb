//! Removed members (`kvnode removenode ID`): a dead member, or a dead
//! joiner stuck in JOINING or BOOTSTRAPPING, taken out of the ring for good
//! by the other nodes, without its help.
//!
//! # How a removal travels
//!
//! A node asked to remove a member (`POST /admin/v1/removenode/{id}`,
//! behind the cluster secret) refuses unless the member is known, DOWN and
//! not itself. It then publishes the member's incarnation under its own
//! record, in two gossip keys:
//!
//! | key           | value                                                  |
//! |---------------|--------------------------------------------------------|
//! | `removed`     | comma-separated [`Removal`]s: `id:generation:tokens`   |
//! | `removed_sig` | HMAC-SHA256 of `kvnode-removed-v1|node id|generation|removed` under the cluster secret |
//!
//! where `tokens` is [`tokens_digest`] of the tokens the incarnation
//! published. Gossip is sealed with the cluster key, and a list whose
//! signature does not verify under the publishing node's own id and
//! generation is ignored (and counted as a rejected record), so only a
//! holder of the secret can remove a member, and only under its own name.
//!
//! Every node that verifies a removal adopts it: it republishes the entry
//! in its own list, and records it in its data dir (`removals.json`,
//! [`marker`](crate::marker)) before publishing it. A removal therefore
//! outlives the node that made it, and a restart of the whole cluster;
//! entries are never dropped.
//!
//! # The fencing rule
//!
//! A member record is *fenced* by a removal of its id when
//!
//! 1. its generation is not newer than the removal's (the removed run, or
//!    an older one), or
//! 2. it is in a state that holds tokens (BOOTSTRAPPING, AVAILABLE,
//!    LEAVING) with exactly the removed tokens (same digest): a run
//!    restarted from the removed node's data dir announces the tokens its
//!    `node.json` recorded, and its data is stale.
//!
//! A fenced record is taken out of the members before the view is built:
//! it is in neither the ring nor the future ring, so no request is routed
//! to it, no pending write waits for it, it is never a stream source, and
//! no one waits for its `seen`. A wiped node started under the same id is
//! a new joiner: a newer generation, JOINING with no recorded tokens, and
//! it allocates tokens with its generation in the allocation's id, so it
//! never lands on the removed tokens even against an unchanged ring.
//!
//! A node that finds its own record fenced has been removed: it logs so at
//! error level, records it in `node.json` (so that it refuses to start from
//! that data dir again) and stops.
//!
//! # Re-replication
//!
//! The removed member held ranges (when it was AVAILABLE or LEAVING): the
//! nodes that gain them in the ring without it pull them from the surviving
//! replicas, the removed one never a source, as they do for a leave
//! ([`stream::handoff`](crate::stream::handoff)); each lists the
//! incarnation under `pulled` once done. As for a join, a gainer takes no
//! snapshot until every live member publishes under `seen` that it routes
//! without the removed member (the entry `id:generation:REMOVED`) with no
//! older write in flight. Until the gainers are done, a read at ONE that
//! lands on a gainer may miss a key; QUORUM reads still meet a survivor.

use std::collections::BTreeMap;
use std::fmt;

use strata_ring::{Member, NodeId, Ring};

use super::{ClusterView, MemberInfo, NodeState};

/// One removed incarnation, as published under `removed`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Removal {
    /// The removed node's id.
    pub(crate) id: NodeId,
    /// The generation of the run that was removed.
    pub(crate) generation: u64,
    /// [`tokens_digest`] of the tokens that run published.
    pub(crate) tokens: String,
}

impl Removal {
    /// The removal of `member`'s incarnation.
    pub(crate) fn of(member: &MemberInfo) -> Self {
        Self {
            id: member.id.clone(),
            generation: member.generation,
            tokens: tokens_digest(&member.tokens),
        }
    }

    /// Parses `id:generation:tokens`; the id may itself hold `:`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.rsplitn(3, ':');
        let tokens = parts.next()?;
        let generation = parts.next()?.parse().ok()?;
        let id = parts.next().filter(|id| !id.is_empty())?;
        let hex = tokens.len() == 16 && tokens.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| Self {
            id: NodeId::from(id),
            generation,
            tokens: tokens.to_owned(),
        })
    }

    /// The removed run as named under `pulled` (`id:generation`).
    pub(crate) fn incarnation(&self) -> String {
        format!("{}:{}", self.id, self.generation)
    }

    /// Its entry under `seen` (see the module doc).
    pub(crate) fn transition(&self) -> String {
        format!("{}:REMOVED", self.incarnation())
    }

    /// Whether `member`'s record is fenced by this removal (module doc).
    pub(crate) fn fences(&self, member: &MemberInfo) -> bool {
        let holds_tokens = matches!(
            member.state,
            NodeState::Bootstrapping | NodeState::Available | NodeState::Leaving
        );
        member.id == self.id
            && (member.generation <= self.generation
                || (holds_tokens && tokens_digest(&member.tokens) == self.tokens))
    }
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.id, self.generation, self.tokens)
    }
}

/// A digest of a token list, to recognise a run announcing removed tokens.
pub(crate) fn tokens_digest(tokens: &[u64]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for token in tokens {
        hasher.update(&token.to_be_bytes());
    }
    format!("{:016x}", hasher.digest())
}

/// The text published under `removed`.
pub(crate) fn encode(removals: &[Removal]) -> String {
    removals
        .iter()
        .map(Removal::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The entries of a `removed` text; entries that do not parse are skipped
/// (a newer format this node does not know).
pub(crate) fn decode(text: &str) -> Vec<Removal> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(Removal::parse)
        .collect()
}

/// What `removed_sig` signs.
pub(crate) fn signed_message(node_id: &str, generation: u64, removed: &str) -> Vec<u8> {
    format!("kvnode-removed-v1|{node_id}|{generation}|{removed}").into_bytes()
}

/// A fenced member as the view keeps it: the removal that fenced it and
/// its last record (whose tokens say which ranges must be re-replicated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removed {
    /// The removal.
    pub(crate) removal: Removal,
    /// The fenced record.
    pub(crate) last: MemberInfo,
}

impl Removed {
    /// The ring with the removed member back in it and `ring` (which lacks
    /// it): what its removal moved. `None` when it held no ranges (a dead
    /// joiner) or there is no ring.
    pub(crate) fn rings(&self, ring: Option<&Ring>) -> Option<(Ring, Ring)> {
        if !self.last.state.in_ring() {
            return None;
        }
        let ring = ring?;
        let before = ring
            .add(Member::new(self.last.id.clone(), self.last.tokens.clone()))
            .ok()?;
        Some((before, ring.clone()))
    }
}

/// The removal of `id`, if `view` allows it: a known member, DOWN, not
/// this node, not removed already.
pub(crate) fn removable(view: &ClusterView, id: &NodeId) -> Result<Removal, RemoveError> {
    if *id == view.self_id {
        return Err(RemoveError::IsSelf(id.clone()));
    }
    if let Some(r) = view.removed.get(id) {
        return Err(RemoveError::AlreadyRemoved(
            id.clone(),
            r.removal.to_string(),
        ));
    }
    let member = view
        .members
        .get(id)
        .ok_or_else(|| RemoveError::Unknown(id.clone()))?;
    if member.live {
        return Err(RemoveError::Live(id.clone(), member.state.as_str()));
    }
    Ok(Removal::of(member))
}

/// Splits `members` into those that route and those fenced by `removals`.
pub(crate) fn partition(
    members: BTreeMap<NodeId, MemberInfo>,
    removals: &[Removal],
) -> (BTreeMap<NodeId, MemberInfo>, BTreeMap<NodeId, Removed>) {
    let mut kept = BTreeMap::new();
    let mut fenced = BTreeMap::new();
    for (id, member) in members {
        match removals.iter().find(|r| r.fences(&member)) {
            Some(removal) => {
                fenced.insert(
                    id,
                    Removed {
                        removal: removal.clone(),
                        last: member,
                    },
                );
            }
            None => {
                kept.insert(id, member);
            }
        }
    }
    (kept, fenced)
}

/// Why a member cannot be removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RemoveError {
    /// No member of that id is known.
    #[error("no member {0} is known to this node")]
    Unknown(NodeId),
    /// It answers gossip.
    #[error("{0} is up ({1}): remove only a dead node; to take a live one out, run `kvnode decommission` on it")]
    Live(NodeId, &'static str),
    /// The node asked is the one to remove.
    #[error("{0} is this node: ask another member to remove it")]
    IsSelf(NodeId),
    /// It is removed already.
    #[error("{0} is removed already (as {1})")]
    AlreadyRemoved(NodeId, String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn member(id: &str, state: NodeState, generation: u64) -> MemberInfo {
        MemberInfo::for_test(id, state, generation)
    }

    #[test]
    fn removals_round_trip_and_bad_entries_are_skipped() {
        let a = Removal::of(&member("a", NodeState::Available, 7));
        let colon = Removal::of(&member("zone:b", NodeState::Bootstrapping, 9));
        let text = encode(&[a.clone(), colon.clone()]);
        assert_eq!(decode(&text), [a.clone(), colon]);
        for bad in [
            "a:7",
            ":7:0123456789abcdef",
            "a:x:0123456789abcdef",
            "a:7:0123",
            "a:7:0123456789abcdeg",
        ] {
            assert_eq!(
                decode(&format!("{bad},{a}")),
                std::slice::from_ref(&a),
                "{bad}"
            );
        }
        assert!(decode("").is_empty());
    }

    #[test]
    fn the_removed_run_and_older_ones_are_fenced_in_any_state() {
        let removal = Removal::of(&member("a", NodeState::Available, 7));
        for generation in [3, 7] {
            for state in [NodeState::Joining, NodeState::Available, NodeState::Left] {
                let mut m = member("a", state, generation);
                m.tokens = vec![1, 2, 3];
                assert!(removal.fences(&m), "{generation} {state:?}");
            }
        }
        assert!(!removal.fences(&member("b", NodeState::Available, 7)));
    }

    #[test]
    fn a_newer_run_with_the_removed_tokens_is_fenced_a_fresh_joiner_is_not() {
        let removal = Removal::of(&member("a", NodeState::Available, 7));
        // Restarted from the removed data dir: same tokens, newer run.
        for state in [
            NodeState::Bootstrapping,
            NodeState::Available,
            NodeState::Leaving,
        ] {
            assert!(removal.fences(&member("a", state, 8)), "{state:?}");
        }
        // JOINING publishes tokens it does not own yet.
        assert!(!removal.fences(&member("a", NodeState::Joining, 8)));
        // A wiped node that bootstrapped afresh got other tokens.
        let mut fresh = member("a", NodeState::Available, 8);
        fresh.tokens[0] ^= 1;
        assert!(!removal.fences(&fresh));
    }

    #[test]
    fn only_a_known_down_other_member_not_removed_yet_can_be_removed() {
        let members: BTreeMap<_, _> = [
            member("a", NodeState::Available, 1),
            member("b", NodeState::Available, 1),
            MemberInfo {
                live: false,
                ..member("c", NodeState::Bootstrapping, 4)
            },
            MemberInfo {
                live: false,
                ..member("d", NodeState::Available, 2)
            },
        ]
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
        let (kept, removed) = partition(
            members.clone(),
            &[Removal::of(&members[&NodeId::from("d")])],
        );
        let view = ClusterView {
            removed,
            ..ClusterView::build(NodeId::from("a"), kept, 1)
        };
        let id = NodeId::from;
        assert_eq!(
            removable(&view, &id("a")),
            Err(RemoveError::IsSelf(id("a")))
        );
        assert_eq!(
            removable(&view, &id("b")),
            Err(RemoveError::Live(id("b"), "AVAILABLE"))
        );
        assert_eq!(
            removable(&view, &id("x")),
            Err(RemoveError::Unknown(id("x")))
        );
        assert!(matches!(
            removable(&view, &id("d")),
            Err(RemoveError::AlreadyRemoved(..))
        ));
        // A dead joiner: its incarnation, with the tokens it announced.
        let c = &members[&id("c")];
        assert_eq!(removable(&view, &id("c")), Ok(Removal::of(c)));
        assert_eq!(
            Removal::of(c).to_string(),
            format!("c:4:{}", tokens_digest(&c.tokens))
        );
    }

    #[test]
    fn partition_takes_fenced_records_out_and_keeps_their_removal() {
        let dead = member("c", NodeState::Available, 7);
        let members: BTreeMap<_, _> = [
            member("a", NodeState::Available, 1),
            member("b", NodeState::Available, 1),
            dead.clone(),
        ]
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
        let removal = Removal::of(&dead);
        let (kept, fenced) = partition(members, std::slice::from_ref(&removal));
        assert_eq!(
            kept.keys().map(NodeId::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let c = &fenced[&NodeId::from("c")];
        assert_eq!((c.removal.clone(), c.last.clone()), (removal, dead));
        // What its removal moves: the ring with it, and the ring without.
        let ring = Ring::new(
            kept.values()
                .map(|m| Member::new(m.id.clone(), m.tokens.clone())),
        )
        .unwrap();
        let (before, after) = c.rings(Some(&ring)).unwrap();
        assert!(before.contains(&NodeId::from("c")) && !after.contains(&NodeId::from("c")));
        // A dead joiner held nothing: nothing to re-replicate.
        let joiner = Removed {
            removal: c.removal.clone(),
            last: member("c", NodeState::Bootstrapping, 7),
        };
        assert!(joiner.rings(Some(&ring)).is_none());
    }
}
