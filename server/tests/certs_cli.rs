//! `kvnode cert`: the binary makes a CA, node and client certificates whose
//! chain and names hold, with private keys mode 0600, and refuses to replace
//! files or to sign without a CA.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn kvnode(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvnode"))
        .args(["cert"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run kvnode")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn cert_commands_write_a_usable_pki() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");

    let no_ca = kvnode(&dir, &["create-node", "n1", "--host", "127.0.0.1"]);
    assert!(!no_ca.status.success());
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("create-ca"));

    assert!(kvnode(&dir, &["create-ca"]).status.success());
    let node = kvnode(
        &dir,
        &["create-node", "n1", "--host", "127.0.0.1,localhost"],
    );
    assert!(node.status.success(), "{node:?}");
    assert!(kvnode(&dir, &["create-client", "alice"]).status.success());
    for name in ["ca", "n1", "alice"] {
        assert_eq!(mode(&dir.join(format!("{name}.key"))), 0o600, "{name}.key");
    }

    let again = kvnode(&dir, &["create-node", "n1", "--host", "127.0.0.1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let ca = std::fs::read(dir.join("ca.crt")).expect("ca.crt");
    let n1 = std::fs::read(dir.join("n1.crt")).expect("n1.crt");
    let (_, ca) = x509_parser::pem::parse_x509_pem(&ca).expect("PEM");
    let (_, n1) = x509_parser::pem::parse_x509_pem(&n1).expect("PEM");
    let ca = ca.parse_x509().expect("CA DER");
    let n1 = n1.parse_x509().expect("node DER");
    n1.verify_signature(Some(ca.public_key()))
        .expect("the node certificate is signed by the CA");
    let san = n1
        .subject_alternative_name()
        .expect("SAN")
        .expect("present");
    assert_eq!(san.value.general_names.len(), 2);
}
