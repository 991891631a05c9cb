//! Client tokens and their roles: the `--auth-tokens-file`.
//!
//! # The file
//!
//! One token a line, three fields separated by white space:
//!
//! ```text
//! # NAME   ROLE   SHA256HEX
//! alice    admin  6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b
//! loader   write  d4735e3a265e16eee03f59718b9b5d03019c07d8b6c51f90da3a666eec13ab35
//! ```
//!
//! - `NAME` names the holder in logs; names are unique.
//! - `ROLE` is `read` (GET), `write` (read, PUT, DELETE) or `admin` (write,
//!   and `/v1/node`, `/v1/cluster`, `/admin/*`); each role includes those
//!   below it.
//! - `SHA256HEX` is the SHA-256 of the token, 64 hex digits: the file holds
//!   no usable secret, so it needs no permission check. `kvnode token create`
//!   makes a token and its line.
//! - `#` starts a comment, to the end of the line; blank lines are skipped.
//!
//! A line that breaks any of this refuses the whole file, naming the line.
//!
//! A presented token is hashed and compared with every digest in constant
//! time: neither which digest matched nor how far a wrong one matched shows
//! in the time taken.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a token may do. Ordered: each role includes those below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read keys.
    Read,
    /// Read, write and delete keys.
    Write,
    /// Everything a client can do, the node's and cluster's reports and
    /// cluster changes included.
    Admin,
}

impl Role {
    /// The role's name in the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?} (read, write or admin)")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the file.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// The tokens a node accepts.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.entries.len())
    }
}

/// Why a tokens file is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokensError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not `NAME ROLE SHA256HEX`.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// Its line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file has no token: every client would be refused.
    #[error("{0}: no token in the file (every client would be refused)")]
    Empty(PathBuf),
}

/// Who a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder<'a> {
    /// The token's name.
    pub name: &'a str,
    /// Its role.
    pub role: Role,
}

impl Tokens {
    /// Reads and checks a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, TokensError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let refuse = |reason: String| TokensError::Line {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let content = raw.split_once('#').map_or(raw, |(before, _)| before);
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [name, role, digest] = fields[..] else {
                if fields.is_empty() {
                    continue;
                }
                return Err(refuse(format!(
                    "expected NAME ROLE SHA256HEX, found {} fields",
                    fields.len()
                )));
            };
            let role: Role = role.parse().map_err(refuse)?;
            let digest: [u8; 32] = hex::decode(digest)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| {
                    refuse(format!(
                        "{digest:?} is not a SHA-256 in hex (64 hex digits)"
                    ))
                })?;
            if let Some(e) = entries.iter().find(|e| e.name == name) {
                return Err(refuse(format!(
                    "the name {name:?} is taken by an earlier line ({})",
                    e.role
                )));
            }
            if let Some(e) = entries.iter().find(|e| e.digest == digest) {
                return Err(refuse(format!(
                    "the same token as {:?} on an earlier line",
                    e.name
                )));
            }
            entries.push(Entry {
                name: name.to_owned(),
                role,
                digest,
            });
        }
        if entries.is_empty() {
            return Err(TokensError::Empty(path.to_owned()));
        }
        Ok(Self { entries })
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a tokens file with no token is refused.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The holder of `token`, if it is one of these. Every digest is compared,
    /// each in constant time, whichever matches.
    pub fn holder(&self, token: &[u8]) -> Option<Holder<'_>> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = u32::MAX;
        for (i, e) in self.entries.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&i, e.digest.ct_eq(&digest));
        }
        let e = self.entries.get(usize::try_from(found).ok()?)?;
        Some(Holder {
            name: &e.name,
            role: e.role,
        })
    }
}

/// A fresh random token (`kvt_` and 64 hex digits: 256 bits from the OS)
/// and its line for the tokens file.
pub fn create(name: &str, role: Role) -> Result<(String, String), String> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '#') {
        return Err(format!(
            "{name:?}: a token name is not empty and has no white space or '#'"
        ));
    }
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = format!("kvt_{}", hex::encode(bytes));
    let line = format!("{name} {role} {}", hex::encode(Sha256::digest(&token)));
    Ok((token, line))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(text: &str) -> Result<Tokens, TokensError> {
        Tokens::parse(Path::new("tokens"), text)
    }

    fn line_of(e: TokensError) -> (usize, String) {
        match e {
            TokensError::Line { line, reason, .. } => (line, reason),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn created_tokens_are_found_with_their_role_and_nothing_else_is() {
        let (alice, alice_line) = create("alice", Role::Admin).unwrap();
        let (bob, bob_line) = create("bob", Role::Read).unwrap();
        assert_ne!(alice, bob);
        assert!(alice.starts_with("kvt_") && alice.len() == 68);
        assert!(!alice_line.contains(&alice));
        let file = format!("# the team\n\n{alice_line}   # on call\n  {bob_line}\n");
        let tokens = parse(&file).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.holder(alice.as_bytes()),
            Some(Holder {
                name: "alice",
                role: Role::Admin
            })
        );
        assert_eq!(tokens.holder(bob.as_bytes()).unwrap().role, Role::Read);
        for wrong in ["", "kvt_", &alice[..67], &format!("{alice} "), &alice_line] {
            assert_eq!(tokens.holder(wrong.as_bytes()), None, "{wrong}");
        }
    }

    #[test]
    fn roles_are_ordered_and_parse_from_their_names() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        for r in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("Admin".parse::<Role>().is_err());
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let digest = "a".repeat(64);
        let cases = [
            (format!("ok read {digest}\nbad\n"), 2, "found 1 fields"),
            (format!("# c\n\nx read {digest} extra"), 3, "found 4 fields"),
            (format!("x reader {digest}"), 1, "unknown role"),
            ("x read abc".to_owned(), 1, "64 hex digits"),
            (format!("x read {}", "g".repeat(64)), 1, "64 hex digits"),
            (format!("x read {}", "a".repeat(62)), 1, "64 hex digits"),
            (
                format!("x read {digest}\nx write {}", "b".repeat(64)),
                2,
                "taken",
            ),
            (
                format!("x read {digest}\ny write {digest}"),
                2,
                "same token",
            ),
        ];
        for (text, line, reason) in cases {
            let (got_line, got_reason) = line_of(parse(&text).unwrap_err());
            assert_eq!(got_line, line, "{text}");
            assert!(got_reason.contains(reason), "{text}: {got_reason}");
        }
        let e = parse("x reader 00").unwrap_err().to_string();
        assert!(e.starts_with("tokens:1: "), "{e}");
        assert!(matches!(parse("# nobody\n\n"), Err(TokensError::Empty(_))));
    }

    #[test]
    fn token_names_cannot_break_the_line() {
        for bad in ["", "a b", "a\tb", "a#b"] {
            assert!(create(bad, Role::Read).is_err(), "{bad:?}");
        }
    }
}
