//! The `robbie-mesh` command; every command's body is in the library
//! (`robbie_mesh::cli`).

/// mimalloc instead of glibc's malloc: tunnels allocate and free a packet-sized
/// buffer per SSH packet across threads, which glibc handles with page faults and
/// trims (measured: download throughput 0.77x of OpenSSH with glibc; see
/// ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    robbie_mesh::cli::main()
}
