//! `kvnode token create NAME ROLE`: a fresh client token and its line for
//! the `--auth-tokens-file` ([`strata_server::auth::tokens`]).

use strata_server::auth::tokens::{self, Role};

/// Flags of `kvnode token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Print a fresh random token (first line: give it to the client; it is
    /// shown only this once) and its line for the tokens file (second line:
    /// it holds the token's SHA-256, not the token).
    Create {
        /// The holder's name, for logs (no white space).
        name: String,
        /// read, write or admin.
        role: Role,
    },
}

/// Runs a `kvnode token` command.
pub fn run(args: TokenArgs) -> Result<(), String> {
    match args.command {
        TokenCommand::Create { name, role } => {
            let (token, line) = tokens::create(&name, role)?;
            println!("{token}");
            println!("{line}");
            eprintln!(
                "first line: the token, for the client (Authorization: Bearer <token>); \
                 second line: append it to the --auth-tokens-file and restart the nodes"
            );
            Ok(())
        }
    }
}
