//! The `robbie-mesh` command. The binary only calls [`main`]; each command's body
//! lives here, by what it talks to:
//!
//! - [`args`]: the grammar (clap);
//! - [`run`]: `run`, the service in the foreground;
//! - [`remote`]: commands that ask the running service (`status`, `pin`,
//!   `reconnect`, `sync`, `dashboard`) through [`crate::client`];
//! - [`local`]: commands that work on this machine without it (`check-config`,
//!   `db`, `keys`, `service`, `man`);
//! - [`init`]: `init --mesh`, a node's config written from the mesh description;
//! - [`setup`]: `init` without one, by questions (each also a flag);
//! - [`text`]: what they print, as pure functions the tests check.

pub mod args;
mod init;
mod local;
mod remote;
mod run;
mod setup;
pub mod text;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
pub use text::{config_summary, services_text, store_text, tunnel_table};

/// Parses the arguments and runs the command; the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            listen,
            log_file,
        } => run::run(config, listen, log_file.as_deref()),
        Command::CheckConfig { files } => local::check_configs(files),
        Command::Doctor { json, api } => remote::doctor(json, &api),
        Command::Init {
            mesh: Some(mesh),
            node,
            out,
            force,
            connect,
            accept_host_key,
            ..
        } => init::from_mesh(
            &mesh,
            node.as_deref(),
            out.as_deref(),
            force,
            connect.then_some(accept_host_key.as_slice()),
        ),
        Command::Init {
            mesh: None,
            node,
            peer,
            service,
            key,
            accept_host_key,
            install,
            out,
            force,
            ..
        } => setup::init(setup::Answers {
            node,
            peers: peer,
            services: service,
            key,
            accept_host_key,
            install,
            out,
            force,
        }),
        Command::Status { json, api } => remote::status(json, &api),
        Command::Reconnect { tunnel, api } => remote::reconnect(&tunnel, &api),
        Command::Dashboard { print, api } => remote::dashboard(print, &api),
        Command::Pin { service, node, api } => remote::pin(&service, Some(&node), &api),
        Command::Unpin { service, api } => remote::pin(&service, None, &api),
        Command::Sync {
            verify: true,
            repair,
            timeout,
            api,
            ..
        } => remote::sync_verify(repair, timeout, &api),
        Command::Sync {
            wait, timeout, api, ..
        } => remote::sync(wait, timeout, &api),
        Command::Db { command } => local::db(command),
        Command::Keys { command } => local::keys(command),
        Command::Service { command } => local::service(command),
        Command::Man => local::man(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("robbie-mesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}
