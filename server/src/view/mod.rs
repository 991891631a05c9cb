//! The cluster as one request routes by: the members ([`MemberInfo`]), their
//! lifecycle ([`NodeState`]), and the immutable [`ClusterView`] built from
//! them, with the ring, the ring after the transitions in progress, and the
//! members removed for good ([`removal`]). Plain data and pure functions:
//! `membership` builds views from gossip and publishes them through
//! `routing`; the coordinator, streaming and the API read them.

pub(crate) mod removal;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use strata_ring::{Member, NodeId, ReplicationFactor, Ring};

use crate::peer::Endpoint;
use removal::{Removal, Removed};

/// The lifecycle of a node, as published in gossip. DOWN is not a state a
/// node publishes: it is what the failure detector concludes
/// ([`MemberInfo::live`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum NodeState {
    /// Learning the ring; owns nothing yet.
    Joining,
    /// Receiving its ranges from current replicas.
    Bootstrapping,
    /// Serving reads and writes for its ranges.
    Available,
    /// Streaming its ranges away before leaving.
    Leaving,
    /// Gone from the ring.
    Left,
}

impl NodeState {
    /// Every state, in lifecycle order.
    pub(crate) const ALL: [Self; 5] = [
        Self::Joining,
        Self::Bootstrapping,
        Self::Available,
        Self::Leaving,
        Self::Left,
    ];

    /// The published name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "JOINING",
            Self::Bootstrapping => "BOOTSTRAPPING",
            Self::Available => "AVAILABLE",
            Self::Leaving => "LEAVING",
            Self::Left => "LEFT",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "JOINING" => Self::Joining,
            "BOOTSTRAPPING" => Self::Bootstrapping,
            "AVAILABLE" => Self::Available,
            "LEAVING" => Self::Leaving,
            "LEFT" => Self::Left,
            _ => return None,
        })
    }

    /// Whether a node in this state owns ranges of the ring.
    pub(crate) fn in_ring(self) -> bool {
        matches!(self, Self::Available | Self::Leaving)
    }

    /// Whether a node in this state is taking or handing over ranges.
    pub(crate) fn in_transition(self) -> bool {
        matches!(self, Self::Bootstrapping | Self::Leaving)
    }
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberInfo {
    /// Node id.
    pub(crate) id: NodeId,
    /// Advertised HTTP address.
    pub(crate) http_addr: SocketAddr,
    /// Published state.
    pub(crate) state: NodeState,
    /// Ring tokens.
    pub(crate) tokens: Vec<u64>,
    /// Whether the failure detector thinks it is up (this node always is).
    pub(crate) live: bool,
    /// Chitchat generation (start time in ms).
    pub(crate) generation: u64,
    /// The transitions (`id:generation:STATE`) this member routes by (see the module doc).
    pub(crate) seen: Vec<String>,
    /// Leaving nodes (`id:generation`) whose ranges this member has taken over.
    pub(crate) pulled: Vec<String>,
    /// Why its engine refuses writes, if it does: it is not sent reads.
    pub(crate) degraded: Option<String>,
    /// The digest of the ring it routes by ([`ring_digest`]).
    pub(crate) ring: String,
}

impl MemberInfo {
    /// Where calls to this member go.
    pub(crate) fn endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            id: &self.id,
            addr: self.http_addr,
        }
    }

    /// This member as named in `pulled`.
    pub(crate) fn incarnation(&self) -> String {
        format!("{}:{}", self.id, self.generation)
    }
}

impl MemberInfo {
    /// Whether requests may be sent to it: up and owning data.
    pub(crate) fn serving(&self) -> bool {
        self.live && self.state.in_ring()
    }

    /// Whether reads may be sent to it: serving, and its engine healthy (a
    /// read-only engine may have missed writes).
    pub(crate) fn readable(&self) -> bool {
        self.serving() && self.degraded.is_none()
    }
}

#[cfg(test)]
impl MemberInfo {
    /// An up member with 8 tokens derived from its id, for unit tests.
    #[allow(clippy::unwrap_used)]
    pub(crate) fn for_test(id: &str, state: NodeState, generation: u64) -> Self {
        Self {
            id: NodeId::from(id),
            http_addr: "127.0.0.1:1".parse().unwrap(),
            state,
            tokens: Member::derived(id, 8).tokens,
            live: true,
            generation,
            seen: Vec::new(),
            pulled: Vec::new(),
            degraded: None,
            ring: String::new(),
        }
    }
}

/// A digest of a ring (members and their tokens), for comparing views
/// across members.
pub(crate) fn ring_digest(ring: Option<&Ring>) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for member in ring.map(Ring::members).unwrap_or_default() {
        hasher.update(member.id.as_str().as_bytes());
        hasher.update(&[0]);
        for token in &member.tokens {
            hasher.update(&token.to_be_bytes());
        }
        hasher.update(&[0xff]);
    }
    format!("{:016x}", hasher.digest())
}

/// An immutable snapshot of the membership and the ring built from it.
#[derive(Debug)]
pub(crate) struct ClusterView {
    /// This node.
    pub(crate) self_id: NodeId,
    /// Every verified member, by id. Shared, so that a request can hold
    /// its replicas past the view for the price of a reference count.
    pub(crate) members: BTreeMap<NodeId, Arc<MemberInfo>>,
    /// The ring of members in a ring state; `None` while there is none.
    pub(crate) ring: Option<Ring>,
    /// The ring once the transitions finish: AVAILABLE and BOOTSTRAPPING
    /// members, not LEAVING ones. `None` when there are no transitions (it
    /// would equal `ring`).
    pub(crate) future_ring: Option<Ring>,
    /// Counts view changes on this node, for [`Routing::begin_write`].
    pub(crate) epoch: u64,
    /// Members fenced by a removal, out of `members` and the rings.
    pub(crate) removed: BTreeMap<NodeId, Removed>,
}

impl ClusterView {
    pub(crate) fn build(
        self_id: NodeId,
        members: BTreeMap<NodeId, MemberInfo>,
        epoch: u64,
    ) -> Self {
        let ring = ring_of(&members, NodeState::in_ring);
        let future_ring = if members.values().any(|m| m.state.in_transition()) {
            ring_of(&members, |s| {
                matches!(s, NodeState::Available | NodeState::Bootstrapping)
            })
        } else {
            None
        };
        Self {
            self_id,
            members: members
                .into_iter()
                .map(|(id, m)| (id, Arc::new(m)))
                .collect(),
            ring,
            future_ring,
            epoch,
            removed: BTreeMap::new(),
        }
    }

    /// The transitions in this view, as published under `seen`: removals
    /// count as one too.
    pub(crate) fn transitions(&self) -> Vec<String> {
        self.members
            .values()
            .filter(|m| m.state.in_transition())
            .map(|m| transition(m))
            .chain(self.removed.values().map(|r| r.removal.transition()))
            .collect()
    }

    /// Whether every live member other than `id` (any node coordinates)
    /// routes by a view holding `id` in `state`, and this view holds it too.
    pub(crate) fn all_route_with(&self, id: &NodeId, state: NodeState) -> bool {
        let Some(member) = self.members.get(id).filter(|m| m.state == state) else {
            return false;
        };
        self.all_list(&transition(member), id)
    }

    /// Whether every live member routes by a view without the member that
    /// `removal` removed (see [`removal`](crate::view::removal)).
    pub(crate) fn all_route_without(&self, removal: &Removal) -> bool {
        self.removed.contains_key(&removal.id) && self.all_list(&removal.transition(), &removal.id)
    }

    fn all_list(&self, entry: &str, except: &NodeId) -> bool {
        self.members
            .values()
            .filter(|m| m.live && m.state != NodeState::Left && m.id != *except)
            .all(|m| m.seen.iter().any(|s| s == entry))
    }

    /// The replicas of `key` in the future ring that are not replicas now:
    /// the nodes receiving its range, which must get its writes too.
    pub(crate) fn pending(&self, key: &[u8], rf: ReplicationFactor) -> Vec<&Arc<MemberInfo>> {
        let (Some(ring), Some(future)) = (&self.ring, &self.future_ring) else {
            return Vec::new();
        };
        let now: Vec<&NodeId> = ring.replicas(key, rf).collect();
        future
            .replicas(key, rf)
            .filter(|id| !now.contains(id))
            .filter_map(|id| self.members.get(id))
            .collect()
    }

    /// The preference list of `key`: up to `rf` members, owner first.
    pub(crate) fn replicas(&self, key: &[u8], rf: ReplicationFactor) -> Vec<&Arc<MemberInfo>> {
        match &self.ring {
            Some(ring) => ring
                .replicas(key, rf)
                .filter_map(|id| self.members.get(id))
                .collect(),
            None => Vec::new(),
        }
    }
}

/// The `seen` entry of a member in a transition state. With the
/// generation, so that what members saw of a node's previous run (a joiner
/// killed and restarted) never counts for the current one.
fn transition(m: &MemberInfo) -> String {
    format!("{}:{}", m.incarnation(), m.state.as_str())
}

fn ring_of(
    members: &BTreeMap<NodeId, MemberInfo>,
    keep: impl Fn(NodeState) -> bool,
) -> Option<Ring> {
    let ring_members: Vec<Member> = members
        .values()
        .filter(|m| keep(m.state))
        .map(|m| Member::new(m.id.clone(), m.tokens.clone()))
        .collect();
    if ring_members.is_empty() {
        return None;
    }
    match Ring::new(ring_members) {
        Ok(ring) => Some(ring),
        Err(e) => {
            tracing::error!(error = %e, "membership does not form a ring");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn member(id: &str, state: NodeState, live: bool) -> MemberInfo {
        MemberInfo {
            live,
            ..MemberInfo::for_test(id, state, 1)
        }
    }

    #[test]
    fn ring_digests_differ_exactly_when_rings_do() {
        let ring = |ids: &[&str]| Ring::new(ids.iter().map(|id| Member::derived(*id, 8))).ok();
        let abc = ring_digest(ring(&["a", "b", "c"]).as_ref());
        assert_eq!(abc, ring_digest(ring(&["c", "b", "a"]).as_ref()));
        assert_ne!(abc, ring_digest(ring(&["a", "b"]).as_ref()));
        assert_ne!(abc, ring_digest(None));
        let mut moved = Member::derived("c", 8);
        moved.tokens[0] ^= 1;
        let other = Ring::new([Member::derived("a", 8), Member::derived("b", 8), moved]).ok();
        assert_ne!(abc, ring_digest(other.as_ref()));
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in [
            NodeState::Joining,
            NodeState::Bootstrapping,
            NodeState::Available,
            NodeState::Leaving,
            NodeState::Left,
        ] {
            assert_eq!(NodeState::parse(s.as_str()), Some(s));
        }
        assert_eq!(NodeState::parse("available"), None);
    }

    #[test]
    fn the_ring_holds_down_members_but_not_joining_or_left_ones() {
        let members: BTreeMap<_, _> = [
            member("a", NodeState::Available, true),
            member("b", NodeState::Available, false),
            member("c", NodeState::Joining, true),
            member("d", NodeState::Left, true),
        ]
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
        let view = ClusterView::build(NodeId::from("a"), members, 1);
        let ring = view.ring.as_ref().unwrap();
        let ids: Vec<&str> = ring.members().iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let rf = ReplicationFactor::new(3).unwrap();
        assert_eq!(view.replicas(b"k", rf).len(), 2);
    }

    #[test]
    fn writes_go_to_pending_replicas_of_joining_and_leaving_moves() {
        let rf = ReplicationFactor::new(2).unwrap();
        let view_of = |states: &[(&str, NodeState)]| {
            let members: BTreeMap<_, _> = states
                .iter()
                .map(|(id, s)| member(id, *s, true))
                .map(|m| (m.id.clone(), m))
                .collect();
            ClusterView::build(NodeId::from("a"), members, 1)
        };
        let stable = view_of(&[("a", NodeState::Available), ("b", NodeState::Available)]);
        assert!(stable.future_ring.is_none());
        assert!(stable.pending(b"k", rf).is_empty());

        // c joins: every key whose future replicas include c sends to it.
        let joining = view_of(&[
            ("a", NodeState::Available),
            ("b", NodeState::Available),
            ("c", NodeState::Bootstrapping),
        ]);
        let keys: Vec<String> = (0..200).map(|k| format!("k{k}")).collect();
        let mut to_c = 0;
        for k in &keys {
            let pending = joining.pending(k.as_bytes(), rf);
            assert!(pending.iter().all(|m| m.id.as_str() == "c"));
            to_c += pending.len();
            // Reads and counted replicas still come from a and b only.
            assert!(joining
                .replicas(k.as_bytes(), rf)
                .iter()
                .all(|m| m.id.as_str() != "c"));
        }
        assert!(to_c > 50 && to_c < 200, "{to_c}");

        // b leaves a ring of three: its keys go to the node that replaces it.
        let leaving = view_of(&[
            ("a", NodeState::Available),
            ("b", NodeState::Leaving),
            ("c", NodeState::Available),
        ]);
        for k in &keys {
            let now: Vec<&str> = leaving
                .replicas(k.as_bytes(), rf)
                .iter()
                .map(|m| m.id.as_str())
                .collect();
            let pending = leaving.pending(k.as_bytes(), rf);
            if now.contains(&"b") {
                assert_eq!(pending.len(), 1, "{k}");
                assert!(!now.contains(&pending[0].id.as_str()));
            } else {
                assert!(pending.is_empty());
            }
        }
    }

    #[test]
    fn a_removal_is_a_transition_routed_once_every_live_member_lists_it() {
        let dead = member("d", NodeState::Available, false);
        let removal = Removal::of(&dead);
        let mut members: BTreeMap<_, _> = [
            member("a", NodeState::Available, true),
            member("b", NodeState::Available, true),
            member("c", NodeState::Available, false),
            dead,
        ]
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
        let build = |members: &BTreeMap<NodeId, MemberInfo>, epoch| {
            let (kept, removed) =
                removal::partition(members.clone(), std::slice::from_ref(&removal));
            ClusterView {
                removed,
                ..ClusterView::build(NodeId::from("a"), kept, epoch)
            }
        };
        let view = build(&members, 1);
        let ring = view.ring.as_ref().unwrap();
        assert!(!ring.contains(&NodeId::from("d")) && view.future_ring.is_none());
        assert_eq!(view.transitions(), ["d:1:REMOVED"]);
        assert!(!view.all_route_without(&removal));
        // The down member c is not waited for.
        for id in ["a", "b"] {
            members.get_mut(&NodeId::from(id)).unwrap().seen = vec!["d:1:REMOVED".into()];
        }
        assert!(build(&members, 2).all_route_without(&removal));
        // A removal this view does not hold is never routed by.
        let other = Removal::of(&member("e", NodeState::Available, false));
        assert!(!build(&members, 3).all_route_without(&other));
    }

    #[test]
    fn a_transition_counts_as_routed_only_once_every_live_member_lists_it() {
        let mut members: BTreeMap<_, _> = [
            member("a", NodeState::Available, true),
            member("b", NodeState::Available, true),
            member("c", NodeState::Bootstrapping, true),
            member("d", NodeState::Available, false),
        ]
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
        let c = NodeId::from("c");
        let entry = "c:1:BOOTSTRAPPING".to_owned();
        let view = ClusterView::build(c.clone(), members.clone(), 1);
        assert_eq!(view.transitions(), std::slice::from_ref(&entry));
        assert!(!view.all_route_with(&c, NodeState::Bootstrapping));
        members.get_mut(&NodeId::from("a")).unwrap().seen = vec![entry.clone()];
        let view = ClusterView::build(c.clone(), members.clone(), 2);
        assert!(!view.all_route_with(&c, NodeState::Bootstrapping));
        // The down member d is not waited for; a stale generation is not enough.
        members.get_mut(&NodeId::from("b")).unwrap().seen = vec!["c:0:BOOTSTRAPPING".into()];
        let view = ClusterView::build(c.clone(), members.clone(), 3);
        assert!(!view.all_route_with(&c, NodeState::Bootstrapping));
        members.get_mut(&NodeId::from("b")).unwrap().seen = vec![entry];
        let view = ClusterView::build(c.clone(), members, 4);
        assert!(view.all_route_with(&c, NodeState::Bootstrapping));
        assert!(!view.all_route_with(&c, NodeState::Leaving));
    }
}
