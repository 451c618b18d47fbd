//! The map of ARCHITECTURE.md, checked: which top-level module of the engine
//! may import which. Imports are read from the sources (`crate::name` paths,
//! test modules and comments left out), so an arrow that breaks the layering
//! fails here, in the change that adds it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Each module and what it may import, lowest layer first. A new module gets a
/// row here and in ARCHITECTURE.md.
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("memory", &["error"]),
    ("backend", &["error", "memory"]),
    ("config", &["backend", "error"]),
    ("model", &["backend", "config", "error", "memory"]),
    ("gguf", &["backend", "config", "error", "model"]),
    ("kv_cache", &["error"]),
    ("tokenizer", &["config", "error", "gguf"]),
    ("sampling", &["backend", "error", "tokenizer"]),
    (
        "engine",
        &[
            "backend",
            "error",
            "kv_cache",
            "model",
            "sampling",
            "tokenizer",
        ],
    ),
    (
        "loader",
        &[
            "backend",
            "config",
            "engine",
            "error",
            "gguf",
            "memory",
            "model",
            "tokenizer",
        ],
    ),
    (
        "generate",
        &[
            "backend",
            "engine",
            "error",
            "loader",
            "model",
            "sampling",
            "tokenizer",
        ],
    ),
    (
        "ffi",
        &[
            "backend",
            "engine",
            "error",
            "loader",
            "sampling",
            "tokenizer",
        ],
    ),
    ("fixture", &["backend", "config", "error"]),
];

/// The top-level modules that each top-level module of `src/` names.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src/");
            let first = rel.components().next().expect("a file name");
            let top = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let text = fs::read_to_string(&path).expect("a UTF-8 source file");
            let names: &mut BTreeSet<String> = graph.entry(top.clone()).or_default();
            names.extend(crate_paths(&text).into_iter().filter(|n| *n != top));
        }
    }
    graph.retain(|m, _| m != "lib" && m != "architecture");
    graph
}

/// `crate::x` and `use crate::{x, y::{z}}` names in code outside test modules.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let code: String = code
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => names.extend(group_heads(group)),
            None => names.extend(first_ident(rest)),
        }
    }
    // `crate::Error`/`crate::Result` are the error module's re-exports.
    names
        .into_iter()
        .map(|n| {
            if n == "Error" || n == "Result" {
                "error".to_string()
            } else {
                n
            }
        })
        .collect()
}

/// The first name of each item of a `{a::{b, c}, d}` group (after its `{`).
fn group_heads(group: &str) -> Vec<String> {
    let (mut depth, mut item_start, mut heads) = (0, true, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                heads.extend(first_ident(&group[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn first_ident(s: &str) -> Option<String> {
    let ident: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty()).then_some(ident)
}

#[test]
fn every_import_follows_the_layering() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, names) in imports(&src) {
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "src/{module} has no row in ALLOWED (src/architecture.rs)"
            ));
            continue;
        };
        for name in names.iter().filter(|n| !may.contains(&n.as_str())) {
            wrong.push(format!("{module} -> {name}"));
        }
    }
    assert!(wrong.is_empty(), "arrows outside the layering: {wrong:#?}");
}

#[test]
fn the_layering_has_no_circle() {
    // Each row may only name rows above it: then no chain of arrows returns.
    for (i, (module, may)) in ALLOWED.iter().enumerate() {
        let above: Vec<&str> = ALLOWED[..i].iter().map(|(m, _)| *m).collect();
        for name in *may {
            assert!(
                above.contains(name),
                "{module} may import {name}, which is not below it"
            );
        }
    }
}

#[test]
fn the_reader_sees_imports() {
    let text = "use crate::backend::{A, B};\nuse crate::{config, model::{X, Y},\n    gguf};\n\
                // crate::ffi in a comment\nfn f() { crate::Error::x() }\n\
                #[cfg(test)]\nmod tests { use crate::engine; }";
    let names: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(names, ["backend", "config", "error", "gguf", "model"]);
}

#[test]
fn the_server_reaches_the_engine_only_through_the_c_abi() {
    // The server depends on engine-sys (the bindings of include/engine.h), never
    // on the engine crate, so it cannot name the engine's internals.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = fs::read_to_string(root.join("server/Cargo.toml")).expect("server/Cargo.toml");
    let deps: Vec<&str> = manifest
        .lines()
        .map(|l| l.split('=').next().unwrap_or("").trim())
        .collect();
    assert!(
        !deps.contains(&"engine"),
        "server/Cargo.toml depends on the engine crate"
    );
    assert!(
        deps.contains(&"engine-sys"),
        "server/Cargo.toml lost engine-sys"
    );
}

#[test]
fn the_shared_types_depend_on_neither_side() {
    // engine-api holds the JSON both sides of the C ABI read and write; it
    // depends on neither the engine nor the server.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = fs::read_to_string(root.join("crates/engine-api/Cargo.toml"))
        .expect("crates/engine-api/Cargo.toml");
    let deps: Vec<&str> = manifest
        .lines()
        .map(|l| l.split('=').next().unwrap_or("").trim())
        .collect();
    for side in ["engine", "engine-sys", "engine-server"] {
        assert!(!deps.contains(&side), "crates/engine-api depends on {side}");
    }
}
