//! Runs prompts through a Hugging Face model directory on the CPU.
//!
//!     cargo run --release --example generate -- [--model DIR] [--dtype auto]
//!         [--max-tokens 32] [--temperature 0] [--seed N] PROMPT...
//!
//! Without `--model` it uses the bundled demo model (random weights: the text is
//! meaningless, the mechanics are real).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use engine::generate::{Llm, Prompt, Request};
use engine::loader::LoadOptions;
use engine::sampling::SamplingParams;

const USAGE: &str = "usage: generate [--model DIR] [--dtype auto|float32|float16|bfloat16] \
[--max-tokens N] [--temperature T] [--seed N] PROMPT...";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let mut options = LoadOptions::default();
    let mut params = SamplingParams {
        temperature: 0.0,
        max_tokens: Some(32),
        ..SamplingParams::default()
    };
    let mut prompts = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--model" => model = PathBuf::from(value("--model")?),
            "--dtype" => options.dtype = value("--dtype")?,
            "--max-tokens" => {
                params.max_tokens = Some(parse(&value("--max-tokens")?, "--max-tokens")?)
            }
            "--temperature" => {
                params.temperature = parse(&value("--temperature")?, "--temperature")?
            }
            "--seed" => params.seed = Some(parse(&value("--seed")?, "--seed")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}\n{USAGE}")),
            _ => prompts.push(arg),
        }
    }
    if prompts.is_empty() {
        prompts.push("Hello, my name is".to_string());
    }

    let start = Instant::now();
    let mut llm = Llm::load(&model, &options).map_err(|e| e.to_string())?;
    eprintln!(
        "loaded {} ({}) in {:.2?}",
        model.display(),
        llm.model().dtype.name(),
        start.elapsed()
    );

    let requests: Vec<Request> = prompts
        .iter()
        .map(|p| Request {
            prompt: Prompt::Text(p.clone()),
            params: params.clone(),
        })
        .collect();
    let start = Instant::now();
    let outputs = llm.generate(&requests).map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    let generated: usize = outputs.iter().map(|o| o.best().token_ids.len()).sum();
    for (prompt, out) in prompts.iter().zip(&outputs) {
        let best = out.best();
        println!(
            "{prompt:?} -> {:?} ({}, {} tokens)",
            best.text,
            best.finish_reason.as_str(),
            best.token_ids.len()
        );
    }
    eprintln!(
        "{generated} tokens in {elapsed:.2?} ({:.1} tokens/s)",
        generated as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn parse<T: std::str::FromStr>(text: &str, flag: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: cannot parse {text:?}\n{USAGE}"))
}
