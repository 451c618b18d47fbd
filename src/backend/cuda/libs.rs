//! Loads the CUDA libraries once, for the life of the process, before cudarc
//! probes them:
//! - the driver, by its soname (`libcuda.so.1`, which toolkits never ship as a
//!   link stub), so that cudarc's presence checks, which open and close it,
//!   never unload and reload it;
//! - cuBLAS where CUDA installs usually put it, not only where the dynamic
//!   loader looks (LD_LIBRARY_PATH, ld.so.cache): `CUDA_HOME`/`CUDA_PATH`,
//!   /usr/local/cuda, and the nvidia-cublas wheels of Python environments.
//!
//! cudarc opens the libraries by name; once a copy is loaded, a later open of
//! the same file or by its soname returns that copy.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The driver's soname first: the toolkit's `libcuda.so` may be a link stub.
const DRIVER: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// Loads the CUDA driver and keeps it loaded; false where it is not installed.
pub(crate) fn pin_driver() -> bool {
    static PINNED: OnceLock<Option<libloading::Library>> = OnceLock::new();
    PINNED
        .get_or_init(|| {
            DRIVER.iter().find_map(|name| {
                // SAFETY: loading the driver runs only its initializers.
                unsafe { libloading::Library::new(*name) }.ok()
            })
        })
        .is_some()
}

/// cuBLASLt first: cuBLAS needs it, and its own RUNPATH may not reach it.
const LIBS: [&str; 2] = ["libcublasLt.so.13", "libcublas.so.13"];

/// cuBLAS and cuBLASLt, kept loaded for the life of the process.
static LOADED: OnceLock<std::result::Result<Vec<libloading::Library>, String>> = OnceLock::new();

/// Loads cuBLAS for cudarc and keeps it loaded, or says what to install.
pub(crate) fn load_cublas() -> Result<()> {
    LOADED
        .get_or_init(|| {
            // Where the loader finds it by itself.
            // SAFETY: loading cuBLAS runs only its initializers.
            let by_name: Vec<libloading::Library> = LIBS
                .iter()
                .map_while(|lib| unsafe { libloading::Library::new(*lib) }.ok())
                .collect();
            if by_name.len() == LIBS.len() {
                return Ok(by_name);
            }
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

/// NCCL's soname (the nvidia-nccl wheels and distributions ship it).
const NCCL: &str = "libnccl.so.2";

/// Loads NCCL for cudarc (which opens it by name) and keeps it loaded, or
/// says what to install: tensor parallelism on CUDA needs it, nothing else does.
pub(crate) fn load_nccl() -> Result<()> {
    static NCCL_LIB: OnceLock<std::result::Result<libloading::Library, String>> = OnceLock::new();
    NCCL_LIB
        .get_or_init(|| {
            // SAFETY: loading NCCL runs only its initializers.
            if let Ok(lib) = unsafe { libloading::Library::new(NCCL) } {
                return Ok(lib);
            }
            let searched = candidate_dirs();
            let dir = searched
                .iter()
                .find(|d| d.join(NCCL).is_file())
                .ok_or_else(|| {
                    format!(
                        "cuda: tensor parallelism needs NCCL ({NCCL}), which was not found on \
                         the loader's path nor in {}: install it (e.g. `pip install \
                         nvidia-nccl-cu13`) or add its directory to LD_LIBRARY_PATH",
                        display(&searched)
                    )
                })?;
            // SAFETY: as above.
            unsafe { libloading::Library::new(dir.join(NCCL)) }
                .map_err(|e| format!("cuda: loading {}: {e}", dir.join(NCCL).display()))
        })
        .as_ref()
        .map(|_| ())
        .map_err(|e| Error::Device(e.clone()))
}

fn display(dirs: &[PathBuf]) -> String {
    let shown: Vec<String> = dirs
        .iter()
        .take(8)
        .map(|d| d.display().to_string())
        .collect();
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
                dirs.push(nvidia.join("nccl/lib"));
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
