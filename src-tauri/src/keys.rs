//! The SSH keys in the OS keychain, from the menu: generate, import a file, show
//! a key's authorized_keys line, delete (after asking). Keychain calls block, so
//! they run off the UI thread; each outcome is told as a notification.

use robbie_mesh::sshkeys;
use tauri::{AppHandle, Manager};
use tauri_plugin_dialog::{DialogExt, MessageDialogButtons, MessageDialogKind};

use crate::notify::show_now;
use crate::Tray;

/// Re-reads the key list from the keychain, then redraws the menu.
pub fn reload(app: AppHandle) {
    tauri::async_runtime::spawn(async move {
        let keys = tokio::task::spawn_blocking(sshkeys::list).await;
        let state = app.state::<Tray>();
        match keys {
            Ok(Ok(k)) => *state.keys.lock().unwrap_or_else(|p| p.into_inner()) = k,
            Ok(Err(e)) => tracing::warn!("cannot list the SSH keys: {e}"),
            Err(_) => {}
        }
        state.redraw();
    });
}

/// Tells the key's authorized_keys line.
pub fn show(app: &AppHandle, name: &str) {
    let state = app.state::<Tray>();
    let keys = state.keys.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(k) = keys.iter().find(|k| k.name == name) {
        show_now(
            format!("SSH key {} ({})", k.name, k.fingerprint),
            k.public.clone(),
        );
    }
}

/// Asks for a private key file (in ~/.ssh when there is one), then imports it.
pub fn pick_and_import(app: &AppHandle) {
    let app2 = app.clone();
    let mut picker = app
        .dialog()
        .file()
        .set_title("Import an SSH private key into the keychain");
    if let Some(dir) = std::env::var_os("HOME")
        .map(|h| std::path::PathBuf::from(h).join(".ssh"))
        .filter(|d| d.is_dir())
    {
        picker = picker.set_directory(dir);
    }
    picker.pick_file(move |file| {
        if let Some(path) = file.and_then(|f| f.into_path().ok()) {
            add(app2, Some(path));
        }
    });
}

/// Asks, then deletes the key.
pub fn delete(app: &AppHandle, name: String) {
    let app2 = app.clone();
    // On Linux (GTK) the underscore makes Alt+D press the button.
    let delete = if cfg!(target_os = "linux") {
        "_Delete"
    } else {
        "Delete"
    };
    app.dialog()
        .message(
            "The key goes from the keychain for good. Servers that know only this key \
             will no longer let robbie-mesh in.",
        )
        .title(format!("Delete SSH key {name}?"))
        .kind(MessageDialogKind::Warning)
        .buttons(MessageDialogButtons::OkCancelCustom(
            delete.into(),
            "Cancel".into(),
        ))
        .show(move |yes| {
            if !yes {
                return;
            }
            tauri::async_runtime::spawn(async move {
                let gone = {
                    let name = name.clone();
                    tokio::task::spawn_blocking(move || sshkeys::delete(&name)).await
                };
                match gone {
                    Ok(Ok(())) => show_now(
                        format!("SSH key {name} deleted"),
                        "It is no longer in the keychain.".into(),
                    ),
                    Ok(Err(e)) => show_now(format!("SSH key {name} not deleted"), e.to_string()),
                    Err(e) => show_now(format!("SSH key {name} not deleted"), e.to_string()),
                }
                reload(app2);
            });
        });
}

/// Generates a key (`file` None) or imports `file` into the keychain, then says
/// how to use it.
pub fn add(app: AppHandle, file: Option<std::path::PathBuf>) {
    tauri::async_runtime::spawn(async move {
        let node = app
            .state::<Tray>()
            .client
            .status()
            .await
            .map_or_else(|_| "robbie-mesh".into(), |st| st.node);
        let taken: Vec<String> = app
            .state::<Tray>()
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|k| k.name.clone())
            .collect();
        let name = key_name(&node, file.as_deref(), &taken);
        let made = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || match file {
                Some(path) => sshkeys::import(&name, &path, None),
                None => sshkeys::generate(&name),
            })
            .await
        };
        let failed = |why: String| {
            let hint = match &file {
                // The tray cannot ask for a passphrase; the CLI can.
                Some(path) if why.contains("passphrase") => format!(
                    "{why}\nImport it in a terminal instead: robbie-mesh keys import NAME {}",
                    path.display()
                ),
                _ => why,
            };
            show_now("SSH key not stored".into(), hint);
        };
        match made {
            Ok(Ok(k)) => show_now(
                format!("SSH key {} is in the keychain", k.name),
                format!("Add this line to ~/.ssh/authorized_keys on your servers, and use identity = [\"keychain:{}\"]:\n{}", k.name, k.public),
            ),
            Ok(Err(e)) => failed(e.to_string()),
            Err(e) => failed(e.to_string()),
        }
        reload(app);
    });
}

/// A new key's name: the key file's (`id_ed25519`), or `<node>-<seconds>` for a
/// generated key; made unique against `taken`, and valid as a key name.
fn key_name(node: &str, file: Option<&std::path::Path>, taken: &[String]) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect()
    };
    let base = file
        .and_then(|f| f.file_stem())
        .map(|s| clean(&s.to_string_lossy()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-{secs}", clean(node)));
    if taken.contains(&base) {
        format!("{base}-{secs}")
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_come_from_the_file_or_the_node_and_stay_unique() {
        let file = std::path::Path::new("/home/u/.ssh/id_ed25519");
        assert_eq!(key_name("book", Some(file), &[]), "id_ed25519");
        let again = key_name("book", Some(file), &["id_ed25519".into()]);
        assert!(
            again.starts_with("id_ed25519-") && again != "id_ed25519",
            "{again}"
        );
        let odd = std::path::Path::new("/keys/my key (old).pem");
        assert_eq!(key_name("book", Some(odd), &[]), "my-key--old-");
        assert!(key_name("robbie book", None, &[]).starts_with("robbie-book-"));
    }
}
