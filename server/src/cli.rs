//! The command line, with vLLM's flag names (`python -m
//! vllm.entrypoints.openai.api_server ...` works with the same flags).

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::model_path;
use crate::tool_parsers::ToolParser;

pub use crate::cors::JsonList;

/// The fallback demo model bundled with the repository: a tiny random-weight
/// Llama, so the server runs with no download (its output is gibberish).
pub const DEMO_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-llama");

/// The real demo model scripts/fetch-demo-model.sh puts in the cache.
pub const DEMO_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the demo model is: `$ENGINE_DEMO_MODEL` when set (the test harnesses pin
/// the fixture with it), else the fetched SmolLM2 GGUF in the cache
/// (`$ENGINE_CACHE_DIR/demo`, default `~/.cache/engine/demo`), else the bundled
/// random fixture. The second value says why, for the log.
pub fn demo_model() -> (String, String) {
    if let Some(m) = std::env::var_os("ENGINE_DEMO_MODEL").filter(|m| !m.is_empty()) {
        let m = m.to_string_lossy().into_owned();
        return (
            m.clone(),
            format!("demo model {m} (from ENGINE_DEMO_MODEL)"),
        );
    }
    let cache = std::env::var_os("ENGINE_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/engine"))
        });
    if let Some(gguf) = cache.map(|c| c.join("demo").join(DEMO_GGUF)) {
        if gguf.is_file() {
            let path = gguf.display().to_string();
            return (
                path.clone(),
                format!("demo model SmolLM2-135M-Instruct ({path})"),
            );
        }
    }
    let fixture = std::fs::canonicalize(DEMO_MODEL)
        .map_or_else(|_| DEMO_MODEL.to_string(), |p| p.display().to_string());
    let why = format!(
        "the demo model SmolLM2-135M-Instruct is not downloaded (run scripts/fetch-demo-model.sh); \
         serving the bundled random-weight fixture {fixture}, whose text is gibberish"
    );
    (fixture, why)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    pub fn filter(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error | LogLevel::Critical => "error",
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "engine-server",
    version,
    about = "OpenAI-compatible API server (vLLM's flags and endpoints) over engine's C ABI."
)]
pub struct Args {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json), a
    /// GGUF file, or a directory holding one .gguf. Without it, the demo model served
    /// as "demo": SmolLM2-135M-Instruct once scripts/fetch-demo-model.sh has fetched
    /// it, else the bundled tiny random-weight Llama.
    /// A Hugging Face hub name (`org/name`) is looked up in the local Hugging Face
    /// cache (never downloaded).
    #[arg(long)]
    pub model: Option<String>,
    /// The model as `vllm serve MODEL` takes it: the same as --model.
    #[arg(value_name = "MODEL")]
    pub model_tag: Option<String>,
    /// The revision (branch, tag or commit) of a hub model in the Hugging Face
    /// cache [main]. Local paths are loaded as they are.
    #[arg(long)]
    pub revision: Option<String>,
    /// Hugging Face tokenizer (directory or cached hub name) used instead of the model's tokenizer.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// The revision of a hub --tokenizer in the Hugging Face cache [main].
    #[arg(long)]
    pub tokenizer_revision: Option<String>,
    /// A Hugging Face cache to look in for hub names before HF_HUB_CACHE,
    /// $HF_HOME/hub and ~/.cache/huggingface/hub.
    #[arg(long)]
    pub download_dir: Option<String>,
    /// CPU threads for the model's compute [the cores this process may run on,
    /// or RAYON_NUM_THREADS].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub threads: Option<u64>,
    /// Ranks to shard the model over (-tp): GPUs 0..N with NCCL on CUDA,
    /// worker threads on the CPU; N must divide the attention heads.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub tensor_parallel_size: Option<u64>,
    /// Local paths --model and --tokenizer resolved to (hub names found in the cache).
    #[arg(skip)]
    pub model_path: Option<String>,
    #[arg(skip)]
    pub tokenizer_path: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (0: any free port; the log says which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer <key>` on /v1/* requests.
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Chat template replacing the model's: a file path, or the template itself.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Model name(s) the API answers to; responses carry the first. Defaults to --model.
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// The role of generated chat messages when add_generation_prompt is true.
    #[arg(long, default_value = "assistant")]
    pub response_role: String,
    /// Weight dtype: auto, float32/float, float16/half, bfloat16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// As vLLM's: auto or gguf keep a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K
    /// matrices quantized on the CPU, and auto an FP8 (compressed-tensors) checkpoint's
    /// weights; fp8 quantizes 16/32-bit weights to FP8 e4m3 at load (per-tensor
    /// scales); none dequantizes them to --dtype at load.
    #[arg(long, short = 'q', default_value = "auto", value_parser = quantization)]
    pub quantization: String,
    /// Where the weights come from: auto (the model's files; safetensors, pt,
    /// npcache and gguf mean the same here) or dummy (random weights, for a
    /// directory that may hold only config.json: benchmarks of a model's shape).
    #[arg(long, default_value = "auto", value_parser = load_format)]
    pub load_format: String,
    /// Longest sequence (prompt + output); defaults to the model's config.
    #[arg(long)]
    pub max_model_len: Option<u64>,
    /// Tokens per KV cache block.
    #[arg(long, default_value_t = 16, value_parser = parse_block_size)]
    pub block_size: u64,
    /// Most sequences in one batch.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: u64,
    /// Most tokens in one step; longer prompts are prefilled in chunks.
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: u64,
    /// KV cache size in bytes (suffixes KiB, MiB, GiB, KB, MB, GB accepted).
    /// Default on the CPU: VLLM_CPU_KVCACHE_SPACE GiB as vLLM, else 4 GiB (at
    /// most half the machine's memory), and never less than four sequences of
    /// --max-model-len.
    #[arg(long, value_parser = parse_bytes)]
    pub kv_cache_memory: Option<u64>,
    /// KV cache dtype: auto (the weights' dtype where the device keeps such a
    /// cache, else float32), float32, bfloat16, float16, fp8 (= fp8_e4m3) or
    /// fp8_e5m2. A 16-bit cache halves what attention reads, an FP8 one (with
    /// the checkpoint's k_scale/v_scale, else 1.0) quarters it. On CUDA the
    /// cache is in the model's dtype or FP8.
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: String,
    /// KV cache size in blocks (instead of --kv-cache-memory; vLLM's
    /// --num-gpu-blocks-override is an alias).
    #[arg(long, alias = "num-gpu-blocks-override")]
    pub num_kv_blocks: Option<u64>,
    /// Share of the GPU's memory (0 to 1, default 0.9, as vLLM) for the weights,
    /// the largest step and the KV cache, which takes what the other two leave.
    /// No effect on the CPU device (a warning says so): size the cache there with
    /// --kv-cache-memory or --num-kv-blocks.
    #[arg(long, value_parser = parse_fraction)]
    pub gpu_memory_utilization: Option<f64>,
    /// Reuse the KV cache of shared prompt prefixes.
    #[arg(long)]
    pub enable_prefix_caching: bool,
    /// Load no tokenizer (vLLM's flag): prompts must be token ids. Without it, a
    /// model directory with no tokenizer.json is refused at start-up.
    #[arg(long)]
    pub skip_tokenizer_init: bool,
    /// No CUDA graphs (vLLM's flag). Until they have run on a GPU, graphs are
    /// off unless the environment sets ENGINE_CUDA_GRAPHS=1.
    #[arg(long)]
    pub enforce_eager: bool,
    /// Seed for requests that do not give one.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to run: auto picks GPU 0 in a build with CUDA on a machine with a
    /// GPU, else the CPU (the log says which and why).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    pub device: String,
    /// Most logprobs a request may ask for (at most 20).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(0..=20))]
    pub max_logprobs: i64,
    /// Report logprob tokens as "token_id:N" (requests may override with
    /// return_tokens_as_token_ids).
    #[arg(long)]
    pub return_tokens_as_token_ids: bool,
    /// Let the model call tools when a request has tools and tool_choice "auto"
    /// (or no tool_choice), reading its calls with --tool-call-parser. Without
    /// it such requests are refused, as in vLLM.
    #[arg(long)]
    pub enable_auto_tool_choice: bool,
    /// How tool calls are read out of the model's text for "auto": hermes
    /// (<tool_call> JSON blocks), llama3_json (JSON objects separated by ";"),
    /// mistral ([TOOL_CALLS] and a JSON list).
    #[arg(long, value_enum)]
    pub tool_call_parser: Option<ToolParser>,
    /// Do not log one line per request.
    #[arg(long)]
    pub disable_log_requests: bool,
    /// Log level (vLLM's --uvicorn-log-level is an alias).
    #[arg(long, alias = "uvicorn-log-level", value_enum, default_value = "info")]
    pub log_level: LogLevel,
    /// Seconds to let in-flight requests finish on SIGINT/SIGTERM before aborting them.
    #[arg(long, default_value_t = 10)]
    pub shutdown_timeout: u64,
    /// Seconds a connection may take to send a request's head, counted from
    /// its opening or from its previous response: an idle keep-alive connection
    /// closes after it (uvicorn's --timeout-keep-alive, vLLM's env variable).
    #[arg(long, env = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_keep_alive: u64,
    /// Most connections open at once; past it a connection gets a 503 and is
    /// closed. Default: 4096, or less to stay under the descriptor limit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: Option<u64>,

    // --- HTTP front and logs (vLLM's flags): CORS, TLS, root path, stats ---
    /// Origins allowed to call the API from a web page (CORS), a JSON list.
    #[arg(long, default_value = r#"["*"]"#, value_parser = JsonList::parse)]
    pub allowed_origins: JsonList,
    /// Methods allowed cross-origin, a JSON list ("*": all).
    #[arg(long, default_value = r#"["*"]"#, value_parser = JsonList::parse)]
    pub allowed_methods: JsonList,
    /// Request headers allowed cross-origin, a JSON list ("*": any).
    #[arg(long, default_value = r#"["*"]"#, value_parser = JsonList::parse)]
    pub allowed_headers: JsonList,
    /// Allow credentials (cookies, authorization) cross-origin.
    #[arg(long)]
    pub allow_credentials: bool,
    /// Serve HTTPS with this private key (PEM); needs --ssl-certfile.
    #[arg(long, requires = "ssl_certfile")]
    pub ssl_keyfile: Option<PathBuf>,
    /// The certificate chain (PEM) served with --ssl-keyfile.
    #[arg(long, requires = "ssl_keyfile")]
    pub ssl_certfile: Option<PathBuf>,
    /// CA certificates (PEM) client certificates are checked against
    /// (with --ssl-cert-reqs 1 or 2).
    #[arg(long, requires = "ssl_certfile")]
    pub ssl_ca_certs: Option<PathBuf>,
    /// Client certificates, as Python's ssl.VerifyMode: 0 none asked for,
    /// 1 optional (checked when sent), 2 required.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub ssl_cert_reqs: u8,
    /// The path prefix a proxy mounts the API under: requests are served with
    /// or without it (FastAPI's root_path, as vLLM sets it).
    #[arg(long)]
    pub root_path: Option<String>,
    /// No periodic stats line (the metrics are still served).
    #[arg(long)]
    pub disable_log_stats: bool,
    /// Most prompt characters and prompt token ids a request's log line shows.
    #[arg(long)]
    pub max_log_len: Option<usize>,
}

/// The command line, with vLLM's flags this server lacks added (vllm_flags.rs).
pub fn command() -> clap::Command {
    crate::vllm_flags::add_to(
        Args::command()
            .args_override_self(true)
            .infer_long_args(true),
    )
}

/// Parses the command line: the arguments, and a warning line for each vLLM flag
/// given that has no effect here. A vLLM flag that would change results without
/// support is an error naming the feature.
pub fn parse_from(argv: Vec<std::ffi::OsString>) -> Result<(Args, Vec<String>), clap::Error> {
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(crate::vllm_flags::normalize(argv))?;
    let conflict = |cmd: &mut clap::Command, m: String| cmd.error(ErrorKind::ArgumentConflict, m);
    let warnings = crate::vllm_flags::check(&matches).map_err(|m| conflict(&mut cmd, m))?;
    let mut args = Args::from_arg_matches(&matches)?;
    if let Some(tag) = args.model_tag.take() {
        match &args.model {
            Some(m) if *m != tag => {
                return Err(conflict(
                    &mut cmd,
                    format!("the model is given twice: {tag} and --model {m}; give it once"),
                ))
            }
            _ => args.model = Some(tag),
        }
    }
    let mut warnings = warnings;
    match (args.enable_auto_tool_choice, args.tool_call_parser) {
        // vLLM's start-up error.
        (true, None) => {
            return Err(conflict(
                &mut cmd,
                "--enable-auto-tool-choice requires --tool-call-parser".into(),
            ))
        }
        (false, Some(p)) => warnings.push(format!(
            "--tool-call-parser {}: ignored without --enable-auto-tool-choice",
            p.to_possible_value()
                .map_or(String::new(), |v| v.get_name().to_string())
        )),
        _ => {}
    }
    Ok((args, warnings))
}

/// --load-format: the engine's "auto" for the formats it finds from the files,
/// or "dummy"; an error naming any other.
fn load_format(v: &str) -> Result<String, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "auto" | "safetensors" | "pt" | "npcache" | "gguf" => Ok("auto".into()),
        "dummy" => Ok("dummy".into()),
        other => Err(format!(
            "the {other} load format is not supported (served: auto, safetensors and gguf \
             found from the files, dummy)"
        )),
    }
}

/// --quantization: the methods served, or an error naming the one that is not.
fn quantization(v: &str) -> Result<String, String> {
    let name = v.trim().to_ascii_lowercase();
    match name.as_str() {
        "auto" | "gguf" | "fp8" | "compressed-tensors" | "none" => Ok(name),
        other => Err(format!(
            "the {other} quantization method is not supported (served: auto, gguf, fp8, \
             compressed-tensors, none)"
        )),
    }
}

impl Args {
    /// The CORS layer of --allowed-origins, --allowed-methods, --allowed-headers
    /// and --allow-credentials.
    pub fn cors(&self) -> Result<tower_http::cors::CorsLayer, String> {
        crate::cors::layer(&crate::cors::CorsConfig {
            origins: &self.allowed_origins,
            methods: &self.allowed_methods,
            headers: &self.allowed_headers,
            credentials: self.allow_credentials,
        })
    }

    /// The TLS acceptor when --ssl-keyfile and --ssl-certfile are given.
    pub fn tls(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
        let (Some(keyfile), Some(certfile)) = (&self.ssl_keyfile, &self.ssl_certfile) else {
            return Ok(None);
        };
        crate::tls::acceptor(&crate::tls::TlsFiles {
            keyfile,
            certfile,
            ca_certs: self.ssl_ca_certs.as_deref(),
            cert_reqs: self.ssl_cert_reqs,
        })
        .map(Some)
    }

    /// --root-path without its final '/' ("" and "/" are none).
    pub fn root_path(&self) -> Option<String> {
        let root = self.root_path.as_deref()?.trim_end_matches('/');
        (!root.is_empty()).then(|| {
            if root.starts_with('/') {
                root.to_string()
            } else {
                format!("/{root}")
            }
        })
    }

    /// What `vllm:cache_config_info` reports of the loaded engine.
    pub fn cache_config(&self, info: &crate::engine_handle::ModelInfo) -> Vec<(String, String)> {
        crate::metrics::cache_config_labels(
            info.block_size,
            &self.kv_cache_dtype,
            self.gpu_memory_utilization.unwrap_or(0.9),
            self.enable_prefix_caching,
            info.num_kv_blocks,
            self.num_kv_blocks,
        )
    }

    /// Resolves --model and --tokenizer to local paths (hub names through the
    /// Hugging Face cache); returns lines for the log.
    pub fn resolve_paths(&mut self) -> Result<Vec<String>, String> {
        let dl = self.download_dir.as_deref();
        let mut notes = Vec::new();
        if let Some(m) = &self.model {
            let r = model_path::resolve("--model", m, self.revision.as_deref(), dl)?;
            notes.extend(r.note);
            self.model_path = Some(r.path);
        }
        if let Some(t) = &self.tokenizer {
            let r = model_path::resolve("--tokenizer", t, self.tokenizer_revision.as_deref(), dl)?;
            notes.extend(r.note);
            self.tokenizer_path = Some(r.path);
        }
        Ok(notes)
    }

    /// The parser tool_choice "auto" uses, when the flags allow "auto".
    pub fn auto_tools(&self) -> Option<ToolParser> {
        self.tool_call_parser
            .filter(|_| self.enable_auto_tool_choice)
    }

    /// The model to load.
    pub fn model_dir(&self) -> String {
        match (&self.model_path, &self.model) {
            (Some(p), _) => p.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => demo_model().0,
        }
    }

    /// Names the API answers to: --served-model-name, else --model as given
    /// (vLLM's rule), else "demo" for the bundled model.
    pub fn served_model_names(&self) -> Vec<String> {
        match (&self.served_model_name[..], &self.model) {
            ([], Some(m)) => vec![m.clone()],
            ([], None) => vec!["demo".to_string()],
            (names, _) => names.to_vec(),
        }
    }

    /// The engine's options (engine.h's `engine_options_set` keys).
    pub fn engine_options(&self) -> Vec<(&'static str, String)> {
        let mut o = vec![
            ("model", self.model_dir()),
            ("served_model_name", self.served_model_names()[0].clone()),
            ("device", self.device.clone()),
            ("dtype", self.dtype.clone()),
            ("quantization", self.quantization.clone()),
            ("block_size", self.block_size.to_string()),
            ("kv_cache_dtype", self.kv_cache_dtype.clone()),
            ("max_num_seqs", self.max_num_seqs.to_string()),
            ("max_logprobs", self.max_logprobs.to_string()),
            (
                "max_num_batched_tokens",
                self.max_num_batched_tokens.to_string(),
            ),
            (
                "enable_prefix_caching",
                self.enable_prefix_caching.to_string(),
            ),
            ("seed", self.seed.to_string()),
        ];
        if let Some(n) = self.max_model_len {
            o.push(("max_model_len", n.to_string()));
        }
        if let Some(b) = self.kv_cache_memory {
            o.push(("kv_cache_bytes", b.to_string()));
        }
        if let Some(n) = self.num_kv_blocks {
            o.push(("num_kv_blocks", n.to_string()));
        }
        if let Some(f) = self.gpu_memory_utilization {
            o.push(("gpu_memory_utilization", f.to_string()));
        }
        if let Some(t) = &self.chat_template {
            o.push(("chat_template", t.clone()));
        }
        if let Some(t) = self.tokenizer_path.as_ref().or(self.tokenizer.as_ref()) {
            o.push(("tokenizer", t.clone()));
        }
        if let Some(n) = self.threads {
            o.push(("threads", n.to_string()));
        }
        if let Some(n) = self.tensor_parallel_size {
            o.push(("tensor_parallel_size", n.to_string()));
        }
        if self.load_format != "auto" {
            o.push(("load_format", self.load_format.clone()));
        }
        if self.skip_tokenizer_init {
            o.push(("skip_tokenizer_init", "true".into()));
        }
        if self.enforce_eager {
            o.push(("enforce_eager", "true".into()));
        }
        o
    }
}

fn parse_block_size(s: &str) -> Result<u64, String> {
    match s {
        "8" => Ok(8),
        "16" => Ok(16),
        "32" => Ok(32),
        _ => Err(format!("must be 8, 16 or 32, got {s:?}")),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("must be a number in (0, 1], got {s:?}")),
    }
}

/// "4GiB", "512MB", "1048576".
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("not a size: {s:?} (try 4GiB or a number of bytes)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((number * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5MB"), Ok(1_500_000));
        assert!(parse_bytes("3 parsecs").is_err());
    }

    #[test]
    fn vllm_flags_parse() {
        let a = Args::try_parse_from([
            "engine-server",
            "--model",
            "m",
            "--served-model-name",
            "a",
            "b",
            "--uvicorn-log-level",
            "warning",
            "--enable-prefix-caching",
        ])
        .unwrap();
        assert_eq!(a.served_model_names(), vec!["a", "b"]);
        assert_eq!(a.log_level, LogLevel::Warning);
        assert!(Args::try_parse_from(["engine-server", "--max-logprobs", "21"]).is_err());
        assert!(Args::try_parse_from(["engine-server", "--block-size", "12"]).is_err());
    }

    #[test]
    fn front_flags_parse() {
        let a = Args::try_parse_from([
            "engine-server",
            "--allowed-origins",
            r#"["http://localhost:3000"]"#,
            "--allow-credentials",
            "--root-path",
            "/api/",
            "--max-log-len",
            "10",
            "--disable-log-stats",
        ])
        .unwrap();
        assert_eq!(a.allowed_origins.0, ["http://localhost:3000"]);
        assert_eq!(a.allowed_methods.0, ["*"]);
        assert_eq!(a.root_path().as_deref(), Some("/api"));
        assert!(a.cors().is_ok());
        assert!(a.tls().unwrap().is_none());
        let bare = Args::try_parse_from(["engine-server", "--root-path", "/"]).unwrap();
        assert_eq!(bare.root_path(), None);
        let e = Args::try_parse_from(["engine-server", "--allowed-origins", "*"]).unwrap_err();
        assert!(e.to_string().contains("JSON list"), "{e}");
        assert!(Args::try_parse_from(["engine-server", "--ssl-keyfile", "k.pem"]).is_err());
        assert!(Args::try_parse_from(["engine-server", "--ssl-cert-reqs", "3"]).is_err());
    }
}
