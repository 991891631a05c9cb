//! Signed requests: how a node (or the operator's CLI) proves it holds the
//! cluster secret on an HTTP request without sending the secret, so that a
//! captured request yields neither the secret nor a request that can be
//! sent again.
//!
//! # The header
//!
//! ```text
//! Authorization: KVNODE-HMAC-SHA256 id=<sender>, ts=<ms>, nonce=<32 hex>, sig=<64 hex>
//! ```
//!
//! | field   | what                                                            |
//! |---------|-----------------------------------------------------------------|
//! | `id`    | the sender: a node id, or `kvnode-cli`; percent-encoded (UTF-8)  |
//! | `ts`    | the sender's wall clock when it signed, ms since the Unix epoch |
//! | `nonce` | 16 random bytes, lower-case hex                                  |
//! | `sig`   | HMAC-SHA256 of the canonical request below, lower-case hex      |
//!
//! The fields come in this order, separated by `,` and optional spaces. The
//! canonical request is these lines, each ended by `\n` but the last:
//!
//! ```text
//! kvnode-request-v1
//! <METHOD>                 as sent, e.g. POST
//! <path?query>             the request target as sent (percent-encoded)
//! <ts>                     decimal, as in the header
//! <nonce>                  32 hex digits, as in the header
//! <sender>                 decoded (not percent-encoded)
//! <SHA-256 of the body>    32 raw bytes (an empty body hashes too)
//! ```
//!
//! The HMAC key is HKDF-SHA256 of the cluster secret with salt
//! `kvnode-request-v1` and info `http`: another key than gossip's
//! ([`gossip_transport`](crate::gossip_transport), salt `kvnode-gossip-v1`)
//! and than the member records' (the secret itself), so a signature made
//! for one purpose is never valid for another.
//!
//! # What the receiver checks, in this order
//!
//! 1. The header parses, and `ts` is within ± the window of its own clock
//!    (the most two clocks may differ, `--max-clock-offset-ms`, plus the time
//!    a request may take to arrive; `node` sets it).
//! 2. The signature, over the body it received, compared in constant time.
//! 3. The nonce was not seen in a request it accepted within the window.
//!
//! Remembered nonces are bounded ([`MAX_REMEMBERED_NONCES`]): entries whose
//! `ts` has left the window are forgotten, since the window check refuses
//! them anyway, and past the bound the oldest is forgotten too. Either way
//! the receiver then refuses every `ts` at or below the newest `ts` it has
//! forgotten (its horizon), so a forgotten nonce can never be replayed: under
//! a flood of signed requests the window narrows, the protection never does.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use super::ClusterSecret;
use crate::hlc::WallClock;

type HmacSha256 = Hmac<Sha256>;

/// The `Authorization` scheme of a signed request.
pub const SCHEME: &str = "KVNODE-HMAC-SHA256";

/// Nonces a receiver remembers at most: 16 bytes each plus the set's and
/// the queue's overhead, about 25 MiB when full. A full window (±15.5 s by
/// default) holds that many only past ~17,000 signed requests a second.
pub const MAX_REMEMBERED_NONCES: usize = 1 << 19;

/// First line of the canonical request: the version of this format.
const CONTEXT: &[u8] = b"kvnode-request-v1";

/// Characters of a sender id sent as they are; the rest is percent-encoded,
/// so any id fits a header and none can forge a field separator.
const ID_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// The HMAC key of signed requests, derived from the cluster secret.
#[derive(Clone)]
struct RequestKey(HmacSha256);

impl RequestKey {
    fn derive(secret: &ClusterSecret) -> Self {
        let hkdf = hkdf::Hkdf::<Sha256>::new(Some(CONTEXT), secret.expose().as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        if hkdf.expand(b"http", &mut key).is_err() {
            unreachable!("HKDF-SHA256 expands to 32 bytes");
        }
        match HmacSha256::new_from_slice(&key) {
            Ok(mac) => Self(mac),
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }

    /// The MAC of a canonical request (see the module doc).
    fn mac(&self, request: &Canonical<'_>, ts: u64, nonce: u128, sender: &str) -> HmacSha256 {
        let mut mac = self.0.clone();
        for field in [
            CONTEXT,
            request.method.as_bytes(),
            request.path_and_query.as_bytes(),
            ts.to_string().as_bytes(),
            format!("{nonce:032x}").as_bytes(),
            sender.as_bytes(),
        ] {
            mac.update(field);
            mac.update(b"\n");
        }
        mac.update(&Sha256::digest(request.body));
        mac
    }
}

/// What a signature covers besides its header's fields.
#[derive(Debug, Clone, Copy)]
pub struct Canonical<'a> {
    /// The method, e.g. `POST`.
    pub method: &'a str,
    /// The request target as sent: path, and `?query` if any.
    pub path_and_query: &'a str,
    /// The whole body (empty for none).
    pub body: &'a [u8],
}

/// Signs requests as one sender. Cheap to clone.
#[derive(Clone)]
pub struct RequestSigner {
    key: RequestKey,
    sender: String,
    clock: WallClock,
}

impl std::fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSigner")
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// Its body is a stream, which cannot be hashed before it is sent.
    #[error("a streamed request body cannot be signed")]
    StreamedBody,
}

impl RequestSigner {
    /// A signer for `sender` holding `secret`, on the system clock.
    pub fn new(secret: &ClusterSecret, sender: &str) -> Self {
        Self {
            key: RequestKey::derive(secret),
            sender: sender.to_owned(),
            clock: WallClock::default(),
        }
    }

    /// The same signer, as `sender`.
    #[must_use]
    pub(crate) fn with_sender(mut self, sender: &str) -> Self {
        sender.clone_into(&mut self.sender);
        self
    }

    /// The same signer on `clock` (a node signs on its own, possibly
    /// test-skewed, clock).
    #[must_use]
    pub(crate) fn with_clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    /// The `Authorization` value of `request`, signed now with a fresh nonce.
    pub fn authorization(&self, request: &Canonical<'_>) -> String {
        self.authorization_at(request, self.clock.now_ms(), rand::random())
    }

    fn authorization_at(&self, request: &Canonical<'_>, ts: u64, nonce: u128) -> String {
        let sig = self.key.mac(request, ts, nonce, &self.sender).finalize();
        format!(
            "{SCHEME} id={}, ts={ts}, nonce={nonce:032x}, sig={}",
            utf8_percent_encode(&self.sender, ID_ENCODE),
            hex::encode(sig.into_bytes())
        )
    }

    /// Signs a built request: sets its `Authorization` header.
    pub fn sign(&self, request: &mut reqwest::Request) -> Result<(), SignError> {
        let body = match request.body() {
            None => &[][..],
            Some(b) => b.as_bytes().ok_or(SignError::StreamedBody)?,
        };
        let url = request.url();
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let value = self.authorization(&Canonical {
            method: request.method().as_str(),
            path_and_query: &path_and_query,
            body,
        });
        // Only ASCII goes in (the id is percent-encoded), so this always parses.
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
            request
                .headers_mut()
                .insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(())
    }
}

/// Why a signed request is refused. The messages go back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not a signature of this format.
    #[error("malformed {SCHEME} header: {0}")]
    Malformed(&'static str),
    /// Signed too far from this node's clock.
    #[error(
        "signed {offset_ms} ms away from this node's clock, outside ±{window_ms} ms \
         (clocks too far apart, or an old request sent again)"
    )]
    Stale {
        /// The signer's clock minus this node's, ms.
        offset_ms: i64,
        /// The window, ms.
        window_ms: u64,
    },
    /// Signed at or before a time whose nonces this node no longer holds.
    #[error("signed before the oldest request this node still remembers; sign it again")]
    Forgotten,
    /// The signature does not verify.
    #[error("the signature does not verify (another cluster secret, or a changed request)")]
    BadSignature,
    /// The nonce was used by a request already accepted.
    #[error("nonce already used: a replayed request")]
    Replayed,
}

/// A parsed, fresh signature header: who claims to sign, and what to check.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The sender it names (not proven until the signature is verified).
    pub sender: String,
    ts: u64,
    nonce: u128,
    sig: Vec<u8>,
}

impl Claim {
    /// Parses the value of an `Authorization` header.
    fn parse(header: &[u8]) -> Result<Self, SignatureError> {
        let text =
            std::str::from_utf8(header).map_err(|_| SignatureError::Malformed("not text"))?;
        let fields = text
            .strip_prefix(SCHEME)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(SignatureError::Malformed("another scheme"))?;
        let mut fields = fields.split(',').map(str::trim);
        let mut field = |name: &'static str| {
            fields
                .next()
                .and_then(|f| f.strip_prefix(name)?.strip_prefix('='))
                .ok_or(SignatureError::Malformed(name))
        };
        let sender = percent_decode_str(field("id")?)
            .decode_utf8()
            .map_err(|_| SignatureError::Malformed("id"))?
            .into_owned();
        let ts = field("ts")?
            .parse()
            .map_err(|_| SignatureError::Malformed("ts"))?;
        let nonce = field("nonce")?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SignatureError::Malformed("nonce"));
        }
        let nonce =
            u128::from_str_radix(nonce, 16).map_err(|_| SignatureError::Malformed("nonce"))?;
        let sig = hex::decode(field("sig")?)
            .ok()
            .filter(|s| s.len() == 32)
            .ok_or(SignatureError::Malformed("sig"))?;
        if fields.next().is_some() {
            return Err(SignatureError::Malformed("fields after sig"));
        }
        Ok(Self {
            sender,
            ts,
            nonce,
            sig,
        })
    }
}

/// Checks signed requests: the window, the signature, the nonce.
pub struct RequestVerifier {
    key: RequestKey,
    window_ms: u64,
    clock: WallClock,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for RequestVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestVerifier")
            .field("window_ms", &self.window_ms)
            .finish_non_exhaustive()
    }
}

impl RequestVerifier {
    /// A verifier for requests signed under `secret`, at most `window` away
    /// from `clock`.
    pub(crate) fn new(secret: &ClusterSecret, window: Duration, clock: WallClock) -> Self {
        Self {
            key: RequestKey::derive(secret),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            clock,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Parses an `Authorization` value and checks that it is fresh: the
    /// cheap checks, before the body is read.
    pub(crate) fn claim(&self, header: &[u8]) -> Result<Claim, SignatureError> {
        self.claim_at(header, self.clock.now_ms())
    }

    fn claim_at(&self, header: &[u8], now: u64) -> Result<Claim, SignatureError> {
        let claim = Claim::parse(header)?;
        if claim.ts.abs_diff(now) > self.window_ms {
            let offset = i128::from(claim.ts) - i128::from(now);
            return Err(SignatureError::Stale {
                offset_ms: i64::try_from(offset).unwrap_or(i64::MAX),
                window_ms: self.window_ms,
            });
        }
        Ok(claim)
    }

    /// Checks `claim`'s signature over `request` and spends its nonce; the
    /// proven sender.
    pub(crate) fn verify(
        &self,
        claim: Claim,
        request: &Canonical<'_>,
    ) -> Result<String, SignatureError> {
        self.verify_at(claim, request, self.clock.now_ms())
    }

    fn verify_at(
        &self,
        claim: Claim,
        request: &Canonical<'_>,
        now: u64,
    ) -> Result<String, SignatureError> {
        self.key
            .mac(request, claim.ts, claim.nonce, &claim.sender)
            .verify_slice(&claim.sig)
            .map_err(|_| SignatureError::BadSignature)?;
        self.seen
            .lock()
            .admit(claim.ts, claim.nonce, now, self.window_ms)?;
        Ok(claim.sender)
    }
}

/// The nonces of accepted requests still inside the window.
#[derive(Debug, Default)]
struct Seen {
    nonces: HashSet<u128>,
    /// `(ts, nonce)` in the order they were accepted.
    order: VecDeque<(u64, u128)>,
    /// The newest `ts` among the forgotten nonces: a request signed at or
    /// before it cannot be told from a replay, so it is refused.
    horizon: u64,
}

impl Seen {
    fn admit(
        &mut self,
        ts: u64,
        nonce: u128,
        now: u64,
        window_ms: u64,
    ) -> Result<(), SignatureError> {
        // Arrival order is nearly ts order, so the front is (about) the
        // oldest; an entry stuck behind a younger one stays a little longer.
        while let Some(&(t, _)) = self.order.front() {
            if t.saturating_add(window_ms) >= now {
                break;
            }
            self.forget_oldest();
        }
        if ts <= self.horizon {
            return Err(SignatureError::Forgotten);
        }
        if !self.nonces.insert(nonce) {
            return Err(SignatureError::Replayed);
        }
        self.order.push_back((ts, nonce));
        if self.order.len() > MAX_REMEMBERED_NONCES {
            self.forget_oldest();
        }
        Ok(())
    }

    fn forget_oldest(&mut self) {
        if let Some((t, n)) = self.order.pop_front() {
            self.nonces.remove(&n);
            self.horizon = self.horizon.max(t);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const WINDOW: Duration = Duration::from_secs(15);

    fn secret() -> ClusterSecret {
        ClusterSecret::new("a-cluster-secret-of-some-length".into())
    }

    fn verifier() -> RequestVerifier {
        RequestVerifier::new(&secret(), WINDOW, WallClock::default())
    }

    const APPLY: Canonical<'static> = Canonical {
        method: "POST",
        path_and_query: "/internal/v1/apply",
        body: b"body bytes",
    };

    fn signed(request: &Canonical<'_>, ts: u64, nonce: u128) -> String {
        RequestSigner::new(&secret(), "node1").authorization_at(request, ts, nonce)
    }

    fn check(
        v: &RequestVerifier,
        header: &str,
        request: &Canonical<'_>,
        now: u64,
    ) -> Result<String, SignatureError> {
        let claim = v.claim_at(header.as_bytes(), now)?;
        v.verify_at(claim, request, now)
    }

    #[test]
    fn a_signed_request_verifies_once_and_names_its_sender() {
        let v = verifier();
        let header = signed(&APPLY, NOW, 7);
        assert!(header.starts_with("KVNODE-HMAC-SHA256 id=node1, ts=1800000000000, nonce="));
        assert!(!header.contains(secret().expose()));
        assert_eq!(check(&v, &header, &APPLY, NOW), Ok("node1".to_owned()));
        assert_eq!(
            check(&v, &header, &APPLY, NOW + 1),
            Err(SignatureError::Replayed)
        );
        // Another nonce is another request.
        assert!(check(&v, &signed(&APPLY, NOW, 8), &APPLY, NOW).is_ok());
    }

    #[test]
    fn every_signed_part_of_the_request_is_tamper_evident() {
        let v = verifier();
        let header = signed(&APPLY, NOW, 1);
        for changed in [
            Canonical {
                method: "PUT",
                ..APPLY
            },
            Canonical {
                path_and_query: "/internal/v1/apply?x=1",
                ..APPLY
            },
            Canonical {
                path_and_query: "/internal/v1/read",
                ..APPLY
            },
            Canonical {
                body: b"body bytez",
                ..APPLY
            },
            Canonical { body: b"", ..APPLY },
        ] {
            assert_eq!(
                check(&v, &header, &changed, NOW),
                Err(SignatureError::BadSignature),
                "{changed:?}"
            );
        }
        // The header's own fields: the sender, the time, the nonce, the MAC.
        let tampered = [
            header.replace("id=node1", "id=node2"),
            header.replace("ts=1800000000000", "ts=1800000000001"),
            header.replacen("nonce=0", "nonce=1", 1),
            {
                let (head, sig) = header.rsplit_once("sig=").unwrap();
                let flipped = if sig.starts_with('0') { "1" } else { "0" };
                format!("{head}sig={flipped}{}", &sig[1..])
            },
        ];
        for t in tampered {
            assert_ne!(t, header);
            assert_eq!(
                check(&v, &t, &APPLY, NOW),
                Err(SignatureError::BadSignature),
                "{t}"
            );
        }
        // Another secret signs nothing this one accepts.
        let other = RequestSigner::new(
            &ClusterSecret::new("another-secret-0123456789".into()),
            "node1",
        )
        .authorization_at(&APPLY, NOW, 2);
        assert_eq!(
            check(&v, &other, &APPLY, NOW),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn requests_signed_outside_the_window_are_refused() {
        let v = verifier();
        let w = 15_000;
        assert!(check(&v, &signed(&APPLY, NOW - w, 1), &APPLY, NOW).is_ok());
        assert!(check(&v, &signed(&APPLY, NOW + w, 2), &APPLY, NOW).is_ok());
        assert_eq!(
            check(&v, &signed(&APPLY, NOW - w - 1, 3), &APPLY, NOW),
            Err(SignatureError::Stale {
                offset_ms: -15_001,
                window_ms: w
            })
        );
        assert_eq!(
            check(&v, &signed(&APPLY, NOW + w + 1, 4), &APPLY, NOW),
            Err(SignatureError::Stale {
                offset_ms: 15_001,
                window_ms: w
            })
        );
        assert!(check(&v, &signed(&APPLY, 0, 5), &APPLY, NOW).is_err());
        assert!(check(&v, &signed(&APPLY, u64::MAX, 6), &APPLY, NOW).is_err());
    }

    #[test]
    fn a_replay_is_refused_however_long_after_and_memory_stays_bounded() {
        let v = verifier();
        let header = signed(&APPLY, NOW, 42);
        assert!(check(&v, &header, &APPLY, NOW).is_ok());
        // Inside the window the nonce is remembered; past it, the window
        // refuses the old timestamp; and the nonce is then forgotten.
        assert_eq!(
            check(&v, &header, &APPLY, NOW + 15_000),
            Err(SignatureError::Replayed)
        );
        assert!(matches!(
            check(&v, &header, &APPLY, NOW + 15_001),
            Err(SignatureError::Stale { .. })
        ));
        assert!(check(&v, &signed(&APPLY, NOW + 15_001, 43), &APPLY, NOW + 15_001).is_ok());
        assert_eq!(v.seen.lock().nonces.len(), 1);
        // Were the clock to jump back, the forgotten nonce would still be
        // refused: the horizon covers it.
        assert_eq!(
            check(&v, &header, &APPLY, NOW),
            Err(SignatureError::Forgotten)
        );
    }

    #[test]
    fn past_the_bound_the_oldest_nonces_go_and_their_time_is_refused() {
        let mut seen = Seen::default();
        for i in 0..=MAX_REMEMBERED_NONCES as u128 {
            let ts = NOW + u64::try_from(i / 1000).unwrap();
            seen.admit(ts, i, NOW, 15_000).unwrap();
        }
        assert_eq!(seen.nonces.len(), MAX_REMEMBERED_NONCES);
        assert_eq!(seen.order.len(), MAX_REMEMBERED_NONCES);
        assert_eq!(seen.horizon, NOW);
        // The forgotten nonce 0 (ts NOW) cannot come back, nor anything else
        // signed at NOW; later requests still pass.
        assert_eq!(
            seen.admit(NOW, 0, NOW, 15_000),
            Err(SignatureError::Forgotten)
        );
        assert_eq!(
            seen.admit(NOW, u128::MAX, NOW, 15_000),
            Err(SignatureError::Forgotten)
        );
        assert!(seen.admit(NOW + 1, u128::MAX, NOW, 15_000).is_ok());
    }

    #[test]
    fn malformed_headers_and_other_schemes_are_refused() {
        let v = verifier();
        let good = signed(&APPLY, NOW, 1);
        for bad in [
            String::new(),
            format!("Bearer {}", secret().expose()),
            secret().expose().to_owned(),
            good.replace("KVNODE-HMAC-SHA256", "kvnode-hmac-sha256"),
            good.replace(", ts=", ", tz="),
            good.replace("id=node1, ", ""),
            format!("{good}, extra=1"),
            good.replacen("nonce=", "nonce=0", 1),
            good.replace("ts=1800000000000", "ts=-1"),
            {
                let (head, _) = good.rsplit_once("sig=").unwrap();
                format!("{head}sig=abcd")
            },
        ] {
            assert!(
                matches!(
                    check(&v, &bad, &APPLY, NOW),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            v.claim_at(&[0xff, 0xfe], NOW),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn any_sender_id_round_trips_and_cannot_forge_a_field() {
        let v = verifier();
        for id in ["node-7", "nœud 1", "a, ts=1", "x=y"] {
            let header = RequestSigner::new(&secret(), id).authorization_at(&APPLY, NOW, 9);
            assert!(header.is_ascii());
            let nonce_at = header.find("nonce=").unwrap();
            assert_eq!(header.matches("ts=").count(), 1, "{header}");
            assert!(nonce_at > 0);
            assert_eq!(check(&v, &header, &APPLY, NOW), Ok(id.to_owned()));
            v.seen.lock().nonces.clear();
            v.seen.lock().order.clear();
        }
    }

    #[test]
    fn a_built_reqwest_request_is_signed_over_its_target_and_body() {
        let signer = RequestSigner::new(&secret(), "kvnode-cli");
        let client = reqwest::Client::new();
        let mut request = client
            .post("http://127.0.0.1:1/admin/v1/repair?x=a%20b")
            .body("{\"ranges\":[]}")
            .build()
            .unwrap();
        signer.sign(&mut request).unwrap();
        let header = request.headers()[reqwest::header::AUTHORIZATION]
            .as_bytes()
            .to_vec();
        let v = verifier();
        let claim = v.claim(&header).unwrap();
        let target = Canonical {
            method: "POST",
            path_and_query: "/admin/v1/repair?x=a%20b",
            body: b"{\"ranges\":[]}",
        };
        assert_eq!(v.verify(claim, &target), Ok("kvnode-cli".to_owned()));
    }
}
