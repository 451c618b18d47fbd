//! The C ABI from real C and C++: programs in tests/c/ (and the README's example)
//! compiled with the system compiler against include/engine.h and the library
//! cargo built next to this test binary, then run on the fixture model; the C
//! test also runs once under valgrind when it is installed. Then the library as
//! a C developer gets it: `scripts/install-lib.sh` into a prefix, the README's C
//! and C++ programs built against it with pkg-config and with CMake (shared and
//! static) and run, and the exported symbols held to the header's functions.

use crate::common;

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

/// The README's C library section: its C program, C++ program and the shell
/// block that follows the C program, exactly as written there.
struct Readme {
    c: String,
    cpp: String,
    commands: Vec<String>,
}

fn readme() -> Readme {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = &readme[readme
        .find("## The C library")
        .expect("README has a C library section")..];
    // The first block of a kind from `from` on.
    let block = |fence: &str, from: usize| {
        let start = from + section[from..].find(fence).expect("the code block") + fence.len();
        let end = start + section[start..].find("\n```").expect("the block ends");
        (section[start..end].to_string(), end)
    };
    let (c, c_end) = block("```c\n", 0);
    let (commands, _) = block("```sh\n", c_end);
    let (cpp, _) = block("```cpp\n", c_end);
    Readme {
        c,
        cpp,
        commands: commands.lines().map(str::to_string).collect(),
    }
}

#[test]
fn readme_example_compiles_with_the_commands_shown_and_runs() {
    let readme = readme();
    assert!(readme.c.lines().count() <= 35, "the example stays short");
    // The block builds the library first: the server's command does not.
    assert_eq!(readme.commands[0], "cargo build --release --lib");
    let compile = readme.commands[1].as_str();
    assert!(compile.starts_with("cc "), "{compile}");
    assert_eq!(readme.commands[2], "./example tests/fixtures/tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("example.c"), &readme.c).unwrap();
    // The command names include/ and target/release/ relative to the repository;
    // here they lead to the header and to the library this test was built with.
    std::os::unix::fs::symlink(Path::new(ROOT).join("include"), dir.path().join("include"))
        .unwrap();
    std::fs::create_dir(dir.path().join("target")).unwrap();
    std::os::unix::fs::symlink(lib_dir(), dir.path().join("target/release")).unwrap();
    run(Command::new("sh")
        .arg("-c")
        .arg(compile)
        .current_dir(dir.path()));
    let out = run(Command::new(dir.path().join("example")).arg(fixture_dir("tiny-llama")));
    assert!(out.contains(" tokens]"), "{out}");
}

#[test]
fn readme_cpp_example_compiles_as_cpp17_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("example.cpp");
    std::fs::write(&source, readme().cpp).unwrap();
    let binary = dir.path().join("example");
    compile("c++", "c++17", &source, &binary);
    let out = run(Command::new(&binary).arg(fixture_dir("tiny-llama")));
    assert_eq!(out, format!("{}\n", readme_prompt_text()));
}

/// What the READMEs' request generates (greedy, 16 tokens), from the Rust API.
fn readme_prompt_text() -> String {
    let mut llm = Llm::load(&fixture_dir("tiny-llama"), &LoadOptions::default()).unwrap();
    let request = Request {
        prompt: Prompt::Text("Hello, my name is".into()),
        params: SamplingParams::greedy(16),
    };
    llm.generate(&[request]).unwrap()[0].best().text.clone()
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

/// The dynamic symbols a shared library defines, sorted.
fn exported(library: &Path) -> Vec<String> {
    let symbols = run(Command::new("nm")
        .args(["-D", "--defined-only", "--format=just-symbols"])
        .arg(library));
    let mut names: Vec<String> = symbols.lines().map(str::to_string).collect();
    names.sort();
    names
}

#[test]
fn cargo_built_library_exports_the_c_abi_alone() {
    // build.rs hides what the dependencies export (llguidance's llg_*).
    assert_eq!(
        exported(&lib_dir().join("libengine.so")),
        header_functions()
    );
}

/// A prefix `scripts/install-lib.sh` installed the library this test was built
/// with into, once per run (under cargo's scratch folder for tests).
fn installed_prefix() -> &'static Path {
    static PREFIX: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_abi-prefix");
        if prefix.exists() {
            std::fs::remove_dir_all(&prefix).unwrap();
        }
        run(Command::new(Path::new(ROOT).join("scripts/install-lib.sh"))
            .arg(&prefix)
            .env("LIB_DIR", lib_dir()));
        prefix
    })
}

#[test]
fn installed_library_exports_the_c_abi_alone_under_its_soname() {
    let prefix = installed_prefix();
    let lib = prefix.join("lib");
    assert!(prefix.join("include/engine.h").exists());
    let target = std::fs::read_link(lib.join("libengine.so")).unwrap();
    assert_eq!(target, Path::new("libengine.so.1"));
    let shared = std::fs::read_link(lib.join("libengine.so.1")).unwrap();
    // The file's minor number is what engine_abi_version() returns.
    let abi = engine::ffi::engine_abi_version();
    assert_eq!(shared, PathBuf::from(format!("libengine.so.1.{abi}")));
    let dynamic = run(Command::new("objdump").arg("-p").arg(lib.join(&shared)));
    assert!(
        dynamic
            .lines()
            .any(|l| l.split_whitespace().eq(["SONAME", "libengine.so.1"])),
        "{dynamic}"
    );
    assert_eq!(exported(&lib.join(&shared)), header_functions());
    // Installed without debug info or rustc's LLVM bitcode: no C linker reads them.
    let sections = run(Command::new("objdump")
        .arg("-h")
        .arg(lib.join("libengine.a")));
    for dropped in [".debug_", ".llvmbc"] {
        assert!(!sections.contains(dropped), "libengine.a has {dropped}");
    }
}

/// Runs the two README programs built in `dir` as `{c,cpp}-{kind}` for each kind,
/// and checks the static ones need no libengine at run time.
fn run_examples(dir: &Path, kinds: &[&str]) {
    let text = readme_prompt_text();
    for kind in kinds {
        let c = run(Command::new(dir.join(format!("c-{kind}"))).arg(fixture_dir("tiny-llama")));
        assert!(
            c.starts_with(&text) && c.contains(" tokens]"),
            "{kind}: {c}"
        );
        let cpp = run(Command::new(dir.join(format!("cpp-{kind}"))).arg(fixture_dir("tiny-llama")));
        assert_eq!(cpp, format!("{text}\n"), "{kind}");
        let needed = run(Command::new("objdump")
            .arg("-p")
            .arg(dir.join(format!("c-{kind}"))));
        assert_eq!(
            needed.contains("libengine"),
            !kind.contains("static"),
            "{kind}: {needed}"
        );
    }
}

/// Writes the README's programs into `dir` as example.c and example.cpp.
fn write_examples(dir: &Path) {
    let readme = readme();
    std::fs::write(dir.join("example.c"), readme.c).unwrap();
    std::fs::write(dir.join("example.cpp"), readme.cpp).unwrap();
}

#[test]
fn installed_library_builds_the_readme_examples_with_pkg_config_shared_and_static() {
    let prefix = installed_prefix();
    let dir = tempfile::tempdir().unwrap();
    write_examples(dir.path());
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
    let rpath = format!("-Wl,-rpath,{}/lib", prefix.display());
    for (kind, flags) in [
        ("shared", format!("{shared} {rpath}")),
        ("static", format!("-static {fully_static}")),
    ] {
        for (compiler, std, lang) in [("cc", "c11", "c"), ("c++", "c++17", "cpp")] {
            run(Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "{compiler} -std={std} -Wall -Wextra -pedantic -Werror \
                     example.{lang} {flags} -o {lang}-{kind}"
                ))
                .current_dir(dir.path()));
        }
    }
    run_examples(dir.path(), &["shared", "static"]);
}

#[test]
fn installed_library_builds_the_readme_examples_with_cmake_shared_and_static() {
    let prefix = installed_prefix();
    let dir = tempfile::tempdir().unwrap();
    write_examples(dir.path());
    let mut cmake = String::from(
        "cmake_minimum_required(VERSION 3.16)\n\
         project(examples C CXX)\n\
         set(CMAKE_C_STANDARD 11)\n\
         set(CMAKE_CXX_STANDARD 17)\n\
         find_package(engine 0.1 REQUIRED)\n",
    );
    for (kind, target) in [
        ("cmake", "engine::engine"),
        ("cmake-static", "engine::engine_static"),
    ] {
        for lang in ["c", "cpp"] {
            cmake += &format!(
                "add_executable({lang}-{kind} example.{lang})\n\
                 target_link_libraries({lang}-{kind} PRIVATE {target})\n"
            );
        }
    }
    std::fs::write(dir.path().join("CMakeLists.txt"), cmake).unwrap();
    let build = dir.path().join("build");
    run(Command::new("cmake")
        .arg("-S")
        .arg(dir.path())
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())));
    run(Command::new("cmake").arg("--build").arg(&build));
    run_examples(&build, &["cmake", "cmake-static"]);
}
