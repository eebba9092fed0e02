//! Every request and answer of the loopback API, typed at both ends: the
//! server (`crate::api`) answers with these, the client (`crate::client`, used
//! by the CLI, the tray and the tests) reads them. An answer's parts that belong
//! to a layer below (a tunnel's status, a candidate's health, the sync status)
//! are defined there and re-exported here, so this module is the whole vocabulary.
//! `tests/tests/wire_types.rs` checks that a live service's JSON reads back into
//! these types and writes out the same.

use serde::{Deserialize, Serialize};

pub use crate::config::{ForwardKind, ServiceKind};
pub use crate::events::{Event, EventKind};
pub use crate::health::{Health, HealthState};
pub use crate::inventory::{Cpu, Gpu, NodeInventory};
pub use crate::kinds::{LoadedModel, OllamaInfo, PgRole};
pub use crate::nodes::{NodeEntry, NodeMap};
pub use crate::route::Plan;
pub use crate::services::CandidateStatus;
pub use crate::store::replica::{ReplicaState, ReplicaStatus};
pub use crate::store::sync::{SyncState, SyncStatus};
pub use crate::store::verify::VerifyReport;
pub use crate::store::{Conversation, Message, Rejected};
pub use crate::task::InternalError;
pub use crate::tunnel::{TunnelPhase, TunnelStatus};

/// Whether this node has peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No peer configured: this machine's own services and store only.
    LocalOnly,
    Mesh,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::LocalOnly => "local-only",
            Mode::Mesh => "mesh",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
/// `GET /health`.
pub struct HealthReply {
    /// Always `ok`: an answer at all is the news.
    pub status: String,
    pub node: String,
    pub version: String,
    pub mode: Mode,
    pub config: Option<String>,
    /// This node's clock when it answered (`doctor` compares the nodes' clocks:
    /// sync's last-writer-wins trusts them to agree within a minute). Absent
    /// from versions before it.
    #[serde(
        default,
        serialize_with = "crate::util::ser_opt_time",
        deserialize_with = "crate::util::de_opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub time: Option<std::time::SystemTime>,
}

#[derive(Debug, Serialize, Deserialize)]
/// `GET /v1/tunnels`.
pub struct TunnelList {
    pub node: String,
    pub tunnels: Vec<TunnelStatus>,
}

/// `GET /v1/status`: everything a user or the tray needs in one answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub mode: Mode,
    pub inventory: Option<NodeInventory>,
    /// Every node of the mesh this node knows, with its hardware.
    pub nodes: NodeMap,
    pub tunnels: Vec<TunnelStatus>,
    pub services: Vec<ServiceStatus>,
    pub store: StoreStatus,
    /// Tasks that failed of a bug and were started again (newest last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal_errors: Vec<InternalError>,
}

/// The local store and its sync.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreStatus {
    pub path: String,
    /// Why the store is not open, if it is not.
    pub error: Option<String>,
    pub sync: SyncStatus,
    pub replica: Option<ReplicaStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: ServiceKind,
    pub listen: String,
    /// "listening", or why the endpoint is not.
    pub endpoint: String,
    /// The node a request (with no model named) goes to now.
    pub route: Option<String>,
    pub pinned: Option<String>,
    /// The ordered candidates and why, and those left out.
    pub plan: Plan,
    /// In priority order.
    pub candidates: Vec<CandidateStatus>,
}

/// `POST /v1/tunnels/{name}/reconnect` (202).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReconnectReply {
    pub peer: String,
    /// Every tunnel of that peer: they share its SSH session.
    pub tunnels: Vec<String>,
}

/// `POST /v1/services/{name}/pin`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PinRequest {
    pub node: String,
}

/// The answer to a pin or unpin (`DELETE /v1/services/{name}/pin`).
#[derive(Debug, Serialize, Deserialize)]
pub struct PinReply {
    pub service: String,
    pub pinned: Option<String>,
    /// Where requests go now.
    pub route: Option<String>,
}

/// Every refusal's body, whatever its status.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `POST /v1/auth/link`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignInLink {
    /// Opens the dashboard signed in; good once, for two minutes.
    pub url: String,
}

/// `GET /v1/conversations?…` and `GET /v1/conversations/{id}/messages?…`: a page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Page {
    /// Conversations: include archived ones.
    #[serde(default)]
    pub archived: bool,
    /// Conversations (newest first): those older than this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Messages (oldest first): those after this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// 1–1000, 100 by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Page {
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

/// `POST /v1/conversations`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConversation {
    #[serde(default)]
    pub title: String,
}

/// `PATCH /v1/conversations/{id}`: the fields to change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
}

/// `POST /v1/conversations/{id}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// `POST /v1/sync/verify`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[serde(default)]
    pub repair: bool,
}

pub use crate::doctor::{Finding, Report, Verdict};

/// `GET /v1/doctor`: the last findings, if `doctor` has run since the start.
#[derive(Debug, Serialize, Deserialize)]
pub struct DoctorReply {
    pub report: Option<Report>,
}
