//! Sealed gossip: the UDP transport chitchat runs on, with every datagram
//! encrypted and authenticated under a key derived from the cluster secret.
//!
//! chitchat itself has no authentication, so before this module anyone who
//! could reach the gossip port could rewrite the cluster's membership. Here
//! nothing received is parsed into state before it has been proven to come
//! from a holder of the secret, and proven fresh:
//!
//! - **Key.** HKDF-SHA256 of the cluster secret (salt `kvnode-gossip-v1`,
//!   info the cluster id) gives a 256-bit XChaCha20-Poly1305 key. The AEAD
//!   also hides the layout (ids, addresses, tokens) from onlookers.
//! - **Freshness.** Each sender numbers its datagrams (`counter`, from 1)
//!   within its incarnation (`epoch`: the start time in ms that is also its
//!   chitchat generation). A receiver keeps, per sender, the newest epoch and
//!   a window of the last [`REPLAY_WINDOW`] counters: a datagram of an older
//!   epoch, below the window, or already seen is dropped. The window moves
//!   only after a datagram authenticates, so a forger cannot push it.
//!   A receiver that restarts forgets its windows; a datagram captured from
//!   a sender's current incarnation could then be replayed once, within the
//!   maximum clock offset of its sealing (below). It carries only chitchat
//!   state at versions the receiver will soon have anyway.
//! - **Size.** No datagram exceeds [`MAX_DATAGRAM`] (the largest IPv4 UDP
//!   payload), whatever chitchat hands over: a message is cut into at most
//!   [`MAX_FRAGMENTS`] fragments, each sealed on its own, and one that would
//!   need more is dropped and counted. Reassembly holds at most one message
//!   per authenticated sender, and there are at most `max_senders` of them.
//! - **Clock offset.** Each datagram carries its sender's wall clock (ms)
//!   when it was sealed. A receiver compares it, once the datagram has
//!   authenticated, with its own wall clock, and drops a datagram off by more
//!   than the maximum clock offset (`--max-clock-offset-ms`, as CockroachDB's
//!   `--max-offset`): nodes whose clocks are that far apart never become
//!   members of each other's views, because last-writer-wins between them
//!   would let an older write beat a newer one (`hlc`). The receiver warns,
//!   at most once per sender every 10 s, naming the peer's address and the
//!   offset.
//!
//!   The offset measured is the true one less the datagram's delay (flight,
//!   and the time it queued in either process), so a datagram that seems
//!   to come from a clock *ahead* proves it, while one that seems to come
//!   from a clock *behind* may only be late: on a loaded host a receiver
//!   that falls half a second behind its socket would otherwise refuse its
//!   healthy peers and mark them down. So a sender that seems behind is
//!   refused only if none of its datagrams was within the offset in the
//!   last 5 s (`LATE_GRACE_MS`); a sender that is behind for real keeps
//!   being refused, and the refusal is mutual all the same, since it sees
//!   the receiver's datagrams (and clock notices) come from ahead.
//!
//!   A refused sender would hear
//!   nothing more from the receiver, so with each warning the receiver also
//!   sends it a *clock notice*, an empty message whose header carries the
//!   receiver's clock: the sender refuses that in turn and warns too. An
//!   empty message is never chitchat (whose messages start with a magic
//!   number), and one that arrives within the offset is dropped unread.
//!   A datagram replayed long after it was sealed is refused here as well,
//!   which gives freshness across a receiver's restart (see above), at the
//!   cost of a misleading warning about its sender's clock.
//!
//! Dropped datagrams are counted by reason (`kvnode_gossip_datagrams_total`).
//!
//! # Datagram layout
//!
//! ```text
//! offset  size  field
//!      0     1  version (2)
//!      1     8  sender: xxh3-64 of the sender's node id, big-endian
//!      9     8  epoch: the sender's incarnation (start time, ms), big-endian
//!     17     8  counter: this datagram's number within the epoch, big-endian
//!     25     8  sent: the sender's wall clock when sealing, ms since the Unix epoch, big-endian
//!     33     1  fragment index (0-based)
//!     34     1  fragment count (1..=MAX_FRAGMENTS)
//!     35    24  XChaCha20 nonce (random)
//!     59     n  ciphertext of this fragment of the serialized chitchat envelope
//!   59+n    16  Poly1305 tag over bytes 0..59 (associated data) and the ciphertext
//! ```
//!
//! Version 1 (without `sent`) is refused as malformed: nodes that gossip in
//! version 1 and nodes that gossip in version 2 do not see each other, so a
//! cluster moves to this build all at once.
//!
//! The fragments of one message carry consecutive counters, so the first
//! one's counter (`counter - index`) names the message.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use rand::RngCore;

use crate::auth::ClusterSecret;
use crate::config::Config;
use crate::hlc::{WallClock, OFFSET_WARNING_EVERY_MS};
use crate::metrics::{GossipMetrics, GossipOutcome};

/// The largest datagram this transport sends: the largest UDP payload IPv4
/// can carry. chitchat sizes its own messages to this same bound, so most
/// messages need two fragments only when they are nearly full.
pub const MAX_DATAGRAM: usize = 65_507;
/// Fragments one message may take. chitchat's messages fit in two; four
/// leaves room without letting a peer make a receiver buffer much.
pub const MAX_FRAGMENTS: u8 = 4;
/// Counters remembered per sender: datagrams reordered further than this
/// are dropped as replays.
pub const REPLAY_WINDOW: u64 = 128;

const VERSION: u8 = 2;
const NONCE_LEN: usize = 24;
/// Where the fragment index and count sit, after the version and four words.
const FRAGMENT_AT: usize = 1 + 4 * 8;
const HEADER_LEN: usize = FRAGMENT_AT + 2 + NONCE_LEN;
const TAG_LEN: usize = 16;
/// How long after a sender's last datagram within the clock offset its
/// datagrams that seem to come from a clock behind are taken as late
/// instead (see the module doc), in ms. Longer than any stall after which
/// the failure detector still holds a node up.
const LATE_GRACE_MS: u64 = 5_000;
/// Plaintext bytes one datagram carries.
const FRAGMENT_CAPACITY: usize = MAX_DATAGRAM - HEADER_LEN - TAG_LEN;

/// The gossip key, derived from the cluster secret and the cluster id.
#[derive(Clone)]
pub struct GossipKey(XChaCha20Poly1305);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

impl GossipKey {
    /// Derives the key every member of `cluster_id` holding `secret` shares.
    pub fn derive(secret: &ClusterSecret, cluster_id: &str) -> Self {
        let hkdf =
            hkdf::Hkdf::<sha2::Sha256>::new(Some(b"kvnode-gossip-v1"), secret.expose().as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        if hkdf.expand(cluster_id.as_bytes(), &mut key).is_err() {
            unreachable!("HKDF-SHA256 expands to 32 bytes");
        }
        Self(XChaCha20Poly1305::new(&key.into()))
    }
}

/// The clear part of a datagram, authenticated with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// xxh3-64 of the sender's node id.
    pub sender: u64,
    /// The sender's incarnation.
    pub epoch: u64,
    /// The datagram's number within the epoch.
    pub counter: u64,
    /// The sender's wall clock when it sealed the datagram, ms.
    pub sent_ms: u64,
    /// This fragment's index.
    pub fragment: u8,
    /// The message's fragment count.
    pub fragments: u8,
}

impl Header {
    fn encode(&self, nonce: &[u8; NONCE_LEN]) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let fields = [VERSION]
            .into_iter()
            .chain(self.sender.to_be_bytes())
            .chain(self.epoch.to_be_bytes())
            .chain(self.counter.to_be_bytes())
            .chain(self.sent_ms.to_be_bytes())
            .chain([self.fragment, self.fragments])
            .chain(nonce.iter().copied());
        for (slot, byte) in out.iter_mut().zip(fields) {
            *slot = byte;
        }
        out
    }
}

/// Why a datagram was dropped before it reached chitchat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// Shorter than a header and a tag.
    #[error("datagram of {0} bytes is too short")]
    Short(usize),
    /// An unknown version byte.
    #[error("unknown gossip datagram version {0}")]
    Version(u8),
    /// A fragment index or count out of bounds.
    #[error("fragment {index} of {count} is out of bounds")]
    Fragment {
        /// The index.
        index: u8,
        /// The count.
        count: u8,
    },
    /// The tag does not verify: not sealed under this cluster's key, or altered.
    #[error("datagram does not authenticate")]
    Unauthenticated,
}

/// Seals `plaintext` (one fragment) under `key` with a fresh random nonce.
pub fn seal(key: &GossipKey, header: &Header, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let clear = header.encode(&nonce);
    let payload = Payload {
        msg: plaintext,
        aad: &clear,
    };
    let sealed = match key.0.encrypt(XNonce::from_slice(&nonce), payload) {
        Ok(sealed) => sealed,
        // XChaCha20-Poly1305 only refuses messages of more than 256 GiB.
        Err(_) => unreachable!("a fragment is far below the AEAD's length limit"),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(&clear);
    out.extend_from_slice(&sealed);
    out
}

/// Checks and decrypts one datagram: its header and its fragment's plaintext.
/// Says nothing about freshness ([`ReplayWindow`] does).
pub fn open(key: &GossipKey, datagram: &[u8]) -> Result<(Header, Vec<u8>), DatagramError> {
    let short = DatagramError::Short(datagram.len());
    let (clear, sealed) = datagram
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(short.clone())?;
    if sealed.len() < TAG_LEN {
        return Err(short);
    }
    let (version, rest) = clear.split_first().ok_or(short.clone())?;
    if *version != VERSION {
        return Err(DatagramError::Version(*version));
    }
    let mut fields = rest.chunks_exact(8).take(4).map(|c| {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        u64::from_be_bytes(word)
    });
    let (Some(sender), Some(epoch), Some(counter), Some(sent_ms)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(short);
    };
    let (fragment, fragments) = match clear.get(FRAGMENT_AT..FRAGMENT_AT + 2) {
        Some(&[index, count]) => (index, count),
        _ => return Err(short),
    };
    if fragments == 0 || fragments > MAX_FRAGMENTS || fragment >= fragments {
        return Err(DatagramError::Fragment {
            index: fragment,
            count: fragments,
        });
    }
    let nonce = clear.get(FRAGMENT_AT + 2..).ok_or(short)?;
    let plaintext = key
        .0
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: clear,
            },
        )
        .map_err(|_| DatagramError::Unauthenticated)?;
    let header = Header {
        sender,
        epoch,
        counter,
        sent_ms,
        fragment,
        fragments,
    };
    Ok((header, plaintext))
}

/// The freshness state of one sender: its newest epoch and which of the
/// last [`REPLAY_WINDOW`] counters have been seen.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    epoch: u64,
    highest: u64,
    seen: u128,
}

impl ReplayWindow {
    /// Records `(epoch, counter)` and says whether it is fresh. Call it only
    /// for datagrams that authenticated.
    pub fn accept(&mut self, epoch: u64, counter: u64) -> bool {
        if epoch < self.epoch {
            return false;
        }
        if epoch > self.epoch {
            *self = Self {
                epoch,
                highest: counter,
                seen: 1,
            };
            return true;
        }
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = counter;
            return true;
        }
        let age = self.highest - counter;
        if age >= REPLAY_WINDOW {
            return false;
        }
        let bit = 1u128 << age;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

/// A message being reassembled from its fragments.
#[derive(Debug)]
struct Partial {
    epoch: u64,
    first: u64,
    parts: Vec<Option<Vec<u8>>>,
}

#[derive(Debug, Default)]
struct SenderState {
    window: ReplayWindow,
    partial: Option<Partial>,
    last_seen: Option<Instant>,
    /// Local wall-clock ms of the last warning about this sender's clock.
    offset_warned_ms: Option<u64>,
    /// Local wall-clock ms of this sender's last datagram within the offset.
    in_sync_ms: Option<u64>,
}

impl SenderState {
    /// Checks the clock of this sender's datagram sealed at `sent_ms` and
    /// received at `now_ms`: whether it is within `max_offset_ms`, or taken
    /// as late (`false`), or why it is refused (see the module doc).
    fn check_clock(
        &mut self,
        sent_ms: u64,
        now_ms: u64,
        max_offset_ms: u64,
    ) -> Result<bool, Dropped> {
        let offset_ms = signed_difference(sent_ms, now_ms);
        if offset_ms.unsigned_abs() <= max_offset_ms {
            return Ok(true);
        }
        let late = offset_ms < 0
            && self
                .in_sync_ms
                .is_some_and(|at| now_ms.saturating_sub(at) <= LATE_GRACE_MS);
        if late {
            return Ok(false);
        }
        let warn = self
            .offset_warned_ms
            .is_none_or(|at| now_ms.abs_diff(at) >= OFFSET_WARNING_EVERY_MS);
        if warn {
            self.offset_warned_ms = Some(now_ms);
        }
        Err(Dropped::ClockOffset { offset_ms, warn })
    }
}

/// Why [`Receiver::receive`] dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dropped {
    /// Not sealed under this cluster's key, or altered.
    Unauthenticated,
    /// Not a gossip datagram of this version, or fragments that do not add up.
    Malformed,
    /// Seen before, or from an older incarnation of its sender.
    Replayed,
    /// Authentic, but its sender's clock is too far from this node's.
    ClockOffset {
        /// The sender's clock minus this node's, ms (positive: it runs ahead).
        offset_ms: i64,
        /// Whether to warn: the first such datagram of this sender in 10 s.
        warn: bool,
    },
}

impl Dropped {
    /// How it is counted.
    pub fn outcome(self) -> GossipOutcome {
        match self {
            Self::Unauthenticated => GossipOutcome::unauthenticated,
            Self::Malformed => GossipOutcome::malformed,
            Self::Replayed => GossipOutcome::replayed,
            Self::ClockOffset { .. } => GossipOutcome::clock_offset,
        }
    }
}

/// Turns authenticated datagrams into whole, fresh messages from senders
/// whose clocks agree with this node's.
#[derive(Debug)]
pub struct Receiver {
    key: GossipKey,
    senders: HashMap<u64, SenderState>,
    max_senders: usize,
    max_offset_ms: u64,
}

impl Receiver {
    /// A receiver that tracks at most `max_senders` senders (the least
    /// recently heard one is forgotten first) and drops datagrams whose
    /// sender's clock is more than `max_offset` from its own.
    pub fn new(key: GossipKey, max_senders: usize, max_offset: Duration) -> Self {
        Self {
            key,
            senders: HashMap::new(),
            max_senders: max_senders.max(1),
            max_offset_ms: u64::try_from(max_offset.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Takes one datagram, received when this node's wall clock read
    /// `now_ms`: a whole message once its last fragment arrives, `Ok(None)`
    /// while fragments are missing, or why it was dropped.
    pub fn receive(&mut self, datagram: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, Dropped> {
        let (header, plaintext) = open(&self.key, datagram).map_err(|e| match e {
            DatagramError::Unauthenticated => Dropped::Unauthenticated,
            _ => Dropped::Malformed,
        })?;
        let first = header
            .counter
            .checked_sub(u64::from(header.fragment))
            .ok_or(Dropped::Malformed)?;
        if !self.senders.contains_key(&header.sender) && self.senders.len() >= self.max_senders {
            let oldest = self
                .senders
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.senders.remove(&oldest);
            }
        }
        let state = self.senders.entry(header.sender).or_default();
        // Before the window, so that a refused sender's datagrams never
        // move it.
        let in_sync = state.check_clock(header.sent_ms, now_ms, self.max_offset_ms)?;
        if !state.window.accept(header.epoch, header.counter) {
            return Err(Dropped::Replayed);
        }
        state.last_seen = Some(Instant::now());
        if in_sync {
            state.in_sync_ms = Some(now_ms);
        }
        if header.fragments == 1 {
            return Ok(Some(plaintext));
        }
        let same = state.partial.as_ref().is_some_and(|p| {
            p.epoch == header.epoch
                && p.first == first
                && p.parts.len() == usize::from(header.fragments)
        });
        if !same {
            state.partial = Some(Partial {
                epoch: header.epoch,
                first,
                parts: vec![None; usize::from(header.fragments)],
            });
        }
        let Some(partial) = state.partial.as_mut() else {
            return Ok(None);
        };
        if let Some(slot) = partial.parts.get_mut(usize::from(header.fragment)) {
            *slot = Some(plaintext);
        }
        if partial.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let whole = state
            .partial
            .take()
            .map(|p| p.parts.into_iter().flatten().flatten().collect());
        Ok(whole)
    }
}

/// `a - b`, saturated to the range of `i64`.
fn signed_difference(a: u64, b: u64) -> i64 {
    if a >= b {
        i64::try_from(a - b).unwrap_or(i64::MAX)
    } else {
        i64::try_from(b - a).map_or(i64::MIN, |d| -d)
    }
}

/// Seals a whole message into its datagrams, numbering them from
/// `*counter + 1` and stamping them with the sender's wall clock `sent_ms`.
/// `None` if it needs more than [`MAX_FRAGMENTS`].
pub fn seal_message(
    key: &GossipKey,
    sender: u64,
    epoch: u64,
    counter: &mut u64,
    sent_ms: u64,
    message: &[u8],
) -> Option<Vec<Vec<u8>>> {
    let fragments = message.len().div_ceil(FRAGMENT_CAPACITY).max(1);
    let fragments = u8::try_from(fragments)
        .ok()
        .filter(|&n| n <= MAX_FRAGMENTS)?;
    let chunks: Vec<&[u8]> = if message.is_empty() {
        vec![message]
    } else {
        message.chunks(FRAGMENT_CAPACITY).collect()
    };
    Some(
        chunks
            .into_iter()
            .zip(0..fragments)
            .map(|(chunk, fragment)| {
                *counter += 1;
                let header = Header {
                    sender,
                    epoch,
                    counter: *counter,
                    sent_ms,
                    fragment,
                    fragments,
                };
                seal(key, &header, chunk)
            })
            .collect(),
    )
}

/// The id a node's datagrams carry.
pub fn sender_id(node_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(node_id.as_bytes())
}

/// chitchat's [`Transport`], sealing every datagram.
#[derive(Debug, Clone)]
pub struct SealedTransport {
    key: GossipKey,
    sender: u64,
    epoch: u64,
    max_senders: usize,
    clock: WallClock,
    max_offset: Duration,
    metrics: GossipMetrics,
}

impl SealedTransport {
    /// The transport of the node `config` describes, in its incarnation
    /// `epoch`.
    pub(crate) fn new(config: &Config, epoch: u64, metrics: GossipMetrics) -> Self {
        Self {
            key: GossipKey::derive(&config.secret, &config.cluster_id),
            sender: sender_id(&config.node_id),
            epoch,
            max_senders: config.max_members,
            clock: WallClock::skewed(config.clock_skew_ms),
            max_offset: config.max_clock_offset,
            metrics,
        }
    }
}

#[async_trait::async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        Ok(Box::new(SealedSocket {
            socket,
            transport: self.clone(),
            counter: 0,
            receiver: Receiver::new(self.key.clone(), self.max_senders, self.max_offset),
            buf_send: Vec::new(),
            buf_recv: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    transport: SealedTransport,
    counter: u64,
    receiver: Receiver,
    buf_send: Vec<u8>,
    buf_recv: Box<[u8]>,
}

impl SealedSocket {
    /// Says why `peer`'s gossip is refused: a warning here, and a clock
    /// notice to the peer, which hears nothing else from this node.
    async fn refuse_clock(&mut self, peer: SocketAddr, offset_ms: i64, now_ms: u64) {
        let t = &self.transport;
        tracing::warn!(
            %peer,
            offset_ms,
            max_offset_ms = t.max_offset.as_millis(),
            "refusing gossip from a peer whose wall clock is off from this node's by more \
             than the maximum clock offset; check the clocks (NTP) of both hosts"
        );
        let notice = seal_message(&t.key, t.sender, t.epoch, &mut self.counter, now_ms, &[]);
        for datagram in notice.into_iter().flatten() {
            match self.socket.send_to(&datagram, peer).await {
                Ok(sent) => t.metrics.datagram_out(GossipOutcome::ok, sent),
                Err(e) => tracing::debug!(error = %e, %peer, "clock notice not sent"),
            }
        }
    }
}

/// Errors a UDP socket reports for one peer (an ICMP unreachable, say)
/// that do not mean the socket is broken.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket
            .local_addr()
            .context("failed to get the gossip socket's address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.buf_send.clear();
        envelope.serialize(&mut self.buf_send);
        let t = &self.transport;
        let sent_ms = t.clock.now_ms();
        let Some(datagrams) = seal_message(
            &t.key,
            t.sender,
            t.epoch,
            &mut self.counter,
            sent_ms,
            &self.buf_send,
        ) else {
            tracing::warn!(
                bytes = self.buf_send.len(),
                %to,
                "gossip message too large for {MAX_FRAGMENTS} datagrams; dropped"
            );
            t.metrics.datagram_out(GossipOutcome::oversized, 0);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        for datagram in &datagrams {
            match self.socket.send_to(datagram, to).await {
                Ok(sent) => t.metrics.datagram_out(GossipOutcome::ok, sent),
                Err(e) if is_transient(&e) => {
                    tracing::debug!(error = %e, %to, "gossip send failed");
                }
                Err(e) => return Err(e).context("failed to send a gossip datagram"),
            }
        }
        Ok(SendOutcome {
            num_bytes_sent: self.buf_send.len(),
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from_addr) = match self.socket.recv_from(&mut self.buf_recv).await {
                Ok(received) => received,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e).context("gossip socket failed"),
            };
            let datagram = self.buf_recv.get(..len).unwrap_or_default();
            let metrics = &self.transport.metrics;
            let now_ms = self.transport.clock.now_ms();
            let message = match self.receiver.receive(datagram, now_ms) {
                Ok(Some(message)) => message,
                Ok(None) => {
                    metrics.datagram_in(GossipOutcome::ok, len);
                    continue;
                }
                Err(dropped) => {
                    metrics.datagram_in(dropped.outcome(), len);
                    tracing::debug!(%from_addr, len, ?dropped, "gossip datagram dropped");
                    if let Dropped::ClockOffset {
                        offset_ms,
                        warn: true,
                    } = dropped
                    {
                        self.refuse_clock(from_addr, offset_ms, now_ms).await;
                    }
                    continue;
                }
            };
            let metrics = &self.transport.metrics;
            if message.is_empty() {
                // A clock notice: its header said all it had to.
                metrics.datagram_in(GossipOutcome::ok, len);
                continue;
            }
            let mut bytes = message.as_slice();
            match ChitchatEnvelope::deserialize(&mut bytes) {
                Ok(envelope) => {
                    metrics.datagram_in(GossipOutcome::ok, len);
                    return Ok(RecvOutcome {
                        from_addr,
                        envelope,
                        num_bytes_received: message.len(),
                    });
                }
                Err(e) => {
                    // Sealed by a holder of the secret, yet not chitchat: a
                    // member of another version, or one misbehaving.
                    metrics.datagram_in(GossipOutcome::malformed, len);
                    tracing::warn!(%from_addr, error = %e, "authenticated gossip message does not parse");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn key(secret: &str) -> GossipKey {
        GossipKey::derive(&ClusterSecret::new(secret.into()), "strata")
    }

    /// The wall clock (ms) of the tests' datagrams.
    const NOW: u64 = 1_800_000_000_000;
    const MAX_OFFSET: Duration = Duration::from_millis(500);

    fn header(counter: u64) -> Header {
        Header {
            sender: 7,
            epoch: 100,
            counter,
            sent_ms: NOW,
            fragment: 0,
            fragments: 1,
        }
    }

    fn receiver(k: &GossipKey, max_senders: usize) -> Receiver {
        Receiver::new(k.clone(), max_senders, MAX_OFFSET)
    }

    #[test]
    fn sealed_datagrams_open_only_under_the_same_key_and_cluster() {
        let k = key("0123456789abcdef");
        let sealed = seal(&k, &header(1), b"hello");
        assert_eq!(open(&k, &sealed).unwrap(), (header(1), b"hello".to_vec()));
        assert_eq!(
            open(&key("0123456789abcdeX"), &sealed),
            Err(DatagramError::Unauthenticated)
        );
        let other_cluster = GossipKey::derive(&ClusterSecret::new("0123456789abcdef".into()), "x");
        assert_eq!(
            open(&other_cluster, &sealed),
            Err(DatagramError::Unauthenticated)
        );
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let k = key("0123456789abcdef");
        let sealed = seal(&k, &header(9), b"some gossip state");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert!(open(&k, &bad).is_err(), "byte {i} bit {bit}");
            }
        }
        for len in 0..sealed.len() {
            assert!(open(&k, &sealed[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn the_window_refuses_replays_old_epochs_and_counters_below_it() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(5, 1));
        assert!(!w.accept(5, 1));
        assert!(w.accept(5, 3));
        assert!(w.accept(5, 2), "reordered within the window");
        assert!(!w.accept(5, 2));
        assert!(w.accept(5, 3 + REPLAY_WINDOW));
        assert!(!w.accept(5, 3), "below the window");
        assert!(w.accept(5, 4), "the oldest counter still in the window");
        assert!(!w.accept(4, 1_000_000), "an older incarnation");
        assert!(w.accept(6, 1), "a restart");
        assert!(!w.accept(5, 10_000));
    }

    #[test]
    fn the_receiver_drops_forgeries_and_replays_and_reassembles_fragments() {
        let k = key("0123456789abcdef");
        let mut receiver = receiver(&k, 8);
        let mut counter = 0;
        let small = seal_message(&k, 1, 10, &mut counter, NOW, b"one").unwrap();
        assert_eq!(small.len(), 1);
        assert_eq!(receiver.receive(&small[0], NOW), Ok(Some(b"one".to_vec())));
        assert_eq!(receiver.receive(&small[0], NOW), Err(Dropped::Replayed));

        let forged = seal_message(&key("another secret!!"), 1, 10, &mut 50, NOW, b"x").unwrap();
        assert_eq!(
            receiver.receive(&forged[0], NOW),
            Err(Dropped::Unauthenticated)
        );
        assert_eq!(receiver.receive(b"junk", NOW), Err(Dropped::Malformed));

        let big: Vec<u8> = (0..FRAGMENT_CAPACITY * 2 + 10)
            .map(|i| (i % 251) as u8)
            .collect();
        let parts = seal_message(&k, 1, 10, &mut counter, NOW, &big).unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|d| d.len() <= MAX_DATAGRAM));
        // Out of order: the message is whole when its last missing part lands.
        assert_eq!(receiver.receive(&parts[2], NOW), Ok(None));
        assert_eq!(receiver.receive(&parts[0], NOW), Ok(None));
        assert_eq!(receiver.receive(&parts[1], NOW), Ok(Some(big.clone())));
        assert_eq!(receiver.receive(&parts[1], NOW), Err(Dropped::Replayed));

        let too_big = vec![0u8; FRAGMENT_CAPACITY * usize::from(MAX_FRAGMENTS) + 1];
        assert!(seal_message(&k, 1, 10, &mut counter, NOW, &too_big).is_none());
    }

    #[test]
    fn senders_are_bounded() {
        let k = key("0123456789abcdef");
        let mut receiver = receiver(&k, 4);
        for sender in 0..100 {
            let d = seal_message(&k, sender, 1, &mut 0, NOW, b"m").unwrap();
            assert!(receiver.receive(&d[0], NOW).unwrap().is_some());
        }
        assert_eq!(receiver.senders.len(), 4);
    }

    #[test]
    fn the_sent_clock_is_authenticated() {
        let k = key("0123456789abcdef");
        let mut sealed = seal(&k, &header(1), b"x");
        assert_eq!(open(&k, &sealed).unwrap().0.sent_ms, NOW);
        // Turn the clock back by a second in the clear header.
        sealed[25..33].copy_from_slice(&(NOW - 1_000).to_be_bytes());
        assert_eq!(open(&k, &sealed), Err(DatagramError::Unauthenticated));
    }

    #[test]
    fn datagrams_from_a_clock_too_far_off_are_dropped_both_ways() {
        let k = key("0123456789abcdef");
        let mut receiver = receiver(&k, 8);
        let mut counter = 0;
        let mut at = |sent_ms: u64| seal_message(&k, 1, 10, &mut counter, sent_ms, b"m").unwrap();
        for (sent, offset_ms) in [(NOW + 501, 501), (NOW - 501, -501), (NOW + 2_000, 2_000)] {
            let d = at(sent);
            assert!(matches!(
                receiver.receive(&d[0], NOW),
                Err(Dropped::ClockOffset { offset_ms: o, .. }) if o == offset_ms
            ));
        }
        for sent in [NOW + 500, NOW - 500, NOW] {
            assert!(
                receiver.receive(&at(sent)[0], NOW).unwrap().is_some(),
                "{sent}"
            );
        }
        // Measured against the receiver's clock, not the sender's: the same
        // datagram is refused by a receiver 2 s behind.
        let d = at(NOW);
        assert!(matches!(
            receiver.receive(&d[0], NOW - 2_000),
            Err(Dropped::ClockOffset {
                offset_ms: 2_000,
                ..
            })
        ));
        // Refusing it did not spend its counter: once the clocks agree it
        // is taken.
        assert!(receiver.receive(&d[0], NOW).unwrap().is_some());
    }

    #[test]
    fn a_sender_recently_in_sync_that_seems_behind_is_late_not_off() {
        let k = key("0123456789abcdef");
        let mut receiver = receiver(&k, 8);
        let mut counter = 0;
        let mut at = |sent_ms: u64| seal_message(&k, 1, 10, &mut counter, sent_ms, b"m").unwrap();
        assert!(receiver.receive(&at(NOW)[0], NOW).unwrap().is_some());
        // Datagrams that queued 2 s (a stalled receiver) are taken for 5 s.
        let late = at(NOW + 3_000);
        assert!(receiver.receive(&late[0], NOW + 5_000).unwrap().is_some());
        // Even late, a datagram from ahead proves a clock ahead.
        assert!(matches!(
            receiver.receive(&at(NOW + 6_000)[0], NOW + 5_000),
            Err(Dropped::ClockOffset {
                offset_ms: 1_000,
                ..
            })
        ));
        // 5 s after the last datagram within the offset, behind is behind.
        assert!(matches!(
            receiver.receive(&at(NOW + 3_001)[0], NOW + 5_001),
            Err(Dropped::ClockOffset {
                offset_ms: -2_000,
                ..
            })
        ));
        // A datagram within the offset starts the grace again.
        assert!(receiver
            .receive(&at(NOW + 5_100)[0], NOW + 5_200)
            .unwrap()
            .is_some());
        assert!(receiver
            .receive(&at(NOW + 4_000)[0], NOW + 6_000)
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_clock_offset_is_warned_about_once_per_sender_every_10_s() {
        let k = key("0123456789abcdef");
        let mut receiver = receiver(&k, 8);
        let mut counters = [0u64; 2];
        let mut warned = |sender: u64, now: u64| {
            let counter = &mut counters[usize::try_from(sender).unwrap()];
            let d = seal_message(&k, sender, 1, counter, now + 2_000, b"m").unwrap();
            match receiver.receive(&d[0], now) {
                Err(Dropped::ClockOffset { warn, .. }) => warn,
                other => panic!("{other:?}"),
            }
        };
        assert!(warned(0, NOW));
        assert!(!warned(0, NOW + 100));
        assert!(warned(1, NOW + 200), "another sender");
        assert!(!warned(0, NOW + 9_999));
        assert!(warned(0, NOW + 10_000));
        assert!(!warned(1, NOW + 10_100));
    }
}
