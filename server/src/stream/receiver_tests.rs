//! The receiver against a stub source on loopback that misbehaves on
//! purpose: a stream cut mid-frame, a corrupt frame, an entry from outside
//! the range, a miscounted end, a source that stalls. Each must end in an
//! error and a retry (resuming after the last key applied) or another
//! source, never in a range received wrong: the engine must end up holding
//! exactly the source's entries of the range.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use strata_ring::NodeId;

use super::*;
use crate::auth::ClusterSecret;
use crate::membership::NodeState;
use crate::peer::frames::{end_frame, FrameBuilder, HEADER_LEN};
use crate::peer::http::HttpPeer;
use crate::peer::wire::STREAM_PATH;
use crate::storage::{engine_key, Record};

/// Entries per frame the stub sends: small, so a range is many frames.
const FRAME_ENTRIES: usize = 10;
/// Keys the stub source holds, in and out of the range.
const KEYS: usize = 300;
/// The range pulled: about half the ring, so about half the keys.
fn range() -> TokenRange {
    TokenRange::new(u64::MAX / 4, u64::MAX / 4 * 3)
}

/// What the stub does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Sends the range past `after` whole, with its end frame.
    Whole,
    /// Sends it but ends the body this many bytes in, inside a frame.
    CutAt(usize),
    /// Flips a byte inside the payload of this frame.
    Corrupt(usize),
    /// Puts an entry from outside the range into the first frame.
    Foreign,
    /// Ends with an end frame that counts one entry more than were sent.
    Miscount,
    /// Sends the first frame, then nothing, keeping the connection open.
    Stall,
}

/// A source that holds [`KEYS`] items and acts out a script.
struct Stub {
    /// What to do with the next requests; then [`Act::Whole`].
    script: Mutex<Vec<Act>>,
    /// The `after` of every request received.
    afters: Mutex<Vec<Option<Vec<u8>>>>,
    /// Everything it holds, in engine-key order.
    items: Vec<(Vec<u8>, Record)>,
}

impl Stub {
    fn new(script: Vec<Act>) -> Arc<Self> {
        let mut items: Vec<(Vec<u8>, Record)> = (0..KEYS)
            .map(|k| {
                let key = format!("s-{k}");
                let record = if k % 9 == 0 {
                    Record::tombstone(k as u64 + 1)
                } else {
                    Record::value(k as u64 + 1, key.clone().into_bytes())
                };
                (engine_key(key.as_bytes()), record)
            })
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        Arc::new(Self {
            script: Mutex::new(script),
            afters: Mutex::new(Vec::new()),
            items,
        })
    }

    /// The items of `range`, by user key.
    fn in_range(&self, range: TokenRange) -> HashMap<Vec<u8>, Record> {
        self.items
            .iter()
            .filter(|(k, _)| range.contains(token_of(k)))
            .map(|(k, r)| (k[8..].to_vec(), r.clone()))
            .collect()
    }

    /// The frames of `range` past `after`, and their entry count; with
    /// `foreign`, an item from outside the range opens the first frame.
    fn frames(
        &self,
        range: TokenRange,
        after: Option<&[u8]>,
        foreign: bool,
    ) -> (Vec<Vec<u8>>, u64) {
        let mut picked: Vec<&(Vec<u8>, Record)> = self
            .items
            .iter()
            .filter(|(k, _)| range.contains(token_of(k)))
            .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
            .collect();
        if foreign {
            let outsider = self
                .items
                .iter()
                .find(|(k, _)| !range.contains(token_of(k)))
                .unwrap();
            picked.insert(0, outsider);
        }
        let mut frames = Vec::new();
        let mut builder = FrameBuilder::default();
        for (k, r) in &picked {
            builder.push(k, &r.encode());
            if builder.entries() as usize == FRAME_ENTRIES {
                frames.push(builder.take());
            }
        }
        if builder.entries() > 0 {
            frames.push(builder.take());
        }
        (frames, picked.len() as u64)
    }
}

fn token_of(engine_key: &[u8]) -> u64 {
    u64::from_be_bytes(engine_key[..8].try_into().unwrap())
}

/// The stub's stream route.
async fn serve(
    State(stub): State<Arc<Stub>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let range = TokenRange::new(q["start"].parse().unwrap(), q["end"].parse().unwrap());
    let after = q.get("after").map(|h| hex::decode(h).unwrap());
    stub.afters.lock().push(after.clone());
    let act = {
        let mut script = stub.script.lock();
        if script.is_empty() {
            Act::Whole
        } else {
            script.remove(0)
        }
    };
    let (mut frames, sent) = stub.frames(range, after.as_deref(), act == Act::Foreign);
    let body = match act {
        Act::Whole | Act::Foreign => [frames.concat(), end_frame(sent)].concat(),
        Act::Miscount => [frames.concat(), end_frame(sent + 1)].concat(),
        Act::CutAt(n) => {
            let all = frames.concat();
            assert!(n < all.len(), "cut past the end");
            all[..n].to_vec()
        }
        Act::Corrupt(i) => {
            frames[i][HEADER_LEN + 3] ^= 0x20;
            [frames.concat(), end_frame(sent)].concat()
        }
        Act::Stall => return Response::new(Body::new(Stalled(Some(frames.remove(0).into())))),
    };
    Response::new(Body::from(body))
}

/// A body that yields one chunk and then never another, nor its end.
struct Stalled(Option<Bytes>);

impl HttpBody for Stalled {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(chunk) => Poll::Ready(Some(Ok(http_body::Frame::data(chunk)))),
            // Never woken: the receiver's idle deadline has to end it.
            None => Poll::Pending,
        }
    }
}

/// Serves `stub` on loopback; its member record.
async fn start(stub: Arc<Stub>, id: &str) -> MemberInfo {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(STREAM_PATH, get(serve))
        .with_state(stub);
    tokio::spawn(async move { axum::serve(listener, app).await });
    MemberInfo {
        id: NodeId::from(id),
        http_addr: addr,
        state: NodeState::Available,
        tokens: Vec::new(),
        live: true,
        generation: 1,
        seen: Vec::new(),
        pulled: Vec::new(),
        degraded: None,
        ring: String::new(),
    }
}

/// A receiver into a fresh engine in `dir`, with a short idle deadline.
fn receiver(dir: &std::path::Path) -> (Receiver, Storage, Arc<Metrics>) {
    let storage = Storage::open(dir, Duration::from_secs(3600)).unwrap();
    let metrics = Arc::new(Metrics::new());
    let peer = HttpPeer::new(
        ClusterSecret::new("a-test-secret-of-some-length".into()),
        Duration::from_secs(2),
        Duration::from_secs(30),
        None,
    )
    .unwrap();
    let mut receiver = Receiver::new(
        storage.clone(),
        Arc::new(peer),
        (
            metrics.clone(),
            Arc::new(Progress::default()),
            Arc::new(Hlc::new()),
        ),
    );
    receiver.idle_timeout = Duration::from_millis(300);
    (receiver, storage, metrics)
}

/// The engine holds exactly `want` (user key to record), nothing else.
fn assert_holds_exactly(storage: &Storage, want: &HashMap<Vec<u8>, Record>) {
    let mut held = 0;
    for item in storage.snapshot().range::<&[u8]>(..) {
        let (key, bytes) = item.unwrap();
        let user_key = &key[8..];
        let want = want.get(user_key).unwrap_or_else(|| {
            panic!(
                "{:?} is not in the range",
                String::from_utf8_lossy(user_key)
            )
        });
        assert_eq!(&Record::decode(bytes.into()).unwrap(), want);
        held += 1;
    }
    assert_eq!(held, want.len());
}

/// Pulls [`range`] from `sources` (stubs acting out `scripts`) into a fresh
/// engine; checks it holds exactly the range; returns the stubs, the
/// entries the pull counted and the retries it made.
async fn pull(scripts: Vec<Vec<Act>>) -> (Vec<Arc<Stub>>, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, storage, metrics) = receiver(dir.path());
    let mut stubs = Vec::new();
    let mut sources = Vec::new();
    for (i, script) in scripts.into_iter().enumerate() {
        let stub = Stub::new(script);
        sources.push(start(stub.clone(), &format!("src{i}")).await);
        stubs.push(stub);
    }
    let applied = receiver.pull(range(), &sources).await.unwrap();
    let want = stubs[0].in_range(range());
    assert!(want.len() > KEYS / 4 && want.len() < KEYS * 3 / 4);
    assert_holds_exactly(&storage, &want);
    let text = metrics.encode().unwrap();
    let retries = text.lines().find_map(|l| {
        l.strip_prefix("kvnode_stream_retries_total ")
            .map(|n| n.parse::<f64>().unwrap() as u64)
    });
    (stubs, applied, retries.unwrap())
}

/// The engine key of the last entry of the first `frames` frames that
/// the stub sends for the whole range.
fn last_key_of_frames(stub: &Stub, frames: usize) -> Vec<u8> {
    let mut keys: Vec<&Vec<u8>> = stub
        .items
        .iter()
        .map(|(k, _)| k)
        .filter(|k| range().contains(token_of(k)))
        .collect();
    keys.truncate(frames * FRAME_ENTRIES);
    keys.last().unwrap().to_vec()
}

#[tokio::test]
async fn a_stream_cut_mid_frame_resumes_after_the_last_whole_frame() {
    let stub = Stub::new(Vec::new());
    let (frames, _) = stub.frames(range(), None, false);
    // Two whole frames and half of the third.
    let cut = frames[0].len() + frames[1].len() + frames[2].len() / 2;
    let (stubs, applied, retries) = pull(vec![vec![Act::CutAt(cut)]]).await;
    let afters = stubs[0].afters.lock().clone();
    assert_eq!(afters, [None, Some(last_key_of_frames(&stubs[0], 2))]);
    assert_eq!(applied as usize, stubs[0].in_range(range()).len());
    assert_eq!(retries, 1);
}

#[tokio::test]
async fn a_corrupt_frame_is_refused_and_fetched_again() {
    let (stubs, applied, retries) = pull(vec![vec![Act::Corrupt(3), Act::Corrupt(0)]]).await;
    let afters = stubs[0].afters.lock().clone();
    let after_three = Some(last_key_of_frames(&stubs[0], 3));
    // The resumed stream's first frame is corrupt too: nothing more applied.
    assert_eq!(afters, [None, after_three.clone(), after_three]);
    assert_eq!(applied as usize, stubs[0].in_range(range()).len());
    assert_eq!(retries, 2);
}

#[tokio::test]
async fn an_entry_from_outside_the_range_fails_the_attempt_and_is_never_stored() {
    // `pull` checks that the engine holds nothing outside the range.
    let (stubs, _, retries) = pull(vec![vec![Act::Foreign, Act::Foreign]]).await;
    assert_eq!(stubs[0].afters.lock().clone(), [None, None, None]);
    assert_eq!(retries, 2);
}

#[tokio::test]
async fn an_end_frame_that_miscounts_fails_the_attempt() {
    let (stubs, _, retries) = pull(vec![vec![Act::Miscount]]).await;
    // Everything was applied; the retry resumes past the last key and gets
    // an empty, correctly counted stream.
    let afters = stubs[0].afters.lock().clone();
    assert_eq!(afters.len(), 2);
    let last = stubs[0]
        .items
        .iter()
        .map(|(k, _)| k)
        .rfind(|k| range().contains(token_of(k)))
        .cloned();
    assert_eq!(afters[1], last);
    assert_eq!(retries, 1);
}

#[tokio::test]
async fn a_stalled_source_times_out_and_the_next_source_finishes_the_range() {
    let stall = vec![Act::Stall; 3];
    let (stubs, _, retries) = pull(vec![stall, Vec::new()]).await;
    // Each try on the stalled source applied one more frame, then timed
    // out; the next source resumed after the third.
    let after = |n| Some(last_key_of_frames(&stubs[0], n));
    assert_eq!(stubs[0].afters.lock().clone(), [None, after(1), after(2)]);
    assert_eq!(stubs[1].afters.lock().clone(), [after(3)]);
    assert_eq!(retries, 3);
}

#[tokio::test]
async fn a_source_that_keeps_failing_fails_the_range_rather_than_finish_it_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (mut receiver, storage, _) = receiver(dir.path());
    receiver.idle_timeout = Duration::from_millis(50);
    let source = start(Stub::new(vec![Act::Corrupt(0); 100]), "bad").await;
    let started = std::time::Instant::now();
    let result = receiver.pull(range(), &[source]).await;
    assert!(
        matches!(result, Err(StreamError::Frame(FrameError::Checksum))),
        "{result:?}"
    );
    // Bounded: ROUNDS x TRIES_PER_SOURCE attempts with their backoffs.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(storage.snapshot().range::<&[u8]>(..).count(), 0);
}

#[tokio::test]
async fn a_throttled_receiver_takes_the_range_no_faster_than_its_budget() {
    let stub = Stub::new(Vec::new());
    let (frames, _) = stub.frames(range(), None, false);
    let total: usize = frames.iter().map(Vec::len).sum();
    let source = start(stub.clone(), "src").await;
    let dir = tempfile::tempdir().unwrap();
    let (receiver, storage, _) = receiver(dir.path());
    // A second's worth passes at once (the burst); the other half of the
    // range waits about a second for the budget.
    let rate = (total / 2) as u64;
    let receiver = receiver.throttled(Throttle::new(rate));
    let start = std::time::Instant::now();
    receiver.pull(range(), &[source]).await.unwrap();
    let took = start.elapsed();
    assert_holds_exactly(&storage, &stub.in_range(range()));
    assert!(
        took >= Duration::from_millis(800),
        "{total} bytes at {rate} B/s took only {took:?}"
    );
}
