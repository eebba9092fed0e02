//! robbie-mesh: keeps SSH `-L`/`-R` forwards to a few machines alive in-process,
//! probes what is behind them, routes each service's local endpoint to the best
//! node that is up, and keeps conversations in a local store that syncs with a
//! PostgreSQL primary.
//!
//! State flows one way: [`config`] → [`tunnel`] supervisors (over [`ssh`]
//! sessions) → probes and [`health`] → [`route`] → [`proxy`] endpoints, with
//! [`events`] and the loopback [`api`] reporting it; [`service`] wires it all.
//! `ARCHITECTURE.md` at the top of the repository has the map.

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
