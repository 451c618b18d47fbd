//! engine: a kernel-first LLM inference engine.
//!
//! Data flows one way: a model directory is loaded into a [`model::Model`] by the [`loader`]
//! (weights on a [`backend::Backend`]) plus a [`tokenizer::Tokenizer`]; the
//! [`generate`] loop turns prompts into token batches over the paged
//! [`kv_cache`], runs the model, and samples with [`sampling`].

pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod fixture;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod loader;
pub mod memory;
pub mod model;
pub mod sampling;
pub mod tokenizer;

pub use error::{Error, Result};

#[cfg(test)]
mod architecture;
