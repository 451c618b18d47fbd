//! Compiling a constraint where it cannot take the process down: on a thread of
//! its own with a large stack (llguidance recurses over schemas and grammars,
//! and a few thousand required properties overflow a runtime thread's 2 MiB),
//! with llguidance's own size limits, a bound on how many compile at once, and
//! a time limit after which the request is refused while the compile finishes
//! (llguidance's fuel limits bound it) in the background.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::compiler::LazyGuidedCompiler;
use super::{Guide, GuidedDecodingParams};
use crate::error::{Error, Result};

/// Stack of a compile thread (address space; pages are used only as touched).
pub const COMPILE_STACK_BYTES: usize = 64 << 20;
/// Longest a request waits for its constraint to compile (a queue for a
/// compile slot included).
pub const COMPILE_TIME_LIMIT: Duration = Duration::from_secs(10);
/// Constraints compiling at once, per model; more wait for a slot.
pub const MAX_CONCURRENT_COMPILES: usize = 4;
/// Largest constraint text (a schema's JSON, a regex, a grammar) compiled, in
/// bytes.
pub const MAX_CONSTRAINT_BYTES: usize = 4 << 20;
/// Most property names (`properties` and `required` together, over the whole
/// schema) a JSON schema may have.
pub const MAX_SCHEMA_PROPERTIES: usize = 5000;

/// Slots for compile threads.
#[derive(Debug, Default)]
pub(crate) struct CompileSlots {
    busy: Mutex<usize>,
    freed: Condvar,
}

impl CompileSlots {
    /// Waits until `deadline` for a slot.
    fn acquire(self: &Arc<Self>, deadline: Instant) -> Option<SlotGuard> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy >= MAX_CONCURRENT_COMPILES {
            let left = deadline.checked_duration_since(Instant::now())?;
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *busy += 1;
        Some(SlotGuard(self.clone()))
    }
}

/// Holds a slot; the compile thread releases it when it ends.
struct SlotGuard(Arc<CompileSlots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        self.0.freed.notify_one();
    }
}

/// The request field a constraint came from, for messages.
fn field(params: &GuidedDecodingParams) -> &'static str {
    if params.json.is_some() {
        "guided_json"
    } else if params.regex.is_some() {
        "guided_regex"
    } else if params.choice.is_some() {
        "guided_choice"
    } else if params.grammar.is_some() {
        "guided_grammar"
    } else {
        "response_format"
    }
}

/// Cheap checks of the constraint's size before anything is compiled.
fn check_size(params: &GuidedDecodingParams) -> Result<()> {
    let field = field(params);
    let bytes = match (
        &params.json,
        &params.json_schema,
        &params.regex,
        &params.grammar,
    ) {
        (Some(schema), ..) | (None, Some(schema), ..) => {
            let names = count_property_names(schema);
            if names > MAX_SCHEMA_PROPERTIES {
                return Err(Error::invalid(format!(
                    "{field}: the JSON schema has {names} property names (in \"properties\" and \
                     \"required\"), more than the limit of {MAX_SCHEMA_PROPERTIES}"
                )));
            }
            serde_json::to_string(schema).map_or(0, |t| t.len())
        }
        (None, None, Some(rx), _) => rx.len(),
        (None, None, None, Some(g)) => g.len(),
        _ => params
            .choice
            .as_ref()
            .map_or(0, |c| c.iter().map(|s| s.len() + 1).sum()),
    };
    if bytes > MAX_CONSTRAINT_BYTES {
        return Err(Error::invalid(format!(
            "{field}: the constraint is {bytes} bytes long, more than the limit of \
             {MAX_CONSTRAINT_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Names in every `properties` object and `required` array of a schema, with
/// an explicit stack (the schema may be deeply nested).
fn count_property_names(schema: &serde_json::Value) -> usize {
    use serde_json::Value;
    let mut count = 0usize;
    let mut todo = vec![schema];
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    count += props.len();
                }
                if let Some(Value::Array(required)) = map.get("required") {
                    count += required.len();
                }
                todo.extend(map.values());
            }
            Value::Array(items) => todo.extend(items),
            _ => {}
        }
    }
    count
}

impl LazyGuidedCompiler {
    /// [`super::GuidedCompiler::compile`] on a compile thread (see the module
    /// docs); a constraint too large or too slow to compile is the request's
    /// error, naming the limit.
    pub fn compile_bounded(
        self: &Arc<Self>,
        params: &GuidedDecodingParams,
        stop_token_ids: &[u32],
    ) -> Result<Option<Guide>> {
        params.verify()?;
        check_size(params)?;
        let field = field(params);
        let deadline = Instant::now() + COMPILE_TIME_LIMIT;
        let too_slow = || {
            Error::invalid(format!(
                "{field}: the constraint did not compile within the time limit of {} s",
                COMPILE_TIME_LIMIT.as_secs()
            ))
        };
        let slot = self.slots().acquire(deadline).ok_or_else(too_slow)?;
        let (tx, rx) = mpsc::sync_channel(1);
        let (me, params, stop) = (self.clone(), params.clone(), stop_token_ids.to_vec());
        std::thread::Builder::new()
            .name("guided-compile".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn(move || {
                let _slot = slot;
                let result = me.get().and_then(|c| c.compile(&params, &stop));
                let _ = tx.send(result);
            })
            .map_err(|e| Error::invalid(format!("{field}: cannot start a compile thread: {e}")))?;
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(too_slow()),
            Err(RecvTimeoutError::Disconnected) => Err(Error::invalid(format!(
                "{field}: compiling the constraint failed"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn property_names_are_counted_at_any_depth() {
        let schema = json!({"properties": {"a": {"properties": {"b": {}, "c": {}}}},
                            "required": ["a"], "items": [{"required": ["x", "y"]}]});
        assert_eq!(count_property_names(&schema), 6);
        let p = GuidedDecodingParams {
            json: Some(json!({"required": (0..MAX_SCHEMA_PROPERTIES + 1)
                .map(|i| format!("p{i}")).collect::<Vec<_>>()})),
            ..Default::default()
        };
        let e = check_size(&p).unwrap_err().to_string();
        assert!(
            e.contains("guided_json") && e.contains("limit of 5000"),
            "{e}"
        );
    }
}
