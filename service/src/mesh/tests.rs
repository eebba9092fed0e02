use std::path::{Path, PathBuf};

use super::*;
use crate::config::validate::Env;

fn env() -> Env {
    Env {
        home: PathBuf::from("/home/u"),
        user: "u".into(),
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn seed() -> Mesh {
    let path = examples().join("mesh.toml");
    Mesh::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn config_of(mesh: &Mesh, node: &str) -> crate::config::Config {
    let n = mesh.node(node).expect("node");
    let how = format!("robbie-mesh init --mesh mesh.toml --node {node}");
    let text = render::render(mesh, &plan::plan(mesh, n), &how, true);
    crate::config::parse_with(&text, &format!("{node} (generated)"), &env())
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn init_on_the_seeds_mesh_reproduces_the_examples() {
    let mesh = seed();
    let names: Vec<&str> = mesh.mesh_nodes().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["aurora", "vengeance", "robbiebook1"]);
    for node in names {
        let generated = config_of(&mesh, node);
        let path = examples().join(format!("{node}.toml"));
        let text = std::fs::read_to_string(&path).expect("example");
        let example = crate::config::parse_with(&text, &path.display().to_string(), &env())
            .unwrap_or_else(|e| panic!("{e}"));
        // Equivalent: the same validated config, whatever the comments.
        let (g, e) = (format!("{generated:#?}"), format!("{example:#?}"));
        let differ: Vec<String> = g
            .lines()
            .zip(e.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {i}: init {a:?}, example {b:?}"))
            .take(8)
            .collect();
        assert!(
            g == e,
            "examples/{node}.toml is not what `robbie-mesh init --mesh examples/mesh.toml --node {node}` writes \
             (run that with `--out examples/{node}.toml --force`):\n{}",
            differ.join("\n")
        );
    }
}

#[test]
fn the_three_generated_configs_agree_and_so_do_the_examples() {
    let mesh = seed();
    let generated: Vec<_> = mesh
        .mesh_nodes()
        .map(|n| config_of(&mesh, &n.name))
        .collect();
    assert_eq!(agree::check(&generated), Vec::<String>::new());
    // Each forward's remote port is something its node runs, and each reverse
    // forward lands where the other node's config looks for it.
    let aurora = &generated[0];
    let ollama = aurora
        .services
        .iter()
        .find(|s| s.name == "ollama")
        .expect("ollama");
    assert_eq!(
        ollama.candidates[1].address.port, 22434,
        "vengeance's -R landing"
    );
    let vengeance = &generated[1];
    let to_aurora = &vengeance.peers[0];
    assert!(to_aurora
        .forwards
        .iter()
        .any(|f| f.name == "ollama-to-aurora" && f.remote.port == 22434 && f.local.port == 11435));
}

fn broken(edit: impl Fn(&str) -> String) -> Vec<String> {
    let text = std::fs::read_to_string(examples().join("mesh.toml")).expect("mesh");
    let mesh = Mesh::parse(&edit(&text), "broken.toml").unwrap_or_else(|e| panic!("{e}"));
    let configs: Vec<_> = mesh
        .mesh_nodes()
        .map(|n| config_of(&mesh, &n.name))
        .collect();
    agree::check(&configs)
}

#[test]
fn two_nodes_in_one_port_block_are_found_with_the_node_and_the_port() {
    // RobbieBook1 put in Vengeance's block: both publish their API on Aurora's 22007.
    let found = broken(|t| {
        t.replace(
            "name = \"robbiebook1\"\n",
            "name = \"robbiebook1\"\nblock = 22\n",
        )
    });
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("aurora: 127.0.0.1:22007 is where")
                && f.contains("vengeance's api-to-aurora")
                && f.contains("robbiebook1's api-to-aurora")),
        "{found:#?}"
    );
}

#[test]
fn an_own_port_moved_is_seen_by_the_nodes_that_use_it() {
    // Aurora's Ollama moved onto its API's port.
    let found = broken(|t| {
        t.replace(
            "runs = [\"ollama\", \"postgres\"]\n",
            "runs = [\"ollama\", \"postgres\"]\nports = { ollama = 8007 }\n",
        )
    });
    assert!(
        found.iter().any(|f| f
            == "aurora: its own ollama would be at 127.0.0.1:8007, where its robbie-mesh API listens"),
        "{found:#?}"
    );
}

#[test]
fn hand_edited_configs_that_disagree_are_named() {
    let read = |node: &str| {
        let path = examples().join(format!("{node}.toml"));
        std::fs::read_to_string(path).expect("example")
    };
    let parse = |text: &str, node: &str| {
        crate::config::parse_with(text, node, &env()).unwrap_or_else(|e| panic!("{e}"))
    };
    // Aurora's config looks for Vengeance's Ollama one port off.
    let aurora = parse(
        &read("aurora").replace("127.0.0.1:22434", "127.0.0.1:22435"),
        "aurora",
    );
    let vengeance = parse(&read("vengeance"), "vengeance");
    let book = parse(&read("robbiebook1"), "robbiebook1");
    let found = agree::check(&[aurora, vengeance, book]);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("aurora: expects vengeance's ollama at 127.0.0.1:22435")),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|f| f.starts_with("vengeance: reverse forward ollama-to-aurora lands on aurora's 127.0.0.1:22434, but aurora's config expects nothing")),
        "{found:#?}"
    );
}

fn mesh_errors(text: &str) -> Vec<String> {
    match Mesh::parse(text, "m.toml") {
        Ok(_) => panic!("expected errors for\n{text}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn a_mesh_that_cannot_work_says_where_and_what_to_do() {
    // A row listing a node that runs no such service.
    let e = mesh_errors(
        "[[node]]\nname = \"a\"\nssh = \"a\"\n\n[[node]]\nname = \"b\"\ndials = [\"a\"]\n\
         priority = { ollama = [\"a\"] }\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("m.toml:8:"), "{e:?}");
    assert!(
        e[0].contains(
            "b's ollama row lists a, which does not run ollama (add \"ollama\" to a's `runs`)"
        ),
        "{e:?}"
    );
    // Two nodes that never meet.
    let e = mesh_errors(
        "[[node]]\nname = \"a\"\nruns = [\"ollama\"]\n\n[[node]]\nname = \"b\"\n\
         priority = { ollama = [\"a\"] }\n",
    );
    assert!(e[0].contains("neither dials the other: add \"a\" to b's `dials` (and give a an `ssh`), or \"b\" to a's"), "{e:?}");
    // Dialing a node nobody can reach.
    let e = mesh_errors("[[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\ndials = [\"a\"]\n");
    assert!(
        e[0].starts_with("m.toml:5:") && e[0].contains("a has no `ssh`"),
        "{e:?}"
    );
    // Unknown fields and services.
    let e = mesh_errors("[[node]]\nname = \"a\"\nrun = [\"ollama\"]\n");
    assert!(e[0].contains("unknown field `run`"), "{e:?}");
    let e = mesh_errors("[[node]]\nname = \"a\"\nruns = [\"olama\"]\n");
    assert!(
        e[0].contains("unknown service `olama`") && e[0].contains("[service.olama]"),
        "{e:?}"
    );
}
