//! The Ollama stand-in as a process, for a node the tests run in its own network
//! namespace: `ollama-stub --node NAME --listen 127.0.0.1:11435 MODEL...`. It prints
//! `listening on ADDR` once it accepts connections, and runs until killed.

use std::net::SocketAddr;

use mesh_tests::ollama::OllamaStub;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut node, mut listen, mut models) = (None, None, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--node" => node = args.next(),
            "--listen" => listen = args.next(),
            _ => models.push(a),
        }
    }
    let usage = "usage: ollama-stub --node NAME --listen ADDR MODEL...";
    let node = node.unwrap_or_else(|| panic!("{usage}"));
    let listen: SocketAddr = listen
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{usage}"));
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    let models: Vec<&str> = models.iter().map(String::as_str).collect();
    let stub = OllamaStub::serve(l, &node, &models);
    println!("listening on {}", stub.addr);
    std::future::pending::<()>().await;
}
