//! A node's life: open the engine, check the data dir belongs to this node,
//! start gossip, join, serve HTTP until told to stop, then drain and flush.
//!
//! # Joining
//!
//! A node whose data dir has never served (no `node.json`) starts JOINING
//! and bootstraps ([`stream::bootstrap`](crate::stream::bootstrap)): it
//! learns the ring, announces balanced tokens as BOOTSTRAPPING, streams its
//! ranges and turns AVAILABLE. A node alone (no seeds but itself) is
//! AVAILABLE at once with tokens derived from its id. A restarted node
//! (same id, `node.json` saying it was AVAILABLE) is AVAILABLE at once with
//! its recorded tokens: it already holds its ranges. A node restarted in
//! the middle of its bootstrap starts over with the same tokens.
//!
//! # Data dir
//!
//! ```text
//! <data_dir>/node.json   whose data this is ([`marker`](crate::marker))
//! <data_dir>/engine/     the strata-engine database
//! <data_dir>/hints/      the hints kept for other nodes ([`hints`](crate::hints))
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::api::budget::BodyBudget;
use crate::api::internal::Replica;
use crate::api::{self, AppParts, AppState};
use crate::applier::Applier;
use crate::auth::request::RequestVerifier;
use crate::config::{defaults, Config, PeerTransport};
use crate::coordinator::{Coordinator, CoordinatorParts};
use crate::files::gc::FileGc;
use crate::hints::replay::Replay;
use crate::hints::Hints;
use crate::hlc::{Hlc, WallClock};
use crate::join::{resolve_seeds, JoinError, JoinWatch};
use crate::listener::{self, ServeLimits};
use crate::marker::{
    marker_path, read_marker, read_removals, removals_path, write_marker, MarkerError, NodeMarker,
};
use crate::membership::{Membership, MembershipError, NodeState};
use crate::metrics::Metrics;
use crate::peer::http::HttpPeer;
use crate::peer::mux::handshake::MuxKey;
use crate::peer::mux::MuxPeer;
use crate::peer::Peer;
use crate::readiness::Readiness;
use crate::repair::metered::MeteredPeer;
use crate::repair::Repairer;
use crate::storage::{Storage, StorageError};
use crate::stream::bootstrap::Bootstrap;
use crate::stream::cleanup::Cleaner;
use crate::stream::receiver::Receiver;
use crate::stream::{handoff, Progress};
use crate::tasks::Tasks;
use crate::throttle::Throttle;
use crate::tls::{self, ServerTls, TlsError};
use crate::view::removal::Removal;
use strata_ring::Member;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The data dir could not be used.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The engine failed to open or flush.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The engine found damage it will not recover past on its own: the node
    /// refuses to start rather than serve with data silently missing.
    #[error(
        "the engine in {dir} is damaged: {source}. Nothing was deleted. Stop here and run \
         `kvnode repair-engine --data-dir {data_dir}`: it salvages every readable table and log \
         record, keeps the damaged files in {dir}/lost/, and marks the node to stream its ranges \
         again from their replicas when it next starts"
    )]
    EngineDamaged {
        /// The engine's directory.
        dir: PathBuf,
        /// The node's data dir, for the command to run.
        data_dir: PathBuf,
        /// What the engine found (the file, the offset, the reason).
        source: strata_engine::Error,
    },
    /// The hint store could not be opened.
    #[error("hint store in {dir}: {reason}")]
    Hints {
        /// Its directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `node.json` could not be read or written, or names another node.
    #[error(transparent)]
    Marker(#[from] MarkerError),
    /// The cluster removed this node for good (`kvnode removenode`).
    #[error(
        "node {node_id} was removed from the cluster for good (kvnode removenode): the data in \
         {data_dir} is stale and this node will not serve it. To bring the machine back, wipe \
         the data dir and start it again: it joins as a new node"
    )]
    Removed {
        /// This node's id.
        node_id: String,
        /// Its data dir.
        data_dir: PathBuf,
    },
    /// Gossip failed to start.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// A seed is wrong, none answered in time, or the cluster's settings
    /// are not this node's ([`join`](crate::join)).
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The HTTP client for replica calls could not be built.
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
    /// The listener's certificate, key or client CA did not load.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
}

impl NodeError {
    fn removed(config: &Config) -> Self {
        Self::Removed {
            node_id: config.node_id.clone(),
            data_dir: config.data_dir.clone(),
        }
    }
}

/// Runs a node on `listener` until `shutdown` resolves, then stops accepting,
/// drains in-flight requests, leaves gossip and flushes the engine.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    // Before anything else starts: a certificate that does not load stops
    // the node here, with the file's name.
    let tls = match &config.tls {
        Some(files) => {
            let tls = Arc::new(ServerTls::load(files.clone())?);
            tls.reload_on_sighup()?;
            Some(tls)
        }
        None => None,
    };
    let mut config = config;
    let served = marker_path(&config.data_dir).exists();
    config.seeds = resolve_seeds(&config, served).await?;
    let config = Arc::new(config);
    let disk = DataDir::open(&config)?;
    let node = Node::start(config, disk).await?;
    node.serve(listener, tls, shutdown).await;
    node.stop().await
}

/// What the data dir holds at start: whose it is, the engine, and the
/// state and tokens this run starts in.
struct DataDir {
    marker_path: PathBuf,
    marker: Option<NodeMarker>,
    storage: Storage,
    initial: NodeState,
    tokens: Vec<u64>,
    /// The members this node knows were removed for good.
    removals: Vec<Removal>,
    /// Whether this run has peers to hear before it is ready: other seeds,
    /// or a cluster it served in before.
    expects_peers: bool,
}

impl DataDir {
    /// Checks the data dir belongs to this node and was not removed from the
    /// cluster, and opens the engine, refusing a damaged one.
    fn open(config: &Config) -> Result<Self, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::DataDir {
            path: config.data_dir.clone(),
            reason: e.to_string(),
        })?;
        let marker_path = marker_path(&config.data_dir);
        let marker = read_marker(&marker_path, &config.node_id)?;
        if marker.as_ref().is_some_and(|m| m.removed) {
            return Err(NodeError::removed(config));
        }
        let removals = read_removals(&removals_path(&config.data_dir))?;
        let engine_dir = config.data_dir.join("engine");
        let storage = Storage::open_with(
            &engine_dir,
            config.tombstone_grace,
            config.engine.options(),
            strata_engine::WriteOptions {
                sync: config.engine.sync(),
            },
        )
        .map_err(|e| match e {
            StorageError::Engine(source @ strata_engine::Error::Corruption { .. }) => {
                NodeError::EngineDamaged {
                    dir: engine_dir.clone(),
                    data_dir: config.data_dir.clone(),
                    source,
                }
            }
            other => NodeError::Storage(other),
        })?;
        let alone = config.other_seeds().next().is_none();
        let derived = || Member::derived(config.node_id.as_str(), config.vnodes).tokens;
        let (initial, tokens) = match &marker {
            Some(m) if m.available => (
                NodeState::Available,
                m.tokens.clone().unwrap_or_else(derived),
            ),
            Some(m) => (NodeState::Joining, m.tokens.clone().unwrap_or_else(derived)),
            None if alone => (NodeState::Available, derived()),
            None => (NodeState::Joining, derived()),
        };
        Ok(Self {
            marker_path,
            expects_peers: !alone || marker.is_some(),
            marker,
            storage,
            initial,
            tokens,
            removals,
        })
    }
}

/// A started node: what serving and stopping need.
struct Node {
    config: Arc<Config>,
    state: AppState,
    marker_path: PathBuf,
    stop: Arc<Notify>,
    join: Arc<JoinWatch>,
}

impl Node {
    /// Starts gossip, the node's tasks and its coordinator.
    async fn start(config: Arc<Config>, disk: DataDir) -> Result<Self, NodeError> {
        let DataDir {
            marker_path,
            marker,
            storage,
            initial,
            tokens,
            removals,
            expects_peers,
        } = disk;
        let progress = Arc::new(Progress::default());
        let metrics = Arc::new(
            Metrics::with_request_timeout(config.request_timeout).with_sources(
                {
                    let storage = storage.clone();
                    move || storage.stats()
                },
                {
                    let progress = progress.clone();
                    move || progress.counts()
                },
                {
                    let storage = storage.clone();
                    move || {
                        let disk = storage.disk_usage();
                        [("tables", disk.tables), ("wal", disk.wal)]
                    }
                },
            ),
        );
        let hints_dir = config.data_dir.join("hints");
        let hints = Hints::open(&hints_dir, config.hints, metrics.hints()).map_err(|e| {
            NodeError::Hints {
                dir: hints_dir.clone(),
                reason: e.to_string(),
            }
        })?;
        let membership = Membership::start(
            &config,
            (initial, tokens.clone()),
            removals,
            metrics.gossip(),
        )
        .await?;
        if initial == NodeState::Available {
            write_marker(
                &marker_path,
                &NodeMarker {
                    node_id: config.node_id.clone(),
                    tokens: Some(tokens),
                    available: true,
                    removed: false,
                },
            )?;
        }
        let clock = WallClock::skewed(config.clock_skew_ms);
        let hlc = Arc::new(Hlc::build(
            config.node_tag,
            clock,
            config.max_clock_offset,
            metrics.hlc_remote_ahead(),
        ));
        let peer_tls = config.tls.as_ref().map(tls::peer_config).transpose()?;
        let http = HttpPeer::new(
            config.secret.clone(),
            config.replica_timeout,
            // Every node is assumed to run the same edges: half of the shorter
            // of the two limits after which a node closes an idle connection.
            config
                .edges
                .header_read_timeout
                .min(config.edges.idle_timeout)
                / 2,
            peer_tls.clone(),
        )?
        .signing_as(&config.node_id, clock);
        let peer: Arc<dyn Peer> = match config.peer_transport {
            PeerTransport::Mux => Arc::new(MuxPeer::new(
                http,
                MuxKey::derive(&config.secret),
                &config.node_id,
                config.replica_timeout,
                config.limits.apply_batch_body_size(),
                peer_tls.map(Arc::new),
            )),
            PeerTransport::Http => Arc::new(http),
        };
        let verifier = Arc::new(RequestVerifier::new(
            &config.secret,
            config.max_clock_offset + Duration::from_millis(defaults::SIGNED_REQUEST_SLACK_MS),
            clock,
        ));
        let stop = Arc::new(Notify::new());
        let join = Arc::new(JoinWatch::new(
            &config,
            initial != NodeState::Available,
            stop.clone(),
        ));
        let tasks = Tasks::new(metrics.clone());
        // The one budget of every kind of background work on this node:
        // streams, hint replay, repair, clean-up.
        let throttle = Throttle::new(config.background_bytes_per_sec);
        let receiver = Receiver::new(
            storage.clone(),
            peer.clone(),
            (metrics.clone(), progress.clone(), hlc.clone()),
        )
        .throttled(throttle.clone());
        if initial != NodeState::Available {
            let bootstrap = Bootstrap {
                membership: membership.clone(),
                config: config.clone(),
                receiver: receiver.clone(),
                progress: progress.clone(),
                marker_path: marker_path.clone(),
                recorded_tokens: marker.and_then(|m| m.tokens),
                join: join.clone(),
            };
            tasks.spawn("bootstrap", bootstrap.run());
        }
        tasks.spawn(
            "take_over",
            handoff::take_over(
                membership.clone(),
                config.clone(),
                receiver,
                progress.clone(),
            ),
        );
        let cleaner = Cleaner::new(
            membership.clone(),
            storage.clone(),
            config.clone(),
            (metrics.clone(), throttle.clone()),
        );
        tasks.spawn("cleanup", cleaner.clone().run_auto());
        tasks.spawn(
            "fence",
            stop_if_removed(membership.clone(), marker_path.clone(), stop.clone()),
        );
        tasks.spawn(
            "health",
            publish_health(membership.clone(), storage.clone(), config.gossip_interval),
        );
        tasks.spawn(
            "publish_load",
            publish_load(membership.clone(), storage.clone()),
        );
        let repair_peer: Arc<dyn Peer> = Arc::new(MeteredPeer::new(
            peer.clone(),
            throttle.clone(),
            metrics.clone(),
        ));
        let repairer = Repairer::new(
            membership.clone(),
            storage.clone(),
            config.replication_factor,
            repair_peer,
            (hlc.clone(), throttle.clone()),
            metrics.clone(),
        );
        if let Some(every) = config.repair_interval {
            tasks.spawn("repair_scheduler", repairer.clone().run_scheduled(every));
        }
        tasks.spawn(
            "hint_replay",
            Replay {
                hints: hints.clone(),
                routing: membership.routing(),
                peer: peer.clone(),
                throttle: throttle.clone(),
                rf: config.replication_factor,
            }
            .run(),
        );
        let applier = Applier::new(storage.clone());
        let coordinator = Coordinator::new(CoordinatorParts {
            applier: applier.clone(),
            storage: storage.clone(),
            routing: membership.routing(),
            hlc: hlc.clone(),
            rf: config.replication_factor,
            peer,
            metrics: metrics.clone(),
            max_background_calls: config.max_background_replica_calls,
            hints: hints.clone(),
        });
        let file_gc = FileGc::new(
            coordinator.clone(),
            storage.clone(),
            (config.file_gc_grace, clock),
            metrics.clone(),
            throttle,
        );
        if let Some(every) = config.file_gc_interval {
            tasks.spawn("file_gc", file_gc.clone().run_scheduled(every));
        }
        tracing::info!(
            node = %config.node_id,
            http = %config.advertise,
            gossip = %config.gossip_advertise,
            data_dir = %config.data_dir.display(),
            state = initial.as_str(),
            "kvnode serving"
        );
        match &config.tokens {
            Some(tokens) => tracing::info!(tokens = tokens.len(), "client routes need a token"),
            None => tracing::warn!(
                "no --auth-tokens-file: the client API is open, anyone who reaches {} can read, \
                 write and delete every key",
                config.advertise
            ),
        }
        let replica = Replica::new(storage.clone(), applier, hlc, config.limits);
        let state = AppState::new(AppParts {
            coordinator,
            replica: Arc::new(replica),
            membership,
            storage,
            metrics,
            in_flight: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            body_budget: Arc::new(BodyBudget::new(config.edges.max_inflight_body_bytes)),
            config: config.clone(),
            progress,
            cleaner,
            hints,
            repairer,
            tasks,
            stop: stop.clone(),
            verifier,
            readiness: Arc::new(Readiness::new(expects_peers, config.gossip_interval)),
            join: join.clone(),
            snapshots: Arc::default(),
            file_gc,
        });
        Ok(Self {
            config,
            state,
            marker_path,
            stop,
            join,
        })
    }

    /// Serves HTTP within the configured edges until `shutdown` resolves or
    /// a decommission or a removal stops the node, then drains.
    async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let edges = &self.config.edges;
        let fd_limit = listener::raise_fd_limit();
        let limits = ServeLimits {
            max_connections: edges.max_connections.unwrap_or_else(|| {
                listener::default_max_connections(fd_limit, self.config.replication_factor.get())
            }),
            header_read_timeout: edges.header_read_timeout,
            idle_timeout: edges.idle_timeout,
        };
        tracing::info!(
            fd_limit,
            max_connections = limits.max_connections,
            max_inflight_body_bytes = edges.max_inflight_body_bytes,
            "http limits"
        );
        let stop = self.stop.clone();
        let stopping = async move {
            tokio::select! {
                () = shutdown => {}
                () = stop.notified() => {}
            }
        };
        let mux = (self.config.peer_transport == PeerTransport::Mux).then(|| {
            let serving = Arc::new(api::mux::Serving::new(
                self.state.replica.clone(),
                &self.config,
            ));
            let serve: listener::MuxServe = Arc::new(move |stream, stop| {
                Box::pin(api::mux::serve(stream, serving.clone(), stop))
            });
            serve
        });
        listener::serve(
            listener,
            api::router(self.state.clone()),
            mux,
            tls,
            limits,
            stopping,
        )
        .await;
    }

    /// Stops, in order: the coordinator's tail calls (their local applies
    /// must land before the flush), the tasks, gossip, then flushes the
    /// engine. A node stopped by its removal says so in its result.
    async fn stop(self) -> Result<(), NodeError> {
        tracing::info!("http drained; stopping tasks, leaving gossip and flushing the engine");
        let state = self.state;
        state.coordinator.shutdown(TASK_SHUTDOWN).await;
        state.tasks.shutdown(TASK_SHUTDOWN).await;
        state.membership.shutdown().await;
        let storage = state.storage.clone();
        tokio::task::spawn_blocking(move || storage.flush())
            .await
            .map_err(|e| NodeError::Serve(std::io::Error::other(e)))??;
        tracing::info!("stopped");
        if let Some(e) = self.join.failure() {
            return Err(e.into());
        }
        if read_marker(&self.marker_path, &self.config.node_id)?.is_some_and(|m| m.removed) {
            return Err(NodeError::removed(&self.config));
        }
        Ok(())
    }
}

/// Watches for this node's own removal ([`removal`](crate::view::removal)): once
/// a verified removal fences it, it records that in `node.json`, so that it
/// never starts from this data dir again, and stops the node.
async fn stop_if_removed(membership: Arc<Membership>, marker_path: PathBuf, stop: Arc<Notify>) {
    let me = membership.self_id().clone();
    let mut views = membership.routing().subscribe();
    let removal = loop {
        if let Some(r) = views.borrow_and_update().removed.get(&me) {
            break r.removal.clone();
        }
        if views.changed().await.is_err() {
            // The routing is gone: the node is stopping.
            return;
        }
    };
    tracing::error!(
        %removal,
        "THIS NODE WAS REMOVED FROM THE CLUSTER (kvnode removenode): its data is stale; \
         refusing to serve and stopping. Wipe the data dir to join again as a new node"
    );
    let marker = NodeMarker {
        node_id: me.to_string(),
        tokens: Some(membership.tokens()),
        available: false,
        removed: true,
    };
    if let Err(e) = write_marker(&marker_path, &marker) {
        tracing::error!(error = %e, "cannot record the removal in the data dir");
    }
    stop.notify_one();
}

/// How long a stopping node waits for its tasks once they are cancelled:
/// they stop at their next `.await`, so this is only reached by one stuck
/// in blocking work (an engine scan of a clean-up pass).
const TASK_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// Publishes this node's engine health in gossip, and keeps it current: a
/// read-only engine (a full disk) must not be sent reads, and clears by
/// itself once the engine takes writes again.
async fn publish_health(membership: Arc<Membership>, storage: Storage, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        membership.set_health(storage.write_error()).await;
    }
}

/// Publishes this node's table + WAL bytes in gossip, for `kvnode status`
/// on every member.
async fn publish_load(membership: Arc<Membership>, storage: Storage) {
    let mut tick = tokio::time::interval(crate::vitals::LOAD_PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let storage = storage.clone();
        // A directory listing: off the async threads.
        if let Ok(usage) = tokio::task::spawn_blocking(move || storage.disk_usage()).await {
            membership.publish_load(usage.total()).await;
        }
    }
}
