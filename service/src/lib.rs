//! robbie-mesh: keeps SSH `-L`/`-R` forwards to a few machines alive in-process and
//! (in later layers) routes local service endpoints to the best machine that is up.
//!
//! State flows one way: [`config`] → [`tunnel`] supervisors (over [`ssh`] sessions)
//! → [`events`] and the loopback [`api`]. The binary in `main.rs` is a thin CLI over
//! [`service::run`] and the API.

pub mod access;
pub mod api;
pub mod cli;
pub mod config;
pub mod door;
pub mod events;
pub mod failpoint;
pub mod health;
pub mod install;
pub mod inventory;
pub mod keys;
pub mod nodes;
pub mod notify;
pub mod probe;
pub mod proxy;
pub mod route;
pub mod service;
pub mod services;
pub mod ssh;
pub mod sshkeys;
pub mod startup;
pub mod store;
pub mod task;
pub mod tunnel;
pub mod ui;
pub mod units;
pub mod util;
