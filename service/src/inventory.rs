//! What this node is: CPU, memory (`sysinfo`) and GPUs, served at `GET /v1/node`
//! so every node of the mesh can learn what the others have.
//!
//! GPUs come from `nvidia-smi --query-gpu` (NVIDIA), `sysctl` (Apple Silicon, whose
//! GPU shares the unified memory), else none. The command is the seam tests feed:
//! `ROBBIE_MESH_NVIDIA_SMI` names another executable that prints the same CSV.

use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInventory {
    pub node: String,
    pub os: String,
    pub arch: String,
    pub cpu: Cpu,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
    /// How the GPUs were found ("nvidia-smi", "sysctl", "none"), or why not.
    pub gpu_source: String,
    /// What could not be read, and why (a sandbox hiding `/proc/cpuinfo`, say):
    /// a zero above is then unknown, not zero.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub model: String,
    /// Logical cores.
    pub cores: usize,
    pub physical_cores: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub name: String,
    pub vendor: String,
    pub vram_bytes: u64,
    pub vram_used_bytes: Option<u64>,
    /// Shares system memory (Apple Silicon): `vram_bytes` is the whole memory.
    pub unified_memory: bool,
}

const MIB: u64 = 1024 * 1024;

/// Reads the inventory of this machine (blocking: run it off the async workers).
pub fn detect(node: &str) -> NodeInventory {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    sys.refresh_cpu_all();
    let cpus = sys.cpus();
    let model = cpus
        .first()
        .map(|c| c.brand().trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let (gpus, gpu_source) = detect_gpus(sys.total_memory());
    let mut problems = Vec::new();
    if cpus.is_empty() {
        problems.push(unreadable("the CPU list", "/proc/cpuinfo"));
    }
    if sys.total_memory() == 0 {
        problems.push(unreadable("the memory size", "/proc/meminfo"));
    }
    for p in &problems {
        tracing::warn!("node inventory: {p}");
    }
    NodeInventory {
        problems,
        node: node.to_string(),
        os: sysinfo::System::long_os_version().unwrap_or_else(|| std::env::consts::OS.to_string()),
        arch: std::env::consts::ARCH.to_string(),
        cpu: Cpu {
            model,
            cores: cpus.len(),
            physical_cores: sysinfo::System::physical_core_count(),
        },
        memory_bytes: sys.total_memory(),
        gpus,
        gpu_source,
    }
}

/// Why `what` is unknown: on Linux, what reading `file` says (a unit with
/// `ProcSubset=pid` hides it, for one).
fn unreadable(what: &str, file: &str) -> String {
    let why = if cfg!(target_os = "linux") {
        match std::fs::read(file) {
            Err(e) => format!("{file}: {e}"),
            Ok(_) => format!("{file} is readable but was not understood"),
        }
    } else {
        "the system did not say".to_string()
    };
    format!("cannot read {what} ({why}); it shows as 0")
}

fn detect_gpus(memory_bytes: u64) -> (Vec<Gpu>, String) {
    let smi = std::env::var("ROBBIE_MESH_NVIDIA_SMI").unwrap_or_else(|_| "nvidia-smi".into());
    let out = Command::new(&smi)
        .args([
            "--query-gpu=name,memory.total,memory.used",
            "--format=csv,noheader,nounits",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            match parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)) {
                Ok(gpus) => return (gpus, "nvidia-smi".into()),
                Err(e) => return (Vec::new(), format!("nvidia-smi: {e}")),
            }
        }
        Ok(o) => {
            // Installed but failing (driver not loaded): say so rather than "none".
            let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
            if !cfg!(target_os = "macos") {
                return (Vec::new(), format!("nvidia-smi failed: {err}"));
            }
        }
        Err(_) => {}
    }
    if cfg!(target_os = "macos") {
        if let Some(gpu) = apple_gpu(memory_bytes) {
            return (vec![gpu], "sysctl".into());
        }
    }
    (Vec::new(), "none".into())
}

/// `name, memory.total [MiB], memory.used [MiB]` per line, as
/// `nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader,nounits` prints.
pub fn parse_nvidia_smi(csv: &str) -> Result<Vec<Gpu>, String> {
    let mut gpus = Vec::new();
    for (i, line) in csv
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [name, total, used] = fields[..] else {
            return Err(format!(
                "line {}: expected `name, memory.total, memory.used`, got `{line}`",
                i + 1
            ));
        };
        let total: u64 = total.parse().map_err(|_| {
            format!(
                "line {}: memory.total `{total}` is not a number of MiB",
                i + 1
            )
        })?;
        gpus.push(Gpu {
            name: name.to_string(),
            vendor: "nvidia".into(),
            vram_bytes: total * MIB,
            // "[N/A]" on some boards.
            vram_used_bytes: used.parse::<u64>().ok().map(|u| u * MIB),
            unified_memory: false,
        });
    }
    Ok(gpus)
}

/// Apple Silicon: the chip's name from sysctl; its GPU uses the unified memory.
fn apple_gpu(memory_bytes: u64) -> Option<Gpu> {
    let out = Command::new("sysctl")
        .args(["-n", "machdep.cpu.brand_string"])
        .output()
        .ok()?;
    let chip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    chip.starts_with("Apple").then(|| Gpu {
        name: format!("{chip} GPU"),
        vendor: "apple".into(),
        vram_bytes: memory_bytes,
        vram_used_bytes: None,
        unified_memory: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_csv() {
        let gpus = parse_nvidia_smi(
            "NVIDIA GeForce RTX 4090, 24564, 1031\nNVIDIA H100 80GB HBM3, 81559, [N/A]\n",
        )
        .expect("parse");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].name, "NVIDIA GeForce RTX 4090");
        assert_eq!(gpus[0].vram_bytes, 24564 * MIB);
        assert_eq!(gpus[0].vram_used_bytes, Some(1031 * MIB));
        assert_eq!(gpus[1].vram_used_bytes, None);
        assert!(parse_nvidia_smi("").expect("empty").is_empty());
        let e = parse_nvidia_smi("RTX, lots, 0").expect_err("bad");
        assert!(e.contains("memory.total `lots`"), "{e}");
    }

    #[test]
    fn this_machine_has_a_cpu_and_memory() {
        let inv = detect("test");
        assert!(inv.cpu.cores >= 1);
        assert!(inv.memory_bytes > 0);
        assert!(!inv.gpu_source.is_empty());
    }
}
