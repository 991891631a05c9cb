//! Who is in the cluster, in which state, reachable where, holding which
//! tokens, and who is down: chitchat gossip (Scuttlebutt state exchange with
//! a phi-accrual failure detector) turned into a [`ClusterView`] that every
//! request routes by.
//!
//! Each node publishes, under its chitchat id (node id + generation = start
//! time in ms + gossip address), the keys
//!
//! | key      | value                                         |
//! |----------|-----------------------------------------------|
//! | `http`   | the advertised HTTP address                   |
//! | `state`  | a [`NodeState`] name                          |
//! | `tokens` | the node's ring tokens, decimal, comma-separated |
//! | `sig`    | HMAC-SHA256 of the above under the cluster secret (`auth`) |
//! | `seen`   | the transitions this node routes by (below); not signed |
//! | `pulled` | `id:generation` of LEAVING nodes whose ranges this node has taken over; not signed |
//! | `health` | empty, or why this node's engine refuses writes (a full disk, say); not signed |
//! | `ring`   | digest of the ring this node routes by ([`ring_digest`]); not signed |
//! | `tag`    | the node tag in its versions (`hlc`), decimal; a live member sharing this node's is warned about; not signed |
//! | `removed`, `removed_sig` | members removed for good, signed apart ([`removal`](crate::view::removal)) |
//! | `version`, `load` | for operators only ([`vitals`](crate::vitals)); not signed |
//!
//! # Trust
//!
//! Every gossip datagram is sealed under a key derived from the cluster
//! secret ([`gossip_transport`](crate::gossip_transport)), so nothing from
//! outside the cluster reaches this module. Within it:
//!
//! - A node's own record is written only by itself: chitchat (patched) drops
//!   peers' deltas about this node, and this node builds its own entry of
//!   the view from what it published, never from gossip.
//! - A member record must carry a signature that verifies. One that stops
//!   verifying (tampered with, or replaced by a bad one) never removes the
//!   member: its last verified record stays, and the rejection is warned
//!   about and counted. A record that never verified is ignored.
//! - Of several generations of one node id (a restart), the newest counts.
//! - At most `max_members` members are tracked (chitchat holds no more node
//!   states either); past it, new ones are ignored, warned about and counted.
//! - A member that leaves the view is logged at warn level with the reason.
//!
//! The ring holds every member in a state that owns data (AVAILABLE and
//! LEAVING), whether up or down: a down node still owns its ranges, and the
//! coordinator routes around it rather than moving its data. A member that
//! a verified removal fences ([`removal`](crate::view::removal)) is taken out of
//! the members first, into [`ClusterView::removed`].
//!
//! # Pending ranges
//!
//! The *future ring* is the ring once every transition has finished: with
//! the BOOTSTRAPPING members' tokens, without the LEAVING members. A write
//! also goes to the key's replicas in the future ring that are not replicas
//! now ([`ClusterView::pending`]), so a node receiving ranges gets every
//! write from the moment a coordinator routes with its announcement.
//!
//! A streaming node must know when that moment has passed on *every*
//! member, because its snapshot source must already hold every write that
//! was not also sent to it. So each node publishes under `seen` the
//! transitions (`id:generation:STATE` of each BOOTSTRAPPING or LEAVING member,
//! `id:generation:REMOVED` of each removed one) of the view it routes by, and only once no write that began under an older view
//! is still in flight ([`Routing::begin_write`]): a member that lists a
//! transition will not acknowledge another write that skips its pending
//! replica. `seen` is not signed: a forged one can only make a node stream
//! early, it grants no access.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use parking_lot::{Mutex, RwLock};
use strata_ring::NodeId;
use tokio::task::JoinHandle;

use crate::auth::ClusterSecret;
use crate::config::{defaults, Config};
use crate::gossip_transport::SealedTransport;
use crate::hlc::TagWatch;
use crate::marker::{removals_path, write_removals};
use crate::metrics::GossipMetrics;
use crate::routing::Routing;
use crate::view::removal::{self, Removal, RemoveError};
pub(crate) use crate::view::{ring_digest, ClusterView, MemberInfo, NodeState};
use crate::vitals::{MemberVitals, Vitals, KEY_LOAD, KEY_VERSION};

const KEY_HTTP: &str = "http";
const KEY_STATE: &str = "state";
const KEY_TOKENS: &str = "tokens";
const KEY_SIG: &str = "sig";
const KEY_SEEN: &str = "seen";
const KEY_PULLED: &str = "pulled";
const KEY_HEALTH: &str = "health";
const KEY_RING: &str = "ring";
const KEY_TAG: &str = "tag";
const KEY_REMOVED: &str = "removed";
const KEY_REMOVED_SIG: &str = "removed_sig";

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// chitchat failed to start (typically: the gossip port is taken).
    #[error("gossip on {addr}: {reason}")]
    Gossip {
        /// The gossip listen address.
        addr: SocketAddr,
        /// chitchat's error, as text.
        reason: String,
    },
}

/// This node's membership: its gossip handle, its published state and the
/// latest [`ClusterView`].
pub(crate) struct Membership {
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    /// The view this node routes by, and its write gate.
    routing: Arc<Routing>,
    state: Mutex<NodeState>,
    self_id: NodeId,
    generation: u64,
    http_addr: SocketAddr,
    tokens: RwLock<Vec<u64>>,
    secret: ClusterSecret,
    refresher: Mutex<Option<JoinHandle<()>>>,
    /// What this node last published under `seen`.
    published_seen: Mutex<Vec<String>>,
    /// What this node publishes under `pulled`.
    pulled: Mutex<Vec<String>>,
    /// What this node publishes under `health`.
    health: Mutex<Option<String>>,
    /// What this node last published under `ring`.
    published_ring: Mutex<String>,
    /// What this node publishes under `removed`: its own removals and
    /// every verified one it adopted.
    removals: Mutex<Vec<Removal>>,
    /// Where they are recorded ([`marker`](crate::marker)).
    removals_path: PathBuf,
    /// The last verified record of each member.
    records: Mutex<Records>,
    max_members: usize,
    metrics: GossipMetrics,
    tags: TagWatch,
    /// What the members publish for operators, and when each was last heard.
    vitals: Vitals,
    /// The load this node last published.
    published_load: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("self_id", &self.self_id)
            .field("state", &*self.state.lock())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Starts gossip, publishing this node in `state` with `tokens` and the
    /// `removals` its data dir recorded, and a task that refreshes the view
    /// every gossip round.
    pub(crate) async fn start(
        config: &Config,
        (state, tokens): (NodeState, Vec<u64>),
        removals: Vec<Removal>,
        metrics: GossipMetrics,
    ) -> Result<Arc<Self>, MembershipError> {
        let self_id = NodeId::from(config.node_id.clone());
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let chitchat_id =
            ChitchatId::new(config.node_id.clone(), generation, config.gossip_advertise);
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: defaults::PHI_THRESHOLD,
            sampling_window_size: 1_000,
            max_interval: Duration::from_secs(10),
            // The prior of the phi estimate: what a heartbeat interval looks
            // like before any is measured. The gossip interval is the truth.
            initial_interval: config.gossip_interval,
            dead_node_grace_period: Duration::from_secs(24 * 3600),
            min_interval: Duration::from_millis(defaults::DETECTOR_MIN_INTERVAL_MS),
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.gossip_listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
            max_nodes: config.max_members,
        };
        let tokens_text = tokens
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let http = config.advertise.to_string();
        let removed_text = removal::encode(&removals);
        let sig = config.secret.sign(&signed_message(
            &config.node_id,
            generation,
            &http,
            state.as_str(),
            &tokens_text,
        ));
        let initial = vec![
            (KEY_HTTP.to_owned(), http),
            (KEY_STATE.to_owned(), state.as_str().to_owned()),
            (KEY_TOKENS.to_owned(), tokens_text),
            (KEY_SIG.to_owned(), sig),
            (KEY_SEEN.to_owned(), String::new()),
            (KEY_PULLED.to_owned(), String::new()),
            (KEY_HEALTH.to_owned(), String::new()),
            (KEY_RING.to_owned(), String::new()),
            (KEY_TAG.to_owned(), config.node_tag.to_string()),
            (KEY_VERSION.to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            (KEY_LOAD.to_owned(), String::new()),
            (
                KEY_REMOVED_SIG.to_owned(),
                config.secret.sign(&removal::signed_message(
                    &config.node_id,
                    generation,
                    &removed_text,
                )),
            ),
            (KEY_REMOVED.to_owned(), removed_text),
        ];
        let transport = SealedTransport::new(config, generation, metrics.clone());
        let handle = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(|e| MembershipError::Gossip {
                addr: config.gossip_listen,
                reason: format!("{e:#}"),
            })?;
        let me = Arc::new(Self {
            handle: tokio::sync::Mutex::new(Some(handle)),
            routing: Arc::new(Routing::new(ClusterView::build(
                self_id.clone(),
                BTreeMap::new(),
                0,
            ))),
            state: Mutex::new(state),
            self_id,
            generation,
            http_addr: config.advertise,
            tokens: RwLock::new(tokens),
            secret: config.secret.clone(),
            refresher: Mutex::new(None),
            published_seen: Mutex::new(Vec::new()),
            pulled: Mutex::new(Vec::new()),
            health: Mutex::new(None),
            published_ring: Mutex::new(String::new()),
            removals: Mutex::new(removals),
            removals_path: removals_path(&config.data_dir),
            records: Mutex::new(Records::default()),
            max_members: config.max_members,
            metrics,
            tags: TagWatch::new(config.node_tag),
            vitals: Vitals::default(),
            published_load: Mutex::new(None),
        });
        me.refresh().await;
        let weak = Arc::downgrade(&me);
        let interval = config.gossip_interval;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                me.refresh().await;
            }
        });
        *me.refresher.lock() = Some(task);
        Ok(me)
    }

    /// The current view. Cheap: an `Arc` clone.
    pub(crate) fn view(&self) -> Arc<ClusterView> {
        self.routing.view()
    }

    /// The view this node routes by and its write gate, for the code that
    /// routes without needing gossip (the coordinator), or waits for the
    /// next view ([`Routing::subscribe`]).
    pub(crate) fn routing(&self) -> Arc<Routing> {
        self.routing.clone()
    }

    /// This node's id.
    pub(crate) fn self_id(&self) -> &NodeId {
        &self.self_id
    }

    /// This node's published state.
    pub(crate) fn state(&self) -> NodeState {
        *self.state.lock()
    }

    /// This node's tokens.
    pub(crate) fn tokens(&self) -> Vec<u64> {
        self.tokens.read().clone()
    }

    /// This run's generation (start time in ms).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// What member `id` publishes for operators and when this node last
    /// heard from it; `None` for this node itself and for strangers.
    pub(crate) fn vitals(&self, id: &NodeId) -> Option<MemberVitals> {
        self.vitals.get(id, Instant::now())
    }

    /// Publishes this node's table + WAL bytes under `load`, unless they
    /// are unchanged. Called every [`LOAD_PUBLISH_EVERY`](crate::vitals::LOAD_PUBLISH_EVERY).
    pub(crate) async fn publish_load(&self, bytes: u64) {
        if self.published_load.lock().replace(bytes) == Some(bytes) {
            return;
        }
        if let Some(handle) = self.handle.lock().await.as_ref() {
            handle
                .with_chitchat(|c| c.self_node_state().set(KEY_LOAD, bytes))
                .await;
        }
    }

    /// Removes the DOWN member `id` for good: publishes its incarnation
    /// under `removed` ([`removal`](crate::view::removal)).
    pub(crate) async fn remove(&self, id: &NodeId) -> Result<Removal, RemoveError> {
        let removal = removal::removable(&self.view(), id)?;
        self.publish_removals([removal.clone()]).await;
        tracing::warn!(node = %id, removal = %removal, "member removed for good");
        self.refresh().await;
        Ok(removal)
    }

    /// Adds `new` to what this node publishes under `removed`, signed, and
    /// records them in the data dir first, so that no restart forgets them.
    async fn publish_removals(&self, new: impl IntoIterator<Item = Removal>) {
        let all = {
            let mut removals = self.removals.lock();
            let before = removals.len();
            for r in new {
                if !removals.contains(&r) {
                    removals.push(r);
                }
            }
            if removals.len() == before {
                return;
            }
            removals.clone()
        };
        let text = removal::encode(&all);
        let path = self.removals_path.clone();
        let recorded = tokio::task::spawn_blocking(move || write_removals(&path, &all))
            .await
            .map_err(|e| e.to_string())
            .and_then(|written| written.map_err(|e| e.to_string()));
        if let Err(e) = recorded {
            // Gossip still carries the removal; only a restart of every
            // node that knows it could forget it.
            tracing::error!(error = %e, "cannot record a removal in the data dir");
        }
        let sig = self.secret.sign(&removal::signed_message(
            self.self_id.as_str(),
            self.generation,
            &text,
        ));
        if let Some(handle) = self.handle.lock().await.as_ref() {
            handle
                .with_chitchat(|c| {
                    let node = c.self_node_state();
                    node.set(KEY_REMOVED, &text);
                    node.set(KEY_REMOVED_SIG, &sig);
                })
                .await;
        }
    }

    /// Publishes that this node has taken over the ranges of `leaver`
    /// ([`MemberInfo::incarnation`]).
    pub(crate) async fn mark_pulled(&self, leaver: String) {
        let text = {
            let mut pulled = self.pulled.lock();
            if pulled.contains(&leaver) {
                return;
            }
            pulled.push(leaver);
            pulled.join(",")
        };
        if let Some(handle) = self.handle.lock().await.as_ref() {
            handle
                .with_chitchat(|c| c.self_node_state().set(KEY_PULLED, &text))
                .await;
        }
        self.refresh().await;
    }

    /// Sets this node's state to `to` if it is `from`, in one step against
    /// concurrent callers; whether it did. Nothing is published: the caller
    /// follows with [`Membership::set_state`].
    pub(crate) fn swap_state(&self, from: NodeState, to: NodeState) -> bool {
        let mut state = self.state.lock();
        if *state != from {
            return false;
        }
        *state = to;
        true
    }

    /// Publishes a new state for this node.
    pub(crate) async fn set_state(&self, state: NodeState) {
        let tokens = self.tokens();
        self.set_state_and_tokens(state, tokens).await;
    }

    /// Publishes a new state and new tokens for this node at once, so that
    /// no member sees the state with the old tokens.
    pub(crate) async fn set_state_and_tokens(&self, state: NodeState, tokens: Vec<u64>) {
        *self.state.lock() = state;
        *self.tokens.write() = tokens.clone();
        let tokens_text = tokens
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let http = self.http_addr.to_string();
        let sig = self.secret.sign(&signed_message(
            self.self_id.as_str(),
            self.generation,
            &http,
            state.as_str(),
            &tokens_text,
        ));
        if let Some(handle) = self.handle.lock().await.as_ref() {
            handle
                .with_chitchat(|c| {
                    let node = c.self_node_state();
                    node.set(KEY_STATE, state.as_str());
                    node.set(KEY_TOKENS, &tokens_text);
                    node.set(KEY_SIG, &sig);
                })
                .await;
        }
        self.refresh().await;
        tracing::info!(state = state.as_str(), "node state published");
    }

    /// Publishes whether this node's engine takes writes: `Some(reason)`
    /// while it does not, so that coordinators stop sending it reads.
    pub(crate) async fn set_health(&self, degraded: Option<String>) {
        if *self.health.lock() == degraded {
            return;
        }
        *self.health.lock() = degraded.clone();
        let text = degraded.clone().unwrap_or_default();
        if let Some(handle) = self.handle.lock().await.as_ref() {
            handle
                .with_chitchat(|c| c.self_node_state().set(KEY_HEALTH, &text))
                .await;
        }
        self.refresh().await;
        match degraded {
            Some(reason) => tracing::warn!(%reason, "published: degraded"),
            None => tracing::info!("published: healthy again"),
        }
    }

    /// Stops gossip and the refresh task. Peers will see this node go down.
    pub(crate) async fn shutdown(&self) {
        if let Some(task) = self.refresher.lock().take() {
            task.abort();
        }
        if let Some(handle) = self.handle.lock().await.take() {
            if let Err(e) = handle.shutdown().await {
                tracing::warn!(error = %e, "gossip shutdown");
            }
        }
    }

    async fn refresh(&self) {
        let (members, rejected, heard) = {
            let guard = self.handle.lock().await;
            let Some(handle) = guard.as_ref() else { return };
            let chitchat = handle.chitchat();
            let chitchat = chitchat.lock().await;
            let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
            let mut records = self.records.lock();
            records.forget_unless(|id| chitchat.node_state(id).is_some());
            self.vitals
                .forget_unless(|id| chitchat.node_state(id).is_some());
            let now = Instant::now();
            let mut rejected = BTreeMap::new();
            let mut members: BTreeMap<NodeId, MemberInfo> = BTreeMap::new();
            self.tags.observe(
                live.iter()
                    .filter(|id| *id.node_id != *self.self_id.as_str())
                    .map(|id| {
                        (
                            &*id.node_id,
                            chitchat.node_state(id).and_then(|n| n.get(KEY_TAG)),
                        )
                    }),
            );
            let mut heard: Vec<Removal> = Vec::new();
            for (id, node_state) in chitchat.node_states() {
                if *id.node_id == *self.self_id.as_str() {
                    // This node's entry comes from what it published; an
                    // entry of another process under this id is an impostor
                    // or a stale run, and never routes.
                    continue;
                }
                let get = |k: &str| node_state.get(k);
                let signed = [get(KEY_HTTP), get(KEY_STATE), get(KEY_TOKENS), get(KEY_SIG)];
                let info = match records.admit(&self.secret, id, signed, live.contains(id)) {
                    Admitted::Verified(info) => info,
                    Admitted::Kept { last, reason, news } => {
                        if news {
                            self.metrics.record_rejected();
                            tracing::warn!(
                                node = %&*id.node_id,
                                %reason,
                                "member record does not verify; keeping its last verified one"
                            );
                        }
                        last
                    }
                    Admitted::Refused { reason, news } => {
                        if news {
                            self.metrics.record_rejected();
                            tracing::warn!(
                                node = %&*id.node_id,
                                %reason,
                                "ignoring a member record that never verified"
                            );
                        }
                        rejected.insert(NodeId::from(&*id.node_id), reason);
                        continue;
                    }
                };
                // Only members admitted: an impostor's newer generation
                // must not stand in for the member's vitals.
                self.vitals.observe(
                    id,
                    node_state.heartbeat().into(),
                    get(KEY_VERSION),
                    get(KEY_LOAD),
                    now,
                );
                let removed = get(KEY_REMOVED).unwrap_or_default();
                let message = removal::signed_message(&id.node_id, id.generation_id, removed);
                if self
                    .secret
                    .verify(&message, get(KEY_REMOVED_SIG).unwrap_or_default())
                {
                    heard.extend(removal::decode(removed));
                } else if !removed.is_empty() {
                    self.metrics.record_rejected();
                    tracing::warn!(node = %&*id.node_id, "ignoring a removal list that does not verify");
                }
                let info = MemberInfo {
                    seen: list(get(KEY_SEEN)),
                    pulled: list(get(KEY_PULLED)),
                    degraded: get(KEY_HEALTH).filter(|h| !h.is_empty()).map(str::to_owned),
                    ring: get(KEY_RING).unwrap_or_default().to_owned(),
                    ..info
                };
                match members.get(&info.id) {
                    Some(seen) if seen.generation >= info.generation => {}
                    _ => {
                        members.insert(info.id.clone(), info);
                    }
                }
            }
            (members, rejected, heard)
        };
        self.publish_removals(heard).await;
        let members = self.bounded(members);
        let me = self.self_info();
        let mut members = members;
        members.insert(me.id.clone(), me);
        let (members, removed) = removal::partition(members, &self.removals.lock());
        let mut rejected = rejected;
        for r in removed.values() {
            rejected.insert(
                r.removal.id.clone(),
                format!("removed for good as {}", r.removal),
            );
        }
        self.routing.publish_with(|current| {
            let same_members = current.members.len() == members.len()
                && current
                    .members
                    .iter()
                    .zip(&members)
                    .all(|((a, x), (b, y))| a == b && **x == *y);
            if same_members && current.removed == removed {
                return None;
            }
            log_changes(&current.members, &members, &rejected);
            self.metrics.set_members(member_counts(&members, &removed));
            let epoch = current.epoch + 1;
            Some(ClusterView {
                removed,
                ..ClusterView::build(self.self_id.clone(), members, epoch)
            })
        });
        self.publish_seen().await;
        self.publish_ring().await;
    }

    /// Keeps at most `max_members` members (this node counts as one): those
    /// already in the view first, then the rest in id order.
    fn bounded(&self, mut members: BTreeMap<NodeId, MemberInfo>) -> BTreeMap<NodeId, MemberInfo> {
        let room = self.max_members.saturating_sub(1);
        if members.len() <= room {
            return members;
        }
        let view = self.view();
        let (known, new): (Vec<NodeId>, Vec<NodeId>) = members
            .keys()
            .cloned()
            .partition(|id| view.members.contains_key(id));
        for id in known.into_iter().chain(new).skip(room) {
            members.remove(&id);
            self.metrics.member_ignored();
            tracing::warn!(node = %id, max_members = self.max_members, "member ignored: max_members reached");
        }
        members
    }

    /// This node as it published itself.
    fn self_info(&self) -> MemberInfo {
        MemberInfo {
            id: self.self_id.clone(),
            http_addr: self.http_addr,
            state: self.state(),
            tokens: self.tokens(),
            live: true,
            generation: self.generation,
            seen: self.published_seen.lock().clone(),
            pulled: self.pulled.lock().clone(),
            degraded: self.health.lock().clone(),
            ring: self.published_ring.lock().clone(),
        }
    }

    /// Publishes the digest of the current view's ring under `ring`.
    async fn publish_ring(&self) {
        let digest = ring_digest(self.view().ring.as_ref());
        if *self.published_ring.lock() == digest {
            return;
        }
        if let Some(handle) = self.handle.lock().await.as_ref() {
            handle
                .with_chitchat(|c| c.self_node_state().set(KEY_RING, &digest))
                .await;
        }
        *self.published_ring.lock() = digest;
    }

    /// Publishes the current view's transitions under `seen`, once no write
    /// routed by an older view is in flight (see the module doc).
    async fn publish_seen(&self) {
        let view = self.view();
        if self.routing.writes_before(view.epoch) {
            return;
        }
        let seen = view.transitions();
        if *self.published_seen.lock() == seen {
            return;
        }
        let text = seen.join(",");
        if let Some(handle) = self.handle.lock().await.as_ref() {
            handle
                .with_chitchat(|c| c.self_node_state().set(KEY_SEEN, &text))
                .await;
        }
        *self.published_seen.lock() = seen;
    }
}

/// The last verified record of each member (by chitchat id), kept while a
/// newer one fails verification, so that a bad record never removes a member.
#[derive(Debug, Default)]
struct Records {
    verified: std::collections::HashMap<ChitchatId, MemberInfo>,
    /// The signature of each member's current, rejected record: a rejection
    /// is news (warned about, counted) once per bad record.
    rejected: std::collections::HashMap<ChitchatId, String>,
}

/// What [`Records::admit`] made of a member's record.
#[derive(Debug, PartialEq)]
enum Admitted {
    /// It verifies.
    Verified(MemberInfo),
    /// It does not, and the member's last verified record stands in.
    Kept {
        last: MemberInfo,
        reason: String,
        news: bool,
    },
    /// It does not, and none of this member ever did.
    Refused { reason: String, news: bool },
}

impl Records {
    /// Checks a member's signed fields (`http`, `state`, `tokens`, `sig`).
    fn admit(
        &mut self,
        secret: &ClusterSecret,
        id: &ChitchatId,
        signed: [Option<&str>; 4],
        live: bool,
    ) -> Admitted {
        match Self::verify(secret, id, signed, live) {
            Ok(info) => {
                self.verified.insert(id.clone(), info.clone());
                self.rejected.remove(id);
                Admitted::Verified(info)
            }
            Err(reason) => {
                let sig = signed[3].unwrap_or_default().to_owned();
                let news = self.rejected.insert(id.clone(), sig.clone()) != Some(sig);
                match self.verified.get(id) {
                    Some(last) => Admitted::Kept {
                        last: MemberInfo {
                            live,
                            ..last.clone()
                        },
                        reason,
                        news,
                    },
                    None => Admitted::Refused { reason, news },
                }
            }
        }
    }

    /// Forgets members gossip no longer holds.
    fn forget_unless(&mut self, mut held: impl FnMut(&ChitchatId) -> bool) {
        self.verified.retain(|id, _| held(id));
        self.rejected.retain(|id, _| held(id));
    }

    /// The signed part of a member's record, checked. The unsigned keys are
    /// filled in by the caller.
    fn verify(
        secret: &ClusterSecret,
        id: &ChitchatId,
        [http, state, tokens, sig]: [Option<&str>; 4],
        live: bool,
    ) -> Result<MemberInfo, String> {
        let (Some(http), Some(state), Some(tokens), Some(sig)) = (http, state, tokens, sig) else {
            return Err("the record is incomplete".into());
        };
        let message = signed_message(&id.node_id, id.generation_id, http, state, tokens);
        if !secret.verify(&message, sig) {
            return Err("bad signature".into());
        }
        let tokens: Option<Vec<u64>> = if tokens.is_empty() {
            Some(Vec::new())
        } else {
            tokens.split(',').map(|t| t.parse().ok()).collect()
        };
        let bad = |what: &str| format!("signed, but its {what} does not parse");
        Ok(MemberInfo {
            id: NodeId::from(&*id.node_id),
            http_addr: http.parse().map_err(|_| bad("address"))?,
            state: NodeState::parse(state).ok_or_else(|| bad("state"))?,
            tokens: tokens.ok_or_else(|| bad("tokens"))?,
            live,
            generation: id.generation_id,
            seen: Vec::new(),
            pulled: Vec::new(),
            degraded: None,
            ring: String::new(),
        })
    }
}

fn list(text: Option<&str>) -> Vec<String> {
    text.unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn signed_message(
    node_id: &str,
    generation: u64,
    http: &str,
    state: &str,
    tokens: &str,
) -> Vec<u8> {
    format!("kvnode-member-v1|{node_id}|{generation}|{http}|{state}|{tokens}").into_bytes()
}

/// The members by (state, status) for the membership gauges: every pair,
/// and the members removed for good under `REMOVED`.
fn member_counts(
    members: &BTreeMap<NodeId, MemberInfo>,
    removed: &BTreeMap<NodeId, removal::Removed>,
) -> Vec<(&'static str, &'static str, usize)> {
    let states = members.values().map(|m| (m.state.as_str(), m.live));
    let gone = removed.values().map(|r| ("REMOVED", r.last.live));
    let all: Vec<(&str, bool)> = states.chain(gone).collect();
    NodeState::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(["REMOVED"])
        .flat_map(|state| {
            [(true, "UP"), (false, "DOWN")].map(|(live, status)| {
                let n = all.iter().filter(|m| **m == (state, live)).count();
                (state, status, n)
            })
        })
        .collect()
}

fn log_changes(
    old: &BTreeMap<NodeId, Arc<MemberInfo>>,
    new: &BTreeMap<NodeId, MemberInfo>,
    rejected: &BTreeMap<NodeId, String>,
) {
    for (id, m) in new {
        let before = old.get(id).map(|o| (o.state, o.live, o.degraded.is_some()));
        if before != Some((m.state, m.live, m.degraded.is_some())) {
            tracing::info!(
                node = %id,
                state = m.state.as_str(),
                live = m.live,
                degraded = m.degraded.as_deref().unwrap_or(""),
                addr = %m.http_addr,
                "member changed"
            );
        }
    }
    for id in old.keys().filter(|id| !new.contains_key(*id)) {
        let reason = rejected.get(id).map_or(
            "its gossip state is gone (garbage-collected after being down)",
            String::as_str,
        );
        tracing::warn!(node = %id, %reason, "member left the view");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn a_record_that_stops_verifying_keeps_the_last_verified_one() {
        let secret = ClusterSecret::new("0123456789abcdef".into());
        let id = ChitchatId::new("b".to_owned(), 5, "127.0.0.1:2".parse().unwrap());
        let good_sig = secret.sign(&signed_message("b", 5, "127.0.0.1:9", "AVAILABLE", "1,2"));
        let good = [
            Some("127.0.0.1:9"),
            Some("AVAILABLE"),
            Some("1,2"),
            Some(good_sig.as_str()),
        ];
        let mut records = Records::default();
        let Admitted::Verified(first) = records.admit(&secret, &id, good, true) else {
            panic!("a good record must verify");
        };
        assert_eq!(first.tokens, [1, 2]);
        // A forged signature, then a forged state under the good signature.
        let forged = [good[0], good[1], good[2], Some("00ff")];
        let moved = [good[0], Some("LEFT"), good[2], good[3]];
        for (n, bad) in [forged, forged, moved].into_iter().enumerate() {
            match records.admit(&secret, &id, bad, false) {
                Admitted::Kept { last, news, .. } => {
                    assert_eq!(
                        last,
                        MemberInfo {
                            live: false,
                            ..first.clone()
                        }
                    );
                    // The same bad record is news once; a new one again.
                    assert_eq!(news, n != 1, "round {n}");
                }
                other => panic!("round {n}: {other:?}"),
            }
        }
        // A member that never verified is refused, not invented.
        let stranger = ChitchatId::new("c".to_owned(), 1, "127.0.0.1:3".parse().unwrap());
        assert!(matches!(
            records.admit(&secret, &stranger, forged, true),
            Admitted::Refused { news: true, .. }
        ));
        // Gossip forgets b: so do the records.
        records.forget_unless(|i| *i != id);
        assert!(matches!(
            records.admit(&secret, &id, forged, true),
            Admitted::Refused { .. }
        ));
        assert!(matches!(
            records.admit(&secret, &id, good, true),
            Admitted::Verified(_)
        ));
    }

    #[test]
    fn member_gauges_cover_every_state_and_status_zeros_included() {
        let mut down = MemberInfo::for_test("b", NodeState::Available, 1);
        down.live = false;
        let members: BTreeMap<NodeId, MemberInfo> = [
            MemberInfo::for_test("a", NodeState::Available, 1),
            down,
            MemberInfo::for_test("c", NodeState::Bootstrapping, 1),
        ]
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
        let counts = member_counts(&members, &BTreeMap::new());
        assert_eq!(counts.len(), 12, "5 states and REMOVED, UP and DOWN");
        let count = |state, status| {
            counts
                .iter()
                .find(|(s, st, _)| *s == state && *st == status)
                .map(|c| c.2)
                .unwrap()
        };
        assert_eq!(count("AVAILABLE", "UP"), 1);
        assert_eq!(count("AVAILABLE", "DOWN"), 1);
        assert_eq!(count("BOOTSTRAPPING", "UP"), 1);
        assert_eq!(count("LEAVING", "UP"), 0);
        assert_eq!(count("REMOVED", "DOWN"), 0);
    }
}
