//! `quantization_config` of an FP8 checkpoint in the compressed-tensors layout
//! (what llm-compressor / nm-vllm write): `quant_method: "compressed-tensors"`,
//! `format: "float-quantized"` (or the older `"naive-quantized"`), and
//! `config_groups` whose `weights` are `{num_bits: 8, type: "float", strategy:
//! "tensor" | "channel"}`. Weights are then safetensors `F8_E4M3` with a
//! `weight_scale` beside them; the modules in `ignore` stay 16/32-bit.
//!
//! Activations: dynamic or absent are served as is (the CPU keeps them in f32);
//! static input scales (`input_scale` tensors) are read past, because they only
//! bound what an FP8 activation GEMM could represent and an f32 activation is
//! the value that GEMM approximates. Everything else (integer weights,
//! group/block strategies, other bit widths, sparsity, FP8 KV-cache scales) is
//! refused by name.

use serde_json::Value;

/// How many scales a weight has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Strategy {
    /// One scale for the whole tensor (shape `[]` or `[1]`).
    Tensor,
    /// One scale per output row (shape `[out, 1]` or `[out]`).
    Channel,
}

impl Fp8Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Fp8Strategy::Tensor => "tensor",
            Fp8Strategy::Channel => "channel",
        }
    }
}

/// The FP8 scheme of a checkpoint: one strategy for all its quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Scheme {
    pub strategy: Fp8Strategy,
}

/// The scheme of a compressed-tensors `quantization_config`, or why it is not served.
pub fn compressed_tensors_scheme(q: &Value) -> Result<Fp8Scheme, String> {
    let format = q["format"].as_str().unwrap_or("(none)");
    if !matches!(format, "float-quantized" | "naive-quantized") {
        return Err(format!(
            "compressed-tensors format {format:?} is not served (expected float-quantized: \
             FP8 e4m3 weights with per-tensor or per-channel scales)"
        ));
    }
    if let Some(s) = q.get("sparsity_config").filter(|s| !is_empty(s)) {
        let f = s["format"].as_str().unwrap_or("?");
        return Err(format!(
            "compressed-tensors sparsity (sparsity_config format {f:?}) is not served"
        ));
    }
    if !is_empty(&q["kv_cache_scheme"]) {
        return Err(
            "compressed-tensors kv_cache_scheme (FP8 KV-cache scales) is not served".into(),
        );
    }
    let groups = q["config_groups"]
        .as_object()
        .filter(|g| !g.is_empty())
        .ok_or("compressed-tensors: config_groups is missing or empty")?;
    let mut strategy = None;
    for (name, group) in groups {
        let s = group_strategy(name, group)?;
        if strategy.is_some_and(|prev| prev != s) {
            return Err(format!(
                "compressed-tensors: config group {name:?} mixes weight strategies; one of \
                 tensor or channel for every group is served"
            ));
        }
        strategy = Some(s);
    }
    Ok(Fp8Scheme {
        strategy: strategy.ok_or("compressed-tensors: no config group")?,
    })
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn group_strategy(name: &str, group: &Value) -> Result<Fp8Strategy, String> {
    let w = &group["weights"];
    if w.is_null() {
        return Err(format!(
            "compressed-tensors: config group {name:?} has no weights scheme (activation-only \
             quantization is not served)"
        ));
    }
    let (bits, ty) = (w["num_bits"].as_u64(), w["type"].as_str().unwrap_or("int"));
    if bits != Some(8) || ty != "float" {
        return Err(format!(
            "compressed-tensors: config group {name:?} has {}-bit {ty} weights; only 8-bit \
             float (FP8 e4m3) weights are served",
            bits.map_or("?".to_string(), |b| b.to_string())
        ));
    }
    if w["dynamic"].as_bool() == Some(true) {
        return Err(format!(
            "compressed-tensors: config group {name:?} has dynamic weight scales, which \
             a checkpoint cannot hold"
        ));
    }
    let strategy = match w["strategy"].as_str().unwrap_or("tensor") {
        "tensor" => Fp8Strategy::Tensor,
        "channel" => Fp8Strategy::Channel,
        other => {
            return Err(format!(
                "compressed-tensors: config group {name:?} has FP8 weights with strategy \
                 {other:?}; served: tensor, channel"
            ))
        }
    };
    check_activations(name, &group["input_activations"])?;
    Ok(strategy)
}

/// Input activations: absent, dynamic, or static scales (read past, see the
/// module docs), of 8-bit floats only.
fn check_activations(name: &str, a: &Value) -> Result<(), String> {
    if a.is_null() {
        return Ok(());
    }
    let (bits, ty) = (a["num_bits"].as_u64(), a["type"].as_str().unwrap_or("int"));
    if bits != Some(8) || ty != "float" {
        return Err(format!(
            "compressed-tensors: config group {name:?} quantizes input activations to \
             {}-bit {ty}; only FP8 (or unquantized) activations are served",
            bits.map_or("?".to_string(), |b| b.to_string())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(weights: Value) -> Value {
        json!({
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                "input_activations": {"num_bits": 8, "type": "float", "dynamic": true, "strategy": "token"}}},
            "ignore": ["lm_head"],
            "kv_cache_scheme": null,
            "sparsity_config": {}
        })
    }

    #[test]
    fn fp8_tensor_and_channel_are_served() {
        for (s, want) in [
            ("tensor", Fp8Strategy::Tensor),
            ("channel", Fp8Strategy::Channel),
        ] {
            let q =
                config(json!({"num_bits": 8, "type": "float", "strategy": s, "dynamic": false}));
            assert_eq!(compressed_tensors_scheme(&q).unwrap().strategy, want);
        }
    }

    #[test]
    fn other_schemes_are_refused_by_name() {
        let cases = [
            (
                json!({"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}),
                "4-bit int",
            ),
            (
                json!({"num_bits": 8, "type": "int", "strategy": "channel"}),
                "8-bit int",
            ),
            (
                json!({"num_bits": 8, "type": "float", "strategy": "group"}),
                "\"group\"",
            ),
            (
                json!({"num_bits": 8, "type": "float", "strategy": "block"}),
                "\"block\"",
            ),
        ];
        for (weights, needle) in cases {
            let err = compressed_tensors_scheme(&config(weights)).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        let mut q = config(json!({"num_bits": 8, "type": "float", "strategy": "tensor"}));
        q["sparsity_config"] = json!({"format": "sparse-24-bitmask"});
        assert!(compressed_tensors_scheme(&q)
            .unwrap_err()
            .contains("sparse-24"));
        q["sparsity_config"] = json!({});
        q["format"] = json!("pack-quantized");
        assert!(compressed_tensors_scheme(&q)
            .unwrap_err()
            .contains("pack-quantized"));
    }
}
