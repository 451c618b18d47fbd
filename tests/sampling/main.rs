//! The sampling tests, one binary (each test file linked on its own cost CI a
//! ~30 MB link apiece): `cargo test --test sampling MODULE::` runs one file.
mod batch_op;
mod beam;
mod processors;
mod random;
#[path = "../sampling_reference/mod.rs"]
mod sampling_reference;
mod stop;
