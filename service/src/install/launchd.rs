//! Installing on macOS: the LaunchAgent, registered with SMAppService from inside
//! the app bundle (`login_items`), or written and loaded with `launchctl`
//! otherwise.

use super::login_items;
use super::*;

const LABEL: &str = "app.robbie-mesh.service";

fn plist_path() -> Result<PathBuf, InstallError> {
    dirs::home_dir()
        .map(|h| {
            h.join("Library/LaunchAgents")
                .join(format!("{LABEL}.plist"))
        })
        .ok_or_else(|| InstallError::Unsupported("no home directory".into()))
}

fn domain() -> String {
    format!("gui/{}", nix::unistd::getuid())
}

/// The LaunchAgent shipped inside the menu-bar app, when this process is
/// that app (`robbie-mesh.app/Contents/MacOS/…`): macOS 13+ registers it
/// with SMAppService, which lists it under Login Items and follows the app
/// if it is moved (the plist names its program relative to the bundle).
fn bundled_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let contents = exe.parent()?.parent()?;
    let plist = contents
        .join("Library/LaunchAgents")
        .join(format!("{LABEL}.plist"));
    (contents.file_name()? == "Contents" && plist.is_file()).then_some(plist)
}

/// The plain LaunchAgent of an install without the app, in the way of the
/// bundled one (the same label): unloaded and removed.
fn remove_plain_agent() -> Result<(), InstallError> {
    let path = plist_path()?;
    if path.exists() {
        println!("Replacing the LaunchAgent written without the app:");
        let _ = run("launchctl", &["bootout", &format!("{}/{LABEL}", domain())]);
        remove(&path)?;
    }
    Ok(())
}

pub fn install(scope: Scope, program: Option<PathBuf>) -> Result<(), InstallError> {
    if scope == Scope::System {
        return Err(InstallError::Unsupported(
            "on macOS robbie-mesh runs as a LaunchAgent in your session (your login Keychain is there); run `robbie-mesh service install` without --system".into(),
        ));
    }
    if let Some(plist) = bundled_agent() {
        remove_plain_agent()?;
        println!("Registering {} with macOS (Login Items):", plist.display());
        let state = login_items::register().map_err(|why| InstallError::Step {
            what: "register the LaunchAgent with SMAppService".into(),
            why,
        })?;
        return login_items::explain(state);
    }
    let bin = match program {
        Some(p) => p,
        None => exe()?,
    };
    let text = units::find("launchd")
        .expect("built in")
        .text
        .replace("/usr/local/bin/robbie-mesh", &bin.display().to_string());
    let path = plist_path()?;
    println!("Writing the LaunchAgent:");
    put(&path, &text, 0o644)?;
    println!("Loading it:");
    let _ = Command::new("launchctl")
        .args(["bootout", &format!("{}/{LABEL}", domain())])
        .output();
    run(
        "launchctl",
        &["bootstrap", &domain(), &path.display().to_string()],
    )?;
    println!("Done. Logs: ~/Library/Logs/robbie-mesh/robbie-mesh.log");
    Ok(())
}

pub fn uninstall(_scope: Scope) -> Result<(), InstallError> {
    if bundled_agent().is_some() {
        println!("Unregistering the app's LaunchAgent (Login Items):");
        login_items::unregister().map_err(|why| InstallError::Step {
            what: "unregister the LaunchAgent with SMAppService".into(),
            why,
        })?;
    }
    let path = plist_path()?;
    if path.exists() {
        println!("Unloading it:");
        let _ = run("launchctl", &["bootout", &format!("{}/{LABEL}", domain())]);
        println!("Removing it:");
        remove(&path)?;
    }
    println!("Done. Kept: the config and the store with your conversations.");
    Ok(())
}

pub fn status(_scope: Scope) -> Result<(), InstallError> {
    if bundled_agent().is_some() {
        println!("The app's LaunchAgent: {}", login_items::status().words());
    }
    let path = plist_path()?;
    println!(
        "LaunchAgent {}: {}",
        path.display(),
        if path.exists() {
            "installed"
        } else {
            "not installed"
        }
    );
    println!(
        "{}",
        ask("launchctl", &["print", &format!("{}/{LABEL}", domain())])
    );
    Ok(())
}

pub fn starts_at_login() -> bool {
    if bundled_agent().is_some()
        && matches!(
            login_items::status(),
            login_items::State::Enabled | login_items::State::RequiresApproval
        )
    {
        return true;
    }
    plist_path().is_ok_and(|p| p.exists())
}
