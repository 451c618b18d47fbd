//! `--model` and `--tokenizer` as vLLM takes them: a local path, or a Hugging
//! Face hub name (`org/name`) found in the local Hugging Face cache. Nothing is
//! downloaded here: a hub name that is not in the cache is one clear error.

use std::path::{Path, PathBuf};

/// What a name resolved to.
#[derive(Debug, PartialEq)]
pub struct Resolved {
    /// The local path to load.
    pub path: String,
    /// For the log: where a hub name was found, or why --revision was ignored.
    pub note: Option<String>,
}

/// Resolves `name` (given with `flag`, e.g. "--model") at `revision` (a branch,
/// tag or commit; default "main"), looking in `download_dir` first (vLLM's
/// --download-dir is the cache downloads go to) and then the Hugging Face caches.
pub fn resolve(
    flag: &str,
    name: &str,
    revision: Option<&str>,
    download_dir: Option<&str>,
) -> Result<Resolved, String> {
    if Path::new(name).exists() {
        let note = revision.map(|r| {
            format!("{flag} {name} is a local path: its files are loaded as they are, --revision {r} applies to hub names only")
        });
        return Ok(Resolved {
            path: name.to_string(),
            note,
        });
    }
    if !looks_like_hub_name(name) {
        return Err(format!("{flag} {name}: no such file or directory"));
    }
    let rev = revision.unwrap_or("main");
    let caches = cache_dirs(download_dir);
    for cache in &caches {
        if let Some(snapshot) = snapshot(cache, name, rev) {
            let path = snapshot.display().to_string();
            return Ok(Resolved {
                note: Some(format!(
                    "{flag} {name} (revision {rev}) found in the Hugging Face cache: {path}"
                )),
                path,
            });
        }
    }
    let looked: Vec<String> = caches.iter().map(|c| c.display().to_string()).collect();
    Err(format!(
        "{flag} {name}: not a local directory or file, and revision {rev} of it is not in the \
         Hugging Face cache (looked in {}); this server does not download from the Hugging Face \
         hub: download it first (e.g. `huggingface-cli download {name}`{}) and run again, or \
         pass its local directory",
        if looked.is_empty() {
            "no cache: neither HF_HUB_CACHE, HF_HOME nor HOME is set".to_string()
        } else {
            looked.join(", ")
        },
        revision.map_or(String::new(), |r| format!(" --revision {r}")),
    ))
}

/// `org/name` or `name`: what the hub takes (letters, digits, `-_.`), at most one `/`.
fn looks_like_hub_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The caches to look in, in huggingface_hub's order of precedence, without repeats.
fn cache_dirs(download_dir: Option<&str>) -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let hf_home = env("HF_HOME").or_else(|| {
        env("XDG_CACHE_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("huggingface"))
    });
    let mut dirs = Vec::new();
    let candidates = [
        download_dir.map(PathBuf::from),
        env("HF_HUB_CACHE"),
        env("HUGGINGFACE_HUB_CACHE"),
        hf_home.map(|h| h.join("hub")),
    ];
    for dir in candidates.into_iter().flatten() {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// `cache/models--org--name/snapshots/<commit>`, the commit being what
/// `refs/<rev>` holds, or `rev` itself when it is a commit hash.
fn snapshot(cache: &Path, name: &str, rev: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", name.replace('/', "--")));
    let commit = match std::fs::read_to_string(repo.join("refs").join(rev)) {
        Ok(c) => c.trim().to_string(),
        // Not a branch or tag there: a commit hash names its snapshot directly.
        Err(_) if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) => rev.to_string(),
        Err(_) => return None,
    };
    if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
        return None;
    }
    let dir = repo.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_are_told_from_paths() {
        assert!(looks_like_hub_name("meta-llama/Llama-2-7b-hf"));
        assert!(looks_like_hub_name("gpt2"));
        assert!(!looks_like_hub_name("/models/llama"));
        assert!(!looks_like_hub_name("./llama"));
        assert!(!looks_like_hub_name("a/b/c"));
        assert!(!looks_like_hub_name("../x"));
    }

    #[test]
    fn snapshots_follow_refs_and_commits() {
        let cache = std::env::temp_dir().join(format!("engine-hf-cache-{}", std::process::id()));
        let repo = cache.join("models--org--m");
        let main = "0123456789abcdef0123456789abcdef01234567";
        let other = "fedcba9876543210fedcba9876543210fedcba98";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(main)).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(other)).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{main}\n")).unwrap();
        let snap = |rev| snapshot(&cache, "org/m", rev);
        assert_eq!(snap("main"), Some(repo.join("snapshots").join(main)));
        assert_eq!(snap(other), Some(repo.join("snapshots").join(other)));
        assert_eq!(snap("v2"), None);
        assert_eq!(snapshot(&cache, "org/other", "main"), None);
        let r = resolve("--model", "org/m", None, Some(cache.to_str().unwrap())).unwrap();
        assert_eq!(
            r.path,
            repo.join("snapshots").join(main).display().to_string()
        );
        let e = resolve(
            "--model",
            "org/m",
            Some("v2"),
            Some(cache.to_str().unwrap()),
        )
        .unwrap_err();
        assert!(
            e.contains("revision v2 of it is not in the Hugging Face cache"),
            "{e}"
        );
        assert!(e.contains("does not download"), "{e}");
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
