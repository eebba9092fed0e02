//! One node's conversations and sync through the typed client
//! (`robbie_mesh::client`), as the sync tests use them: each call expects success.

use std::collections::BTreeSet;
use std::time::Duration;

use robbie_mesh::api::wire::{
    Conversation, ConversationPatch, Message, NewMessage, Page, SyncState, SyncStatus,
};
use robbie_mesh::client::Client;

use crate::{eventually, Mesh};

pub struct Api(pub Client);

impl Api {
    pub fn of(mesh: &Mesh) -> Api {
        Api(mesh.client())
    }

    /// A new conversation's id.
    pub async fn conversation(&self, title: &str) -> String {
        self.0.create_conversation(title).await.expect("create").id
    }

    pub async fn get(&self, conv: &str) -> Conversation {
        self.0.conversation(conv).await.expect("conversation")
    }

    /// Renames (and archives or unarchives, when given).
    pub async fn rename(&self, conv: &str, title: &str, archived: Option<bool>) {
        let patch = ConversationPatch {
            title: Some(title.to_string()),
            archived,
        };
        self.0
            .update_conversation(conv, &patch)
            .await
            .expect("patch");
    }

    /// A user message; its id.
    pub async fn say(&self, conv: &str, content: &str) -> String {
        self.0
            .append_message(conv, &user_message(content))
            .await
            .expect("append")
            .id
    }

    /// Every message of `conv`, read in pages of `page` (oldest first).
    pub async fn messages(&self, conv: &str, page: usize) -> Vec<Message> {
        let mut all: Vec<Message> = Vec::new();
        loop {
            let next = Page {
                after: all.last().map(|m| m.id.clone()),
                limit: Some(page),
                ..Page::default()
            };
            let got = self.0.messages(conv, &next).await.expect("a page");
            if got.is_empty() {
                return all;
            }
            all.extend(got);
        }
    }

    /// The ids of every message of `conv` (none when it is not here yet).
    pub async fn ids(&self, conv: &str) -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        let mut after = None;
        loop {
            let page = Page {
                after,
                limit: Some(1000),
                ..Page::default()
            };
            let got = self.0.messages(conv, &page).await.unwrap_or_default();
            let Some(last) = got.last() else { return all };
            after = Some(last.id.clone());
            all.extend(got.into_iter().map(|m| m.id));
        }
    }

    pub async fn sync_now(&self) {
        self.0.sync_now().await.expect("sync");
    }

    pub async fn sync_state(&self) -> SyncStatus {
        self.0.status().await.expect("status").store.sync
    }

    /// Asks for a round, then waits (30 s at most) until nothing is pending and
    /// a round has finished.
    pub async fn wait_synced(&self, what: &str) {
        let _ = self.0.sync_now().await;
        eventually(Duration::from_secs(30), what, || async {
            let s = self.sync_state().await;
            s.pending == 0 && s.state == SyncState::Idle && s.last_sync.is_some()
        })
        .await;
    }
}

pub fn user_message(content: &str) -> NewMessage {
    NewMessage {
        role: "user".into(),
        content: content.into(),
        model: None,
    }
}
