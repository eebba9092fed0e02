//! A real systemd, as PID 1, in a sandbox: new PID, mount, UTS, IPC, network
//! and cgroup namespaces over an overlay of this machine's root, so units,
//! packages and reboots can be tested without touching the host.
//!
//! What it must never do: run systemd on the host's own filesystem (its
//! tmpfiles set-up empties `/tmp`), or stop it by name (SIGTERM makes systemd
//! re-execute; a PID namespace's init dies to SIGKILL from outside, by PID, and
//! takes the namespace with it). The root is an overlay whose upper layer lives
//! in a directory of its own; fresh `/run`, `/tmp`, `/var/tmp` and `/dev`;
//! `/proc/sys` and `/sys` read-only; capabilities that reach the host kernel
//! (modules, raw I/O, the clock, audit) dropped from the bounding set.
//!
//! A "reboot" kills PID 1 and boots again on the same upper layer: what was
//! installed and enabled is still there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Builds the root and becomes systemd. Runs as PID 1 of the new namespaces.
/// `$1`: the sandbox directory; `$2`: its cgroup (v2) directory.
const BOOT: &str = r#"
set -eu
base=$1 cg=$2
echo 1 > "$cg/payload/cgroup.procs"
exec unshare --cgroup bash -c '
set -eu
base=$1
M=$base/merged
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$M"
for d in run tmp var/tmp dev; do mount -t tmpfs -o mode=755 tmpfs "$M/$d"; done
chmod 1777 "$M/tmp" "$M/var/tmp"
mknod -m 666 "$M/dev/null" c 1 3
mknod -m 666 "$M/dev/zero" c 1 5
mknod -m 666 "$M/dev/full" c 1 7
mknod -m 666 "$M/dev/random" c 1 8
mknod -m 666 "$M/dev/urandom" c 1 9
mknod -m 666 "$M/dev/tty" c 5 0
mkdir -p "$M/dev/pts" "$M/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$M/dev/pts"
ln -s pts/ptmx "$M/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$M/dev/shm"
ln -s /proc/self/fd "$M/dev/fd"
ln -s /proc/self/fd/0 "$M/dev/stdin"
ln -s /proc/self/fd/1 "$M/dev/stdout"
ln -s /proc/self/fd/2 "$M/dev/stderr"
touch "$M/dev/console"
mount --bind /dev/null "$M/dev/console"
mount -t proc proc "$M/proc"
mount --bind "$M/proc/sys" "$M/proc/sys"
mount -o remount,bind,ro "$M/proc/sys"
if [ -e "$M/proc/sysrq-trigger" ]; then
  mount --bind "$M/proc/sysrq-trigger" "$M/proc/sysrq-trigger"
  mount -o remount,bind,ro "$M/proc/sysrq-trigger"
fi
mount -t sysfs -o ro sysfs "$M/sys"
mount -t cgroup2 cgroup2 "$M/sys/fs/cgroup"
if [ -d "$base/bring" ]; then
  mkdir -p "$M/bring"
  mount --bind "$base/bring" "$M/bring"
  mount -o remount,bind,ro "$M/bring"
fi
cd "$M"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
mount --make-rshared /
exec setpriv --bounding-set -sys_module,-sys_rawio,-sys_time,-wake_alarm,-syslog,-mac_admin,-mac_override,-sys_pacct,-block_suspend,-audit_control,-audit_read,-audit_write \
  env -i container=robbie-mesh-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --unit=multi-user.target
' boot "$base"
"#;

/// Units of this machine's image that must not start inside (the host's
/// enabled services, gettys, timers, and what needs a real kernel's consent).
const MASK: &[&str] = &[
    "sys-fs-fuse-connections.mount",
    "systemd-journald-audit.socket",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-binfmt.service",
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "getty.target",
    "console-getty.service",
    "systemd-timesyncd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
];

pub struct Sandbox {
    pub dir: PathBuf,
    cgroup: PathBuf,
    /// The `unshare` process in this namespace; PID 1 is its child.
    unshare: Option<std::process::Child>,
    /// PID 1 as this namespace sees it.
    pid1: u32,
}

/// Where the sandbox's cgroup v2 tree is mounted on this host.
fn cgroup2_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

impl Sandbox {
    /// Boots a fresh sandbox and waits until systemd says it is up.
    /// `bring` files are visible read-only under `/bring` inside.
    pub fn boot(label: &str, bring: &[(&Path, &str)]) -> Sandbox {
        assert!(
            nix::unistd::geteuid().is_root(),
            "a systemd sandbox needs root (CI runs as root)"
        );
        let name = format!("rm-sd-{}-{label}", std::process::id());
        let dir = PathBuf::from("/var/tmp").join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["upper", "work", "merged", "bring"] {
            std::fs::create_dir_all(dir.join(d)).expect("sandbox dir");
        }
        for (from, as_name) in bring {
            std::fs::copy(from, dir.join("bring").join(as_name))
                .unwrap_or_else(|e| panic!("bring {}: {e}", from.display()));
        }
        prepare_upper(&dir.join("upper"));
        let cgroup = cgroup2_root().join(&name);
        std::fs::create_dir_all(cgroup.join("payload")).expect("sandbox cgroup");
        let mut sandbox = Sandbox {
            dir,
            cgroup,
            unshare: None,
            pid1: 0,
        };
        sandbox.start();
        sandbox
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("boot.log")).expect("boot log");
        let child = Command::new("unshare")
            .args([
                "--pid",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--propagation",
                "private",
                "--fork",
                "--kill-child=SIGKILL",
                "bash",
                "-c",
                BOOT,
                "boot",
            ])
            .arg(&self.dir)
            .arg(&self.cgroup)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("unshare");
        let unshare = child.id();
        self.unshare = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // PID 1 is unshare's child; systemd's socket shows when it listens.
        loop {
            let exited = self
                .unshare
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the sandbox's systemd did not start; boot log:\n{}",
                self.boot_log()
            );
            let children =
                std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                    .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                self.pid1 = pid;
                if Path::new(&format!("/proc/{pid}/root/run/systemd/private")).exists() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.sh("systemctl is-system-running --wait");
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            state == "running" || state == "degraded",
            "the sandbox's systemd is {state}:\n{}",
            self.sh_text("systemctl --failed --no-pager")
        );
    }

    fn boot_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("boot.log")).unwrap_or_default()
    }

    /// A command inside (`sh -c`), as root, in every namespace of the sandbox.
    pub fn sh(&self, script: &str) -> Output {
        self.sh_with_input(script, b"")
    }

    /// The same, with `input` on its stdin.
    pub fn sh_with_input(&self, script: &str, input: &[u8]) -> Output {
        use std::io::Write;
        // Into the sandbox's cgroup first: systemctl and friends then run
        // inside the tree systemd owns.
        let enter = format!(
            "echo $$ > {}/payload/cgroup.procs && exec nsenter -t {} -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root bash -c \"$0\"",
            self.cgroup.display(),
            self.pid1
        );
        let mut child = Command::new("sh")
            .args(["-c", &enter, script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("stdin");
        drop(stdin);
        child.wait_with_output().expect("nsenter")
    }

    /// stdout and stderr of a command inside, together.
    pub fn sh_text(&self, script: &str) -> String {
        let out = self.sh(script);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// A command inside that must succeed; its stdout.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "in the sandbox: `{script}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `text` to `path` inside.
    pub fn write(&self, path: &str, text: &str, mode: &str) {
        let out = self.sh_with_input(
            &format!("mkdir -p \"$(dirname {path})\" && cat > {path} && chmod {mode} {path}"),
            text.as_bytes(),
        );
        assert!(
            out.status.success(),
            "write {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A unit property (`systemctl show -p NAME --value`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.ok(&format!("systemctl show -p {name} --value {unit}"))
            .trim()
            .to_string()
    }

    /// Polls `pred` on a unit property until it holds or `deadline` passes.
    pub fn wait_property(
        &self,
        unit: &str,
        name: &str,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let v = self.property(unit, name);
            if pred(&v) {
                return v;
            }
            assert!(
                start.elapsed() < deadline,
                "{unit} {name} is still `{v}` after {deadline:?}:\n{}",
                self.sh_text(&format!(
                    "systemctl status --no-pager {unit}; journalctl --no-pager -n 30 -u {unit}"
                ))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills PID 1 (and with it every process inside) and boots again on the
    /// same upper layer.
    pub fn reboot(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.join("work"));
        std::fs::create_dir_all(self.dir.join("work")).expect("work dir");
        self.start();
    }

    fn kill(&mut self) {
        if self.pid1 != 0 {
            // Only our own systemd: PID 1 of its namespace.
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", self.pid1)).unwrap_or_default();
            let ns_pid1 = status
                .lines()
                .find(|l| l.starts_with("NSpid:"))
                .is_some_and(|l| l.split_whitespace().last() == Some("1"));
            if ns_pid1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid1 as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Some(mut c) = self.unshare.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.pid1 = 0;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
        // cgroups are released asynchronously: deepest first, retried.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cgroup.exists() && Instant::now() < deadline {
            let mut dirs: Vec<PathBuf> = walk_dirs(&self.cgroup);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(&d);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Nothing of it may still be mounted here before its files go.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if !mounts.contains(&self.dir.display().to_string()) {
            let _ = Command::new("rm")
                .args(["-rf", "--one-file-system"])
                .arg(&self.dir)
                .status();
        }
    }
}

fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// The upper layer before the first boot: its own machine id and hostname, no
/// fstab, multi-user as the default target, every unit the host enabled
/// masked, and no `policy-rc.d` (it would make maintainer scripts skip their
/// systemctl calls, as no real host does).
fn prepare_upper(upper: &Path) {
    let etc = upper.join("etc");
    let system = etc.join("systemd/system");
    std::fs::create_dir_all(&system).expect("upper etc");
    let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("a random id")
        .trim()
        .replace('-', "");
    std::fs::write(etc.join("machine-id"), format!("{id}\n")).expect("machine-id");
    std::fs::write(etc.join("hostname"), "sandbox\n").expect("hostname");
    std::fs::write(etc.join("fstab"), "").expect("fstab");
    let _ = std::os::unix::fs::symlink(
        "/lib/systemd/system/multi-user.target",
        system.join("default.target"),
    );
    let mut masked: Vec<String> = MASK.iter().map(|s| s.to_string()).collect();
    if let Ok(wants) = std::fs::read_dir("/etc/systemd/system") {
        for w in wants.flatten() {
            if w.file_name().to_string_lossy().ends_with(".wants") {
                for unit in std::fs::read_dir(w.path()).into_iter().flatten().flatten() {
                    masked.push(unit.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    for unit in masked {
        let _ = std::os::unix::fs::symlink("/dev/null", system.join(unit));
    }
    if Path::new("/usr/sbin/policy-rc.d").exists() {
        let sbin = upper.join("usr/sbin");
        std::fs::create_dir_all(&sbin).expect("upper sbin");
        // An overlay whiteout: a character device 0/0 hides the lower file.
        let st = Command::new("mknod")
            .arg(sbin.join("policy-rc.d"))
            .args(["c", "0", "0"])
            .status()
            .expect("mknod");
        assert!(st.success(), "whiteout policy-rc.d");
    }
}
