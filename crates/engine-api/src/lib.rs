//! What the engine and its server share without either depending on the other:
//! today the Python-compatible formatting that vLLM's messages are made of
//! (clients match on them), written once.

pub mod python;
