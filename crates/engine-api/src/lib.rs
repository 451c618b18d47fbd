//! What the engine and its server share without either depending on the other:
//! the JSON that crosses the C ABI (`engine_submit`'s request body, the events'
//! `json`) as serde types, defined once, and the Python-compatible formatting
//! that vLLM's messages are made of (clients match on them).

pub mod event;
pub mod python;
pub mod request;
