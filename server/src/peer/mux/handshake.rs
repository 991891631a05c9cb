//! How a multiplexed connection starts: each side proves it holds the
//! cluster secret without sending it, and both derive the two session keys
//! that seal the connection's frames ([`frame`](super::frame)).
//!
//! # Exchange
//!
//! ```text
//! connecting node                                   accepting node
//!   MAGIC (8) | nonce_c (32) | id length u8 | id  ->
//!                                               <-  nonce_s (32) | proof_s (32)
//!   proof_c (32)                                ->
//!                                               <-  ACCEPTED (1 byte, 0x01)
//! ```
//!
//! - `K = HKDF-SHA256(secret, salt "kvnode-mux-v1", info "auth")`.
//! - `proof_s = HMAC-SHA256(K, "server" ++ nonce_c ++ nonce_s)`,
//!   `proof_c = HMAC-SHA256(K, "client" ++ nonce_c ++ nonce_s)`: the labels
//!   keep a proof from being reflected back as the other side's, and the
//!   fresh nonce of each side keeps an old exchange from being replayed.
//! - Frames from the connecting node are sealed under
//!   `HMAC-SHA256(K, "c2s" ++ nonce_c ++ nonce_s)`, the others under `"s2c"`.
//!
//! The accepting node closes the connection without a word when the proof
//! is wrong; the connecting node does when the server's proof is. Nothing
//! here is encrypted: internode TLS, when it comes, wraps the connection.
//!
//! [`MAGIC`] is also how the HTTP listener tells this transport from HTTP
//! on the same port: no HTTP request starts with it. A node that does not
//! speak this transport answers it as a malformed HTTP request, which the
//! connecting side recognises ([`HandshakeError::NotSpoken`]).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::ClusterSecret;

/// The first bytes of a multiplexed connection.
/// Version 2 seals frames with keyed BLAKE3 (version 1: HMAC-SHA256); nodes
/// of different versions see each other as not speaking the transport and
/// talk HTTP, so a rolling upgrade works, more slowly, until it is done.
pub const MAGIC: &[u8; 8] = b"KVNMUX2\n";
const NONCE_LEN: usize = 32;
const ACCEPTED: u8 = 1;

/// The handshake key derived from the cluster secret.
#[derive(Clone)]
pub struct MuxKey([u8; 32]);

impl std::fmt::Debug for MuxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MuxKey(..)")
    }
}

impl MuxKey {
    /// The key of `secret`.
    pub fn derive(secret: &ClusterSecret) -> Self {
        let hkdf = hkdf::Hkdf::<Sha256>::new(Some(b"kvnode-mux-v1"), secret.expose().as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
        if hkdf.expand(b"auth", &mut key).is_err() {
            unreachable!("HKDF-SHA256 expands to 32 bytes");
        }
        Self(key)
    }

    fn mac(&self, label: &[u8], nonces: &Nonces) -> [u8; 32] {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        mac.update(label);
        mac.update(&nonces.client);
        mac.update(&nonces.server);
        mac.finalize().into_bytes().into()
    }

    fn session(&self, nonces: &Nonces) -> SessionKeys {
        SessionKeys {
            to_server: self.mac(b"c2s", nonces),
            to_client: self.mac(b"s2c", nonces),
        }
    }
}

/// The keys that seal each direction of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Frames from the connecting node.
    pub to_server: [u8; 32],
    /// Frames from the accepting node.
    pub to_client: [u8; 32],
}

struct Nonces {
    client: [u8; NONCE_LEN],
    server: [u8; NONCE_LEN],
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The other side answered as an HTTP server that does not speak this
    /// transport (an older node, or one that turned it off).
    #[error("the peer does not speak the multiplexed transport")]
    NotSpoken,
    /// A proof did not verify: the other side holds another secret, or is
    /// not a node.
    #[error("the peer's proof of the cluster secret does not verify")]
    BadProof,
    /// Bytes that are not this exchange.
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    /// The connection failed or closed.
    #[error("handshake i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The connecting side: proves the secret as `node_id` and checks the
/// accepting side's proof.
pub async fn connect<S>(
    stream: &mut S,
    key: &MuxKey,
    node_id: &str,
) -> Result<SessionKeys, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut client);
    let id = node_id.as_bytes();
    let id = id.get(..id.len().min(255)).unwrap_or_default();
    let mut hello = Vec::with_capacity(MAGIC.len() + NONCE_LEN + 1 + id.len());
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&client);
    hello.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    hello.extend_from_slice(id);
    stream.write_all(&hello).await?;

    let mut answer = [0u8; NONCE_LEN + 32];
    let n = read_full(stream, &mut answer).await?;
    if n >= 5 && answer.starts_with(b"HTTP/") {
        return Err(HandshakeError::NotSpoken);
    }
    if n < answer.len() {
        return Err(HandshakeError::Malformed("short server answer"));
    }
    let (server, proof) = answer.split_at(NONCE_LEN);
    let nonces = Nonces {
        client,
        server: server
            .try_into()
            .map_err(|_| HandshakeError::Malformed("nonce"))?,
    };
    if !bool::from(key.mac(b"server", &nonces).ct_eq(proof)) {
        return Err(HandshakeError::BadProof);
    }
    stream.write_all(&key.mac(b"client", &nonces)).await?;
    let mut accepted = [0u8; 1];
    if read_full(stream, &mut accepted).await? != 1 || accepted[0] != ACCEPTED {
        return Err(HandshakeError::BadProof);
    }
    Ok(key.session(&nonces))
}

/// The accepting side, after the listener has seen [`MAGIC`] (still unread
/// in `stream`): checks the connecting side's proof. Returns the session
/// keys and the id the connecting node gave (for logs only: it proves
/// nothing beyond holding the secret).
pub async fn accept<S>(
    stream: &mut S,
    key: &MuxKey,
) -> Result<(SessionKeys, String), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = [0u8; MAGIC.len() + NONCE_LEN + 1];
    if read_full(stream, &mut hello).await? != hello.len() {
        return Err(HandshakeError::Malformed("short hello"));
    }
    let (magic, rest) = hello.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(HandshakeError::Malformed("magic"));
    }
    let (client, id_len) = rest.split_at(NONCE_LEN);
    let mut id = vec![0u8; usize::from(id_len.first().copied().unwrap_or(0))];
    if read_full(stream, &mut id).await? != id.len() {
        return Err(HandshakeError::Malformed("short id"));
    }
    let mut server = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut server);
    let nonces = Nonces {
        client: client
            .try_into()
            .map_err(|_| HandshakeError::Malformed("nonce"))?,
        server,
    };
    let mut answer = Vec::with_capacity(NONCE_LEN + 32);
    answer.extend_from_slice(&server);
    answer.extend_from_slice(&key.mac(b"server", &nonces));
    stream.write_all(&answer).await?;
    let mut proof = [0u8; 32];
    if read_full(stream, &mut proof).await? != proof.len() {
        return Err(HandshakeError::Malformed("short proof"));
    }
    if !bool::from(key.mac(b"client", &nonces).ct_eq(&proof)) {
        return Err(HandshakeError::BadProof);
    }
    stream.write_all(&[ACCEPTED]).await?;
    Ok((
        key.session(&nonces),
        String::from_utf8_lossy(&id).into_owned(),
    ))
}

/// Reads until `buf` is full or the stream ends; how many bytes were read.
async fn read_full<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match stream.read(rest).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> MuxKey {
        MuxKey::derive(&ClusterSecret::new(secret.into()))
    }

    #[tokio::test]
    async fn both_sides_derive_the_same_keys_under_the_same_secret() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (ka, kb) = (key("s3cret"), key("s3cret"));
        let (client, server) = tokio::join!(connect(&mut a, &ka, "n1"), accept(&mut b, &kb));
        let client = client.expect("client side");
        let (server, id) = server.expect("server side");
        assert_eq!(client, server);
        assert_eq!(id, "n1");
        assert_ne!(client.to_server, client.to_client);
    }

    #[tokio::test]
    async fn a_client_with_another_secret_is_refused_and_learns_no_session() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { accept(&mut b, &key("s3cret")).await });
        let client = connect(&mut a, &key("wrong"), "n1").await;
        // The client checks the server's proof first and stops there.
        assert!(
            matches!(client, Err(HandshakeError::BadProof)),
            "{client:?}"
        );
        drop(a);
        assert!(server.await.expect("task").is_err());
    }

    #[tokio::test]
    async fn a_client_that_replays_a_recorded_proof_is_refused() {
        // A proof is bound to the server's fresh nonce: one recorded from
        // another exchange does not verify.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { accept(&mut b, &key("s3cret")).await });
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&[1u8; NONCE_LEN]);
        hello.push(0);
        a.write_all(&hello).await.expect("hello");
        let mut answer = [0u8; NONCE_LEN + 32];
        a.read_exact(&mut answer).await.expect("answer");
        let stale = key("s3cret").mac(
            b"client",
            &Nonces {
                client: [1u8; NONCE_LEN],
                server: [0u8; NONCE_LEN],
            },
        );
        a.write_all(&stale).await.expect("proof");
        let refused = server.await.expect("task");
        assert!(
            matches!(refused, Err(HandshakeError::BadProof)),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn an_http_answer_means_the_peer_does_not_speak_the_transport() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let http = tokio::spawn(async move {
            let mut hello = [0u8; 8];
            b.read_exact(&mut hello).await.expect("read");
            b.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
        });
        let result = connect(&mut a, &key("s3cret"), "n1").await;
        http.await.expect("task");
        assert!(
            matches!(result, Err(HandshakeError::NotSpoken)),
            "{result:?}"
        );
    }
}
