//! How the CLI commands that talk to a node reach one started with
//! `--tls-cert`: `--ca` switches them to HTTPS and is the only CA they
//! trust; `--cert` and `--key` present a client certificate to a node that
//! requires one (`--tls-client-ca`).

use std::path::PathBuf;

use strata_server::tls::{client_config, TlsError};

/// The TLS flags of every command that talks to a node.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Talk HTTPS, trusting only this CA certificate (PEM).
    #[arg(long, env = "KVNODE_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for a node started with --tls-client-ca.
    #[arg(long = "cert", env = "KVNODE_CLIENT_CERT", requires_all = ["ca", "client_key"])]
    pub client_cert: Option<PathBuf>,
    /// Private key of --cert (PEM, chmod 600).
    #[arg(long = "key", env = "KVNODE_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl TlsArgs {
    /// `builder` set up for these flags, and the scheme of the node's URLs.
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<(reqwest::ClientBuilder, &'static str), TlsError> {
        let Some(ca) = &self.ca else {
            return Ok((builder, "http"));
        };
        let identity = self.client_cert.as_deref().zip(self.client_key.as_deref());
        let config = client_config(ca, identity)?;
        Ok((builder.use_preconfigured_tls(config), "https"))
    }
}
