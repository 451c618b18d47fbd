//! engine-server: vLLM's OpenAI-compatible API over engine's C ABI.
//!
//! Data flows one way: connection (accept.rs: TLS, then tower-http's CORS
//! layer) → HTTP request (http.rs: routing) → validation (request.rs) → the
//! engine's request (engine_request.rs) → engine_submit (engine_handle.rs) →
//! events on a channel (generation.rs) → JSON or server-sent events
//! (completions.rs, chat.rs, stream.rs; built in response.rs).

mod accept;
mod chat;
mod cli;
mod completions;
mod conn;
mod cors;
mod endpoints;
mod engine_handle;
mod engine_request;
mod error;
mod generation;
mod http;
mod logprobs;
mod metrics;
mod model_path;
mod offload;
mod prompt_bound;
mod request;
mod response;
mod state;
mod stats_log;
mod stream;
mod tls;
mod tool_parsers;
mod tools;
mod vllm_flags;

// The engine's C ABI, the server's only way into the engine.
use engine_sys as sys;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use cli::Args;
use state::{AppState, Config};

fn main() -> ExitCode {
    let (mut args, warnings) =
        cli::parse_from(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(args.log_level.filter()))
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    for w in warnings {
        tracing::warn!("{w}");
    }
    // Before anything else: a model that is not there is the one message.
    match args.resolve_paths() {
        Ok(notes) => notes.iter().for_each(|n| tracing::info!("{n}")),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    // Bad CORS values or certificate files stop the start, before the port opens.
    let cors = args.cors()?;
    let tls = args.tls()?;
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "engine-server {} (engine {}): port {} bound; loading the model (/health answers 503 until it is loaded)",
        env!("CARGO_PKG_VERSION"),
        engine_handle::library_version(),
        address.port()
    );
    let state = Arc::new(AppState::new(config(&args)));
    // The port answers (/health: 503) while the weights load.
    let options = args.engine_options();
    let model = args.model_dir();
    if args.model.is_none() {
        tracing::info!("no --model: serving {}", cli::demo_model().1);
    }
    let mut loading = tokio::task::spawn_blocking(move || {
        let engine = load_engine(&model, &options)?;
        let bound = prompt_bound::PromptBound::measure(&engine);
        Ok::<_, String>((engine, bound))
    });
    let limiter = conn::Limiter::new(
        args.max_connections
            .unwrap_or_else(conn::default_max_connections) as usize,
        tls.clone(),
    );
    tracing::info!(
        "at most {} connections; {} s to send a request head (idle keep-alive)",
        limiter.max_connections,
        args.timeout_keep_alive
    );
    let front = accept::Front::new(
        state.clone(),
        cors,
        tls,
        Duration::from_secs(args.timeout_keep_alive),
    );
    let mut loaded = false;
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors (or the like): wait rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(stream) = limiter.admit(stream) else { continue };
                front.serve(stream, graceful.watcher());
            }
            result = &mut loading, if !loaded => {
                loaded = true;
                let (engine, bound) = result.map_err(|e| format!("the model loading thread failed: {e}"))??;
                engine_ready(&args, &state, engine, bound);
                tracing::info!("listening on {scheme}://{address}");
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    shut_down(graceful, &state, Duration::from_secs(args.shutdown_timeout)).await;
    tracing::info!("stopped");
    Ok(())
}

/// The handlers' settings.
fn config(args: &Args) -> Config {
    Config {
        served_model_names: args.served_model_names(),
        response_role: args.response_role.clone(),
        api_key: args.api_key.clone(),
        return_tokens_as_token_ids: args.return_tokens_as_token_ids,
        log_requests: !args.disable_log_requests,
        max_log_len: args.max_log_len,
        root_path: args.root_path(),
        auto_tools: args.auto_tools(),
    }
}

/// Lets in-flight requests finish for up to `grace`, then aborts the rest and
/// stops the engine.
async fn shut_down(graceful: GracefulShutdown, state: &AppState, grace: Duration) {
    tracing::info!("shutting down: letting in-flight requests finish");
    let all_closed = graceful.shutdown();
    tokio::pin!(all_closed);
    if tokio::time::timeout(grace, &mut all_closed).await.is_err() {
        tracing::info!("aborting the requests still running");
        if let Some(engine) = state.loaded_engine().cloned() {
            let _ = tokio::task::spawn_blocking(move || engine.shutdown(false)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), all_closed).await;
    }
    if let Some(engine) = state.loaded_engine().cloned() {
        let _ = tokio::task::spawn_blocking(move || engine.shutdown(false)).await;
    }
}

/// The model has loaded: say so, start the metrics and the stats line, and
/// let requests in.
fn engine_ready(
    args: &Args,
    state: &Arc<AppState>,
    engine: engine_handle::EngineHandle,
    bound: prompt_bound::PromptBound,
) {
    let info = engine.info();
    tracing::info!("device: {}", info.device);
    if args.gpu_memory_utilization.is_some() && !info.device.starts_with("cuda") {
        tracing::warn!(
            "--gpu-memory-utilization has no effect on the CPU device; size the KV \
             cache with --kv-cache-memory or --num-kv-blocks"
        );
    }
    tracing::info!(
        "model loaded: serving {} ({}, max_model_len {}, KV cache {} blocks of {} tokens: {} tokens)",
        state.model_name(),
        info.dtype,
        info.max_model_len,
        info.num_kv_blocks,
        info.block_size,
        info.num_kv_blocks * info.block_size
    );
    tracing::info!("{}", bound.describe());
    let engine = Arc::new(engine);
    state
        .metrics
        .engine_loaded(engine.clone(), args.cache_config(engine.info()));
    tokio::spawn(stats_log::run(
        state.clone(),
        engine.clone(),
        !args.disable_log_stats,
    ));
    state.set_engine(engine, bound);
}

/// Loads the model, showing progress: a bar on a terminal, else a log line per quarter.
fn load_engine(
    model: &str,
    options: &[(&str, String)],
) -> Result<engine_handle::EngineHandle, String> {
    tracing::info!("loading {model}");
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "loading weights {bar:40} {pos}/{len} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last_quarter = None;
    let mut progress = |done: u64, total: u64| match &bar {
        Some(bar) => {
            bar.set_length(total);
            bar.set_position(done);
        }
        None => {
            let quarter = (done * 4).checked_div(total).unwrap_or(4);
            if last_quarter != Some(quarter) {
                last_quarter = Some(quarter);
                tracing::info!("loading weights: {done}/{total}");
            }
        }
    };
    let result = engine_handle::EngineHandle::load(options, &mut progress);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // The engine's message names the model already.
    result.map_err(|e| e.to_string())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
