//! "Start at login" for the menu-bar app on macOS 13+: the LaunchAgent inside
//! the app bundle (`Contents/Library/LaunchAgents`) registered with
//! SMAppService, so it shows under Login Items, may need the user's approval
//! there, and follows the app if it is moved. The one place this crate calls
//! Objective-C; type-checked for `aarch64-apple-darwin` (see
//! `tests/mac-check.sh`), run only on a Mac.

use objc2::rc::Retained;
use objc2_foundation::NSString;
use objc2_service_management::{SMAppService, SMAppServiceStatus};

use super::InstallError;

const PLIST: &str = "app.robbie-mesh.service.plist";

pub enum State {
    NotRegistered,
    Enabled,
    RequiresApproval,
    NotFound,
}

impl State {
    pub fn words(&self) -> &'static str {
        match self {
            State::NotRegistered => "not registered",
            State::Enabled => "registered, starts at login",
            State::RequiresApproval => {
                "registered, waiting for your approval in System Settings → General → Login Items"
            }
            State::NotFound => "not found in the app bundle",
        }
    }
}

fn agent() -> Retained<SMAppService> {
    let name = NSString::from_str(PLIST);
    // SAFETY: a class method with a valid NSString; it only looks the
    // name up in this app's Contents/Library/LaunchAgents.
    unsafe { SMAppService::agentServiceWithPlistName(&name) }
}

fn state_of(service: &SMAppService) -> State {
    // SAFETY: a property read on a live object.
    match unsafe { service.status() } {
        SMAppServiceStatus::Enabled => State::Enabled,
        SMAppServiceStatus::RequiresApproval => State::RequiresApproval,
        SMAppServiceStatus::NotFound => State::NotFound,
        _ => State::NotRegistered,
    }
}

pub fn status() -> State {
    state_of(&agent())
}

/// Registers the agent (launchd starts it now and at every login);
/// registering an enabled one again is not an error.
pub fn register() -> Result<State, String> {
    let service = agent();
    if let State::Enabled = state_of(&service) {
        return Ok(State::Enabled);
    }
    // SAFETY: a method on a live object; errors come back as NSError.
    unsafe { service.registerAndReturnError() }
        .map_err(|e| e.localizedDescription().to_string())?;
    Ok(state_of(&service))
}

pub fn unregister() -> Result<(), String> {
    let service = agent();
    if let State::NotRegistered | State::NotFound = state_of(&service) {
        return Ok(());
    }
    // SAFETY: as in `register`.
    unsafe { service.unregisterAndReturnError() }.map_err(|e| e.localizedDescription().to_string())
}

/// What the registration left to do, said; macOS may want the user's
/// approval first (then its Login Items settings are opened).
pub fn explain(state: State) -> Result<(), InstallError> {
    println!("  = {}", state.words());
    match state {
        State::Enabled => {
            println!("Done. Logs: ~/Library/Logs/robbie-mesh/robbie-mesh.log");
            Ok(())
        }
        State::RequiresApproval => {
            // SAFETY: a class method without arguments.
            unsafe { SMAppService::openSystemSettingsLoginItems() };
            println!(
                "Allow robbie-mesh in System Settings → General → Login Items (opened for you); it starts as soon as you do."
            );
            Ok(())
        }
        State::NotRegistered | State::NotFound => Err(InstallError::Unsupported(
            "macOS did not register the app's LaunchAgent; reinstall the app from its .dmg into /Applications and try again".into(),
        )),
    }
}
