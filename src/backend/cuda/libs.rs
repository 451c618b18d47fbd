//! Finds cuBLAS where CUDA installs usually put it, not only where the dynamic
//! loader looks (LD_LIBRARY_PATH, ld.so.cache): `CUDA_HOME`/`CUDA_PATH`,
//! /usr/local/cuda, and the nvidia-cublas wheels of Python environments.
//! cudarc opens the libraries by name; once a copy is loaded by path, a later
//! open by its soname returns that copy.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// cuBLASLt first: cuBLAS needs it, and its own RUNPATH may not reach it.
const LIBS: [&str; 2] = ["libcublasLt.so.13", "libcublas.so.13"];

/// The libraries loaded by path, kept for the life of the process.
static LOADED: OnceLock<std::result::Result<Vec<libloading::Library>, String>> = OnceLock::new();

/// Makes cuBLAS loadable for cudarc, or says what to install.
pub(crate) fn load_cublas() -> Result<()> {
    // SAFETY: only tries to dlopen cuBLAS; nothing is called through it.
    if unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Ok(());
    }
    LOADED
        .get_or_init(|| {
            let searched = candidate_dirs();
            let dir = searched
                .iter()
                .find(|d| LIBS.iter().all(|lib| d.join(lib).is_file()))
                .ok_or_else(|| {
                    format!(
                        "cuda: cuBLAS ({}) was not found on the loader's path nor in {}: \
                         install CUDA 13's cuBLAS (e.g. `pip install nvidia-cublas`) or add its \
                         directory to LD_LIBRARY_PATH",
                        LIBS[1],
                        display(&searched)
                    )
                })?;
            LIBS.iter()
                .map(|lib| {
                    // SAFETY: loading cuBLAS runs only its initializers.
                    unsafe { libloading::Library::new(dir.join(lib)) }
                        .map_err(|e| format!("cuda: loading {}: {e}", dir.join(lib).display()))
                })
                .collect()
        })
        .as_ref()
        .map(|_| ())
        .map_err(|e| Error::Device(e.clone()))
}

fn display(dirs: &[PathBuf]) -> String {
    let shown: Vec<String> = dirs.iter().take(8).map(|d| d.display().to_string()).collect();
    let more = dirs.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Where to look, most specific first.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut toolkits: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    toolkits.extend(["/usr/local/cuda", "/opt/cuda"].map(PathBuf::from));
    toolkits.extend(glob_dirs(Path::new("/usr/local"), "cuda-"));
    let mut dirs = Vec::new();
    for t in toolkits {
        for lib in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            dirs.push(t.join(lib));
        }
    }
    // Python environments: the active ones, those whose bin/ is on PATH, the
    // system's and the user's.
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        prefixes.extend(
            std::env::split_paths(&path)
                .filter(|p| p.ends_with("bin"))
                .filter_map(|p| p.parent().map(Path::to_path_buf)),
        );
    }
    prefixes.extend(["/usr", "/usr/local"].map(PathBuf::from));
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(home).join(".local"));
    }
    for prefix in prefixes {
        for python in glob_dirs(&prefix.join("lib"), "python3") {
            for packages in ["site-packages", "dist-packages"] {
                let nvidia = python.join(packages).join("nvidia");
                // CUDA 13 wheels share nvidia/cu13/lib; CUDA 12's had one folder each.
                dirs.push(nvidia.join("cu13/lib"));
                dirs.push(nvidia.join("cublas/lib"));
            }
        }
    }
    dirs.dedup();
    dirs
}

/// The subdirectories of `dir` whose names start with `prefix`, sorted.
fn glob_dirs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found
}
