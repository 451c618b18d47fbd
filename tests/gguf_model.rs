//! GGUF loading on small files the test writes: the tiny-llama fixture converted as
//! llama.cpp's converter does (names, Q/K rope permutation, tokenizer metadata) must
//! give the same logits and token ids as the safetensors original; broken files
//! (truncated, a tensor whose size disagrees with its type, an unknown architecture,
//! an unsupported type, a vocabulary without merges) are clear errors naming the file.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use engine::config::ModelConfig;
use engine::generate::Llm;
use engine::loader::LoadOptions;
use engine::model::weights::Checkpoint;
use engine::tokenizer::Tokenizer;
use serde_json::Value as Json;

/// A metadata value, in GGUF's encoding.
enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

struct Tensor {
    name: String,
    /// ggml order (innermost first).
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Writes a GGUF v3 file.
fn write_gguf(meta: &[(&str, Meta)], tensors: &[Tensor]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        put_str(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                out.extend(7u32.to_le_bytes());
                out.push(*v as u8);
            }
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Meta::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for s in items {
                    put_str(&mut out, s);
                }
            }
            Meta::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend(v.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (t.data.len() as u64).div_ceil(32) * 32;
    }
    for t in tensors {
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(&t.data);
    }
    out
}

/// llama.cpp's Q/K permutation (rotary halves interleaved), on row-major rows.
fn permute(rows: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let n = rows.len() / cols;
    let (hd, half) = (n / heads, n / heads / 2);
    let mut out = vec![0f32; rows.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let (dst, src) = (h * hd + 2 * i + j, h * hd + j * half + i);
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&rows[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tiny-llama fixture as llama.cpp's converter would write it: F32 tensors
/// (the embedding kept BF16), tokenizer metadata from tokenizer.json.
#[allow(clippy::too_many_lines)] // the fixture's metadata and tensors, listed
fn tiny_llama_gguf(arch: &str) -> (Vec<(&'static str, Meta)>, Vec<Tensor>) {
    let dir = fixture_dir("tiny-llama");
    let c = ModelConfig::from_model_dir(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let mut tensors = Vec::new();
    let mut add = |hf: &str, gguf: String, shape: &[usize], permute_heads: Option<usize>| {
        let t = ckpt.get(hf, shape).unwrap();
        let bf16: &[half::bf16] = bytemuck::cast_slice(t.bytes.as_slice());
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        if gguf == "token_embd.weight" {
            let data = t.bytes.as_slice().to_vec();
            tensors.push(Tensor {
                name: gguf,
                dims,
                ty: 30,
                data,
            });
            return;
        }
        let mut v: Vec<f32> = bf16.iter().map(|x| x.to_f32()).collect();
        if let Some(h) = permute_heads {
            v = permute(&v, h, shape[1]);
        }
        tensors.push(Tensor {
            name: gguf,
            dims,
            ty: 0,
            data: f32_bytes(&v),
        });
    };
    let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    add(
        "model.embed_tokens.weight",
        "token_embd.weight".into(),
        &[c.vocab_size, h],
        None,
    );
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let b = format!("blk.{l}");
        let q = c.num_heads * hd;
        let kv = c.num_kv_heads * hd;
        add(
            &format!("{p}.input_layernorm.weight"),
            format!("{b}.attn_norm.weight"),
            &[h],
            None,
        );
        add(
            &format!("{p}.self_attn.q_proj.weight"),
            format!("{b}.attn_q.weight"),
            &[q, h],
            Some(c.num_heads),
        );
        add(
            &format!("{p}.self_attn.k_proj.weight"),
            format!("{b}.attn_k.weight"),
            &[kv, h],
            Some(c.num_kv_heads),
        );
        add(
            &format!("{p}.self_attn.v_proj.weight"),
            format!("{b}.attn_v.weight"),
            &[kv, h],
            None,
        );
        add(
            &format!("{p}.self_attn.o_proj.weight"),
            format!("{b}.attn_output.weight"),
            &[h, q],
            None,
        );
        add(
            &format!("{p}.post_attention_layernorm.weight"),
            format!("{b}.ffn_norm.weight"),
            &[h],
            None,
        );
        add(
            &format!("{p}.mlp.gate_proj.weight"),
            format!("{b}.ffn_gate.weight"),
            &[i, h],
            None,
        );
        add(
            &format!("{p}.mlp.up_proj.weight"),
            format!("{b}.ffn_up.weight"),
            &[i, h],
            None,
        );
        add(
            &format!("{p}.mlp.down_proj.weight"),
            format!("{b}.ffn_down.weight"),
            &[h, i],
            None,
        );
    }
    add("model.norm.weight", "output_norm.weight".into(), &[h], None);
    add(
        "lm_head.weight",
        "output.weight".into(),
        &[c.vocab_size, h],
        None,
    );

    // The tokenizer, as llama.cpp's converter writes a GPT-2-style BPE vocabulary.
    let tj: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let mut tokens = vec![String::new(); c.vocab_size];
    let mut types = vec![1i32; c.vocab_size];
    for (tok, id) in tj["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = tok.clone();
    }
    for a in tj["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap() as usize;
        tokens[id] = a["content"].as_str().unwrap().to_string();
        types[id] = if a["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
    }
    let merges = tj["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))
        .collect();
    let template = serde_json::from_str::<Json>(
        &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap()["chat_template"]
        .as_str()
        .map(str::to_string);
    let a = |k: &str| -> &'static str { Box::leak(format!("{arch}.{k}").into_boxed_str()) };
    let mut meta = vec![
        ("general.architecture", Meta::Str(arch.into())),
        (a("block_count"), Meta::U32(c.num_layers as u32)),
        (a("embedding_length"), Meta::U32(h as u32)),
        (a("feed_forward_length"), Meta::U32(i as u32)),
        (a("attention.head_count"), Meta::U32(c.num_heads as u32)),
        (
            a("attention.head_count_kv"),
            Meta::U32(c.num_kv_heads as u32),
        ),
        (
            a("attention.layer_norm_rms_epsilon"),
            Meta::F32(c.rms_norm_eps as f32),
        ),
        (a("rope.freq_base"), Meta::F32(c.rope_theta as f32)),
        (
            a("context_length"),
            Meta::U32(c.max_position_embeddings as u32),
        ),
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("llama-bpe".into())),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(types)),
        ("tokenizer.ggml.merges", Meta::Strs(merges)),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(4)),
        ("tokenizer.ggml.add_bos_token", Meta::Bool(true)),
    ];
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template", Meta::Str(t)));
    }
    (meta, tensors)
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn float32() -> LoadOptions {
    LoadOptions {
        dtype: "float32".into(),
        ..LoadOptions::default()
    }
}

fn load_err(path: &Path) -> String {
    match Llm::load(path, &float32()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_converted_llama_matches_its_safetensors_original() {
    let (meta, tensors) = tiny_llama_gguf("llama");
    let tmp = tempfile::tempdir().unwrap();
    let path = save(tmp.path(), "tiny.gguf", &write_gguf(&meta, &tensors));
    let mut gguf = Llm::load(&path, &float32()).unwrap();
    let mut hf = Llm::load(&fixture_dir("tiny-llama"), &float32()).unwrap();
    let prompt = [1u32, 15, 300, 7, 2500, 42, 9, 100];
    let (a, b) = (
        gguf.prompt_logits(&prompt).unwrap(),
        hf.prompt_logits(&prompt).unwrap(),
    );
    for (row, (x, y)) in a.iter().zip(&b).enumerate() {
        let err = rel_l2(x, y);
        assert!(err < 1e-6, "position {row}: relative L2 {err:.2e}");
    }
    // A directory holding just the file loads it too.
    let mut by_dir = Llm::load(tmp.path(), &float32()).unwrap();
    assert_eq!(by_dir.prompt_logits(&prompt).unwrap(), a);
}

#[test]
fn the_gguf_tokenizer_matches_the_hugging_face_one() {
    let (meta, tensors) = tiny_llama_gguf("llama");
    let tmp = tempfile::tempdir().unwrap();
    let path = save(tmp.path(), "tiny.gguf", &write_gguf(&meta, &tensors));
    let file = engine::gguf::GgufFile::open(&path).unwrap();
    let ours = Tokenizer::from_gguf(&file).unwrap();
    let hf = Tokenizer::from_model_dir(&fixture_dir("tiny-llama")).unwrap();
    for text in [
        "Hello world, it's 2024!",
        "  spaces\tand\nnewlines  ",
        "<|im_start|>user\nhi<|im_end|>",
        "ünïcödé 日本語",
    ] {
        for special in [false, true] {
            assert_eq!(
                ours.encode(text, special).unwrap(),
                hf.encode(text, special).unwrap(),
                "{text:?} add_special_tokens={special}"
            );
        }
        let ids = hf.encode(text, false).unwrap();
        assert_eq!(
            ours.decode(&ids, false, true).unwrap(),
            hf.decode(&ids, false, true).unwrap()
        );
    }
    assert_eq!(ours.bos_token_id(), hf.bos_token_id());
    assert_eq!(ours.eos_token_id(), hf.eos_token_id());
    assert!(ours.chat_template().is_ok());
}

#[test]
fn bad_files_are_clear_errors() {
    let (meta, tensors) = tiny_llama_gguf("llama");
    let good = write_gguf(&meta, &tensors);
    let tmp = tempfile::tempdir().unwrap();

    let path = save(tmp.path(), "truncated.gguf", &good[..good.len() - 1000]);
    let e = load_err(&path);
    assert!(
        e.contains("truncated.gguf") && e.contains("truncated"),
        "{e}"
    );
    // Cut inside the metadata, too: still an error, never a panic.
    for cut in [0, 3, 7, 20, 200, 5000] {
        let path = save(tmp.path(), "cut.gguf", &good[..cut]);
        let e = load_err(&path);
        assert!(e.contains("cut.gguf"), "{e}");
    }
    // A huge tensor count, string length or array length is refused before allocating.
    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = load_err(&save(tmp.path(), "huge.gguf", &huge));
    assert!(e.contains("tensor count"), "{e}");
    let mut huge = good.clone();
    huge[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = load_err(&save(tmp.path(), "huge_key.gguf", &huge));
    assert!(e.contains("corrupt"), "{e}");

    let (meta, mut tensors) = tiny_llama_gguf("llama");
    tensors[1].data.truncate(8);
    let e = load_err(&save(
        tmp.path(),
        "small.gguf",
        &write_gguf(&meta, &tensors),
    ));
    assert!(
        e.contains("blk.0.attn_norm.weight") || e.contains("truncated"),
        "{e}"
    );

    let (meta, mut tensors) = tiny_llama_gguf("llama");
    tensors[2].dims[0] += 1;
    let e = load_err(&save(
        tmp.path(),
        "shape.gguf",
        &write_gguf(&meta, &tensors),
    ));
    assert!(
        e.contains("shape.gguf") && e.contains("blk.0.attn_q.weight"),
        "{e}"
    );

    let (meta, tensors) = tiny_llama_gguf("gpt2");
    let e = load_err(&save(tmp.path(), "arch.gguf", &write_gguf(&meta, &tensors)));
    assert!(
        e.contains("arch.gguf") && e.contains("unsupported architecture \"gpt2\""),
        "{e}"
    );

    let (meta, mut tensors) = tiny_llama_gguf("llama");
    tensors[3].ty = 10; // Q2_K
    let e = load_err(&save(tmp.path(), "q2k.gguf", &write_gguf(&meta, &tensors)));
    assert!(
        e.contains("blk.0.attn_k.weight") && e.contains("Q2_K"),
        "{e}"
    );

    let (mut meta, tensors) = tiny_llama_gguf("llama");
    meta.retain(|(k, _)| *k != "tokenizer.ggml.merges");
    let e = load_err(&save(
        tmp.path(),
        "nomerges.gguf",
        &write_gguf(&meta, &tensors),
    ));
    assert!(
        e.contains("nomerges.gguf") && e.contains("no merges"),
        "{e}"
    );

    let path = save(tmp.path(), "notgguf.gguf", b"{\"hello\": 1}");
    let e = load_err(&path);
    assert!(e.contains("not a GGUF file"), "{e}");
}

/// A block count far beyond any model is refused before anything is sized by
/// it (it once sized per-layer tables: a 64 GiB allocation aborted the process).
#[test]
fn an_absurd_block_count_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut meta, tensors) = tiny_llama_gguf("llama");
    for (key, value) in &mut meta {
        if key.ends_with(".block_count") {
            *value = Meta::U32(u32::MAX);
        }
    }
    let e = load_err(&save(tmp.path(), "deep.gguf", &write_gguf(&meta, &tensors)));
    assert!(
        e.contains("deep.gguf") && e.contains("block_count is 4294967295"),
        "{e}"
    );
}

/// Q8_0 blocks of `values` (rows a multiple of 32): d = amax / 127 as f16, then
/// round(x / d), as llama.cpp's quantize_row_q8_0_ref.
fn q8_0_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
    }
    out
}

/// A GGUF type and the function that writes its blocks.
type Quantizer = (u32, fn(&[f32]) -> Vec<u8>);
const Q8_0: Quantizer = (8, q8_0_bytes);
const Q4_0: Quantizer = (2, q4_0_bytes);

/// The f32 matrices of `tensors` quantized, each as `kind(name)` says.
fn quantize_matrices(tensors: &mut [Tensor], kind: impl Fn(&str) -> Quantizer) {
    for t in tensors
        .iter_mut()
        .filter(|t| t.dims.len() == 2 && t.ty == 0)
    {
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&t.data);
        let (ty, quantize) = kind(&t.name);
        (t.data, t.ty) = (quantize(&v), ty);
    }
}

#[test]
fn a_q8_0_file_runs_quantized_close_to_its_dequantized_self() {
    let (meta, mut tensors) = tiny_llama_gguf("llama");
    quantize_matrices(&mut tensors, |_| Q8_0);
    let tmp = tempfile::tempdir().unwrap();
    let path = save(tmp.path(), "q8.gguf", &write_gguf(&meta, &tensors));
    let with = |quantization: &str| LoadOptions {
        quantization: quantization.into(),
        ..float32()
    };
    let prompt = [1u32, 15, 300, 7, 2500, 42, 9, 100];
    let quantized = Llm::load(&path, &with("gguf"))
        .unwrap()
        .prompt_logits(&prompt)
        .unwrap();
    let dequantized = Llm::load(&path, &with("none"))
        .unwrap()
        .prompt_logits(&prompt)
        .unwrap();
    // Same weights; only the activations' 8-bit blocks differ (Q/K rows un-permuted
    // as blocks on one path, as f32 on the other).
    for (row, (x, y)) in quantized.iter().zip(&dequantized).enumerate() {
        let err = rel_l2(x, y);
        assert!(
            err < 2e-2 && err > 0.0,
            "position {row}: relative L2 {err:.2e}"
        );
    }
    let e = match Llm::load(&fixture_dir("tiny-llama"), &with("gguf")) {
        Ok(_) => panic!("quantization gguf loaded a Hugging Face directory"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("needs a GGUF model"), "{e}");
    let e = match Llm::load(&path, &with("awq")) {
        Ok(_) => panic!("quantization awq loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("\"awq\" is not served"), "{e}");
    // fp8: the tensors dequantized, then the projections quantized to FP8 (tests/fp8_weights.rs).
    assert!(Llm::load(&path, &with("fp8")).is_ok());
}

/// Tensor parallelism on a GGUF file kept quantized: the Q8_0 blocks are
/// sharded by rows (column-parallel) and at block boundaries (row-parallel),
/// and TP 2 and 4 give TP 1's logits; a shard that would split a block is a
/// clear error.
#[test]
fn a_quantized_gguf_shards_by_blocks() {
    let (meta, mut tensors) = tiny_llama_gguf("llama");
    quantize_matrices(&mut tensors, |_| Q8_0);
    let tmp = tempfile::tempdir().unwrap();
    let path = save(tmp.path(), "q8.gguf", &write_gguf(&meta, &tensors));
    let with = |tp: Option<usize>| LoadOptions {
        quantization: "gguf".into(),
        tensor_parallel_size: tp,
        ..float32()
    };
    let prompt = [1u32, 15, 300, 7, 2500, 42, 9, 100];
    let want = Llm::load(&path, &with(None))
        .unwrap()
        .prompt_logits(&prompt)
        .unwrap();
    for tp in [2, 4] {
        let got = Llm::load(&path, &with(Some(tp)))
            .unwrap()
            .prompt_logits(&prompt)
            .unwrap();
        for (row, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = rel_l2(g, w);
            assert!(err < 1e-5, "tp {tp} position {row}: relative L2 {err:.2e}");
        }
    }
}

/// Q4_0 blocks of `values`, as llama.cpp's quantize_row_q4_0_ref: d = the
/// signed value of largest magnitude / -8, then min(15, (x / d + 8.5) as int),
/// element j in the low nibble of byte j and element 16 + j in its high one.
fn q4_0_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in values.chunks_exact(32) {
        let max = block
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |x: f32| ((x * id + 8.5) as i32).clamp(0, 15) as u8;
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend((0..16).map(|j| q(block[j]) | (q(block[16 + j]) << 4)));
    }
    out
}

/// A file whose v projections are Q4_0 beside Q8_0 q and k (as a Q4_K_M file
/// keeps some layers' v in Q6_K beside Q4_K q and k): the fused q/k/v keeps
/// each part in its own blocks, runs close to the dequantized model, and
/// shards (TP 2) to the same logits.
#[test]
fn a_file_mixing_block_types_in_q_k_v_runs_and_shards() {
    let (meta, mut tensors) = tiny_llama_gguf("llama");
    quantize_matrices(&mut tensors, |name| {
        if name.ends_with("attn_v.weight") {
            Q4_0
        } else {
            Q8_0
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let path = save(tmp.path(), "mixed.gguf", &write_gguf(&meta, &tensors));
    let with = |quantization: &str, tp: Option<usize>| LoadOptions {
        quantization: quantization.into(),
        tensor_parallel_size: tp,
        ..float32()
    };
    let prompt = [1u32, 15, 300, 7, 2500, 42, 9, 100];
    let logits = |quantization: &str, tp: Option<usize>| {
        Llm::load(&path, &with(quantization, tp))
            .unwrap()
            .prompt_logits(&prompt)
            .unwrap()
    };
    let quantized = logits("gguf", None);
    let dequantized = logits("none", None);
    for (row, (x, y)) in quantized.iter().zip(&dequantized).enumerate() {
        let err = rel_l2(x, y);
        assert!(err < 2e-2, "position {row}: relative L2 {err:.2e}");
    }
    for (row, (x, y)) in logits("gguf", Some(2)).iter().zip(&quantized).enumerate() {
        let err = rel_l2(x, y);
        assert!(err < 1e-5, "tp 2 position {row}: relative L2 {err:.2e}");
    }
}

/// Writes the seeds of the GGUF fuzz target (fuzz/README.md) into the folder
/// `$ENGINE_FUZZ_SEEDS`: the tiny llama as GGUF with f32 and with Q8_0
/// matrices (`tiny-llama.gguf`, `tiny-llama-q8_0.gguf`: the tensor data the
/// target appends to every input) and their headers (`corpus/header`,
/// `corpus-q8_0/header`: metadata and tensor table, the first inputs). Checks
/// that each file loads and that its header ends where its tensor data begins.
#[test]
#[ignore = "writes the fuzz seeds: fuzz/README.md"]
fn write_fuzz_seeds() {
    let dir = PathBuf::from(std::env::var("ENGINE_FUZZ_SEEDS").expect("ENGINE_FUZZ_SEEDS"));
    std::fs::create_dir_all(&dir).unwrap();
    let (meta, mut tensors) = tiny_llama_gguf("llama");
    let f32_file = write_gguf(&meta, &tensors);
    quantize_matrices(&mut tensors, |_| Q8_0);
    let q8_file = write_gguf(&meta, &tensors);
    for (suffix, bytes) in [("", f32_file), ("-q8_0", q8_file)] {
        let path = save(&dir, &format!("tiny-llama{suffix}.gguf"), &bytes);
        Llm::load(&path, &float32()).unwrap();
        let file = engine::gguf::GgufFile::open(&path).unwrap();
        let data = file.tensors.iter().map(|t| t.offset).min().unwrap();
        assert_eq!(data % 32, 0);
        let corpus = dir.join(format!("corpus{suffix}"));
        std::fs::create_dir_all(&corpus).unwrap();
        save(&corpus, "header", &file.map[..data]);
    }
}
