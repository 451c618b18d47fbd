//! Hugging Face transformers (torch on the CPU, bf16) as the decode bench's
//! peer: `bench/transformers_peer.py` run by the Python that
//! `TRANSFORMERS_PYTHON` names, on the same model directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::llama_peer::{PeerSpeeds, Sizes};

pub struct TransformersPeer {
    python: PathBuf,
}

impl TransformersPeer {
    pub fn from_env() -> Option<TransformersPeer> {
        let python = std::env::var_os("TRANSFORMERS_PYTHON").filter(|p| !p.is_empty())?;
        Some(TransformersPeer {
            python: PathBuf::from(python),
        })
    }

    /// One run of the script: prefill and decode at each batch.
    pub fn measure(&self, model: &Path, s: &Sizes) -> engine::Result<PeerSpeeds> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/transformers_peer.py");
        let sizes = [
            s.threads,
            s.prompt,
            s.decode_tokens,
            s.batched_tokens,
            s.prefill,
            s.long_context,
            s.long_tokens,
        ];
        let args = sizes.iter().chain(&s.batches).map(usize::to_string);
        let out = Command::new(&self.python)
            .arg(&script)
            .arg(model)
            .args(args)
            .output();
        let fail = |m: String| engine::Error::invalid(format!("transformers peer: {m}"));
        let out = out.map_err(|e| fail(format!("running {}: {e}", self.python.display())))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            return Err(fail(tail.join(" / ")));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or("");
        let json: serde_json::Value =
            serde_json::from_str(line).map_err(|e| fail(format!("{e}: {line}")))?;
        let decode = json["decode"].as_array().into_iter().flatten();
        let decode = decode
            .filter_map(|d| Some((d[0].as_u64()? as usize, d[1].as_f64()?)))
            .collect();
        Ok(PeerSpeeds {
            decode,
            prefill: json["prefill"].as_f64(),
            long_context: json["long_context"].as_f64(),
        })
    }
}
