//! robbie-mesh: keeps SSH `-L`/`-R` forwards to a few machines alive in-process,
//! probes what is behind them, routes each service's local endpoint to the best
//! node that is up, and keeps conversations in a local store that syncs with a
//! PostgreSQL primary.
//!
//! State flows one way: [`config`] → [`tunnel`] supervisors (over [`ssh`]
//! sessions) → [`kinds`]' probes and [`health`] → [`route`] → [`services`] →
//! [`proxy`] endpoints, with [`events`] and the loopback [`api`] reporting it;
//! [`runtime`] wires it all and [`app`] puts the API on top; [`client`] is the
//! API's one client (the [`cli`], the tray, the tests). `ARCHITECTURE.md` at the
//! top of the repository has the map.

pub mod access;
pub mod api;
pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod doctor;
pub mod door;
pub mod events;
pub mod failpoint;
pub mod health;
pub mod install;
pub mod inventory;
pub mod keychain;
pub mod kinds;
pub mod mesh;
pub mod nodes;
pub mod notify;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod services;
pub mod ssh;
pub mod sshkeys;
pub mod startup;
pub mod store;
pub mod task;
pub mod tunnel;
pub mod units;
pub mod util;
