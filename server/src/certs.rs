//! Certificates for a cluster's TLS, made without openssl: a cluster CA,
//! node certificates signed by it (server and client use, the node's IPs and
//! DNS names as subject alternative names) and client certificates (client
//! use only), all ECDSA P-256 with SHA-256, written as PEM.
//!
//! Files: `NAME.crt` (one PEM `CERTIFICATE` block, mode 0644) and
//! `NAME.key` (one PEM `PRIVATE KEY` block, PKCS#8, mode 0600 from the moment
//! it is created). Neither is ever overwritten: replacing a key is an
//! operator's decision, made by removing the old files first.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A CA's default life: long, because replacing it means re-issuing every
/// certificate of the cluster.
pub const CA_DAYS: u32 = 3650;
/// A node or client certificate's default life.
pub const LEAF_DAYS: u32 = 397;
/// How far back a certificate's validity starts, so that a peer whose clock
/// is a little behind does not refuse a certificate made a moment ago.
const BACKDATE: Duration = Duration::minutes(5);

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters, or a PEM file held no usable
    /// certificate or key.
    #[error("{what}")]
    Rcgen {
        /// What was being made or read.
        what: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The request itself is unusable (no name, zero days).
    #[error("{0}")]
    Invalid(String),
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, one `CERTIFICATE` block.
    pub cert_pem: String,
    /// Its private key, one PKCS#8 `PRIVATE KEY` block.
    pub key_pem: String,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// A node: serves TLS and, for mutual TLS between nodes, presents the
    /// same certificate as a client. Each name is an IP address or a DNS
    /// name the node is reached by.
    Node {
        /// IP addresses and DNS names, each a subject alternative name.
        names: Vec<String>,
    },
    /// A client (an operator, an application): client use only.
    Client,
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Rcgen { what, source }
}

/// The validity window and a random serial shared by every certificate made
/// here.
fn base_params(
    names: Vec<String>,
    common_name: &str,
    days: u32,
) -> Result<CertificateParams, CertError> {
    if common_name.trim().is_empty() {
        return Err(CertError::Invalid("the certificate needs a name".into()));
    }
    if days == 0 {
        return Err(CertError::Invalid("--days must be at least 1".into()));
    }
    let mut params =
        CertificateParams::new(names).map_err(rcgen_err("a subject alternative name"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "strata");
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    // 16 random bytes, top bit clear so the DER integer stays positive.
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

/// A fresh self-signed CA that may sign leaves but no further CAs.
pub fn create_ca(common_name: &str, days: u32) -> Result<Issued, CertError> {
    let mut params = base_params(Vec::new(), common_name, days)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_err("signing the CA certificate"))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A fresh leaf certificate named `common_name`, signed by the CA in `ca`.
pub fn create_leaf(
    ca: &Issued,
    common_name: &str,
    leaf: &Leaf,
    days: u32,
) -> Result<Issued, CertError> {
    let names = match leaf {
        Leaf::Node { names } if names.is_empty() => {
            return Err(CertError::Invalid(
                "a node certificate needs at least one IP address or DNS name".into(),
            ))
        }
        Leaf::Node { names } => names.clone(),
        Leaf::Client => Vec::new(),
    };
    let mut params = base_params(names, common_name, days)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match leaf {
        Leaf::Node { .. } => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Leaf::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(rcgen_err("the CA key"))?;
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca.cert_pem)
        .map_err(rcgen_err("the CA certificate"))?
        .self_signed(&ca_key)
        .map_err(rcgen_err("the CA certificate and key"))?;
    let key = KeyPair::generate().map_err(rcgen_err("generating the key"))?;
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(rcgen_err("signing the certificate"))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads `NAME.crt` and `NAME.key` from `dir`.
pub fn read(dir: &Path, name: &str) -> Result<Issued, CertError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|source| CertError::Io { path, source })
    };
    Ok(Issued {
        cert_pem: read(dir.join(format!("{name}.crt")))?,
        key_pem: read(dir.join(format!("{name}.key")))?,
    })
}

/// Writes `NAME.crt` (0644) and `NAME.key` (0600) into `dir`, creating
/// `dir` if needed, and returns both paths. Refuses to replace either file.
pub fn write(dir: &Path, name: &str, issued: &Issued) -> Result<(PathBuf, PathBuf), CertError> {
    if name.is_empty() || name.contains(['/', '\0']) {
        return Err(CertError::Invalid(format!("{name:?} cannot name a file")));
    }
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    for path in [&cert, &key] {
        if path.exists() {
            return Err(CertError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; remove it first to replace it",
                ),
            });
        }
    }
    // The key first: the mode is set at creation, so the key is never
    // readable by others, not even for a moment.
    write_new(&key, 0o600, &issued.key_pem)?;
    write_new(&cert, 0o644, &issued.cert_pem)?;
    Ok((cert, key))
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("PEM");
        pem.contents
    }

    #[test]
    fn node_certificate_chains_to_its_ca_with_its_names() {
        let ca = create_ca("test CA", CA_DAYS).expect("CA");
        let names = vec!["127.0.0.1".to_string(), "node1.example".to_string()];
        let node = create_leaf(&ca, "node1", &Leaf::Node { names }, 30).expect("node");
        let ca_der = der(&ca.cert_pem);
        let node_der = der(&node.cert_pem);
        let (_, ca_x) = x509_parser::parse_x509_certificate(&ca_der).expect("CA DER");
        let (_, node_x) = x509_parser::parse_x509_certificate(&node_der).expect("node DER");
        assert!(ca_x.is_ca());
        assert!(!node_x.is_ca());
        node_x
            .verify_signature(Some(ca_x.public_key()))
            .expect("signed by the CA");
        assert_eq!(node_x.issuer(), ca_x.subject());
        let san = node_x
            .subject_alternative_name()
            .expect("SAN parses")
            .expect("SAN present");
        let mut ips = Vec::new();
        let mut dns = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::IPAddress(b) => {
                    let b: [u8; 4] = (*b).try_into().expect("IPv4");
                    ips.push(IpAddr::from(b));
                }
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(ips, vec![IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(dns, vec!["node1.example".to_string()]);
        let eku = node_x.extended_key_usage().expect("EKU").expect("present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        let days = (node_x.validity().not_after.timestamp()
            - node_x.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 30);
        // A second CA's key did not sign it.
        let other = create_ca("other CA", CA_DAYS).expect("CA");
        let other_der = der(&other.cert_pem);
        let (_, other_x) = x509_parser::parse_x509_certificate(&other_der).expect("DER");
        assert!(node_x.verify_signature(Some(other_x.public_key())).is_err());
    }

    #[test]
    fn client_certificate_is_for_client_use_only() {
        let ca = create_ca("test CA", CA_DAYS).expect("CA");
        let client = create_leaf(&ca, "alice", &Leaf::Client, LEAF_DAYS).expect("client");
        let client_der = der(&client.cert_pem);
        let (_, x) = x509_parser::parse_x509_certificate(&client_der).expect("DER");
        let eku = x.extended_key_usage().expect("EKU").expect("present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
    }

    #[test]
    fn unusable_requests_are_refused() {
        let ca = create_ca("test CA", CA_DAYS).expect("CA");
        let no_names = Leaf::Node { names: Vec::new() };
        assert!(matches!(
            create_leaf(&ca, "n", &no_names, 1),
            Err(CertError::Invalid(_))
        ));
        assert!(matches!(create_ca("x", 0), Err(CertError::Invalid(_))));
        assert!(matches!(create_ca(" ", 1), Err(CertError::Invalid(_))));
        let broken = Issued {
            cert_pem: "not a certificate".into(),
            key_pem: ca.key_pem.clone(),
        };
        assert!(matches!(
            create_leaf(&broken, "c", &Leaf::Client, 1),
            Err(CertError::Rcgen { .. })
        ));
    }

    #[test]
    fn files_have_their_modes_and_are_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = create_ca("test CA", CA_DAYS).expect("CA");
        let (cert, key) = write(dir.path(), "ca", &ca).expect("write");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        // The umask may take bits away from 0644, never add any.
        assert_eq!(mode(&cert) & !0o644, 0);
        assert!(matches!(
            write(dir.path(), "ca", &ca),
            Err(CertError::Io { .. })
        ));
        let back = read(dir.path(), "ca").expect("read");
        assert_eq!(back.cert_pem, ca.cert_pem);
        assert_eq!(back.key_pem, ca.key_pem);
        assert!(write(dir.path(), "../x/y", &ca).is_err());
    }
}
