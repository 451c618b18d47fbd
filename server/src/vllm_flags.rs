//! Every flag of vLLM's OpenAI server (tests/fixtures/vllm_flags.txt lists them,
//! with the releases they come from) and what this server does with it. A flag
//! that `cli::Args` defines is implemented there; the others are added to the
//! command line here, so that a vLLM launch script starts: each is either
//! accepted with one warning line (it cannot change results here) or refused
//! with an error naming the feature (it would change results, and is not
//! supported).

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// How a flag takes its value, as argparse declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `store_true`.
    Flag,
    /// One value.
    Value,
    /// `nargs='+'`.
    Values,
    /// vLLM's StoreBoolean: `--flag` alone, or `--flag true|false`.
    OptionalBool,
    /// `action='append'`: may be repeated.
    Append,
}

/// What a value-dependent flag means here: fine (maybe with a warning), or an error.
pub type Verdict = Result<Option<String>, String>;

/// What this server does with a flag.
#[derive(Clone, Copy)]
pub enum Handling {
    /// Implemented by `cli::Args` (a field or an alias of one).
    Ours,
    /// Accepted with a warning: this is why it changes nothing here.
    Ignored(&'static str),
    /// Refused: this feature is not supported, and without it results would differ.
    Unsupported(&'static str),
    /// Depends on the value; the text says how (for the README).
    ByValue(fn(&str) -> Verdict, &'static str),
}

pub struct VllmFlag {
    /// The long name, with its dashes.
    pub name: &'static str,
    pub kind: Kind,
    /// argparse's single-dash aliases (`-tp`).
    pub aliases: &'static [&'static str],
    pub handling: Handling,
}

const fn flag(name: &'static str, kind: Kind, handling: Handling) -> VllmFlag {
    VllmFlag {
        name,
        kind,
        aliases: &[],
        handling,
    }
}

use Handling::{ByValue, Ignored, Ours, Unsupported};
use Kind::{Append, Flag, OptionalBool, Value, Values};

const LORA: &str = "LoRA adapters";
const SPEC: &str = "speculative decoding";
const NO_RAY: &str = "one process here, no Ray or worker processes";
const NO_CUDA_GRAPHS: &str = "CUDA graphs cover every context up to --max-model-len here";
const NO_LORA: &str = "only matters with --enable-lora, which is not supported";
const NO_ADAPTERS: &str = "only matters with --enable-prompt-adapter, which is not supported";
const NO_POOL: &str = "tokenizing runs on a thread pool of its own here";
const VISION: &str = "vision-language models (image inputs)";

/// Every flag of tests/fixtures/vllm_flags.txt, sorted by name.
#[rustfmt::skip]
pub const FLAGS: &[VllmFlag] = &[
    flag("--allow-credentials", Flag, Ours),
    flag("--allowed-headers", Value, Ours),
    flag("--allowed-methods", Value, Ours),
    flag("--allowed-origins", Value, Ours),
    flag("--api-key", Value, Ours),
    flag("--block-size", Value, Ours),
    flag("--chat-template", Value, Ours),
    flag("--code-revision", Value, Ignored("no remote code runs here (the revision of a model's Python code)")),
    flag("--collect-detailed-traces", Value, Ignored("OpenTelemetry tracing is not implemented")),
    flag("--config", Value, Unsupported("reading flags from a YAML file (vllm serve --config; give them on the command line)")),
    flag("--config-format", Value, ByValue(config_format, "auto and hf: accepted with a warning; mistral (params.json): an error")),
    flag("--cpu-offload-gb", Value, Ignored("weights are not offloaded: on the CPU device they are in memory already")),
    flag("--device", Value, Ours),
    flag("--disable-async-output-proc", Flag, Ignored("outputs are processed on the engine thread either way")),
    flag("--disable-custom-all-reduce", Flag, Ignored("all-reduces run on NCCL (GPU) or the in-process sum (CPU); there is no custom kernel to turn off")),
    flag("--disable-frontend-multiprocessing", Flag, Ignored("the server and the engine are one process here")),
    flag("--disable-log-requests", Flag, Ours),
    flag("--disable-log-stats", Flag, Ours),
    flag("--disable-logprobs-during-spec-decoding", OptionalBool, Unsupported(SPEC)),
    flag("--disable-sliding-window", Flag, Unsupported("turning a model's sliding window off (capping max_model_len to it)")),
    flag("--distributed-executor-backend", Value, Ignored(NO_RAY)),
    flag("--download-dir", Value, Ours),
    flag("--dtype", Value, Ours),
    flag("--enable-auto-tool-choice", Flag, Ours),
    flag("--enable-chunked-prefill", OptionalBool, Ignored("prompts longer than --max-num-batched-tokens are always prefilled in chunks here, with the same results")),
    flag("--enable-lora", Flag, Unsupported(LORA)),
    flag("--enable-prefix-caching", Flag, Ours),
    flag("--enable-prompt-adapter", Flag, Unsupported("prompt adapters")),
    flag("--enforce-eager", Flag, Ours),
    flag("--engine-use-ray", Flag, Ignored(NO_RAY)),
    flag("--fully-sharded-loras", Flag, Ignored(NO_LORA)),
    flag("--gpu-memory-utilization", Value, Ours),
    flag("--guided-decoding-backend", Value, ByValue(guided_backend, "outlines, lm-format-enforcer, llguidance, xgrammar, auto: accepted with a warning (llguidance serves them all)")),
    flag("--host", Value, Ours),
    flag("--ignore-patterns", Append, Ignored("nothing is downloaded here")),
    flag("--image-feature-size", Value, Unsupported(VISION)),
    flag("--image-input-shape", Value, Unsupported(VISION)),
    flag("--image-input-type", Value, Unsupported(VISION)),
    flag("--image-token-id", Value, Unsupported(VISION)),
    flag("--kv-cache-dtype", Value, Ours),
    flag("--limit-mm-per-prompt", Value, Ignored("no multimodal models are supported here")),
    flag("--load-format", Value, Ours),
    flag("--long-lora-scaling-factors", Value, Unsupported(LORA)),
    flag("--lora-dtype", Value, Ignored(NO_LORA)),
    flag("--lora-extra-vocab-size", Value, Ignored(NO_LORA)),
    flag("--lora-modules", Values, Unsupported(LORA)),
    flag("--max-context-len-to-capture", Value, Ignored(NO_CUDA_GRAPHS)),
    flag("--max-cpu-loras", Value, Ignored(NO_LORA)),
    flag("--max-log-len", Value, Ours),
    flag("--max-logprobs", Value, Ours),
    flag("--max-lora-rank", Value, Ignored(NO_LORA)),
    flag("--max-loras", Value, Ignored(NO_LORA)),
    flag("--max-model-len", Value, Ours),
    flag("--max-num-batched-tokens", Value, Ours),
    flag("--max-num-seqs", Value, Ours),
    flag("--max-parallel-loading-workers", Value, Ignored(NO_RAY)),
    flag("--max-prompt-adapter-token", Value, Ignored(NO_ADAPTERS)),
    flag("--max-prompt-adapters", Value, Ignored(NO_ADAPTERS)),
    flag("--max-seq-len-to-capture", Value, Ignored(NO_CUDA_GRAPHS)),
    flag("--middleware", Append, Unsupported("Python ASGI middleware")),
    flag("--model", Value, Ours),
    flag("--model-loader-extra-config", Value, Ignored("the model loader takes no extra configuration here")),
    flag("--ngram-prompt-lookup-max", Value, Unsupported(SPEC)),
    flag("--ngram-prompt-lookup-min", Value, Unsupported(SPEC)),
    flag("--num-gpu-blocks-override", Value, Ours),
    flag("--num-lookahead-slots", Value, Ignored("only speculative decoding and multi-step scheduling use lookahead slots")),
    flag("--num-scheduler-steps", Value, Ignored("one step is scheduled at a time here; outputs are the same")),
    flag("--num-speculative-tokens", Value, Unsupported(SPEC)),
    flag("--otlp-traces-endpoint", Value, Ignored("OpenTelemetry tracing is not implemented")),
    flag("--override-neuron-config", Value, Ignored("no Neuron devices here")),
    VllmFlag { name: "--pipeline-parallel-size", kind: Value, aliases: &["-pp"], handling: ByValue(one_stage, "1: accepted with a warning; more: an error (one stage only; use --tensor-parallel-size)") },
    flag("--port", Value, Ours),
    flag("--preemption-mode", Value, Ignored("preempted requests are always recomputed here (no swapping), with the same output")),
    flag("--prompt-adapters", Values, Unsupported("prompt adapters")),
    flag("--qlora-adapter-name-or-path", Value, Unsupported("QLoRA adapters")),
    VllmFlag { name: "--quantization", kind: Value, aliases: &["-q"], handling: Ours },
    flag("--quantization-param-path", Value, Ignored("fp8 KV cache scales are read from the checkpoint (k_scale / v_scale), not from a separate file")),
    flag("--ray-workers-use-nsight", Flag, Ignored(NO_RAY)),
    flag("--response-role", Value, Ours),
    flag("--return-tokens-as-token-ids", Flag, Ours),
    flag("--revision", Value, Ours),
    flag("--root-path", Value, Ours),
    flag("--rope-scaling", Value, Unsupported("overriding the model's rope scaling")),
    flag("--rope-theta", Value, Unsupported("overriding the model's rope theta")),
    flag("--scheduler-delay-factor", Value, Ignored("waiting requests are scheduled as soon as they fit here")),
    flag("--seed", Value, Ours),
    flag("--served-model-name", Values, Ours),
    flag("--skip-tokenizer-init", Flag, Ours),
    flag("--spec-decoding-acceptance-method", Value, Unsupported(SPEC)),
    flag("--speculative-disable-by-batch-size", Value, Unsupported(SPEC)),
    VllmFlag { name: "--speculative-draft-tensor-parallel-size", kind: Value, aliases: &["-spec-draft-tp"], handling: Unsupported(SPEC) },
    flag("--speculative-max-model-len", Value, Unsupported(SPEC)),
    flag("--speculative-model", Value, Unsupported(SPEC)),
    flag("--speculative-model-quantization", Value, Unsupported(SPEC)),
    flag("--ssl-ca-certs", Value, Ours),
    flag("--ssl-cert-reqs", Value, Ours),
    flag("--ssl-certfile", Value, Ours),
    flag("--ssl-keyfile", Value, Ours),
    flag("--swap-space", Value, Ignored("no CPU swap space: preempted requests are recomputed, with the same output")),
    VllmFlag { name: "--tensor-parallel-size", kind: Value, aliases: &["-tp"], handling: Ours },
    flag("--tokenizer", Value, Ours),
    flag("--tokenizer-mode", Value, ByValue(tokenizer_mode, "auto, slow: accepted with a warning (the tokenizer.json tokenizer is used); mistral: an error")),
    flag("--tokenizer-pool-extra-config", Value, Ignored(NO_POOL)),
    flag("--tokenizer-pool-size", Value, Ignored(NO_POOL)),
    flag("--tokenizer-pool-type", Value, Ignored(NO_POOL)),
    flag("--tokenizer-revision", Value, Ours),
    flag("--tool-call-parser", Value, Ours),
    flag("--trust-remote-code", Flag, Ignored("no remote code runs here: only the architectures built in are loaded")),
    flag("--typical-acceptance-sampler-posterior-alpha", Value, Unsupported(SPEC)),
    flag("--typical-acceptance-sampler-posterior-threshold", Value, Unsupported(SPEC)),
    flag("--use-v2-block-manager", Flag, Ignored("there is one block manager here")),
    flag("--uvicorn-log-level", Value, Ours),
    flag("--worker-use-ray", Flag, Ignored(NO_RAY)),
];

fn one_stage(v: &str) -> Verdict {
    match v.trim().parse::<u64>() {
        Ok(1) => Ok(Some("one stage: nothing to split".into())),
        Ok(_) => Err(
            "pipeline parallelism is not supported: one stage only (1); \
             --tensor-parallel-size splits a model over GPUs"
                .into(),
        ),
        Err(_) => Err(format!("expected a number of stages, got {v:?}")),
    }
}

fn config_format(v: &str) -> Verdict {
    match v.trim() {
        "auto" | "hf" => Ok(Some(
            "the model's config.json (or GGUF metadata) is read".into(),
        )),
        other => Err(format!(
            "the {other} config format is not supported (only Hugging Face config.json and GGUF)"
        )),
    }
}

fn tokenizer_mode(v: &str) -> Verdict {
    match v.trim() {
        "auto" | "slow" => Ok(Some(
            "the model's tokenizer.json (or GGUF vocabulary) is used".into(),
        )),
        other => Err(format!(
            "the {other} tokenizer mode is not supported (only Hugging Face tokenizer.json)"
        )),
    }
}

fn guided_backend(v: &str) -> Verdict {
    match v.trim() {
        "outlines" | "lm-format-enforcer" | "llguidance" | "xgrammar" | "auto" => Ok(Some(
            "guided decoding runs on llguidance whatever the backend named".into(),
        )),
        other => Err(format!(
            "unknown guided decoding backend {other:?} (outlines, lm-format-enforcer)"
        )),
    }
}

impl VllmFlag {
    fn long(&self) -> &'static str {
        self.name.trim_start_matches("--")
    }

    /// The clap argument for a flag `cli::Args` lacks.
    fn arg(&self) -> Arg {
        let arg = Arg::new(self.long()).long(self.long());
        let valued = arg.clone().allow_negative_numbers(true);
        match self.kind {
            Flag => arg.action(ArgAction::SetTrue),
            Value => valued.action(ArgAction::Set).num_args(1),
            Values => valued.action(ArgAction::Set).num_args(1..),
            OptionalBool => valued
                .action(ArgAction::Set)
                .num_args(0..=1)
                .default_missing_value("true"),
            Append => valued.action(ArgAction::Append).num_args(1),
        }
        .help(match self.handling {
            Ours | Ignored(_) => "accepted; no effect here (a warning says why)",
            Unsupported(_) => "not supported: an error",
            ByValue(_, how) => how,
        })
    }
}

/// The long names (and aliases) `cmd` defines.
pub fn defined(cmd: &Command) -> Vec<String> {
    cmd.get_arguments()
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default())
                .map(str::to_string)
        })
        .collect()
}

/// Adds the flags of [`FLAGS`] that `cmd` does not define.
pub fn add_to(cmd: Command) -> Command {
    let known = defined(&cmd);
    let mut cmd = cmd
        .next_help_heading("vLLM flags (accepted with a warning, or an error naming the feature)");
    for f in FLAGS {
        if !known.iter().any(|k| k == f.long()) {
            cmd = cmd.arg(f.arg());
        }
    }
    cmd
}

/// The warnings for the vLLM-only flags given, or the error for the first that
/// is not supported.
pub fn check(m: &ArgMatches) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for f in FLAGS {
        let id = f.long();
        if !matches!(m.try_contains_id(id), Ok(true))
            || m.value_source(id) != Some(ValueSource::CommandLine)
        {
            continue;
        }
        let value: Vec<String> = m
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let shown = match f.kind {
            Flag => f.name.to_string(),
            _ => format!("{} {}", f.name, value.join(" ")),
        };
        match f.handling {
            Ours => {}
            Ignored(why) => warnings.push(format!("{shown}: ignored: {why}")),
            Unsupported(feature) => {
                return Err(format!("{shown}: not supported by this server ({feature})"))
            }
            ByValue(verdict, _) => match verdict(&value.join(" ")) {
                Ok(Some(why)) => warnings.push(format!("{shown}: ignored: {why}")),
                Ok(None) => {}
                Err(e) => return Err(format!("{shown}: {e}")),
            },
        }
    }
    Ok(warnings)
}

/// vLLM's spellings clap does not take: `--max_model_len` (vLLM's
/// FlexibleArgumentParser turns underscores into dashes) and single-dash long
/// aliases (`-tp 2`). `vllm serve MODEL`'s leading `serve` is dropped.
pub fn normalize(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    for (i, arg) in args.into_iter().enumerate() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if i == 1 && text == "serve" {
            continue;
        }
        if let Some(rest) = text.strip_prefix("--").filter(|r| !r.is_empty()) {
            let (key, value) = rest
                .split_once('=')
                .map_or((rest, None), |(k, v)| (k, Some(v)));
            let key = key.replace('_', "-");
            out.push(match value {
                Some(v) => format!("--{key}={v}").into(),
                None => format!("--{key}").into(),
            });
            continue;
        }
        let (key, value) = text
            .split_once('=')
            .map_or((text, None), |(k, v)| (k, Some(v)));
        match FLAGS.iter().find(|f| f.aliases.contains(&key)) {
            Some(f) => out.push(match value {
                Some(v) => format!("{}={v}", f.name).into(),
                None => f.name.into(),
            }),
            None => out.push(arg),
        }
    }
    out
}

#[cfg(test)]
/// The README's table: every flag and what it does here. `base` is
/// `cli::Args`'s own command, before [`add_to`].
pub fn readme_table(base: &Command) -> String {
    let mut s = String::from("| vLLM flag | here |\n|---|---|\n");
    for f in FLAGS {
        let ours = base.get_arguments().find(|a| {
            a.get_long() == Some(f.long())
                || a.get_all_aliases().unwrap_or_default().contains(&f.long())
        });
        let what = match (ours, f.handling) {
            (Some(a), _) => {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let first = help.split(". ").next().unwrap_or("").trim_end_matches('.');
                format!("implemented: {first}")
            }
            (None, Ignored(why)) => format!("accepted, warns: {why}"),
            (None, Unsupported(feature)) => format!("error: {feature} not supported"),
            (None, ByValue(_, how)) => how.to_string(),
            (None, Ours) => "missing from cli::Args (a bug)".to_string(),
        };
        let aliases: String = f.aliases.iter().map(|a| format!(" (`{a}`)")).collect();
        // Markdown: no table breaks, tags or emphasis from the help texts.
        let what = what
            .replace('|', "\\|")
            .replace('<', "&lt;")
            .replace('*', "\\*");
        s.push_str(&format!("| `{}`{aliases} | {what} |\n", f.name));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{self, Args};
    use clap::CommandFactory;

    const FIXTURE: &str = include_str!("../tests/fixtures/vllm_flags.txt");

    /// (name, kind, aliases) of each fixture line.
    fn fixture() -> Vec<(String, String, Vec<String>)> {
        FIXTURE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let aliases = cols[3..].iter().map(|a| a.to_string()).collect();
                (cols[0].to_string(), cols[1].to_string(), aliases)
            })
            .collect()
    }

    fn kind_name(k: Kind) -> &'static str {
        match k {
            Flag => "flag",
            Value => "value",
            Values => "values",
            OptionalBool => "optional-bool",
            Append => "append",
        }
    }

    #[test]
    fn the_table_holds_exactly_the_fixture_flags() {
        let fixture = fixture();
        assert!(fixture.len() > 100, "{} flags", fixture.len());
        let ours: Vec<(String, String, Vec<String>)> = FLAGS
            .iter()
            .map(|f| {
                let aliases = f.aliases.iter().map(|a| a.to_string()).collect();
                (f.name.to_string(), kind_name(f.kind).to_string(), aliases)
            })
            .collect();
        for f in &fixture {
            assert!(ours.contains(f), "vLLM's {f:?} is not in FLAGS as such");
        }
        for f in &ours {
            assert!(fixture.contains(f), "{f:?} is in FLAGS but not vLLM's list");
        }
        let names: Vec<&str> = FLAGS.iter().map(|f| f.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "FLAGS are kept sorted");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        cli::command().debug_assert();
    }

    #[test]
    fn flags_marked_ours_are_args_fields() {
        let defined = defined(&Args::command());
        for f in FLAGS.iter().filter(|f| matches!(f.handling, Ours)) {
            assert!(
                defined.iter().any(|d| d == f.long()),
                "{} is not in cli::Args",
                f.name
            );
        }
    }

    /// A plausible value for each flag, as a launch script would give it.
    fn sample(f: &VllmFlag) -> Vec<&'static str> {
        match (f.kind, f.name) {
            (Flag, _) => vec![],
            (OptionalBool, _) => vec!["true"],
            (_, "--tensor-parallel-size" | "--pipeline-parallel-size") => vec!["1"],
            (_, "--load-format" | "--config-format" | "--tokenizer-mode") => vec!["auto"],
            (_, "--quantization") => vec!["gguf"],
            (_, "--guided-decoding-backend") => vec!["outlines"],
            (_, "--lora-modules") => vec!["sql=/tmp/lora"],
            (_, "--allowed-origins" | "--allowed-methods" | "--allowed-headers") => vec!["[\"*\"]"],
            _ => vec!["4"],
        }
    }

    fn run(argv: &[&str]) -> Result<Vec<String>, String> {
        let argv = ["engine-server"]
            .iter()
            .chain(argv)
            .map(Into::into)
            .collect();
        cli::parse_from(argv)
            .map(|(_, w)| w)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_vllm_flag_warns_once_or_names_its_feature() {
        let base = defined(&Args::command());
        for f in FLAGS {
            if base.iter().any(|d| d == f.long()) {
                continue;
            }
            let mut argv = vec![f.name];
            argv.extend(sample(f));
            match (f.handling, run(&argv)) {
                (Ignored(why), Ok(w)) => {
                    assert_eq!(w.len(), 1, "{argv:?}: {w:?}");
                    assert!(w[0].starts_with(f.name) && w[0].contains(why), "{w:?}");
                }
                (ByValue(..), Ok(w)) => assert_eq!(w.len(), 1, "{argv:?}: {w:?}"),
                (Unsupported(feature), Err(e)) => {
                    assert!(e.contains(f.name) && e.contains(feature), "{argv:?}: {e}")
                }
                (_, r) => panic!("{argv:?}: {r:?}"),
            }
        }
    }

    #[test]
    fn values_that_would_change_results_are_errors() {
        for (argv, needle) in [
            (vec!["--pipeline-parallel-size", "2"], "one stage only"),
            (vec!["-pp", "4"], "--pipeline-parallel-size 4"),
            (vec!["-tp", "0"], "--tensor-parallel-size"),
            (vec!["--quantization", "awq"], "awq quantization"),
            (vec!["-q", "gptq"], "gptq quantization"),
            (
                vec!["--load-format", "tensorizer"],
                "tensorizer load format",
            ),
            (
                vec!["--tokenizer-mode", "mistral"],
                "mistral tokenizer mode",
            ),
            (
                vec!["--enable-auto-tool-choice"],
                "requires --tool-call-parser",
            ),
            (
                vec!["--speculative-model", "[ngram]"],
                "speculative decoding",
            ),
            (vec!["--lora-modules", "a=b", "c=d"], "LoRA adapters"),
            (vec!["--model", "a", "b"], "the model is given twice"),
        ] {
            let e = run(&argv).unwrap_err();
            assert!(e.contains(needle), "{argv:?}: {e}");
        }
    }

    #[test]
    fn vllm_spellings_parse() {
        let argv = [
            "engine-server",
            "serve",
            "org/m",
            "--max_model_len=64",
            "-tp",
            "1",
            "--served_model_name",
            "a",
            "b",
            "--enable-chunked-prefill",
        ];
        let (args, warnings) = cli::parse_from(argv.iter().map(Into::into).collect()).unwrap();
        assert_eq!(args.model.as_deref(), Some("org/m"));
        assert_eq!(args.max_model_len, Some(64));
        assert_eq!(args.served_model_names(), ["a", "b"]);
        assert_eq!(args.tensor_parallel_size, Some(1));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("--enable-chunked-prefill true: ignored"),
            "{warnings:?}"
        );
        let (args, _) = cli::parse_from(
            [
                "engine-server",
                "--num-gpu-blocks-override",
                "7",
                "--model=m",
                "m",
            ]
            .iter()
            .map(Into::into)
            .collect(),
        )
        .unwrap();
        assert_eq!(
            (args.num_kv_blocks, args.model.as_deref()),
            (Some(7), Some("m"))
        );
    }

    /// The README's table is this table: `ENGINE_UPDATE_README=1` rewrites it.
    #[test]
    fn the_readme_table_is_current() {
        const START: &str = "<!-- vllm-flags: generated by server/src/vllm_flags.rs -->\n";
        const END: &str = "<!-- vllm-flags end -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let table = readme_table(&Args::command());
        let (head, rest) = readme
            .split_once(START)
            .expect("the README has the table's start marker");
        let (current, tail) = rest
            .split_once(END)
            .expect("the README has the table's end marker");
        if current != table {
            if std::env::var_os("ENGINE_UPDATE_README").is_some_and(|v| v == "1") {
                std::fs::write(path, format!("{head}{START}{table}{END}{tail}")).unwrap();
                return;
            }
            panic!("README.md's vLLM flag table is stale: run `ENGINE_UPDATE_README=1 cargo test -p engine-server --bin engine-server vllm_flags` and commit the result");
        }
    }
}
