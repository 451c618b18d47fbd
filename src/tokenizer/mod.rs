//! The model's tokenizer: Hugging Face `tokenizer.json` through the `tokenizers` crate,
//! the special tokens and stop ids from `tokenizer_config.json` /
//! `special_tokens_map.json` / `generation_config.json`, and the chat templates.
//!
//! Decoding goes straight through `tokenizers` (what transformers 5 and vLLM's output
//! path do); no `clean_up_tokenization_spaces` pass, because vLLM never applies it to
//! generated text and streamed deltas must add up to the same string.

mod chat_template;
mod detokenizer;
mod gguf;
mod gguf_spm;
mod load;
mod python;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use chat_template::{load_chat_template_arg, ChatTemplate, RenderOptions, SpecialTokens};
pub use detokenizer::IncrementalDetokenizer;

use crate::error::{Error, Result};

/// A loaded tokenizer with its special tokens and chat templates. `Send + Sync`:
/// share one per model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special_tokens: SpecialTokens,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    generation_eos_token_ids: Vec<u32>,
    /// Ids of added tokens flagged `special` (what `skip_special_tokens` drops).
    special_ids: HashSet<u32>,
    chat_templates: Vec<NamedTemplate>,
    /// Where the model's templates would have come from, for the "no template" error.
    model_dir: PathBuf,
}

/// One chat template as found on disk: compiled, or the reason it did not compile
/// (kept rather than failing the load, so text completions and `--chat-template`
/// still work with a model whose own template minijinja cannot read).
struct NamedTemplate {
    name: String,
    compiled: std::result::Result<ChatTemplate, String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special_tokens", &self.special_tokens)
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .field("generation_eos_token_ids", &self.generation_eos_token_ids)
            .field("chat_templates", &self.chat_template_names())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required) and, when present, `tokenizer_config.json`,
    /// `special_tokens_map.json`, `generation_config.json`, `chat_template.jinja` and
    /// `additional_chat_templates/*.jinja` from a Hugging Face model directory.
    /// `config.json`'s `model_type` matters too: for Qwen models transformers 5 uses its
    /// own pre-tokenizer and NFC normalizer, and so do we (see `load.rs`).
    pub fn from_model_dir(dir: &Path) -> Result<Tokenizer> {
        load::from_model_dir(dir)
    }

    /// Replaces the model's chat templates with `template_source` (vLLM's
    /// `--chat-template`, see [`load_chat_template_arg`]); it then serves every request.
    pub fn with_chat_template(mut self, template_source: String) -> Result<Tokenizer> {
        let compiled =
            ChatTemplate::new(template_source, self.special_tokens.clone()).map_err(|e| {
                Error::ChatTemplate(format!(
                    "--chat-template: {}",
                    load::chat_template_message(&e)
                ))
            })?;
        self.chat_templates = vec![NamedTemplate {
            name: "default".into(),
            compiled: Ok(compiled),
        }];
        Ok(self)
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor
    /// (e.g. a leading BOS), as transformers' `add_special_tokens=True` does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`. Ids outside the vocabulary decode to nothing, as in transformers.
    ///
    /// `spaces_between_special_tokens` mirrors vLLM's sampling parameter and, as in vLLM
    /// and transformers with a fast (`tokenizer.json`) tokenizer, has no effect.
    pub fn decode(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
        spaces_between_special_tokens: bool,
    ) -> Result<String> {
        let _ = spaces_between_special_tokens;
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("cannot decode token ids: {e}")))
    }

    /// The tokenizer's BOS id (from its `bos_token`, else generation_config's `bos_token_id`).
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The tokenizer's own EOS id (from `eos_token`).
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Every id that ends generation: the tokenizer's EOS, then generation_config's
    /// `eos_token_id` list, without duplicates (vLLM stops on all of them).
    pub fn generation_eos_token_ids(&self) -> &[u32] {
        &self.generation_eos_token_ids
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.special_tokens.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.special_tokens.eos_token.as_deref()
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special_tokens
    }

    /// Number of ids, added tokens included (Python's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `id` is a special token (dropped by `skip_special_tokens`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of `id` (byte-level form, e.g. `Ġworld`), not decoded text.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The template chat requests use: the model's default one, or `--chat-template`'s.
    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        self.select_chat_template(None, false)
    }

    /// transformers' `get_chat_template`: the template called `name` if given, else
    /// `tool_use` when the request has tools and the model has one, else `default`.
    pub fn select_chat_template(
        &self,
        name: Option<&str>,
        has_tools: bool,
    ) -> Result<&ChatTemplate> {
        let find = |n: &str| self.chat_templates.iter().find(|t| t.name == n);
        let chosen = match name {
            Some(n) => find(n).ok_or_else(|| {
                Error::ChatTemplate(format!(
                    "no chat template named {n:?}; available: {:?}",
                    self.chat_template_names()
                ))
            })?,
            None => {
                let tool_use = if has_tools { find("tool_use") } else { None };
                match tool_use.or_else(|| find("default")) {
                    Some(t) => t,
                    None if self.chat_templates.is_empty() => {
                        return Err(Error::ChatTemplate(format!(
                            "the model in {} has no chat template (none in tokenizer_config.json, no chat_template.jinja); \
                             pass one with --chat-template",
                            self.model_dir.display()
                        )))
                    }
                    None => {
                        return Err(Error::ChatTemplate(format!(
                            "the model has several chat templates {:?} and none is named \"default\"; pick one by name",
                            self.chat_template_names()
                        )))
                    }
                }
            }
        };
        chosen
            .compiled
            .as_ref()
            .map_err(|msg| Error::ChatTemplate(msg.clone()))
    }

    /// Names of the chat templates the model has (`default` for the main one).
    pub fn chat_template_names(&self) -> Vec<&str> {
        self.chat_templates
            .iter()
            .map(|t| t.name.as_str())
            .collect()
    }

    /// The underlying `tokenizers` tokenizer, for what this wrapper does not cover.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
