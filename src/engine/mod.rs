//! The engine loop on its own thread. `submit` and `abort` may be called from
//! any thread; requests join the running batch between steps (continuous
//! batching) and each request's outputs arrive through its callback, called on
//! the engine thread once per step in which the request progressed.

pub mod scheduler;
pub mod sequence;
pub mod stats;
pub mod step;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;

pub use sequence::{FinishReason, RequestOutput, SeqDelta, SeqResult, StopReason};
pub use stats::EngineStats;
pub use step::{
    EngineConfig, EngineCore, EngineRequest, RequestError, RequestValidator, WidthParam,
};

/// Receives a request's outputs, on the engine thread: copy what you need and return quickly.
pub type OutputCallback = Box<dyn FnMut(RequestOutput) + Send>;

/// The prompt of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

enum Command {
    Submit {
        id: u64,
        /// Boxed: a request is much larger than the other commands.
        request: Box<EngineRequest>,
        on_output: OutputCallback,
    },
    Abort(u64),
    /// Stop the loop: finish in-flight work first (`drain`), or abort it.
    Shutdown {
        drain: bool,
    },
}

/// State the engine thread shares with the handle.
#[derive(Default)]
struct Shared {
    /// Requests submitted and not yet finished, and whether an abort was sent
    /// for each (a second abort of the same request is refused).
    live: Mutex<HashMap<u64, bool>>,
    stats: Mutex<EngineStats>,
    /// Why the engine stopped serving, if it did.
    failure: Mutex<Option<String>>,
    closed: AtomicBool,
    /// Held while a submit checks `closed` and sends, and while a stop sets it
    /// and sends `Shutdown`: every accepted request then reaches the engine
    /// thread before the shutdown does, so it gets its final output (a submit
    /// racing a shutdown was accepted and never heard of again).
    gate: Mutex<()>,
}

/// A running engine. Dropping it aborts what is left and joins the thread.
pub struct Engine {
    commands: Sender<Command>,
    validator: RequestValidator,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// Behind a mutex so that [`Engine::stop`] works through `&self`; held while
    /// joining, so a second `stop` returns only once the thread has exited too.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    pub fn start<B: Backend>(core: EngineCore<B>) -> Result<Engine> {
        Engine::start_in(core, None)
    }

    /// Starts the engine thread; with a `pool`, every step runs on it (its
    /// rayon work: the CPU kernels, guided-decoding masks) instead of rayon's
    /// global pool.
    pub fn start_in<B: Backend>(
        core: EngineCore<B>,
        pool: Option<rayon::ThreadPool>,
    ) -> Result<Engine> {
        let (commands, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        *shared.stats.lock().unwrap_or_else(PoisonError::into_inner) = core.stats();
        let validator = core.validator();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || match pool {
                Some(pool) => pool.install(|| run_loop(core, rx, thread_shared)),
                None => run_loop(core, rx, thread_shared),
            })
            .map_err(|e| Error::invalid(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            commands,
            validator,
            shared,
            next_id: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn validator(&self) -> &RequestValidator {
        &self.validator
    }

    /// Validates and queues a request; returns its id. Errors (bad parameters, a
    /// prompt too long) come back here, before anything is queued.
    pub fn submit(
        &self,
        prompt: Prompt,
        params: SamplingParams,
        on_output: OutputCallback,
    ) -> Result<u64> {
        self.check_serving()?;
        let tokens = match prompt {
            Prompt::Tokens(t) => t,
            Prompt::Text(text) => self.validator.tokenize(&text)?,
        };
        let request = self.validator.validate(tokens, params)?;
        let _gate = self
            .shared
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.check_serving()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, false);
        if self
            .commands
            .send(Command::Submit {
                id,
                request: Box::new(request),
                on_output,
            })
            .is_err()
        {
            self.shared
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Err(Error::invalid("the engine has stopped"));
        }
        Ok(id)
    }

    /// Aborts a live request: its blocks are freed and its callback gets a final
    /// output with finish reason `abort`.
    pub fn abort(&self, request_id: u64) -> Result<()> {
        {
            let mut live = self
                .shared
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match live.get_mut(&request_id) {
                Some(aborting @ false) => *aborting = true,
                Some(true) => {
                    return Err(Error::invalid(format!(
                        "request {request_id} is already aborted"
                    )))
                }
                None => {
                    return Err(Error::invalid(format!(
                        "request {request_id} is unknown or already finished"
                    )))
                }
            }
        }
        self.commands
            .send(Command::Abort(request_id))
            .map_err(|_| Error::invalid("the engine has stopped"))
    }

    /// A snapshot of the engine's counters, taken after its last step.
    pub fn stats(&self) -> EngineStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `Err` with the reason once the engine has stopped serving.
    pub fn check_serving(&self) -> Result<()> {
        if let Some(why) = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Err(Error::invalid(format!("the engine failed: {why}")));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::invalid("the engine is shutting down"));
        }
        Ok(())
    }

    pub fn num_live_requests(&self) -> usize {
        self.shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Stops accepting requests; `drain` finishes in-flight ones first, otherwise
    /// they are aborted. Returns when the engine thread has exited.
    pub fn shutdown(self, drain: bool) {
        self.stop(drain);
    }

    /// [`Engine::shutdown`] for a handle that stays around (the C ABI's
    /// `engine_shutdown`): afterwards `submit` fails and `stats` keeps the final
    /// counters. Safe to call more than once and from several threads; each call
    /// returns once the engine thread has exited. Must not be called from an
    /// output callback (the engine thread would wait for itself).
    pub fn stop(&self, drain: bool) {
        {
            let _gate = self
                .shared
                .gate
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.closed.store(true, Ordering::Release);
            let _ = self.commands.send(Command::Shutdown { drain });
        }
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(false);
    }
}

fn run_loop<B: Backend>(mut core: EngineCore<B>, rx: Receiver<Command>, shared: Arc<Shared>) {
    let mut callbacks: HashMap<u64, OutputCallback> = HashMap::new();
    let mut draining = false;
    loop {
        // Take every pending command; wait for one only when idle.
        let mut next = if core.has_unfinished() {
            rx.try_recv().ok()
        } else if draining {
            break;
        } else {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        let mut stop_now = false;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Submit {
                    id,
                    request,
                    on_output,
                } => {
                    if let Err(e) = core.add_request(id, *request) {
                        // Ids come from the handle's counter: this is a bug, not user input.
                        tracing_error(&format!("request {id}: {e}"));
                    } else {
                        callbacks.insert(id, on_output);
                    }
                }
                Command::Abort(id) => {
                    if let Some(out) = core.abort(id) {
                        publish_stats(&core, &shared);
                        deliver(&mut callbacks, &shared, out);
                    }
                }
                Command::Shutdown { drain } => {
                    draining = true;
                    stop_now = !drain;
                }
            }
            next = rx.try_recv().ok();
        }
        if stop_now {
            break;
        }
        if core.has_unfinished() {
            match catch_unwind(AssertUnwindSafe(|| core.step())) {
                Ok(Ok(outputs)) => {
                    publish_stats(&core, &shared);
                    for out in outputs {
                        deliver(&mut callbacks, &shared, out);
                    }
                }
                Ok(Err(e)) => fail(&mut core, &mut callbacks, &shared, e.to_string()),
                Err(panic) => fail(&mut core, &mut callbacks, &shared, panic_message(&panic)),
            }
        }
        *shared.stats.lock().unwrap_or_else(PoisonError::into_inner) = core.stats();
    }
    // Whatever is left is aborted, so every callback gets its final output.
    let ids: Vec<u64> = callbacks.keys().copied().collect();
    for id in ids {
        if let Some(out) = core.abort(id) {
            publish_stats(&core, &shared);
            deliver(&mut callbacks, &shared, out);
        }
    }
    *shared.stats.lock().unwrap_or_else(PoisonError::into_inner) = core.stats();
}

/// A step failed: the engine cannot trust its state, so every request is aborted
/// and the engine stops serving.
fn fail<B: Backend>(
    core: &mut EngineCore<B>,
    callbacks: &mut HashMap<u64, OutputCallback>,
    shared: &Shared,
    why: String,
) {
    tracing_error(&format!("engine step failed: {why}"));
    *shared
        .failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(why);
    shared.closed.store(true, Ordering::Release);
    let ids: Vec<u64> = callbacks.keys().copied().collect();
    for id in ids {
        if let Some(out) = core.abort(id) {
            publish_stats(core, shared);
            deliver(callbacks, shared, out);
        }
    }
}

/// Makes the counters after a step (or an abort) visible before its outputs are
/// delivered, so a callback seeing a request's final output finds it counted.
fn publish_stats<B: Backend>(core: &EngineCore<B>, shared: &Shared) {
    *shared.stats.lock().unwrap_or_else(PoisonError::into_inner) = core.stats();
}

/// Hands `out` to its request's callback. A finished request leaves the live set
/// first, so from its final callback on it is unknown to `abort`.
fn deliver(callbacks: &mut HashMap<u64, OutputCallback>, shared: &Shared, out: RequestOutput) {
    let id = out.request_id;
    let call = |f: &mut OutputCallback, out| {
        // A panicking callback must not take the engine down with it.
        if catch_unwind(AssertUnwindSafe(|| f(out))).is_err() {
            tracing_error(&format!("the output callback of request {id} panicked"));
        }
    };
    if out.is_finished() {
        // No longer live before its final output is seen: an abort issued on
        // receiving it is refused as "already finished".
        shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(mut f) = callbacks.remove(&id) {
            call(&mut f, out);
        }
    } else if let Some(f) = callbacks.get_mut(&id) {
        call(f, out);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn tracing_error(message: &str) {
    eprintln!("engine: {message}");
}
