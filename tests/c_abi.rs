//! The C ABI from real C and C++: programs in tests/c/ (and the README's example)
//! compiled with the system compiler against include/engine.h and the library
//! cargo built next to this test binary, then run on the fixture model; the C
//! test also runs once under valgrind when it is installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture_dir;
use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The greedy request the C program keeps (the other one it aborts).
const KEEP_PROMPT: &str = "The quick brown fox";
const KEEP_TOKENS: usize = 12;

/// The directory holding the libengine.{so,a} built with this test binary.
/// `cargo test` compiles the package's cdylib and staticlib along with the rlib
/// into target/<profile>/deps/, next to the test binary (only `cargo build`
/// copies them up to target/<profile>/, so those may be stale).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    let candidates = [
        deps.to_path_buf(),
        deps.parent().unwrap_or(deps).to_path_buf(),
    ];
    candidates
        .iter()
        .find(|d| d.join("libengine.so").exists() && d.join("libengine.a").exists())
        .unwrap_or_else(|| {
            panic!(
                "no libengine.so and libengine.a next to {} (cargo builds them with the tests)",
                exe.display()
            )
        })
        .clone()
}

/// Runs a command, failing the test with its output when it fails.
/// Runs without `LD_LIBRARY_PATH`: cargo sets it for tests (including
/// target/<profile>/, where an older libengine.so may lie), and it would win over
/// the programs' rpath.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// Compiles `source` (C or C++ by `compiler`) against the header and the shared
/// library, with an rpath so the program finds it.
fn compile(compiler: &str, std: &str, source: &Path, output: &Path) {
    let lib = lib_dir();
    run(Command::new(compiler)
        .arg(format!("-std={std}"))
        .args(["-Wall", "-Wextra", "-pedantic", "-Werror", "-g", "-pthread"])
        .arg(format!("-I{ROOT}/include"))
        .arg(source)
        .arg("-o")
        .arg(output)
        .arg(format!("-L{}", lib.display()))
        .arg("-lengine")
        .arg(format!("-Wl,-rpath,{}", lib.display())));
}

fn keep_request() -> String {
    serde_json::json!({
        "prompt": KEEP_PROMPT,
        "max_tokens": KEEP_TOKENS,
        "temperature": 0,
        "ignore_eos": true,
    })
    .to_string()
}

/// What the Rust API generates for the kept request.
fn expected_text() -> String {
    let options = LoadOptions {
        dtype: "float32".into(),
        ..LoadOptions::default()
    };
    let mut llm = Llm::load(&fixture_dir("tiny-llama"), &options).unwrap();
    let request = Request {
        prompt: Prompt::Text(KEEP_PROMPT.into()),
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(KEEP_TOKENS)
        },
    };
    let text = llm.generate(&[request]).unwrap()[0].best().text.clone();
    assert!(!text.is_empty());
    text
}

/// Builds tests/c/stream.c and returns the command that runs it on the fixture.
fn stream_program(dir: &Path) -> (PathBuf, Vec<String>) {
    let binary = dir.join("stream");
    compile(
        "cc",
        "c11",
        &Path::new(ROOT).join("tests/c/stream.c"),
        &binary,
    );
    let expected = dir.join("expected.txt");
    std::fs::write(&expected, expected_text()).unwrap();
    let args = vec![
        fixture_dir("tiny-llama").display().to_string(),
        keep_request(),
        expected.display().to_string(),
    ];
    (binary, args)
}

#[test]
fn c_program_streams_two_requests_from_two_threads_and_aborts_one() {
    let dir = tempfile::tempdir().unwrap();
    let (binary, args) = stream_program(dir.path());
    let out = run(Command::new(&binary).args(&args));
    assert_eq!(out.trim(), "OK");
}

#[test]
fn c_program_is_clean_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("valgrind is not installed: skipping (CI runs this test with it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (binary, args) = stream_program(dir.path());
    let out = run(Command::new("valgrind")
        .args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--quiet",
        ])
        .arg(&binary)
        .args(&args));
    assert_eq!(out.trim(), "OK");
}

#[test]
fn cpp_example_compiles_as_cpp17_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("example");
    compile(
        "c++",
        "c++17",
        &Path::new(ROOT).join("tests/c/example.cpp"),
        &binary,
    );
    let out = run(Command::new(&binary).arg(fixture_dir("tiny-llama")));
    assert!(out.ends_with("OK\n"), "{out}");
    assert!(out.contains("5 tokens"), "{out}");
}

#[test]
fn header_stands_alone_in_c_and_cpp() {
    let dir = tempfile::tempdir().unwrap();
    for (compiler, std, file) in [("cc", "c11", "only.c"), ("c++", "c++17", "only.cpp")] {
        let source = dir.path().join(file);
        std::fs::write(
            &source,
            "#include \"engine.h\"\nint main(void) { return engine_abi_version() == ENGINE_ABI_VERSION ? 0 : 1; }\n",
        )
        .unwrap();
        compile(
            compiler,
            std,
            &source,
            &dir.path().join(format!("{file}.out")),
        );
        run(&mut Command::new(dir.path().join(format!("{file}.out"))));
    }
}

#[test]
fn static_library_links_with_the_documented_system_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("example-static");
    let lib = lib_dir();
    run(Command::new("c++")
        .args(["-std=c++17", "-Wall", "-Werror", "-pthread"])
        .arg(format!("-I{ROOT}/include"))
        .arg(Path::new(ROOT).join("tests/c/example.cpp"))
        .arg("-o")
        .arg(&binary)
        .arg(lib.join("libengine.a"))
        .args(["-lpthread", "-ldl", "-lm"]));
    let out = run(Command::new(&binary).arg(fixture_dir("tiny-llama")));
    assert!(out.ends_with("OK\n"), "{out}");
}

/// The README's C block and its `cc` command line, exactly as written there.
fn readme_example() -> (String, String) {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = &readme[readme
        .find("## The C library")
        .expect("README has a C library section")..];
    // The first block of each kind from `from` on: the command follows the program.
    let block = |fence: &str, from: usize| {
        let start = from + section[from..].find(fence).expect("the code block") + fence.len();
        let end = start + section[start..].find("\n```").expect("the block ends");
        (section[start..end].to_string(), end)
    };
    let (code, code_end) = block("```c\n", 0);
    let command = block("```sh\n", code_end)
        .0
        .lines()
        .find(|l| l.starts_with("cc "))
        .expect("a cc command")
        .to_string();
    (code, command)
}

#[test]
fn readme_example_compiles_with_the_command_shown_and_runs() {
    let (code, command) = readme_example();
    assert!(code.lines().count() <= 35, "the example stays short");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("example.c"), code).unwrap();
    // The command names include/ and target/release/ relative to the repository;
    // here they lead to the header and to the library this test was built with.
    std::os::unix::fs::symlink(Path::new(ROOT).join("include"), dir.path().join("include"))
        .unwrap();
    std::fs::create_dir(dir.path().join("target")).unwrap();
    std::os::unix::fs::symlink(lib_dir(), dir.path().join("target/release")).unwrap();
    run(Command::new("sh")
        .arg("-c")
        .arg(&command)
        .current_dir(dir.path()));
    let out = run(Command::new(dir.path().join("example")).arg(fixture_dir("tiny-llama")));
    assert!(out.contains(" tokens]"), "{out}");
}

/// The functions include/engine.h declares: the whole C ABI.
fn header_functions() -> Vec<String> {
    let header = std::fs::read_to_string(Path::new(ROOT).join("include/engine.h")).unwrap();
    let names = regex_automata::meta::Regex::new(r"\bengine_[a-z_]+\(").unwrap();
    let mut found: Vec<String> = names
        .find_iter(&header)
        .map(|m| header[m.start()..m.end() - 1].to_string())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Installs the library into a fresh prefix, as `scripts/install-lib.sh` does.
fn install(dir: &Path) -> PathBuf {
    let prefix = dir.join("prefix");
    run(Command::new(Path::new(ROOT).join("scripts/install-lib.sh"))
        .arg(&prefix)
        .env("LIB_DIR", lib_dir()));
    prefix
}

#[test]
fn installed_library_exports_the_c_abi_alone_under_its_soname() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = install(dir.path());
    let lib = prefix.join("lib");
    assert!(prefix.join("include/engine.h").exists());
    let target = std::fs::read_link(lib.join("libengine.so")).unwrap();
    assert_eq!(target, Path::new("libengine.so.1"));
    let shared = std::fs::read_link(lib.join("libengine.so.1")).unwrap();
    let abi = engine::ffi::ENGINE_ABI_VERSION;
    assert_eq!(shared, PathBuf::from(format!("libengine.so.1.{abi}")));
    let dynamic = run(Command::new("objdump").arg("-p").arg(lib.join(&shared)));
    assert!(
        dynamic
            .lines()
            .any(|l| l.split_whitespace().eq(["SONAME", "libengine.so.1"])),
        "{dynamic}"
    );
    let symbols = run(Command::new("nm")
        .args(["-D", "--defined-only", "--format=just-symbols"])
        .arg(lib.join(&shared)));
    let mut exported: Vec<&str> = symbols.lines().collect();
    exported.sort();
    assert_eq!(exported, header_functions());
}

#[test]
fn installed_library_builds_the_readme_example_with_pkg_config_shared_and_static() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = install(dir.path());
    let (code, _) = readme_example();
    std::fs::write(dir.path().join("example.c"), code).unwrap();
    let pkg_config = |args: &[&str]| {
        run(Command::new("pkg-config")
            .args(args)
            .arg("engine")
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")))
        .trim()
        .to_string()
    };
    let shared = pkg_config(&["--cflags", "--libs"]);
    let fully_static = pkg_config(&["--static", "--cflags", "--libs"]);
    for (name, flags) in [
        (
            "shared",
            format!("{shared} -Wl,-rpath,{}/lib", prefix.display()),
        ),
        ("static", format!("-static {fully_static}")),
    ] {
        run(Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cc -std=c11 -Wall -Wextra -pedantic -Werror example.c {flags} -o {name}"
            ))
            .current_dir(dir.path()));
        let out = run(Command::new(dir.path().join(name)).arg(fixture_dir("tiny-llama")));
        assert!(out.contains(" tokens]"), "{name}: {out}");
    }
    let needed = run(Command::new("objdump")
        .arg("-p")
        .arg(dir.path().join("static")));
    assert!(!needed.contains("libengine"), "{needed}");
}

#[test]
fn installed_library_builds_the_cpp_example_with_cmake() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = install(dir.path());
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("CMakeLists.txt"),
        format!(
            "cmake_minimum_required(VERSION 3.16)\n\
             project(example CXX)\n\
             set(CMAKE_CXX_STANDARD 17)\n\
             find_package(engine 0.1 REQUIRED)\n\
             add_executable(example {ROOT}/tests/c/example.cpp)\n\
             target_link_libraries(example PRIVATE engine::engine)\n"
        ),
    )
    .unwrap();
    let build = dir.path().join("build");
    run(Command::new("cmake")
        .arg("-S")
        .arg(&project)
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())));
    run(Command::new("cmake").arg("--build").arg(&build));
    let out = run(Command::new(build.join("example")).arg(fixture_dir("tiny-llama")));
    assert!(out.ends_with("OK\n"), "{out}");
}
