//! Writes a fixture model directory (see `engine::fixture`).
//!
//! ```text
//! cargo run --release --example make_fixture -- --arch llama|mistral|qwen2|llama-1b --out DIR \
//!     [--dtype bf16] [--seed N] [--shards N]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use engine::backend::DType;
use engine::config::Arch;
use engine::fixture::{write_model_dir, FixtureSpec};

const USAGE: &str = "usage: make_fixture --arch llama|mistral|qwen2|llama-1b --out DIR [--dtype float32|float16|bfloat16] [--seed N] [--shards N]

  --arch    tiny llama/mistral/qwen2 (hidden 64, 2 layers, trained BPE tokenizer),
            or llama-1b (TinyLlama-1.1B shape, bf16, ~2.2 GB, no tokenizer)
  --out     directory to write (created if missing)
  --dtype   stored weight dtype (default: the arch's; f32/f16/bf16 aliases accepted)
  --seed    weight seed (default: the arch's)
  --shards  number of safetensors files (default 1)";

struct Args {
    spec: FixtureSpec,
    out: PathBuf,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut arch = None;
    let mut out = None;
    let mut dtype = None;
    let mut seed = None;
    let mut shards = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        // A following flag is not a value: `--seed --out d` is a missing seed.
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().filter(|v| !v.starts_with("--")).cloned())
                .ok_or(format!("{name} needs a value"))
        };
        match name {
            "--arch" => arch = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--dtype" => {
                let v = value()?;
                dtype = Some(DType::parse(&v).ok_or(format!("unknown --dtype {v:?}"))?);
            }
            "--seed" => {
                let v = value()?;
                seed =
                    Some(v.parse::<u64>().map_err(|_| {
                        format!("--seed must be a non-negative integer, got {v:?}")
                    })?);
            }
            "--shards" => {
                let v = value()?;
                shards = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("--shards must be a positive integer, got {v:?}"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let arch = arch.ok_or("--arch is required")?;
    let mut spec = match arch.as_str() {
        "llama" => FixtureSpec::tiny(Arch::Llama),
        "mistral" => FixtureSpec::tiny(Arch::Mistral),
        "qwen2" => FixtureSpec::tiny(Arch::Qwen2),
        "llama-1b" => FixtureSpec::llama_1b(),
        other => {
            return Err(format!(
                "unknown --arch {other:?}: expected llama, mistral, qwen2 or llama-1b"
            ))
        }
    };
    let out = out.ok_or("--out is required")?;
    if let Some(d) = dtype {
        spec.dtype = d;
    }
    if let Some(s) = seed {
        spec.seed = s;
    }
    if let Some(n) = shards {
        spec.shards = n;
    }
    Ok(Args { spec, out })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Args { spec, out } = match parse_args(&args) {
        Ok(a) => a,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("error: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    match write_model_dir(&spec, &out) {
        Ok(()) => {
            println!(
                "wrote {} ({}, {}, {} shard(s), seed {}) in {:.2}s",
                out.display(),
                spec.arch.hf_name(),
                spec.dtype.name(),
                spec.shards,
                spec.seed,
                start.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
