//! The node's configuration: command-line flags, `KVNODE_*` environment
//! variables and a TOML file, resolved into one validated [`Config`].
//!
//! Precedence, highest first: flag, environment variable, file, default.
//! Every setting is declared once, in [`Settings`]: clap reads it from its
//! flag or variable, serde from the file, [`Settings::or`] lays the first
//! over the second, and `Config::resolve` fills in the defaults and checks
//! the invariants, one small function per job.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use strata_ring::ReplicationFactor;

use crate::auth::tokens::{Tokens, TokensError};
use crate::auth::{check_private, ClusterSecret, SecretFileError};
use crate::hlc::derived_tag;
use crate::marker::{recorded_node_id, MarkerError};
use crate::storage::RECORD_HEADER_LEN;
use crate::tls::TlsFiles;

mod engine;

pub use engine::{EngineConfig, EngineSettings, WalSync};

/// Defaults, each with its reason.
pub mod defaults {
    /// The client port; gossip takes the next one.
    pub const LISTEN: &str = "127.0.0.1:7700";
    /// The id every node started without `--node-id` had before ids were
    /// derived: a data dir of it under [`DATA_ROOT`] is still found.
    pub const LEGACY_NODE_ID: &str = "node1";
    /// Where data dirs go when none is given: `./kvnode-data/<node id>`.
    pub const DATA_ROOT: &str = "kvnode-data";
    /// Nodes only gossip with nodes of the same cluster id.
    pub const CLUSTER_ID: &str = "strata";
    /// Derived (pseudo-random) tokens need many vnodes to balance: 64 keeps
    /// the largest node within ~20% of the mean on small clusters.
    pub const VNODES: u32 = 64;
    /// A joining node that hears no seed for five minutes is misconfigured,
    /// not early: long enough for seeds that start a little later.
    pub const JOIN_TIMEOUT_SECS: u64 = 300;
    /// Survives one node down at QUORUM.
    pub const REPLICATION_FACTOR: usize = 3;
    /// Keys are identifiers, not payloads.
    pub const MAX_KEY_SIZE: usize = 4 * 1024;
    /// Values are held whole in memory on every hop.
    pub const MAX_VALUE_SIZE: usize = 1024 * 1024;
    /// Room for a maximal value escaped inside the JSON compatibility body.
    pub const MAX_BODY_SIZE: usize = 2 * MAX_VALUE_SIZE + 64 * 1024;
    /// A client request, all replicas included.
    pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
    /// One call to one replica; a dead one must not hold a request for long.
    pub const REPLICA_TIMEOUT_MS: u64 = 2_000;
    /// Requests in flight before new ones wait (bounds memory and threads).
    pub const MAX_CONCURRENT_REQUESTS: usize = 1024;
    /// Replica calls that may outlive their request (every replica call of
    /// a write, and read repairs). The calls of a full load of writes at
    /// the default replication factor (1024 × 3) fit with a third to spare
    /// for tails; past it a write waits for a slow replica's calls to end
    /// (its replica timeout) rather than pile up their bodies in memory.
    pub const MAX_BACKGROUND_REPLICA_CALLS: usize = 4096;
    /// Fast gossip makes failure detection take ~2 s; on UDP it is cheap.
    pub const GOSSIP_INTERVAL_MS: u64 = 100;
    /// A ring must hold still this long before old owners drop ranges they
    /// gave away: time for a person to stop a bad join before data goes.
    pub const CLEANUP_GRACE_MS: u64 = 60_000;
    /// Record tombstones are kept this long (Cassandra's `gc_grace_seconds`):
    /// every replica must have received a delete within it, or the replica
    /// that missed it brings the value back (`storage`, "Tombstone GC").
    pub const TOMBSTONE_GRACE_MS: u64 = 10 * 24 * 3_600_000;
    /// No grace is accepted below this without the test-only override:
    /// nothing repairs replicas on a schedule yet, so a short grace would
    /// let a replica that was paused or partitioned for longer resurrect
    /// deleted keys.
    pub const MIN_TOMBSTONE_GRACE_MS: u64 = 3_600_000;
    /// Members a node tracks in gossip. Far above any cluster this design
    /// is for, and small enough that a full digest stays a few KiB.
    pub const MAX_MEMBERS: usize = 256;
    /// Anti-entropy repair of every range this often: a full cycle must end
    /// well inside the tombstone grace (10 days), and an hour keeps a
    /// replica that missed writes wrong for an hour at most.
    pub const REPAIR_INTERVAL_SECS: u64 = 3600;
    /// A chunk GC pass reads every chunk this node holds, so once an hour.
    pub const FILE_GC_INTERVAL_SECS: u64 = 3600;
    /// A day: an upload may take half of it, and a chunk that a file
    /// stopped referring to is on disk for at most a day and an interval.
    pub const FILE_GC_GRACE_MS: u64 = 86_400_000;
    /// chitchat's default phi-accrual threshold.
    pub const PHI_THRESHOLD: f64 = 8.0;
    /// The least mean heartbeat interval the failure detector judges
    /// silence against: with phi 8, a node is DOWN after at least 2 s
    /// without news. Heartbeats come every gossip round (100 ms), which
    /// alone gave 0.8 s, and a busy 2-core host starves a process that
    /// long: live nodes flapped DOWN and QUORUM writes failed at load
    /// averages of 9 and more.
    pub const DETECTOR_MIN_INTERVAL_MS: u64 = 250;
    /// Most a peer's wall clock may differ from this node's before gossip
    /// with it is refused: CockroachDB's default. NTP keeps hosts within a
    /// few ms of each other, so half a second apart means a broken clock,
    /// not drift, and a write it stamps could silently lose to an older one
    /// for that long.
    pub const MAX_CLOCK_OFFSET_MS: u64 = 500;
    /// How far a signed request's time may be from this node's clock beyond
    /// the clocks' own offset (`auth::request`): what a request may take to
    /// arrive, from signing to its head being read. Connecting takes up to
    /// the replica timeout (2 s), a connection may wait in the listen
    /// backlog, and reading the head takes up to its timeout (10 s).
    pub const SIGNED_REQUEST_SLACK_MS: u64 = 15_000;
    /// Largest test-only clock skew: a day is far past any offset a test
    /// needs, and keeps the arithmetic on ms far from overflow.
    pub const MAX_CLOCK_SKEW_MS: i64 = 86_400_000;

    // The edges of the HTTP server (issue 11): memory and connections.

    /// Share of the machine's memory that request bodies in flight may hold:
    /// a sixteenth. A body of n bytes costs this node about 2n to 3n while
    /// it is in flight (the read buffer, the collected body, the apply body
    /// shared by the replicas, the engine's WAL batch), so a sixteenth keeps
    /// a full budget well under a quarter of RAM and leaves the rest to the
    /// memtables, the page cache of the tables and other processes.
    pub const INFLIGHT_BODY_RAM_DIVISOR: u64 = 16;
    /// Least budget: a small machine still takes a few dozen maximal
    /// bodies at once (64 × 1 MiB values).
    pub const MIN_INFLIGHT_BODY_BYTES: usize = 64 << 20;
    /// Most budget: past 1 GiB of bodies in flight the disk, not memory, is
    /// what limits a node, and more only lengthens the queues.
    pub const MAX_INFLIGHT_BODY_BYTES: usize = 1 << 30;

    /// The body budget of this machine: RAM / 16 within [64 MiB, 1 GiB], or
    /// the least budget if the RAM size is unknown. It is the RAM the kernel
    /// reports, not a cgroup limit: set the budget in a container.
    pub fn max_inflight_body_bytes() -> usize {
        // SAFETY: sysconf has no preconditions; -1 (unknown) is handled.
        let (pages, page_size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ram = u64::try_from(pages)
            .ok()
            .zip(u64::try_from(page_size).ok())
            .map_or(0, |(p, s)| p.saturating_mul(s));
        usize::try_from(ram / INFLIGHT_BODY_RAM_DIVISOR)
            .unwrap_or(usize::MAX)
            .clamp(MIN_INFLIGHT_BODY_BYTES, MAX_INFLIGHT_BODY_BYTES)
    }

    /// A request head must be complete this long after the connection is
    /// ready for it. Hyper's timer also runs while a keep-alive connection
    /// waits for its next request, so this bounds idle connections too. Ten
    /// seconds is generous for any real client's head, which is one packet,
    /// and short enough that a slowloris connection costs little.
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    /// A connection with no request in flight is closed after this long.
    /// The same as the header timeout, which already ends idle keep-alive
    /// connections at that age; set it lower to close them sooner. Clients
    /// that pool connections (the coordinators' replica calls included)
    /// must let idle ones go before this, or they race the close.
    pub const IDLE_TIMEOUT_MS: u64 = 10_000;
    /// Descriptors kept back from client connections when the connection
    /// limit is derived from the descriptor limit: the engine's WAL,
    /// MANIFEST and the tables being written, gossip, streaming, logs.
    pub const FD_RESERVE: u64 = 256;

    // Self-healing (issue 14).

    /// Hints pending per target: a node down for the whole window under a
    /// few hundred writes a second of small values fits, and a node's disk
    /// is not filled by the hints for one dead peer.
    pub const MAX_HINT_BYTES_PER_NODE: u64 = 256 << 20;
    /// Cassandra's `max_hint_window`: a node down longer than three hours
    /// has missed too much for hints, and catches up by repair.
    pub const MAX_HINT_WINDOW_MS: u64 = 3 * 3_600_000;
    /// Background work together (hint replay, repair, streaming): a few
    /// percent of a disk's or a 10 GbE link's bandwidth, so foreground
    /// requests keep their latency.
    pub const BACKGROUND_BYTES_PER_SEC: u64 = 64 << 20;
}

/// Every setting of a node, all optional: the flags (each also a `KVNODE_*`
/// variable) and the TOML file (keys as the long flags, with underscores)
/// are both read into this one struct.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML configuration file (keys as the long flags, with underscores).
    #[arg(long, env = "KVNODE_CONFIG")]
    // Names the file, so it is never a key inside one.
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Unique, stable id of this node (a first node derives its tokens from
    /// it; a joining node allocates its own). Default: the id its data dir
    /// recorded, else `<host name>-<HTTP port>`.
    #[arg(long, env = "KVNODE_NODE_ID")]
    pub node_id: Option<String>,
    /// Address the HTTP API listens on [default: 127.0.0.1:7700].
    #[arg(long, env = "KVNODE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The HTTP port alone, on --listen's address (127.0.0.1 by default).
    #[arg(long, env = "KVNODE_PORT")]
    pub port: Option<u16>,
    /// HTTP address other nodes use to reach this one [default: --listen].
    #[arg(long, env = "KVNODE_ADVERTISE")]
    pub advertise: Option<SocketAddr>,
    /// UDP address gossip listens on [default: listen port + 1].
    #[arg(long, env = "KVNODE_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,
    /// Gossip address other nodes use [default: advertise IP, gossip port].
    #[arg(long, env = "KVNODE_GOSSIP_ADVERTISE")]
    pub gossip_advertise: Option<SocketAddr>,
    /// Data directory (default: `./kvnode-data/<node id>`).
    #[arg(long, env = "KVNODE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The only directory under which `kvnode snapshot save` (`POST
    /// /admin/v1/snapshot`) may create a backup; without it an admin token
    /// may have one created at any absolute path the node can write.
    #[arg(long, env = "KVNODE_SNAPSHOT_ROOT")]
    pub snapshot_root: Option<PathBuf>,
    /// Seed nodes, comma-separated: gossip addresses (host:port, UDP), or
    /// HTTP URLs (http://host:port) that are resolved to their node's
    /// gossip address at start.
    #[arg(long, env = "KVNODE_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Seconds a joining node waits to hear from a seed before it stops
    /// with an error; 0 waits for ever [default: 300].
    #[arg(long, env = "KVNODE_JOIN_TIMEOUT_SECS")]
    pub join_timeout_secs: Option<u64>,
    /// Cluster name; nodes of other clusters are ignored [default: strata].
    #[arg(long, env = "KVNODE_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Tokens per node [default: 64].
    #[arg(long, env = "KVNODE_VNODES")]
    pub vnodes: Option<u32>,
    /// Replicas per key [default: 3].
    #[arg(long, env = "KVNODE_REPLICATION_FACTOR")]
    pub replication_factor: Option<usize>,
    /// Shared secret of the cluster's internal traffic. Prefer
    /// --cluster-secret-file: a flag shows in `ps`, a variable in
    /// `/proc/<pid>/environ`. Required with --seeds; random otherwise.
    #[arg(long, env = "KVNODE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// File holding the cluster secret (trailing white space ignored); it
    /// must not be accessible by group or others (chmod 600).
    #[arg(long, env = "KVNODE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Client tokens, one `NAME ROLE SHA256HEX` a line (`kvnode token
    /// create`); every client route then needs `Authorization: Bearer
    /// <token>`. Without it the client API is open to anyone.
    #[arg(long, env = "KVNODE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. SIGHUP reloads both. Plain HTTP is then refused.
    #[arg(long, env = "KVNODE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM); it must not be accessible by
    /// group or others (chmod 600).
    #[arg(long, env = "KVNODE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM) on every
    /// connection; needs --tls-cert.
    #[arg(long, env = "KVNODE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Largest key in bytes [default: 4096].
    #[arg(long, env = "KVNODE_MAX_KEY_SIZE")]
    pub max_key_size: Option<usize>,
    /// Largest value in bytes [default: 1 MiB].
    #[arg(long, env = "KVNODE_MAX_VALUE_SIZE")]
    pub max_value_size: Option<usize>,
    /// Largest request body in bytes [default: 2 MiB + 64 KiB].
    #[arg(long, env = "KVNODE_MAX_BODY_SIZE")]
    pub max_body_size: Option<usize>,
    /// The block store's fixed block size: `PUT /block/{id}` then takes
    /// bodies of exactly this many bytes and refuses others with 400
    /// [default: any size up to --max-value-size].
    #[arg(long, env = "KVNODE_BLOCK_SIZE")]
    pub block_size: Option<usize>,
    /// Deadline of one client request in ms [default: 10000].
    #[arg(long, env = "KVNODE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Deadline of one call to a replica in ms [default: 2000].
    #[arg(long, env = "KVNODE_REPLICA_TIMEOUT_MS")]
    pub replica_timeout_ms: Option<u64>,
    /// Requests handled at once; more wait [default: 1024].
    #[arg(long, env = "KVNODE_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Replica calls in flight that may outlive their request (a write's
    /// calls past its acks, read repairs); writes wait past it, read
    /// repairs are skipped and counted [default: 4096].
    #[arg(long, env = "KVNODE_MAX_BACKGROUND_REPLICA_CALLS")]
    pub max_background_replica_calls: Option<usize>,
    /// Gossip round interval in ms [default: 100].
    #[arg(long, env = "KVNODE_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    /// How long the ring must hold still before this node drops ranges it
    /// no longer replicates, in ms [default: 60000].
    #[arg(long, env = "KVNODE_CLEANUP_GRACE_MS")]
    pub cleanup_grace_ms: Option<u64>,
    /// How old a tombstone's version must be before compaction purges it,
    /// in ms [default: 10 days; at least 1 hour]. It must exceed the
    /// longest time a replica can miss a delete and not be repaired; with
    /// no repair scheduler yet, that is until the key is read at ALL.
    #[arg(long, env = "KVNODE_TOMBSTONE_GRACE_MS")]
    pub tombstone_grace_ms: Option<u64>,
    /// Tests only: accept a --tombstone-grace-ms under 1 hour, at the risk
    /// of deleted keys coming back [default: false].
    #[arg(long, env = "KVNODE_ALLOW_SHORT_TOMBSTONE_GRACE")]
    pub allow_short_tombstone_grace: Option<bool>,
    /// Whether this node drops ranges it no longer replicates by itself,
    /// once a ring change completes [default: true]; with false, only
    /// `kvnode cleanup` does.
    #[arg(long, env = "KVNODE_AUTO_CLEANUP")]
    pub auto_cleanup: Option<bool>,
    /// Most members this node tracks in gossip [default: 256].
    #[arg(long, env = "KVNODE_MAX_MEMBERS")]
    pub max_members: Option<usize>,
    /// Seconds between two background anti-entropy repairs of every range
    /// this node replicates; 0 turns them off [default: 3600].
    #[arg(long, env = "KVNODE_REPAIR_INTERVAL")]
    pub repair_interval: Option<u64>,
    /// Seconds between two passes of the chunk GC, which deletes this
    /// node's chunks that no file refers to; 0 turns it off [default: 3600].
    #[arg(long, env = "KVNODE_FILE_GC_INTERVAL")]
    pub file_gc_interval: Option<u64>,
    /// How long a chunk is kept after its last write before the GC may
    /// delete it, in ms; an upload that lasts longer than half of it is
    /// refused, so that none loses a chunk to the GC [default: 86400000,
    /// 1 day].
    #[arg(long, env = "KVNODE_FILE_GC_GRACE_MS")]
    pub file_gc_grace_ms: Option<u64>,
    /// Bytes of request bodies in flight, client and internal together;
    /// requests past it get 503 with Retry-After [default: RAM / 16 within
    /// 64 MiB..1 GiB].
    #[arg(long, env = "KVNODE_MAX_INFLIGHT_BODY_BYTES")]
    pub max_inflight_body_bytes: Option<usize>,
    /// Time to receive a whole request head, in ms; it also bounds the wait
    /// for the next request on a keep-alive connection [default: 10000].
    #[arg(long, env = "KVNODE_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// A connection with no request in flight is closed after this many ms
    /// [default: 10000].
    #[arg(long, env = "KVNODE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Connections served at once; more wait in the listen backlog
    /// [default: (descriptor limit - 256) / replication factor].
    #[arg(long, env = "KVNODE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// This node's tag in the low bits of every version it writes, 0..=255,
    /// which keeps two nodes' writes in one ms from tying. Set it when two
    /// nodes derive the same one (a warning says so) [default: derived from
    /// the node id].
    #[arg(long, env = "KVNODE_NODE_TAG")]
    pub node_tag: Option<u8>,
    /// Most a peer's wall clock may differ from this node's, in ms: gossip
    /// with a peer further off is refused, and versions further ahead are
    /// warned about [default: 500].
    #[arg(long, env = "KVNODE_MAX_CLOCK_OFFSET_MS")]
    pub max_clock_offset_ms: Option<u64>,
    /// For tests only: shifts this node's wall clock by this many ms (its
    /// versions and its gossip), to play a host whose clock is off.
    #[arg(
        long,
        env = "KVNODE_CLOCK_SKEW_MS",
        hide = true,
        allow_hyphen_values = true
    )]
    pub clock_skew_ms: Option<i64>,
    /// Bytes of hints kept for one node that missed writes; past it, new
    /// hints for it are dropped [default: 256 MiB].
    #[arg(long, env = "KVNODE_MAX_HINT_BYTES_PER_NODE")]
    pub max_hint_bytes_per_node: Option<u64>,
    /// No hints for a node down longer than this, and hints older than this
    /// expire, in ms; 0 turns hinted handoff off [default: 10800000, 3 h].
    #[arg(long, env = "KVNODE_MAX_HINT_WINDOW_MS")]
    pub max_hint_window_ms: Option<u64>,
    /// Bytes per second that background work may take, all kinds together
    /// (ranges streamed in by joins, take-overs and repair, repair's
    /// digests, hint replay, the engine reads of clean-up); 0 for unlimited
    /// [default: 64 MiB].
    #[arg(long, env = "KVNODE_BACKGROUND_BYTES_PER_SEC")]
    pub background_bytes_per_sec: Option<u64>,
    /// How this node's replica calls travel: `mux` (one multiplexed,
    /// authenticated binary connection per peer, HTTP for peers that do
    /// not speak it) or `http` (every call its own signed HTTP request;
    /// this node then neither offers nor accepts `mux`) [default: mux].
    #[arg(long, env = "KVNODE_PEER_TRANSPORT", value_enum)]
    pub peer_transport: Option<PeerTransport>,
    /// The storage engine's knobs: `--engine-*` flags, `KVNODE_ENGINE_*`
    /// variables, the file's `[engine]` table ([`EngineSettings`]).
    #[command(flatten)]
    #[serde(default)]
    pub engine: EngineSettings,
}

/// How replica calls travel between nodes (`--peer-transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerTransport {
    /// The multiplexed binary transport (`peer::mux`), with HTTP for the
    /// calls and peers it does not carry.
    #[default]
    Mux,
    /// Signed HTTP requests only (`peer::http`).
    Http,
}

/// Lays `$high` over `$low`, field by field. The struct literal names every
/// field, so a setting added to [`Settings`] but not here fails to compile.
macro_rules! merge {
    ($high:expr, $low:expr; $($field:ident),* $(,)?) => {{
        let (high, low) = ($high, $low);
        Settings { $($field: high.$field.or(low.$field)),* }
    }};
}

impl Settings {
    /// Each setting of `self`, or of `lower` where `self` leaves it unset:
    /// flags and variables over the file.
    #[must_use]
    pub fn or(self, lower: Self) -> Self {
        merge!(self, lower;
        config,
        node_id,
        listen,
        port,
        advertise,
        gossip_listen,
        gossip_advertise,
        data_dir,
        snapshot_root,
        seeds,
        join_timeout_secs,
        cluster_id,
        vnodes,
        replication_factor,
        cluster_secret,
        cluster_secret_file,
        auth_tokens_file,
        tls_cert,
        tls_key,
        tls_client_ca,
        max_key_size,
        max_value_size,
        max_body_size,
        block_size,
        request_timeout_ms,
        replica_timeout_ms,
        max_concurrent_requests,
        max_background_replica_calls,
        gossip_interval_ms,
        cleanup_grace_ms,
        tombstone_grace_ms,
        allow_short_tombstone_grace,
        auto_cleanup,
        max_members,
        repair_interval,
        file_gc_interval,
        file_gc_grace_ms,
        max_inflight_body_bytes,
        header_read_timeout_ms,
        idle_timeout_ms,
        max_connections,
        node_tag,
        max_clock_offset_ms,
        clock_skew_ms,
        max_hint_bytes_per_node,
        max_hint_window_ms,
        background_bytes_per_sec,
        peer_transport,
        engine
        )
    }
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<toml::de::Error>,
    },
    /// The file holding the secret is refused.
    #[error(transparent)]
    SecretFile(#[from] SecretFileError),
    /// The tokens file is refused.
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// The data dir's `node.json` could not be read for the node id.
    #[error(transparent)]
    Marker(#[from] MarkerError),
    /// A value breaks an invariant.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Size limits on requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest key, bytes.
    pub max_key_size: usize,
    /// Largest value, bytes.
    pub max_value_size: usize,
    /// Largest request body, bytes.
    pub max_body_size: usize,
    /// The size every `PUT /block` body must have, if fixed.
    pub block_size: Option<usize>,
}

impl Limits {
    /// The size limits, each within what the engine and the key layout take.
    fn resolve(s: &Settings) -> Result<Self, ConfigError> {
        let limits = Self {
            max_key_size: s.max_key_size.unwrap_or(defaults::MAX_KEY_SIZE),
            max_value_size: s.max_value_size.unwrap_or(defaults::MAX_VALUE_SIZE),
            max_body_size: s.max_body_size.unwrap_or(defaults::MAX_BODY_SIZE),
            block_size: s.block_size,
        };
        if limits
            .block_size
            .is_some_and(|b| b == 0 || b > limits.max_value_size)
        {
            return invalid("block_size", "must be 1..=max_value_size");
        }
        if limits.max_key_size == 0 || limits.max_key_size > strata_engine::MAX_KEY_SIZE_LIMIT - 8 {
            return invalid(
                "max_key_size",
                "must be 1..=engine limit - 8 (token prefix)",
            );
        }
        if limits.max_value_size > strata_engine::MAX_VALUE_SIZE_LIMIT - RECORD_HEADER_LEN {
            return invalid("max_value_size", "exceeds the engine's value limit");
        }
        if limits.max_body_size < limits.max_value_size {
            return invalid("max_body_size", "must be at least max_value_size");
        }
        Ok(limits)
    }

    /// Largest internal apply body: a maximal key and record with their
    /// framing (`api::internal`).
    pub fn apply_body_size(&self) -> usize {
        4 + self.max_key_size + RECORD_HEADER_LEN + self.max_value_size
    }

    /// Largest internal apply-batch body (`peer::wire::max_batch_body`).
    pub fn apply_batch_body_size(&self) -> usize {
        crate::peer::wire::max_batch_body(self.apply_body_size())
    }
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub node_id: String,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// HTTP address published to other nodes.
    pub advertise: SocketAddr,
    /// Gossip (UDP) listen address.
    pub gossip_listen: SocketAddr,
    /// Gossip address published to other nodes.
    pub gossip_advertise: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where snapshots may be saved, when confined.
    pub snapshot_root: Option<PathBuf>,
    /// Seeds: gossip addresses (`host:port`), or HTTP URLs until
    /// [`join`](crate::join) resolves them.
    pub seeds: Vec<String>,
    /// How long a joining node waits to hear from a seed; `None` for ever.
    pub join_timeout: Option<Duration>,
    /// Cluster name.
    pub cluster_id: String,
    /// Tokens per node.
    pub vnodes: u32,
    /// Replicas per key.
    pub replication_factor: ReplicationFactor,
    /// The cluster secret.
    pub secret: ClusterSecret,
    /// The client tokens; `None` leaves the client API open.
    pub tokens: Option<Arc<Tokens>>,
    /// The listener's TLS files; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Request size limits.
    pub limits: Limits,
    /// Deadline of a client request.
    pub request_timeout: Duration,
    /// Deadline of one replica call.
    pub replica_timeout: Duration,
    /// Requests handled at once.
    pub max_concurrent_requests: usize,
    /// Replica calls in flight that may outlive their request.
    pub max_background_replica_calls: usize,
    /// Gossip round interval.
    pub gossip_interval: Duration,
    /// Stillness of the ring before clean-up.
    pub cleanup_grace: Duration,
    /// Age past which compaction purges a tombstone.
    pub tombstone_grace: Duration,
    /// Whether clean-up runs by itself after a ring change.
    pub auto_cleanup: bool,
    /// Most members tracked in gossip.
    pub max_members: usize,
    /// Time between background repairs; `None` when turned off.
    pub repair_interval: Option<Duration>,
    /// Time between chunk GC passes; `None` when turned off.
    pub file_gc_interval: Option<Duration>,
    /// Age of a chunk's last write before the GC may delete it.
    pub file_gc_grace: Duration,
    /// The HTTP server's edges.
    pub edges: Edges,
    /// This node's tag in its versions (`hlc`).
    pub node_tag: u8,
    /// Most a peer's wall clock may differ from this node's.
    pub max_clock_offset: Duration,
    /// Shift of this node's wall clock, in ms: 0 but in tests.
    pub clock_skew_ms: i64,
    /// The bounds of hinted handoff.
    pub hints: HintLimits,
    /// Bytes per second of all background work together; 0 is unlimited.
    pub background_bytes_per_sec: u64,
    /// How replica calls travel.
    pub peer_transport: PeerTransport,
    /// The data engine's knobs.
    pub engine: EngineConfig,
}

/// The bounds of the hints a node keeps for others (`hints`).
#[derive(Debug, Clone, Copy)]
pub struct HintLimits {
    /// Pending bytes per target past which new hints are dropped.
    pub max_bytes_per_node: u64,
    /// No hints for a target down longer than this, and hints older than
    /// this expire. Zero turns hinting off.
    pub window: Duration,
}

impl HintLimits {
    fn resolve(s: &Settings) -> Self {
        Self {
            max_bytes_per_node: s
                .max_hint_bytes_per_node
                .unwrap_or(defaults::MAX_HINT_BYTES_PER_NODE),
            window: millis(s.max_hint_window_ms, defaults::MAX_HINT_WINDOW_MS),
        }
    }
}

/// What bounds the HTTP server's memory and connections.
#[derive(Debug, Clone, Copy)]
pub struct Edges {
    /// Bytes of request bodies in flight.
    pub max_inflight_body_bytes: usize,
    /// Time to receive a request head (and to wait for the next one).
    pub header_read_timeout: Duration,
    /// Time a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// Connections served at once; `None` derives it from the descriptor
    /// limit when the node starts (see `listener`).
    pub max_connections: Option<usize>,
}

impl Edges {
    /// The server's edges; the body budget must still take the largest body
    /// a route accepts.
    fn resolve(s: &Settings, limits: &Limits) -> Result<Self, ConfigError> {
        let edges = Self {
            max_inflight_body_bytes: s
                .max_inflight_body_bytes
                .unwrap_or_else(defaults::max_inflight_body_bytes),
            header_read_timeout: millis(s.header_read_timeout_ms, defaults::HEADER_READ_TIMEOUT_MS),
            idle_timeout: millis(s.idle_timeout_ms, defaults::IDLE_TIMEOUT_MS),
            max_connections: s.max_connections,
        };
        // A quarter of the budget is kept for replica traffic (`api::budget`),
        // and the rest must still take the largest body a route accepts.
        let largest_body = limits.max_body_size.max(limits.apply_body_size());
        if edges.max_inflight_body_bytes / 4 < largest_body {
            return invalid(
                "max_inflight_body_bytes",
                "must be at least 4 times the largest request body",
            );
        }
        if edges.header_read_timeout.is_zero() || edges.idle_timeout.is_zero() {
            return invalid("timeouts", "must be positive");
        }
        if edges.max_connections == Some(0) {
            return invalid("max_connections", "must be positive");
        }
        Ok(edges)
    }
}

impl Config {
    /// How long after its oldest chunk was written a file's manifest may
    /// still be written (`files::gc`): half the chunk grace, less the
    /// manifest write's own time and the clocks' offset.
    pub fn file_commit_window(&self) -> Duration {
        (self.file_gc_grace / 2)
            .saturating_sub(self.replica_timeout)
            .saturating_sub(self.max_clock_offset)
    }

    /// Reads the file named by `settings.config` (if any), lays `settings`
    /// over it and resolves.
    pub fn load(settings: Settings) -> Result<Self, ConfigError> {
        let file = match &settings.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let file = parse_file(path, &text)?;
                if file.cluster_secret.is_some() {
                    check_private(path)?;
                }
                file
            }
            None => Settings::default(),
        };
        Self::resolve(settings.or(file))
    }

    /// Fills in the defaults and checks the invariants, one job at a time.
    fn resolve(s: Settings) -> Result<Self, ConfigError> {
        let Addresses {
            listen,
            advertise,
            gossip_listen,
            gossip_advertise,
        } = addresses(&s)?;
        let (node_id, data_dir) = identity(&s, advertise, Path::new(defaults::DATA_ROOT))?;
        let Cluster {
            seeds,
            cluster_id,
            vnodes,
            replication_factor,
            secret,
            max_members,
            auto_cleanup,
        } = cluster(&s, gossip_advertise)?;
        let limits = Limits::resolve(&s)?;
        let tokens = match &s.auth_tokens_file {
            Some(path) => Some(Arc::new(Tokens::load(path)?)),
            None => None,
        };
        let tls = tls(&s, &seeds, gossip_advertise)?;
        let Timeouts {
            request_timeout,
            replica_timeout,
            gossip_interval,
            cleanup_grace,
            tombstone_grace,
            file_gc_grace,
        } = timeouts(&s)?;
        let max_concurrent_requests = checked(
            "max_concurrent_requests",
            s.max_concurrent_requests,
            defaults::MAX_CONCURRENT_REQUESTS,
            |n| n > 0,
            "must be positive",
        )?;
        let max_background_replica_calls = checked(
            "max_background_replica_calls",
            s.max_background_replica_calls,
            defaults::MAX_BACKGROUND_REPLICA_CALLS,
            |n| n > 0,
            "must be positive",
        )?;
        let edges = Edges::resolve(&s, &limits)?;
        let Clocks {
            node_tag,
            max_clock_offset,
            clock_skew_ms,
        } = clocks(&s, &node_id)?;
        if file_gc_grace <= (replica_timeout + max_clock_offset) * 2 {
            return invalid(
                "file_gc_grace_ms",
                "must be more than twice replica_timeout_ms plus max_clock_offset_ms: an upload \
                 must commit its file within half the grace of its chunks' writes, less the \
                 commit's own write and the clocks' offset",
            );
        }
        let hints = HintLimits::resolve(&s);
        let engine = EngineConfig::resolve(&s.engine)?;
        Ok(Self {
            data_dir,
            snapshot_root: match &s.snapshot_root {
                Some(root) if !root.is_absolute() => {
                    return invalid("snapshot_root", "must be an absolute path")
                }
                root => root.clone(),
            },
            node_id,
            listen,
            advertise,
            gossip_listen,
            gossip_advertise,
            seeds,
            join_timeout: match s.join_timeout_secs.unwrap_or(defaults::JOIN_TIMEOUT_SECS) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            cluster_id,
            vnodes,
            replication_factor,
            secret,
            tokens,
            tls,
            limits,
            request_timeout,
            replica_timeout,
            max_concurrent_requests,
            max_background_replica_calls,
            gossip_interval,
            cleanup_grace,
            tombstone_grace,
            auto_cleanup,
            max_members,
            repair_interval: match s.repair_interval.unwrap_or(defaults::REPAIR_INTERVAL_SECS) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            file_gc_interval: match s
                .file_gc_interval
                .unwrap_or(defaults::FILE_GC_INTERVAL_SECS)
            {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            file_gc_grace,
            edges,
            node_tag,
            max_clock_offset,
            clock_skew_ms,
            hints,
            background_bytes_per_sec: s
                .background_bytes_per_sec
                .unwrap_or(defaults::BACKGROUND_BYTES_PER_SEC),
            peer_transport: s.peer_transport.unwrap_or_default(),
            engine,
        })
    }

    /// The scheme of this node's URLs, and of its peers' (a cluster is
    /// TLS throughout or not at all).
    #[must_use]
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Seeds other than this node itself.
    pub fn other_seeds(&self) -> impl Iterator<Item = &String> {
        self.seeds
            .iter()
            .filter(|s| !is_self(s, self.gossip_advertise))
    }
}

/// This node's id and data dir. The id goes into gossip keys, where '|'
/// and ',' separate.
///
/// Without `--node-id`, two nodes on one machine (or two machines) must
/// still never share an id: the second would pass for a restart of the
/// first. So the id is the one the data dir recorded in `node.json` when
/// the node first served, else `<host name>-<HTTP port>`, unique on a
/// machine (two nodes cannot share a port) and across machines with
/// distinct host names. The default data dir follows the id; a data dir of
/// the old fixed default id under `root` is still found.
fn identity(
    s: &Settings,
    advertise: SocketAddr,
    root: &Path,
) -> Result<(String, PathBuf), ConfigError> {
    let node_id = match (&s.node_id, &s.data_dir) {
        (Some(id), _) => id.clone(),
        (None, Some(dir)) => match recorded_node_id(dir)? {
            Some(id) => id,
            None => derived_node_id(advertise.port()),
        },
        (None, None) => {
            let legacy = root.join(defaults::LEGACY_NODE_ID);
            if recorded_node_id(&legacy)?.as_deref() == Some(defaults::LEGACY_NODE_ID) {
                defaults::LEGACY_NODE_ID.to_owned()
            } else {
                derived_node_id(advertise.port())
            }
        }
    };
    if node_id.is_empty() || node_id.len() > 128 || node_id.contains(['|', ',']) {
        return invalid("node_id", "1 to 128 characters, without '|' or ','");
    }
    let data_dir = s.data_dir.clone().unwrap_or_else(|| root.join(&node_id));
    Ok((node_id, data_dir))
}

/// `<host name>-<port>`, the host name cut to 64 characters of
/// `[A-Za-z0-9._-]` ("kvnode" if it has none).
fn derived_node_id(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length; on success the
    // name is NUL-terminated within it (or fills it, which is handled).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let raw = if rc == 0 {
        buf.split(|&b| b == 0).next().unwrap_or_default()
    } else {
        &[]
    };
    let host: String = String::from_utf8_lossy(raw)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    let host = if host.is_empty() { "kvnode" } else { &host };
    format!("{host}-{port}")
}

/// Where this node listens and where other nodes reach it.
struct Addresses {
    listen: SocketAddr,
    advertise: SocketAddr,
    gossip_listen: SocketAddr,
    gossip_advertise: SocketAddr,
}

/// The HTTP and gossip addresses. An unset advertised address follows the
/// listen one, so it must then be reachable (not 0.0.0.0, not port 0).
fn addresses(s: &Settings) -> Result<Addresses, ConfigError> {
    let listen = match (s.listen, s.port) {
        (Some(listen), Some(port)) if listen.port() != port => {
            return invalid("port", "--port and --listen name different ports: give one")
        }
        (Some(listen), _) => listen,
        (None, Some(port)) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        (None, None) => SocketAddr::from((Ipv4Addr::LOCALHOST, 7700)),
    };
    let advertise = s.advertise.unwrap_or(listen);
    if advertise.ip().is_unspecified() || advertise.port() == 0 {
        return invalid(
            "advertise",
            "must be a reachable address (set it when listening on 0.0.0.0 or port 0)",
        );
    }
    let gossip_listen = match s.gossip_listen {
        Some(addr) => addr,
        None => SocketAddr::new(listen.ip(), next_port(listen.port())?),
    };
    let gossip_advertise = s
        .gossip_advertise
        .unwrap_or_else(|| SocketAddr::new(advertise.ip(), gossip_listen.port()));
    if gossip_advertise.ip().is_unspecified() || gossip_advertise.port() == 0 {
        return invalid("gossip_advertise", "must be a reachable address");
    }
    Ok(Addresses {
        listen,
        advertise,
        gossip_listen,
        gossip_advertise,
    })
}

/// The cluster this node belongs to, and how it places and keeps keys.
struct Cluster {
    seeds: Vec<String>,
    cluster_id: String,
    vnodes: u32,
    replication_factor: ReplicationFactor,
    secret: ClusterSecret,
    max_members: usize,
    auto_cleanup: bool,
}

fn cluster(s: &Settings, gossip_advertise: SocketAddr) -> Result<Cluster, ConfigError> {
    let seeds: Vec<String> = s
        .seeds
        .iter()
        .flatten()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let rf = s.replication_factor.unwrap_or(defaults::REPLICATION_FACTOR);
    let replication_factor = ReplicationFactor::new(rf).map_err(|e| ConfigError::Invalid {
        field: "replication_factor",
        reason: e.to_string(),
    })?;
    Ok(Cluster {
        secret: secret(s, &seeds, gossip_advertise)?,
        seeds,
        cluster_id: s
            .cluster_id
            .clone()
            .unwrap_or_else(|| defaults::CLUSTER_ID.to_owned()),
        vnodes: checked(
            "vnodes",
            s.vnodes,
            defaults::VNODES,
            |v| (1..=1024).contains(&v),
            "must be 1..=1024",
        )?,
        replication_factor,
        max_members: checked(
            "max_members",
            s.max_members,
            defaults::MAX_MEMBERS,
            |m| m >= 2,
            "must be at least 2",
        )?,
        auto_cleanup: s.auto_cleanup.unwrap_or(true),
    })
}

/// The cluster secret, given or read from its file. Other nodes would
/// refuse a random one, so joining them requires it; a node alone makes one
/// up.
fn secret(
    s: &Settings,
    seeds: &[String],
    gossip_advertise: SocketAddr,
) -> Result<ClusterSecret, ConfigError> {
    let given = match (&s.cluster_secret, &s.cluster_secret_file) {
        // Each may come from another layer (a flag, the file), so clap's
        // own conflict check does not see every pair.
        (Some(_), Some(_)) => {
            return invalid(
                "cluster_secret",
                "set either cluster_secret or cluster_secret_file, not both",
            )
        }
        (Some(secret), None) => Some(ClusterSecret::new(secret.clone())),
        (None, Some(path)) => Some(ClusterSecret::from_file(path)?),
        (None, None) => None,
    };
    match given {
        Some(s) if s.expose().len() < 16 => invalid("cluster_secret", "at least 16 characters"),
        Some(s) => Ok(s),
        None if seeds.iter().any(|s| !is_self(s, gossip_advertise)) => invalid(
            "cluster_secret",
            "required when joining other nodes (--seeds): set --cluster-secret-file",
        ),
        None => Ok(ClusterSecret::random()),
    }
}

/// The listener's TLS files: a certificate needs its key and the reverse,
/// and a client CA needs both. The client CA is also the cluster CA that
/// peers are verified against, so a TLS node with other seeds needs one.
/// The files are read when the node starts.
fn tls(
    s: &Settings,
    seeds: &[String],
    gossip_advertise: SocketAddr,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), Some(_))
            if s.tls_client_ca.is_none()
                && seeds.iter().any(|seed| !is_self(seed, gossip_advertise)) =>
        {
            invalid(
                "tls_client_ca",
                "a TLS node with other seeds needs the cluster CA: nodes present their \
                 certificates to each other and verify them against it",
            )
        }
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: s.tls_client_ca.clone(),
        })),
        (None, None) if s.tls_client_ca.is_some() => {
            invalid("tls_client_ca", "needs tls_cert and tls_key")
        }
        (None, None) => Ok(None),
        (Some(_), None) => invalid("tls_cert", "needs tls_key"),
        (None, Some(_)) => invalid("tls_key", "needs tls_cert"),
    }
}

/// How long requests, replica calls, gossip rounds and the clean-up and
/// tombstone graces last.
struct Timeouts {
    request_timeout: Duration,
    replica_timeout: Duration,
    gossip_interval: Duration,
    cleanup_grace: Duration,
    tombstone_grace: Duration,
    file_gc_grace: Duration,
}

fn timeouts(s: &Settings) -> Result<Timeouts, ConfigError> {
    let t = Timeouts {
        request_timeout: millis(s.request_timeout_ms, defaults::REQUEST_TIMEOUT_MS),
        replica_timeout: millis(s.replica_timeout_ms, defaults::REPLICA_TIMEOUT_MS),
        gossip_interval: millis(s.gossip_interval_ms, defaults::GOSSIP_INTERVAL_MS),
        cleanup_grace: millis(s.cleanup_grace_ms, defaults::CLEANUP_GRACE_MS),
        tombstone_grace: millis(s.tombstone_grace_ms, defaults::TOMBSTONE_GRACE_MS),
        file_gc_grace: millis(s.file_gc_grace_ms, defaults::FILE_GC_GRACE_MS),
    };

    if t.request_timeout.is_zero() || t.replica_timeout.is_zero() || t.gossip_interval.is_zero() {
        return invalid("timeouts", "must be positive");
    }
    let floor = Duration::from_millis(defaults::MIN_TOMBSTONE_GRACE_MS);
    if t.tombstone_grace < floor && s.allow_short_tombstone_grace != Some(true) {
        return invalid(
            "tombstone_grace_ms",
            "must be at least 3600000 (1 hour): a replica that misses a delete for longer \
             than the grace brings the key back",
        );
    }
    Ok(t)
}

/// This node's tag in its versions, and how far off clocks may be.
struct Clocks {
    node_tag: u8,
    max_clock_offset: Duration,
    clock_skew_ms: i64,
}

fn clocks(s: &Settings, node_id: &str) -> Result<Clocks, ConfigError> {
    Ok(Clocks {
        node_tag: s.node_tag.unwrap_or_else(|| derived_tag(node_id)),
        max_clock_offset: Duration::from_millis(checked(
            "max_clock_offset_ms",
            s.max_clock_offset_ms,
            defaults::MAX_CLOCK_OFFSET_MS,
            |ms| ms > 0,
            "must be positive",
        )?),
        clock_skew_ms: checked(
            "clock_skew_ms",
            s.clock_skew_ms,
            0,
            |ms| (-defaults::MAX_CLOCK_SKEW_MS..=defaults::MAX_CLOCK_SKEW_MS).contains(&ms),
            "must be within a day",
        )?,
    })
}

/// A setting in milliseconds, or its default.
fn millis(value: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(value.unwrap_or(default))
}

/// A setting, or its default, refused with `reason` unless `ok` holds.
fn checked<T: Copy>(
    field: &'static str,
    value: Option<T>,
    default: T,
    ok: impl FnOnce(T) -> bool,
    reason: &str,
) -> Result<T, ConfigError> {
    let value = value.unwrap_or(default);
    if ok(value) {
        Ok(value)
    } else {
        invalid(field, reason)
    }
}

fn parse_file(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn next_port(port: u16) -> Result<u16, ConfigError> {
    match port.checked_add(1) {
        Some(p) if port != 0 => Ok(p),
        _ => invalid("gossip_listen", "set it explicitly for this listen port"),
    }
}

fn is_self(seed: &str, gossip_advertise: SocketAddr) -> bool {
    seed.parse::<SocketAddr>()
        .is_ok_and(|s| s == gossip_advertise)
        || seed.parse::<SocketAddr>().is_ok_and(|s| {
            s.port() == gossip_advertise.port()
                && s.ip().is_loopback()
                && gossip_advertise.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)
        })
}

fn invalid<T>(field: &'static str, reason: &str) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        field,
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: Settings,
    }

    fn args(argv: &[&str]) -> Settings {
        Cli::try_parse_from(std::iter::once("kvnode").chain(argv.iter().copied()))
            .unwrap()
            .node
    }

    /// Resolves flags over a file, as [`Config::load`] does.
    fn resolve(args: Settings, file: Settings) -> Result<Config, ConfigError> {
        Config::resolve(args.or(file))
    }

    #[test]
    fn no_arguments_make_a_single_local_node() {
        let c = resolve(Settings::default(), Settings::default()).unwrap();
        assert_eq!(c.listen.to_string(), defaults::LISTEN);
        assert_eq!(c.gossip_listen.to_string(), "127.0.0.1:7701");
        assert_eq!(c.node_id, derived_node_id(7700));
        assert!(c.node_id.ends_with("-7700"), "{}", c.node_id);
        assert_eq!(c.data_dir, Path::new("kvnode-data").join(&c.node_id));
        assert_eq!(c.replication_factor.get(), 3);
        assert!(c.seeds.is_empty());
        let budget = c.edges.max_inflight_body_bytes;
        assert!(
            (defaults::MIN_INFLIGHT_BODY_BYTES..=defaults::MAX_INFLIGHT_BODY_BYTES)
                .contains(&budget),
            "{budget}"
        );
        assert_eq!(c.edges.max_connections, None);
        assert_eq!(c.repair_interval, Some(Duration::from_secs(3600)));
        assert_eq!(c.background_bytes_per_sec, 64 << 20);
    }

    #[test]
    fn an_unnamed_node_takes_the_id_its_data_dir_recorded_or_a_derived_one() {
        let root = tempfile::tempdir().unwrap();
        let at = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Two unnamed nodes on one machine never share an id or a dir.
        let (a, a_dir) = identity(&Settings::default(), at(7700), root.path()).unwrap();
        let (b, b_dir) = identity(&Settings::default(), at(7710), root.path()).unwrap();
        assert_ne!(a, b);
        assert_ne!(a_dir, b_dir);
        // Once a dir records an id, that is the node's id whatever its port.
        let dir = root.path().join("given");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("node.json"), br#"{"node_id":"first-name"}"#).unwrap();
        let s = args(&["--data-dir", dir.to_str().unwrap()]);
        assert_eq!(identity(&s, at(9000), root.path()).unwrap().0, "first-name");
        // A data dir of the old fixed default id keeps serving under it.
        let legacy = root.path().join(defaults::LEGACY_NODE_ID);
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join("node.json"), br#"{"node_id":"node1"}"#).unwrap();
        let (id, dir) = identity(&Settings::default(), at(7700), root.path()).unwrap();
        assert_eq!((id.as_str(), dir), ("node1", legacy));
        // A named node is what it is named.
        let s = args(&["--node-id", "n7"]);
        assert_eq!(identity(&s, at(7700), root.path()).unwrap().0, "n7");
        // A node.json that is not JSON is an error, not a silent new id.
        std::fs::write(dir_of(&root, "bad").join("node.json"), b"{").unwrap();
        let s = args(&["--data-dir", dir_of(&root, "bad").to_str().unwrap()]);
        assert!(matches!(
            identity(&s, at(7700), root.path()),
            Err(ConfigError::Marker(_))
        ));
    }

    fn dir_of(root: &tempfile::TempDir, name: &str) -> PathBuf {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn port_is_the_listen_port_alone() {
        let c = resolve(args(&["--port", "7800"]), Settings::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7800");
        assert_eq!(c.gossip_listen.to_string(), "127.0.0.1:7801");
        let c = resolve(
            args(&["--listen", "127.0.0.2:7900", "--port", "7900"]),
            Settings::default(),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.2:7900");
        assert!(resolve(
            args(&["--listen", "127.0.0.1:7900", "--port", "7800"]),
            Settings::default()
        )
        .is_err());
    }

    #[test]
    fn repair_interval_zero_turns_background_repair_off() {
        let file = parse_file(Path::new("k.toml"), "background_bytes_per_sec = 1000").unwrap();
        let c = resolve(args(&["--repair-interval", "0"]), file).unwrap();
        assert_eq!(c.repair_interval, None);
        assert_eq!(c.background_bytes_per_sec, 1000);
        let c = resolve(args(&["--repair-interval", "60"]), Settings::default()).unwrap();
        assert_eq!(c.repair_interval, Some(Duration::from_secs(60)));
    }

    #[test]
    fn the_chunk_gc_grace_leaves_uploads_a_commit_window() {
        let c = resolve(Settings::default(), Settings::default()).unwrap();
        assert_eq!(c.file_gc_interval, Some(Duration::from_secs(3600)));
        assert_eq!(c.file_gc_grace, Duration::from_secs(86_400));
        assert_eq!(
            c.file_commit_window(),
            Duration::from_millis(43_200_000 - 2_000 - 500)
        );
        let file = parse_file(Path::new("k.toml"), "file_gc_interval = 0").unwrap();
        let c = resolve(args(&["--file-gc-grace-ms", "10000"]), file).unwrap();
        assert_eq!(c.file_gc_interval, None);
        assert_eq!(c.file_commit_window(), Duration::from_millis(2_500));
        // No window left once the commit's write and the clock offset are paid.
        let e = resolve(args(&["--file-gc-grace-ms", "5000"]), Settings::default()).unwrap_err();
        assert!(e.to_string().contains("file_gc_grace_ms"), "{e}");
    }

    #[test]
    fn edge_settings_come_from_flags_and_the_file() {
        let file = parse_file(
            Path::new("k.toml"),
            "max_inflight_body_bytes = 67108864\nidle_timeout_ms = 500\nmax_connections = 9",
        )
        .unwrap();
        let c = resolve(args(&["--header-read-timeout-ms", "250"]), file).unwrap();
        assert_eq!(c.edges.max_inflight_body_bytes, 64 << 20);
        assert_eq!(c.edges.header_read_timeout, Duration::from_millis(250));
        assert_eq!(c.edges.idle_timeout, Duration::from_millis(500));
        assert_eq!(c.edges.max_connections, Some(9));
    }

    #[test]
    fn hint_and_background_settings_come_from_flags_and_the_file() {
        let c = resolve(Settings::default(), Settings::default()).unwrap();
        assert_eq!(c.hints.max_bytes_per_node, 256 << 20);
        assert_eq!(c.hints.window, Duration::from_secs(3 * 3600));
        assert_eq!(c.background_bytes_per_sec, 64 << 20);
        let file = parse_file(
            Path::new("k.toml"),
            "max_hint_window_ms = 0\nbackground_bytes_per_sec = 1000",
        )
        .unwrap();
        let c = resolve(args(&["--max-hint-bytes-per-node", "4096"]), file).unwrap();
        assert_eq!(c.hints.max_bytes_per_node, 4096);
        assert_eq!(c.hints.window, Duration::ZERO);
        assert_eq!(c.background_bytes_per_sec, 1000);
    }

    #[test]
    fn the_engine_section_comes_from_the_file_under_flags() {
        let file = parse_file(
            Path::new("k.toml"),
            "[engine]\nwal_sync = \"always\"\nmemtable_bytes = 1048576\nbloom_bits_per_key = 12\nl0_stop_trigger = 20\ncompression = \"zstd:5\"",
        )
        .unwrap();
        let c = resolve(
            args(&[
                "--engine-memtable-bytes",
                "2097152",
                "--engine-table-bytes",
                "8192",
            ]),
            file,
        )
        .unwrap();
        assert_eq!(c.engine.wal_sync, WalSync::Always);
        assert_eq!(c.engine.memtable_bytes, 2 << 20);
        assert_eq!(c.engine.bloom_bits_per_key, 12);
        assert_eq!(c.engine.l0_stop_trigger, 20);
        assert_eq!(c.engine.table_bytes, 8192);
        assert_eq!(c.engine.l0_compaction_trigger, 4);
        assert_eq!(c.engine.compression.to_string(), "zstd:5");
        let options = c.engine.options();
        assert_eq!(options.write_buffer_size, 2 << 20);
        assert_eq!(options.target_table_size, 8192);
        // Defaults without a section; an unknown knob or a bad policy is refused.
        let c = resolve(Settings::default(), Settings::default()).unwrap();
        assert_eq!(c.engine, EngineConfig::default());
        assert!(parse_file(Path::new("k.toml"), "[engine]\nmemtable = 5").is_err());
        assert!(parse_file(Path::new("k.toml"), "[engine]\nwal_sync = \"sometimes\"").is_err());
        assert!(parse_file(Path::new("k.toml"), "[engine]\ncompression = \"snappy\"").is_err());
        let err = resolve(
            args(&["--engine-l0-slowdown-trigger", "2"]),
            Settings::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("engine.l0_*_trigger"), "{err}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file = parse_file(
            Path::new("k.toml"),
            r#"
                node_id = "from-file"
                vnodes = 8
                seeds = ["127.0.0.1:9001"]
                cluster_secret = "0123456789abcdef0123"
                max_value_size = 1000
            "#,
        )
        .unwrap();
        let c = resolve(
            args(&["--node-id", "from-flag", "--listen", "127.0.0.1:9100"]),
            file,
        )
        .unwrap();
        assert_eq!(c.node_id, "from-flag");
        assert_eq!(c.vnodes, 8);
        assert_eq!(c.seeds, vec!["127.0.0.1:9001".to_owned()]);
        assert_eq!(c.limits.max_value_size, 1000);
        assert_eq!(c.gossip_advertise.to_string(), "127.0.0.1:9101");
    }

    #[test]
    fn the_tombstone_grace_has_a_floor_that_only_tests_lower() {
        let c = resolve(Settings::default(), Settings::default()).unwrap();
        assert_eq!(c.tombstone_grace, Duration::from_secs(10 * 24 * 3600));
        let c = resolve(
            args(&["--tombstone-grace-ms", "3600000"]),
            Settings::default(),
        )
        .unwrap();
        assert_eq!(c.tombstone_grace, Duration::from_secs(3600));
        let file = parse_file(
            Path::new("k.toml"),
            "tombstone_grace_ms = 2000\nallow_short_tombstone_grace = true",
        )
        .unwrap();
        let c = resolve(Settings::default(), file).unwrap();
        assert_eq!(c.tombstone_grace, Duration::from_secs(2));
        let e = resolve(args(&["--tombstone-grace-ms", "2000"]), Settings::default());
        assert!(matches!(
            e,
            Err(ConfigError::Invalid {
                field: "tombstone_grace_ms",
                ..
            })
        ));
    }

    #[test]
    fn the_node_tag_is_derived_from_the_id_unless_set() {
        let c = resolve(args(&["--node-id", "n7"]), Settings::default()).unwrap();
        assert_eq!(c.node_tag, derived_tag("n7"));
        assert_eq!(c.max_clock_offset, Duration::from_millis(500));
        assert_eq!(c.clock_skew_ms, 0);
        let file = parse_file(
            Path::new("k.toml"),
            "node_tag = 3\nmax_clock_offset_ms = 250",
        )
        .unwrap();
        let c = resolve(args(&["--clock-skew-ms", "-2000"]), file).unwrap();
        assert_eq!(c.node_tag, 3);
        assert_eq!(c.max_clock_offset, Duration::from_millis(250));
        assert_eq!(c.clock_skew_ms, -2000);
        for tag in ["256", "-1"] {
            assert!(Cli::try_parse_from(["kvnode", "--node-tag", tag]).is_err());
        }
    }

    #[test]
    fn the_block_size_is_free_unless_fixed() {
        let c = resolve(args(&[]), Settings::default()).unwrap();
        assert_eq!(c.limits.block_size, None);
        let c = resolve(args(&["--block-size", "4096"]), Settings::default()).unwrap();
        assert_eq!(c.limits.block_size, Some(4096));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(matches!(
            parse_file(Path::new("k.toml"), "node_idd = \"x\""),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn a_file_cannot_name_another_file() {
        assert!(matches!(
            parse_file(Path::new("k.toml"), "config = \"other.toml\""),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn seeds_come_comma_separated() {
        let a = args(&["--seeds", "127.0.0.1:1,127.0.0.1:2"]);
        assert_eq!(a.seeds.unwrap().len(), 2);
    }

    #[test]
    fn joining_others_requires_a_secret() {
        let e = resolve(args(&["--seeds", "127.0.0.1:9999"]), Settings::default());
        assert!(matches!(
            e,
            Err(ConfigError::Invalid {
                field: "cluster_secret",
                ..
            })
        ));
        // Listing only itself as a seed is a cluster of one: no secret needed.
        assert!(resolve(args(&["--seeds", "127.0.0.1:7701"]), Settings::default()).is_ok());
    }

    #[test]
    fn the_secret_comes_from_a_private_file_and_only_one_source() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file_flag = ["--cluster-secret-file", path.to_str().unwrap()];
        let c = resolve(args(&file_flag), Settings::default()).unwrap();
        assert_eq!(c.secret.expose(), "0123456789abcdef0123");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve(args(&file_flag), Settings::default()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(
            e,
            ConfigError::SecretFile(SecretFileError::TooOpen { mode: 0o644, .. })
        ));
        assert!(
            text.contains(path.to_str().unwrap()) && text.contains("0644"),
            "{text}"
        );

        // A secret in a flag and its file in the TOML file: which one?
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let toml = format!("cluster_secret_file = {:?}", path.to_str().unwrap());
        let file = parse_file(Path::new("k.toml"), &toml).unwrap();
        let e = resolve(args(&["--cluster-secret", "0123456789abcdefXYZ"]), file);
        assert!(matches!(
            e,
            Err(ConfigError::Invalid {
                field: "cluster_secret",
                ..
            })
        ));
        std::fs::write(&path, "short").unwrap();
        assert!(resolve(args(&file_flag), Settings::default()).is_err());
    }

    #[test]
    fn a_config_file_holding_the_secret_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvnode.toml");
        std::fs::write(&path, "cluster_secret = \"0123456789abcdef0123\"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let settings = args(&["--config", path.to_str().unwrap()]);
        assert!(matches!(
            Config::load(settings.clone()),
            Err(ConfigError::SecretFile(SecretFileError::TooOpen { .. }))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(settings).is_ok());
        // Without a secret in it, the file may be readable.
        std::fs::write(&path, "vnodes = 8").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Config::load(args(&["--config", path.to_str().unwrap()])).is_ok());
    }

    #[test]
    fn a_bad_tokens_file_is_refused_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            format!("# ops\nalice admin {}\nbob\n", "ab".repeat(32)),
        )
        .unwrap();
        let flag = ["--auth-tokens-file", path.to_str().unwrap()];
        let e = resolve(args(&flag), Settings::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}:3:", path.display())), "{e}");
        std::fs::write(&path, format!("alice admin {}\n", "ab".repeat(32))).unwrap();
        let c = resolve(args(&flag), Settings::default()).unwrap();
        assert_eq!(c.tokens.map(|t| t.len()), Some(1));
        assert!(resolve(Settings::default(), Settings::default())
            .unwrap()
            .tokens
            .is_none());
    }

    #[test]
    fn invariants_are_checked() {
        for argv in [
            &["--replication-factor", "0"][..],
            &["--vnodes", "0"],
            &["--listen", "0.0.0.0:7700"],
            &["--max-value-size", "10", "--max-body-size", "5"],
            &["--cluster-secret", "short"],
            &["--node-id", "a|b"],
            &["--max-inflight-body-bytes", "8000000"],
            &["--header-read-timeout-ms", "0"],
            &["--max-connections", "0"],
            &["--tombstone-grace-ms", "3599999"],
            &[
                "--tombstone-grace-ms",
                "1000",
                "--allow-short-tombstone-grace",
                "false",
            ],
            &["--max-clock-offset-ms", "0"],
            &["--clock-skew-ms", "-86400001"],
            &["--block-size", "0"],
            &["--max-value-size", "4096", "--block-size", "4097"],
        ] {
            assert!(
                resolve(args(argv), Settings::default()).is_err(),
                "{argv:?}"
            );
        }
    }

    #[test]
    fn tls_files_come_from_the_file_or_flags_and_come_in_pairs() {
        let file = parse_file(
            Path::new("k.toml"),
            r#"
                tls_cert = "/etc/kvnode/node.crt"
                tls_key = "/etc/kvnode/node.key"
                tls_client_ca = "/etc/kvnode/ca.crt"
            "#,
        )
        .unwrap();
        let c = resolve(args(&["--tls-key", "/k"]), file).unwrap();
        let tls = c.tls.clone().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/kvnode/node.crt"));
        assert_eq!(tls.key, Path::new("/k"));
        assert_eq!(
            tls.client_ca.as_deref(),
            Some(Path::new("/etc/kvnode/ca.crt"))
        );
        assert_eq!(c.scheme(), "https");
        let plain = resolve(Settings::default(), Settings::default()).unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.scheme(), "http");

        for (argv, field) in [
            (&["--tls-cert", "/c"][..], "tls_cert"),
            (&["--tls-key", "/k"][..], "tls_key"),
            (&["--tls-client-ca", "/ca"][..], "tls_client_ca"),
            // Nodes verify each other against the client CA.
            (
                &[
                    "--tls-cert",
                    "/c",
                    "--tls-key",
                    "/k",
                    "--seeds",
                    "127.0.0.1:9001",
                    "--cluster-secret",
                    "0123456789abcdef0123",
                ][..],
                "tls_client_ca",
            ),
        ] {
            let e = resolve(args(argv), Settings::default()).unwrap_err();
            assert!(e.to_string().contains(field), "{argv:?}: {e}");
        }
    }
}
