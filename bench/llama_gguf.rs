//! Writes the bench's bf16 Llama (a fixture directory) as a bf16 GGUF that
//! llama.cpp loads, so both engines run the same weights: matrices BF16 (Q and
//! K rows permuted as llama.cpp's converter does), norms F32, and a placeholder
//! SentencePiece vocabulary (the benches feed token ids; llama.cpp only needs
//! the control and byte tokens to exist).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use engine::config::ModelConfig;
use engine::model::weights::Checkpoint;

const GGUF_F32: u32 = 0;
const GGUF_BF16: u32 = 30;
const ALIGN: u64 = 32;

/// One tensor to write: GGUF name, checkpoint name, row-major shape, and the
/// head count whose rotary halves to interleave (Q and K only).
struct Entry {
    gguf: String,
    hf: String,
    shape: Vec<usize>,
    permute_heads: Option<usize>,
}

/// Writes `dir`'s checkpoint to `path` (the Llama architecture, bf16 weights).
pub fn write(dir: &Path, path: &Path) -> engine::Result<()> {
    let c = ModelConfig::from_model_dir(dir)?;
    let ckpt = Checkpoint::open(dir)?;
    let entries = entries(&c);
    let io = |e: std::io::Error| engine::Error::invalid(format!("{}: {e}", path.display()));
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    let mut head = b"GGUF".to_vec();
    head.extend(3u32.to_le_bytes());
    head.extend((entries.len() as u64).to_le_bytes());
    head.extend((META_KEYS as u64).to_le_bytes());
    head.extend(metadata(&c));
    let mut offset = 0u64;
    for e in &entries {
        put_str(&mut head, &e.gguf);
        head.extend((e.shape.len() as u32).to_le_bytes());
        for &d in e.shape.iter().rev() {
            head.extend((d as u64).to_le_bytes());
        }
        let ty = if e.shape.len() == 1 {
            GGUF_F32
        } else {
            GGUF_BF16
        };
        head.extend(ty.to_le_bytes());
        head.extend(offset.to_le_bytes());
        offset += tensor_bytes(e).div_ceil(ALIGN) * ALIGN;
    }
    head.resize(
        (head.len() as u64).div_ceil(ALIGN) as usize * ALIGN as usize,
        0,
    );
    out.write_all(&head).map_err(io)?;
    for e in &entries {
        let data = tensor_data(&ckpt, e)?;
        let padded = (data.len() as u64).div_ceil(ALIGN) * ALIGN;
        out.write_all(&data).map_err(io)?;
        let pad = vec![0u8; (padded - data.len() as u64) as usize];
        out.write_all(&pad).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(())
}

fn entries(c: &ModelConfig) -> Vec<Entry> {
    let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_heads * hd, c.num_kv_heads * hd);
    let e = |gguf: String, hf: String, shape: &[usize], permute_heads| Entry {
        gguf,
        hf,
        shape: shape.to_vec(),
        permute_heads,
    };
    let mut v = vec![e(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        &[c.vocab_size, h],
        None,
    )];
    for l in 0..c.num_layers {
        let (p, b) = (format!("model.layers.{l}"), format!("blk.{l}"));
        let layer = [
            ("attn_norm", "input_layernorm", vec![h], None),
            ("attn_q", "self_attn.q_proj", vec![q, h], Some(c.num_heads)),
            (
                "attn_k",
                "self_attn.k_proj",
                vec![kv, h],
                Some(c.num_kv_heads),
            ),
            ("attn_v", "self_attn.v_proj", vec![kv, h], None),
            ("attn_output", "self_attn.o_proj", vec![h, q], None),
            ("ffn_norm", "post_attention_layernorm", vec![h], None),
            ("ffn_gate", "mlp.gate_proj", vec![i, h], None),
            ("ffn_up", "mlp.up_proj", vec![i, h], None),
            ("ffn_down", "mlp.down_proj", vec![h, i], None),
        ];
        for (g, hf, shape, heads) in layer {
            v.push(e(
                format!("{b}.{g}.weight"),
                format!("{p}.{hf}.weight"),
                &shape,
                heads,
            ));
        }
    }
    v.push(e(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        &[h],
        None,
    ));
    v.push(e(
        "output.weight".into(),
        "lm_head.weight".into(),
        &[c.vocab_size, h],
        None,
    ));
    v
}

fn tensor_bytes(e: &Entry) -> u64 {
    let elems: usize = e.shape.iter().product();
    (elems * if e.shape.len() == 1 { 4 } else { 2 }) as u64
}

/// The tensor's bytes as GGUF stores them (the checkpoint is bf16).
fn tensor_data(ckpt: &Checkpoint, e: &Entry) -> engine::Result<Vec<u8>> {
    let t = ckpt.get(&e.hf, &e.shape)?;
    let bytes = t.bytes.as_slice();
    if e.shape.len() == 1 {
        let bf: &[u16] = bytemuck::cast_slice(bytes);
        let f: Vec<f32> = bf
            .iter()
            .map(|&b| f32::from_bits(u32::from(b) << 16))
            .collect();
        return Ok(bytemuck::cast_slice(&f).to_vec());
    }
    let Some(heads) = e.permute_heads else {
        return Ok(bytes.to_vec());
    };
    // llama.cpp's Q/K permutation: row h*hd + 2i + j comes from h*hd + j*hd/2 + i.
    let row = e.shape[1] * 2;
    let hd = e.shape[0] / heads;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let (dst, src) = (h * hd + 2 * i + j, h * hd + j * hd / 2 + i);
                out[dst * row..][..row].copy_from_slice(&bytes[src * row..][..row]);
            }
        }
    }
    Ok(out)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_key(out: &mut Vec<u8>, key: &str, ty: u32) {
    put_str(out, key);
    out.extend(ty.to_le_bytes());
}

const META_U32: u32 = 4;
const META_F32: u32 = 6;
const META_STR: u32 = 8;
const META_ARRAY: u32 = 9;
const META_I32: u32 = 5;

/// Keys [`metadata`] writes: 3 general, 9 llama.*, 6 tokenizer.
const META_KEYS: usize = 3 + 9 + 6;

fn metadata(c: &ModelConfig) -> Vec<u8> {
    let mut m = Vec::new();
    put_key(&mut m, "general.architecture", META_STR);
    put_str(&mut m, "llama");
    put_key(&mut m, "general.name", META_STR);
    put_str(&mut m, "engine bench llama-1b");
    put_key(&mut m, "general.file_type", META_U32);
    m.extend(32u32.to_le_bytes()); // LLAMA_FTYPE_MOSTLY_BF16
    let u32s = [
        ("llama.context_length", 2048),
        ("llama.embedding_length", c.hidden_size),
        ("llama.block_count", c.num_layers),
        ("llama.feed_forward_length", c.intermediate_size),
        ("llama.rope.dimension_count", c.head_dim),
        ("llama.attention.head_count", c.num_heads),
        ("llama.attention.head_count_kv", c.num_kv_heads),
    ];
    for (key, v) in u32s {
        put_key(&mut m, key, META_U32);
        m.extend((v as u32).to_le_bytes());
    }
    put_key(&mut m, "llama.attention.layer_norm_rms_epsilon", META_F32);
    m.extend((c.rms_norm_eps as f32).to_le_bytes());
    put_key(&mut m, "llama.rope.freq_base", META_F32);
    m.extend((c.rope_theta as f32).to_le_bytes());
    vocabulary(&mut m, c.vocab_size);
    m
}

/// `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then placeholders.
fn vocabulary(m: &mut Vec<u8>, size: usize) {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let mut types = vec![2i32, 3, 3];
    types.extend([6; 256]);
    for i in tokens.len()..size {
        tokens.push(format!("\u{2581}t{i}"));
        types.push(1);
    }
    put_key(m, "tokenizer.ggml.model", META_STR);
    put_str(m, "llama");
    put_key(m, "tokenizer.ggml.tokens", META_ARRAY);
    m.extend(META_STR.to_le_bytes());
    m.extend((tokens.len() as u64).to_le_bytes());
    tokens.iter().for_each(|t| put_str(m, t));
    put_key(m, "tokenizer.ggml.scores", META_ARRAY);
    m.extend(META_F32.to_le_bytes());
    m.extend((tokens.len() as u64).to_le_bytes());
    (0..tokens.len()).for_each(|i| m.extend((-(i as f32)).to_le_bytes()));
    put_key(m, "tokenizer.ggml.token_type", META_ARRAY);
    m.extend(META_I32.to_le_bytes());
    m.extend((types.len() as u64).to_le_bytes());
    types.iter().for_each(|t| m.extend(t.to_le_bytes()));
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", 1u32),
        ("tokenizer.ggml.eos_token_id", 2),
    ] {
        put_key(m, key, META_U32);
        m.extend(id.to_le_bytes());
    }
}
