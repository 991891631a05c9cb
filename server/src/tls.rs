//! TLS for the node's listener and for the clients that talk to a node:
//! PEM files in, rustls configurations (ring provider, TLS 1.2 and 1.3)
//! out.
//!
//! - **Server side** (`ServerTls`): the node's certificate chain and key
//!   (`--tls-cert`, `--tls-key`; the key file must be private, like the
//!   cluster secret's) and, with `--tls-client-ca`, the CA whose
//!   certificates clients must present. The configuration is an
//!   `Arc<ServerConfig>` behind a lock, taken once per accepted connection:
//!   `ServerTls::reload` (on SIGHUP) builds a new one from the files and
//!   swaps it in, so connections already open keep theirs and new ones get
//!   the new certificate. A file that does not load leaves the old
//!   configuration in place and says why.
//! - **Client side** ([`client_config`]): trust exactly one CA (`--ca`, or
//!   the cluster CA) and, where the node asks for one, present a
//!   certificate. Web roots are never trusted: a cluster has its own CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::{check_private, SecretFileError};

/// Why TLS could not be set up from the given files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{what} {}: {reason}", path.display())]
    Pem {
        /// What the file should hold (a certificate, a key, a CA).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file is readable by others.
    #[error(transparent)]
    KeyFile(#[from] SecretFileError),
    /// rustls refused the certificates or the key (a key that does not
    /// match the certificate, a CA that is not one).
    #[error("{what}: {reason}")]
    Refused {
        /// What was being set up.
        what: &'static str,
        /// rustls's reason.
        reason: String,
    },
}

/// `e` and each of its sources, `: `-separated: a refused certificate
/// ("invalid peer certificate: Expired") sits several sources below the
/// "error sending request" an HTTP client reports.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper and reqwest often repeat their source's text in their own.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The files a TLS listener is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1); private to the owner.
    pub key: PathBuf,
    /// The CA that signs the client certificates the listener requires;
    /// `None` asks clients for none.
    pub client_ca: Option<PathBuf>,
}

/// The ring provider: the one crypto backend this crate builds (no C).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path`; at least one.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |reason: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`, which must be private.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_private(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The trust store holding exactly the CA certificates in `path`.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA certificate", path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "CA certificate",
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn refused(what: &'static str) -> impl Fn(rustls::Error) -> TlsError {
    move |e| TlsError::Refused {
        what,
        reason: e.to_string(),
    }
}

/// A server configuration from `files`.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = read_certs("certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(refused("TLS versions"))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider)
                    .build()
                    .map_err(|e| TlsError::Refused {
                        what: "client CA",
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(certs, key)
        .map_err(refused("certificate and key"))
}

/// A client configuration that trusts only the CA certificates in `ca` and
/// presents `identity` (certificate chain and key files) when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    client_config_with(read_roots(ca)?, identity)
}

/// What a node calls its peers with: its own certificate, and trust in the
/// cluster CA (the client CA its listener requires). A node without one
/// trusts no peer, so every call to a TLS peer fails naming the unknown
/// issuer; the configuration refuses that setup when the node has peers
/// to call.
pub(crate) fn peer_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = match &files.client_ca {
        Some(ca) => read_roots(ca)?,
        None => RootCertStore::empty(),
    };
    client_config_with(roots, Some((&files.cert, &files.key)))
}

fn client_config_with(
    roots: RootCertStore,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused("TLS versions"))?
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs("certificate", cert)?, read_key(key)?)
            .map_err(refused("client certificate and key")),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A listener's TLS: the configuration in force and the files it comes
/// from.
pub(crate) struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads `files`; an error here stops the node at start.
    pub(crate) fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The acceptor for the next connection.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().clone())
    }

    /// Reads the files again and, if they load, serves new connections with
    /// them; otherwise keeps the configuration in force and says why.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// Reloads on every SIGHUP for as long as the process lives, logging
    /// each outcome.
    pub(crate) fn reload_on_sighup(self: &Arc<Self>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup())?;
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                // The listener owns the configuration; once it has gone,
                // there is nothing to reload.
                let Some(tls) = tls.upgrade() else { break };
                match tls.reload() {
                    Ok(()) => tracing::info!(
                        cert = %tls.files.cert.display(),
                        "TLS certificate and key reloaded"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "TLS reload failed; still serving the previous certificate"
                    ),
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::certs::{create_ca, create_leaf, write, Leaf};

    fn node_files(dir: &Path, ca: &crate::certs::Issued, name: &str) -> TlsFiles {
        let leaf = Leaf::Node {
            names: vec!["127.0.0.1".into()],
        };
        let issued = create_leaf(ca, name, &leaf, 1).unwrap();
        let (cert, key) = write(dir, name, &issued).unwrap();
        TlsFiles {
            cert,
            key,
            client_ca: None,
        }
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("test CA", 1).unwrap();
        let files = node_files(dir.path(), &ca, "node");
        assert!(server_config(&files).is_ok());
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = server_config(&files).unwrap_err();
        assert!(matches!(e, TlsError::KeyFile(_)), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("test CA", 1).unwrap();
        let a = node_files(dir.path(), &ca, "a");
        let b = node_files(dir.path(), &ca, "b");
        let mixed = TlsFiles { key: b.key, ..a };
        let e = server_config(&mixed).unwrap_err();
        assert!(matches!(e, TlsError::Refused { .. }), "{e}");
    }

    #[test]
    fn a_reload_from_a_broken_file_keeps_the_old_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("test CA", 1).unwrap();
        let files = node_files(dir.path(), &ca, "node");
        let tls = ServerTls::load(files.clone()).unwrap();
        let before = tls.current.read().clone();
        std::fs::write(&files.cert, "not a certificate\n").unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.to_string().contains("node.crt"), "{e}");
        assert!(Arc::ptr_eq(&before, &tls.current.read()));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, "").unwrap();
        let e = client_config(&path, None).unwrap_err().to_string();
        assert!(e.contains("ca.crt") && e.contains("no CERTIFICATE"), "{e}");
    }
}
