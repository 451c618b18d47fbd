//! What every handler shares: the settings from the command line, the engine
//! (once it has loaded) and the metrics.

use std::sync::{Arc, OnceLock};

use crate::engine_handle::EngineHandle;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::offload;
use crate::prompt_bound::PromptBound;

/// The server's settings (the engine's own are passed to it at load).
#[derive(Debug, Clone)]
pub struct Config {
    /// Names clients may ask for; responses carry the first.
    pub served_model_names: Vec<String>,
    /// The role of generated chat messages when `add_generation_prompt` is set.
    pub response_role: String,
    pub api_key: Option<String>,
    /// Report tokens as "token_id:N" unless the request says otherwise.
    pub return_tokens_as_token_ids: bool,
    pub log_requests: bool,
    /// Most prompt characters and token ids a request's log line shows.
    pub max_log_len: Option<usize>,
    /// The prefix the API is mounted under behind a proxy (`--root-path`),
    /// without its final '/'; requests may carry it or not.
    pub root_path: Option<String>,
    /// How tool_choice "auto" reads calls (`--enable-auto-tool-choice` with
    /// `--tool-call-parser`); without it "auto" is refused, as in vLLM.
    pub auto_tools: Option<crate::tool_parsers::ToolParser>,
}

pub struct AppState {
    pub config: Config,
    pub metrics: Metrics,
    /// Slots for tokenizing large texts (see `offload`).
    pub large_jobs: tokio::sync::Semaphore,
    engine: OnceLock<(Arc<EngineHandle>, PromptBound)>,
}

impl AppState {
    pub fn new(config: Config) -> AppState {
        AppState {
            metrics: Metrics::new(&config.served_model_names[0]),
            config,
            large_jobs: offload::large_job_slots(),
            engine: OnceLock::new(),
        }
    }

    /// Called once, when the model has loaded.
    pub fn set_engine(&self, engine: Arc<EngineHandle>, bound: PromptBound) {
        let _ = self.engine.set((engine, bound));
    }

    /// The bound on prompt lengths checked before tokenizing.
    pub fn prompt_bound(&self) -> PromptBound {
        self.engine
            .get()
            .map_or_else(|| PromptBound::off("loading"), |(_, b)| b.clone())
    }

    /// The engine, or 503 while the model is still loading.
    pub fn engine(&self) -> ApiResult<Arc<EngineHandle>> {
        self.engine
            .get()
            .map(|(e, _)| e.clone())
            .ok_or_else(|| ApiError::unavailable("The model is still loading; try again shortly."))
    }

    pub fn loaded_engine(&self) -> Option<&Arc<EngineHandle>> {
        self.engine.get().map(|(e, _)| e)
    }

    /// The name responses report.
    pub fn model_name(&self) -> &str {
        &self.config.served_model_names[0]
    }

    /// 404 unless `model` is one of the served names.
    pub fn check_model(&self, model: &str) -> ApiResult<()> {
        if self.config.served_model_names.iter().any(|m| m == model) {
            Ok(())
        } else {
            Err(ApiError::unknown_model(model))
        }
    }
}
