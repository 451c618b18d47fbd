//! Without the `cuda` feature this does nothing. With it, compiles csrc/**/*.cu
//! with nvcc into static libraries, one per file (cudart linked statically),
//! holding machine code for each target architecture plus PTX for the newest. With
//! `kernel-bindings`, regenerates the Rust bindings of csrc/kernels.h and
//! fails if they differ from the checked-in src/backend/cuda/kernels_sys.rs.
//!
//! Environment:
//! - `NVCC`: the nvcc to use (default: .toolchain/cuda/nvidia/cu13/bin/nvcc
//!   from scripts/install-cuda.sh if present, else `nvcc` on PATH);
//! - `CUDA_COMPUTE_CAP`: one architecture, e.g. `90` (default: 80 and 90);
//! - `ENGINE_CUDA_ARCHS`: a comma-separated list, e.g. `80,86,90`;
//! - `ENGINE_WRITE_KERNEL_BINDINGS=1` (with `kernel-bindings`): rewrite the bindings.
//!
//! Always: the cdylib (libengine.so) exports the C ABI alone. rustc exports every
//! `#[no_mangle]` function of every crate it links (llguidance's 51 `llg_*`, the
//! CUDA kernels' launchers), and a version script of ours cannot narrow that:
//! rust-lld unites it with rustc's and GNU ld refuses a second anonymous one. Those
//! functions come from archives (the dependencies' rlibs, the kernels' .a) while
//! `engine_*` are this crate's own objects, so `--exclude-libs ALL` keeps exactly
//! the ABI (tests/c_abi.rs checks the list against include/engine.h). The rlib
//! (the server, the tests) and the staticlib are unaffected.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
    #[cfg(feature = "cuda")]
    cuda::build();
    #[cfg(feature = "kernel-bindings")]
    bindings::check();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::env;
    use std::path::{Path, PathBuf};

    fn archs() -> Vec<String> {
        println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
        println!("cargo:rerun-if-env-changed=ENGINE_CUDA_ARCHS");
        let list = env::var("ENGINE_CUDA_ARCHS")
            .or_else(|_| env::var("CUDA_COMPUTE_CAP"))
            .unwrap_or_else(|_| "80,90".to_string());
        let archs: Vec<String> = list
            .split(',')
            .map(|a| a.trim().replace('.', ""))
            .filter(|a| !a.is_empty())
            .collect();
        assert!(
            archs
                .iter()
                .all(|a| a.chars().all(|c| c.is_ascii_alphanumeric())),
            "CUDA architectures must look like 80 or 90a, got {list:?}"
        );
        archs
    }

    fn nvcc(root: &Path) -> PathBuf {
        println!("cargo:rerun-if-env-changed=NVCC");
        if let Ok(n) = env::var("NVCC") {
            return PathBuf::from(n);
        }
        let local = root.join(".toolchain/cuda/nvidia/cu13/bin/nvcc");
        if local.exists() {
            local
        } else {
            PathBuf::from("nvcc")
        }
    }

    /// The .cu files under `dir` and its family folders (csrc/attention/); every
    /// file and folder met (headers too) is a rerun trigger.
    fn collect_sources(dir: &Path, sources: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("csrc/ is readable") {
            let path = entry.expect("csrc/ is readable").path();
            println!("cargo:rerun-if-changed={}", path.display());
            if path.is_dir() {
                collect_sources(&path, sources);
            } else if path.extension().is_some_and(|e| e == "cu") {
                sources.push(path);
            }
        }
    }

    /// `engine_kernels_attention_decode` for csrc/attention/decode.cu: unique per file.
    fn library_name(csrc: &Path, source: &Path) -> String {
        let relative = source
            .strip_prefix(csrc)
            .expect("sources lie under csrc/")
            .with_extension("");
        let stem = relative.to_str().expect("csrc/ file names are UTF-8");
        format!(
            "engine_kernels_{}",
            stem.replace(std::path::MAIN_SEPARATOR, "_")
        )
    }

    pub fn build() {
        let root =
            PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
        let csrc = root.join("csrc");
        let nvcc = nvcc(&root);
        // cc reads the compiler from NVCC.
        env::set_var("NVCC", &nvcc);

        let mut sources = Vec::new();
        collect_sources(&csrc, &mut sources);
        sources.sort();

        let archs = archs();
        let mut build = cc::Build::new();
        build
            .cuda(true)
            .cudart("static")
            .debug(false)
            .include(&csrc)
            .flag("-std=c++17")
            .flag("-O3")
            .flag("--expt-relaxed-constexpr")
            .flag("-Xcompiler=-fPIC");
        for arch in &archs {
            build.flag(format!("-gencode=arch=compute_{arch},code=sm_{arch}"));
        }
        // PTX of the newest architecture, for GPUs newer than every cubin.
        let newest = archs.last().expect("at least one CUDA architecture");
        build.flag(format!(
            "-gencode=arch=compute_{newest},code=compute_{newest}"
        ));
        // One library per file: cc compiles several .cu files of one build as
        // relocatable device code and device-links them, which keeps only the
        // cubins (no PTX, so no GPU newer than the newest arch could load them).
        // The files share device code only through headers (inlined into each),
        // so whole-program objects do.
        for source in &sources {
            build
                .clone()
                .file(source)
                .compile(&library_name(&csrc, source));
        }

        // libcudart_static.a: next to nvcc's bin/ in the wheel layout or a toolkit.
        if let Some(prefix) = nvcc.parent().and_then(Path::parent) {
            for lib in ["lib", "lib64", "targets/x86_64-linux/lib"] {
                let dir = prefix.join(lib);
                if dir.exists() {
                    println!("cargo:rustc-link-search=native={}", dir.display());
                }
            }
        }
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }
}

#[cfg(feature = "kernel-bindings")]
mod bindings {
    use std::env;
    use std::path::PathBuf;

    pub fn check() {
        let root =
            PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
        let header = root.join("csrc/kernels.h");
        let checked_in = root.join("src/backend/cuda/kernels_sys.rs");
        println!("cargo:rerun-if-changed={}", header.display());
        println!("cargo:rerun-if-changed={}", checked_in.display());
        println!("cargo:rerun-if-env-changed=ENGINE_WRITE_KERNEL_BINDINGS");
        let generated = bindgen::Builder::default()
            .header(header.to_string_lossy())
            .raw_line("//! Generated by bindgen from csrc/kernels.h: do not edit. Regenerate with")
            .raw_line("//! `ENGINE_WRITE_KERNEL_BINDINGS=1 cargo check --features kernel-bindings`")
            .raw_line("//! (CI checks that this file matches the header).")
            .raw_line("#![allow(non_camel_case_types, dead_code)]")
            .allowlist_function("ek_.*")
            .allowlist_type("ek_.*")
            .allowlist_var("EK_.*")
            .use_core()
            .layout_tests(false)
            .generate_comments(false)
            .generate()
            .expect("bindgen could not parse csrc/kernels.h (is LIBCLANG_PATH set?)")
            .to_string();
        let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
        if generated == current {
            return;
        }
        if env::var("ENGINE_WRITE_KERNEL_BINDINGS").is_ok_and(|v| v == "1") {
            std::fs::write(&checked_in, generated).expect("write the kernel bindings");
            return;
        }
        let out =
            PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels_sys.rs");
        std::fs::write(&out, &generated).expect("write the regenerated bindings");
        panic!(
            "src/backend/cuda/kernels_sys.rs is out of date with csrc/kernels.h: compare it with {} \
             or rewrite it with ENGINE_WRITE_KERNEL_BINDINGS=1",
            out.display()
        );
    }
}
