//! The "quantization" option through the C ABI: "fp8" quantizes the fixture's
//! projections to FP8 at load and the engine serves; an unserved method is named.

use std::ffi::CString;

use crate::common::c_engine::{assert_error, options, Engine};
use engine::ffi::engine_status::*;
use engine::ffi::options::*;

#[test]
fn quantization_fp8_loads_and_serves() {
    Engine::with(&[("quantization", "fp8")]).assert_serves();
}

#[test]
fn an_unserved_quantization_is_named() {
    let o = options(&[]);
    let (k, v) = (
        CString::new("quantization").unwrap(),
        CString::new("awq").unwrap(),
    );
    // SAFETY: a live options object and NUL-terminated strings.
    let status = unsafe { engine_options_set(o, k.as_ptr(), v.as_ptr()) };
    assert_error(status, ENGINE_ERR_INVALID_ARGUMENT, "\"awq\" is not served");
    // SAFETY: live, freed once.
    unsafe { engine_options_free(o) };
}
