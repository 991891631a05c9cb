//! Files of any size stored as content-addressed chunks: the reserved keys
//! they live under and the manifest that makes a file visible.
//!
//! A file is cut into chunks of [`chunk_size`] bytes (the last one shorter;
//! a file of 0 bytes has none). Each chunk is an ordinary replicated value
//! under the key `\0chunk/` followed by the 64 lowercase hex digits of its
//! SHA-256, so equal chunks share one key. The manifest is written last,
//! under `\0file/` followed by the file's name (its UTF-8 bytes): a file is
//! visible only once every chunk it names was written at the request's
//! consistency level, so a reader sees it whole or not at all.
//!
//! Keys starting with a zero byte are reserved: the client key routes
//! refuse them ([`is_reserved`]), so no client key can collide with a
//! chunk or a manifest.
//!
//! The manifest is a JSON object (format version 1):
//!
//! ```text
//! {"format":1,"size":<bytes>,"chunk_size":<bytes>,
//!  "chunks":["<sha-256 hex>", ...],      // in file order
//!  "sha256":"<sha-256 hex of the whole file>",
//!  "content_type":"<media type>",
//!  "created_ms":<unix milliseconds>,
//!  "version":<HLC version of the manifest write, 0 in the stored copy>}
//! ```
//!
//! Every chunk but the last holds exactly `chunk_size` bytes, so byte `n`
//! of the file is in chunk `n / chunk_size`: a range read goes straight to
//! its chunks.

pub mod gc;
pub mod index;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The prefix of every reserved key.
pub const RESERVED_PREFIX: u8 = 0;

/// The prefix of chunk keys.
pub const CHUNK_PREFIX: &[u8] = b"\0chunk/";

/// The prefix of manifest keys.
const FILE_PREFIX: &[u8] = b"\0file/";

/// The most chunk hashes one `POST /v1/chunks/missing` may name.
pub const MAX_MISSING_QUERY: usize = 10_000;

/// The manifest format this node writes and reads.
pub const FORMAT: u32 = 1;

/// Whether `key` is in the reserved key space that client routes refuse.
pub fn is_reserved(key: &[u8]) -> bool {
    key.first() == Some(&RESERVED_PREFIX)
}

/// Whether `key` is the key of a manifest.
pub fn is_manifest_key(key: &[u8]) -> bool {
    key.starts_with(FILE_PREFIX)
}

/// The chunk hash a chunk key names, `None` for any other key.
pub fn chunk_hash(key: &[u8]) -> Option<[u8; 32]> {
    decode_hash(std::str::from_utf8(key.strip_prefix(CHUNK_PREFIX)?).ok()?)
}

/// The chunk size of new files: the node's value limit, so that a chunk is
/// an ordinary value and needs no limit of its own.
pub fn chunk_size(max_value_size: usize) -> usize {
    max_value_size
}

/// The key of the chunk whose SHA-256 is `hash`.
pub fn chunk_key(hash: &[u8; 32]) -> Bytes {
    let mut key = Vec::with_capacity(CHUNK_PREFIX.len() + 64);
    key.extend_from_slice(CHUNK_PREFIX);
    key.extend_from_slice(hex::encode(hash).as_bytes());
    key.into()
}

/// The key of the manifest of the file `name`.
pub fn manifest_key(name: &str) -> Bytes {
    let mut key = Vec::with_capacity(FILE_PREFIX.len() + name.len());
    key.extend_from_slice(FILE_PREFIX);
    key.extend_from_slice(name.as_bytes());
    key.into()
}

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// What makes a file visible; see the module doc for its encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format version ([`FORMAT`]).
    pub format: u32,
    /// The file's size in bytes.
    pub size: u64,
    /// The size of every chunk but the last.
    pub chunk_size: u64,
    /// The chunks' SHA-256 in hex, in file order.
    pub chunks: Vec<String>,
    /// The whole file's SHA-256 in hex (the ETag).
    pub sha256: String,
    /// The content type given at upload.
    pub content_type: String,
    /// When the upload finished, in Unix milliseconds.
    pub created_ms: u64,
    /// The version of the manifest's write (filled in on reads).
    #[serde(default)]
    pub version: u64,
}

/// Why a stored manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("manifest does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// A format this node does not know.
    #[error("manifest format {0} is not {FORMAT}")]
    Format(u32),
    /// Sizes and chunk list disagree, or a hash is not 32 bytes of hex.
    #[error("manifest is inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl Manifest {
    /// The stored encoding.
    pub fn encode(&self) -> Bytes {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    /// Decodes and checks a stored manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Self = serde_json::from_slice(bytes)?;
        m.check()?;
        Ok(m)
    }

    /// Checks that the format is known, that sizes and chunk list agree and
    /// that every hash is 64 hex digits.
    pub fn check(&self) -> Result<(), ManifestError> {
        let m = self;
        if m.format != FORMAT {
            return Err(ManifestError::Format(m.format));
        }
        if m.chunk_size == 0 && m.size > 0 {
            return Err(ManifestError::Inconsistent("chunk size 0"));
        }
        let expected = if m.size == 0 {
            0
        } else {
            m.size.div_ceil(m.chunk_size)
        };
        if m.chunks.len() as u64 != expected {
            return Err(ManifestError::Inconsistent(
                "chunk count does not match size",
            ));
        }
        if m.chunks.iter().any(|h| decode_hash(h).is_none()) || decode_hash(&m.sha256).is_none() {
            return Err(ManifestError::Inconsistent("a hash is not 64 hex digits"));
        }
        Ok(())
    }

    /// The chunk `i`'s hash and its length in bytes.
    pub fn chunk(&self, i: usize) -> Option<([u8; 32], u64)> {
        let hash = decode_hash(self.chunks.get(i)?)?;
        let start = i as u64 * self.chunk_size;
        Some((hash, (self.size - start).min(self.chunk_size)))
    }
}

/// 64 hex digits as 32 bytes.
pub fn decode_hash(hex_digits: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(size: u64, chunks: usize) -> Manifest {
        Manifest {
            format: FORMAT,
            size,
            chunk_size: 4,
            chunks: vec![hex::encode([7u8; 32]); chunks],
            sha256: hex::encode([1u8; 32]),
            content_type: "text/plain".into(),
            created_ms: 1,
            version: 0,
        }
    }

    #[test]
    fn a_manifest_round_trips_and_its_chunks_have_the_right_lengths() {
        let m = manifest(9, 3);
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.chunk(0).unwrap().1, 4);
        assert_eq!(back.chunk(2).unwrap().1, 1);
        assert!(back.chunk(3).is_none());
        assert!(Manifest::decode(&manifest(0, 0).encode()).is_ok());
    }

    #[test]
    fn inconsistent_or_foreign_manifests_are_refused() {
        assert!(Manifest::decode(&manifest(9, 2).encode()).is_err());
        assert!(Manifest::decode(&manifest(8, 3).encode()).is_err());
        let mut m = manifest(4, 1);
        m.format = 2;
        assert!(Manifest::decode(&m.encode()).is_err());
        let mut m = manifest(4, 1);
        m.chunks[0] = "xy".into();
        assert!(Manifest::decode(&m.encode()).is_err());
        assert!(Manifest::decode(b"not json").is_err());
    }

    #[test]
    fn reserved_keys_start_with_a_zero_byte_and_never_meet_names() {
        assert!(is_reserved(&chunk_key(&[0; 32])));
        assert!(is_reserved(&manifest_key("a")));
        assert!(!is_reserved(b"chunk/x"));
        assert_ne!(manifest_key("chunk/x")[..], chunk_key(&[0; 32])[..]);
    }
}
