//! The c_abi tests, one binary (each test file linked on its own cost CI a
//! ~30 MB link apiece): `cargo test --test c_abi MODULE::` runs one file.
#[path = "../common/mod.rs"]
mod common;
mod errors;
mod fuzz;
mod guided;
mod hardening;
mod install;
mod quantization;
