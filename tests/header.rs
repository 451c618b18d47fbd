//! include/engine.h is generated from src/ffi/ by cbindgen and must not drift:
//! this test regenerates it and fails on any difference. Run with
//! `UPDATE_HEADER=1` to rewrite the header instead. Needs no network: cbindgen
//! parses src/ffi/ directly (no `cargo metadata`).

use std::path::Path;

#[test]
fn header_matches_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let path = root.join("include/engine.h");
    if std::env::var_os("UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("include/engine.h is writable");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        let line = current
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| current.lines().count().min(generated.lines().count()));
        panic!(
            "include/engine.h differs from what src/ffi/ generates (first at line {}): \
             run `UPDATE_HEADER=1 cargo test --test header` and commit the result",
            line + 1
        );
    }
}
