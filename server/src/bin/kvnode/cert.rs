//! `kvnode cert create-ca | create-node | create-client`: a cluster's
//! certificates as PEM files ([`strata_server::certs`]), so an operator needs
//! no openssl.

use std::path::PathBuf;

use anyhow::Context;
use strata_server::certs::{self, Leaf, CA_DAYS, LEAF_DAYS};

/// Flags of `kvnode cert`.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertCommand {
    /// Make the cluster's CA: DIR/ca.crt (give it to every node and client)
    /// and DIR/ca.key (keep it off the nodes; it signs new certificates).
    #[command(name = "create-ca")]
    Ca {
        /// Where to write ca.crt and ca.key.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "strata cluster CA")]
        name: String,
        /// Days the CA stays valid.
        #[arg(long, default_value_t = CA_DAYS)]
        days: u32,
    },
    /// Make a node's certificate, signed by DIR/ca.crt and DIR/ca.key:
    /// DIR/NAME.crt and DIR/NAME.key, for --tls-cert and --tls-key.
    #[command(name = "create-node")]
    Node {
        /// The node's name (the certificate's common name and the files'
        /// names).
        name: String,
        /// An IP address or DNS name that clients and peers use to reach the
        /// node (repeat it, or separate with commas); every one becomes a
        /// subject alternative name, which clients check.
        #[arg(long = "host", required = true, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Where ca.crt and ca.key are and where the new files go.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the certificate stays valid.
        #[arg(long, default_value_t = LEAF_DAYS)]
        days: u32,
    },
    /// Make a client's certificate (client use only), signed by DIR/ca.crt
    /// and DIR/ca.key: DIR/NAME.crt and DIR/NAME.key.
    #[command(name = "create-client")]
    Client {
        /// The client's name (the certificate's common name and the files'
        /// names).
        name: String,
        /// Where ca.crt and ca.key are and where the new files go.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the certificate stays valid.
        #[arg(long, default_value_t = LEAF_DAYS)]
        days: u32,
    },
}

/// Runs a `kvnode cert` command.
pub fn run(args: CertArgs) -> anyhow::Result<()> {
    let (dir, name, issued) = match args.command {
        CertCommand::Ca { dir, name, days } => {
            let issued = certs::create_ca(&name, days)?;
            (dir, "ca".to_string(), issued)
        }
        CertCommand::Node {
            name,
            hosts,
            dir,
            days,
        } => {
            let ca = certs::read(&dir, "ca")
                .context("reading the CA (run `kvnode cert create-ca` first)")?;
            let issued = certs::create_leaf(&ca, &name, &Leaf::Node { names: hosts }, days)?;
            (dir, name, issued)
        }
        CertCommand::Client { name, dir, days } => {
            let ca = certs::read(&dir, "ca")
                .context("reading the CA (run `kvnode cert create-ca` first)")?;
            let issued = certs::create_leaf(&ca, &name, &Leaf::Client, days)?;
            (dir, name, issued)
        }
    };
    let (cert, key) = certs::write(&dir, &name, &issued)?;
    println!("{}", cert.display());
    println!("{}", key.display());
    Ok(())
}
