//! The service-manager files, as shipped: one source, `installers/` at the top
//! of the repository. Packages copy them from there, `robbie-mesh service print`
//! prints these copies (a test checks they are the same bytes), and
//! `robbie-mesh service install` writes them.

/// One file for a service manager or a desktop.
pub struct UnitFile {
    /// What `service print` calls it.
    pub kind: &'static str,
    /// Where it lives in the repository.
    pub source: &'static str,
    /// Where it is installed.
    pub installed: &'static str,
    pub text: &'static str,
}

macro_rules! unit {
    ($kind:literal, $source:literal, $installed:literal) => {
        UnitFile {
            kind: $kind,
            source: $source,
            installed: $installed,
            text: include_str!(concat!("../../", $source)),
        }
    };
}

pub const FILES: &[UnitFile] = &[
    unit!(
        "system",
        "installers/systemd/robbie-mesh.service",
        "/usr/lib/systemd/system/robbie-mesh.service"
    ),
    unit!(
        "sysusers",
        "installers/systemd/robbie-mesh.sysusers",
        "/usr/lib/sysusers.d/robbie-mesh.conf"
    ),
    unit!(
        "user",
        "installers/systemd/user/robbie-mesh.service",
        "/usr/lib/systemd/user/robbie-mesh.service"
    ),
    unit!(
        "autostart",
        "installers/linux/robbie-mesh-tray.desktop",
        "/etc/xdg/autostart/robbie-mesh-tray.desktop"
    ),
    unit!(
        "launchd",
        "installers/macos/app.robbie-mesh.service.standalone.plist",
        "~/Library/LaunchAgents/app.robbie-mesh.service.plist"
    ),
    unit!(
        "launchd-app",
        "installers/macos/app.robbie-mesh.service.plist",
        "robbie-mesh.app/Contents/Library/LaunchAgents/app.robbie-mesh.service.plist"
    ),
];

pub fn find(kind: &str) -> Option<&'static UnitFile> {
    FILES.iter().find(|f| f.kind == kind)
}
