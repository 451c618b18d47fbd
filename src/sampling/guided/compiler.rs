//! One llguidance parser factory per model, and a bounded cache of compiled
//! grammars keyed by their text. Compiling runs on the thread that submits the
//! request, so a bad schema, regex or grammar is that request's error and never
//! reaches the engine thread.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie, INVALID_TOKEN};

use super::bounded::CompileSlots;
use super::guide::Guide;
use super::{GrammarSource, GuidedDecodingParams};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Compiled grammars kept for reuse; the least recently used one goes first.
pub const COMPILED_GRAMMAR_CACHE_SIZE: usize = 64;

/// Compiles constraints for one model's vocabulary. `Send + Sync`: one per model,
/// shared by every submitting thread.
pub struct GuidedCompiler {
    factory: ParserFactory,
    vocab_size: usize,
    cache: Mutex<GrammarCache>,
}

#[derive(Default)]
struct GrammarCache {
    /// Grammar text -> a matcher at the start state (its first mask computed,
    /// which also warms the lexer that clones copy), and when it was last used.
    entries: HashMap<String, (Arc<Mutex<Matcher>>, u64)>,
    clock: u64,
}

impl std::fmt::Debug for GuidedCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuidedCompiler")
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

fn caught<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Error::invalid(format!("{what} failed: {detail}"))
    })
}

impl GuidedCompiler {
    /// For a model whose logits rows are `vocab_size` wide, with `eos_token_ids`
    /// (EOS and generation_config's) as what ends a constrained output.
    pub fn from_tokenizer(
        tokenizer: &Tokenizer,
        vocab_size: usize,
        eos_token_ids: &[u32],
    ) -> Result<GuidedCompiler> {
        GuidedCompiler::from_token_bytes(super::token_bytes(tokenizer, vocab_size), eos_token_ids)
    }

    /// From the bytes of every token id (benches and tests build vocabularies
    /// without a tokenizer).
    pub fn from_token_bytes(
        token_bytes: Vec<Vec<u8>>,
        eos_token_ids: &[u32],
    ) -> Result<GuidedCompiler> {
        let vocab_size = token_bytes.len();
        let eos: Vec<u32> = eos_token_ids
            .iter()
            .copied()
            .filter(|&id| (id as usize) < vocab_size)
            .collect();
        let factory = caught("building the guided decoding token trie", || {
            let info = TokRxInfo::new(
                vocab_size as u32,
                eos.first().copied().unwrap_or(INVALID_TOKEN),
            );
            let mut trie = TokTrie::from(&info, &token_bytes);
            if eos.len() > 1 {
                trie = trie.with_eos_tokens(&eos);
            }
            let env = Arc::new(ApproximateTokEnv::new(trie));
            ParserFactory::new_simple(&(env as toktrie::TokEnv))
        })?
        .map_err(|e| Error::invalid(format!("guided decoding setup: {e}")))?;
        let mut factory = factory;
        factory.quiet();
        Ok(GuidedCompiler {
            factory,
            vocab_size,
            cache: Mutex::new(GrammarCache::default()),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Grammars in the cache now.
    pub fn cached_grammars(&self) -> usize {
        self.lock_cache().entries.len()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, GrammarCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The per-sequence state for a request's constraint (`None`: unconstrained).
    /// `stop_token_ids` (the request's own) may end the output where EOS may.
    /// Errors are ENGINE_ERR_INVALID_ARGUMENT with the parser's message.
    pub fn compile(
        &self,
        params: &GuidedDecodingParams,
        stop_token_ids: &[u32],
    ) -> Result<Option<Guide>> {
        params.verify()?;
        let Some(source) = params.source()? else {
            return Ok(None);
        };
        let (field, grammar) = match source {
            GrammarSource::Json(schema) => (
                if params.json.is_some() {
                    "guided_json"
                } else {
                    "response_format"
                },
                TopLevelGrammar::from_json_schema(schema),
            ),
            GrammarSource::Regex(rx) => (
                if params.regex.is_some() {
                    "guided_regex"
                } else {
                    "guided_choice"
                },
                TopLevelGrammar::from_regex(&rx),
            ),
            GrammarSource::Lark(lark) => ("guided_grammar", TopLevelGrammar::from_lark(lark)),
        };
        let key =
            serde_json::to_string(&grammar).map_err(|e| Error::invalid(format!("{field}: {e}")))?;
        let template = match self.cached(&key) {
            Some(t) => t,
            None => {
                let t = Arc::new(Mutex::new(self.build(field, grammar)?));
                self.insert(key, t.clone());
                t
            }
        };
        let matcher = template
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .deep_clone();
        Ok(Some(Guide::new(matcher, self.vocab_size, stop_token_ids)))
    }

    fn build(&self, field: &str, grammar: TopLevelGrammar) -> Result<Matcher> {
        let parser = caught(&format!("compiling {field}"), || {
            self.factory.create_parser(grammar)
        })?
        .map_err(|e| Error::invalid(format!("{field}: {e}")))?;
        let mut matcher = Matcher::new(Ok(parser));
        // The first mask: a grammar that allows nothing at all is the request's
        // error now rather than an empty output later.
        let first = caught(&format!("compiling {field}"), || matcher.compute_mask())?
            .map_err(|e| Error::invalid(format!("{field}: {e}")))?;
        if first.is_zero() {
            return Err(Error::invalid(format!(
                "{field}: the constraint allows no output at all"
            )));
        }
        Ok(matcher)
    }

    fn cached(&self, key: &str) -> Option<Arc<Mutex<Matcher>>> {
        let mut cache = self.lock_cache();
        cache.clock += 1;
        let now = cache.clock;
        let entry = cache.entries.get_mut(key)?;
        entry.1 = now;
        Some(entry.0.clone())
    }

    fn insert(&self, key: String, template: Arc<Mutex<Matcher>>) {
        let mut cache = self.lock_cache();
        if cache.entries.len() >= COMPILED_GRAMMAR_CACHE_SIZE && !cache.entries.contains_key(&key) {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                cache.entries.remove(&oldest);
            }
        }
        cache.clock += 1;
        let now = cache.clock;
        cache.entries.insert(key, (template, now));
    }
}

/// A model's [`GuidedCompiler`], built by the first constrained request (the
/// trie of a 128k vocabulary takes a moment; unconstrained serving never pays).
pub struct LazyGuidedCompiler {
    tokenizer: Option<Arc<Tokenizer>>,
    vocab_size: usize,
    eos_token_ids: Vec<u32>,
    compiler: OnceLock<std::result::Result<GuidedCompiler, String>>,
    slots: Arc<CompileSlots>,
}

impl std::fmt::Debug for LazyGuidedCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyGuidedCompiler")
            .field("vocab_size", &self.vocab_size)
            .field("built", &self.compiler.get().is_some())
            .finish()
    }
}

impl LazyGuidedCompiler {
    pub fn new(
        tokenizer: Option<Arc<Tokenizer>>,
        vocab_size: usize,
        eos_token_ids: Vec<u32>,
    ) -> LazyGuidedCompiler {
        LazyGuidedCompiler {
            tokenizer,
            vocab_size,
            eos_token_ids,
            compiler: OnceLock::new(),
            slots: Arc::default(),
        }
    }

    pub(crate) fn slots(&self) -> &Arc<CompileSlots> {
        &self.slots
    }

    /// The compiler, built on first use. Without a tokenizer there is nothing to
    /// match text against: constrained requests fail with a message saying so.
    pub fn get(&self) -> Result<&GuidedCompiler> {
        let built = self.compiler.get_or_init(|| {
            let tokenizer = self.tokenizer.as_ref().ok_or_else(|| {
                "guided decoding needs the model's tokenizer.json (this model has none)".to_string()
            })?;
            GuidedCompiler::from_tokenizer(tokenizer, self.vocab_size, &self.eos_token_ids).map_err(
                |e| match e {
                    Error::InvalidArgument(m) => m,
                    other => other.to_string(),
                },
            )
        });
        built.as_ref().map_err(|m| Error::invalid(m.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Single bytes plus an EOS special token.
    fn byte_compiler() -> GuidedCompiler {
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        vocab.push(b"\xFF<eos>".to_vec());
        GuidedCompiler::from_token_bytes(vocab, &[256]).unwrap()
    }

    fn grammar(g: &str) -> GuidedDecodingParams {
        GuidedDecodingParams {
            grammar: Some(g.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_lark_features_the_readme_names() {
        let c = byte_compiler();
        // LALR-style Lark: aliases, inlined and filtered rules, priorities, imports, %ignore.
        let lark = "start: sel\n?sel: \"SELECT\" _col -> select\n_col: COL\nCOL: /col_[0-9]/\n\
                    %import common.WS\n%ignore WS\n";
        assert!(c.compile(&grammar(lark), &[]).unwrap().is_some());
        // Terminal priorities are refused (the Earley parser needs none).
        let err = c
            .compile(&grammar(&lark.replace("COL:", "COL.2:")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("priority"), "{err}");
        // Extensions: an embedded JSON schema, a bounded rule.
        let ext = "start: \"v=\" obj\nobj: %json {\"type\": \"integer\"}\nx[max_tokens=3]: /a+/\n";
        assert!(c.compile(&grammar(ext), &[]).is_ok());
        // Python-only regex features are errors, with the field named.
        let err = c
            .compile(&grammar("start: /(?=a)a/"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("guided_grammar"), "{err}");
    }

    #[test]
    fn compiled_grammars_are_cached_by_text_and_bounded() {
        let c = byte_compiler();
        for i in 0..COMPILED_GRAMMAR_CACHE_SIZE + 5 {
            let p = GuidedDecodingParams {
                regex: Some(format!("a{{{i}}}b")),
                ..Default::default()
            };
            c.compile(&p, &[]).unwrap();
            c.compile(&p, &[]).unwrap();
        }
        assert_eq!(c.cached_grammars(), COMPILED_GRAMMAR_CACHE_SIZE);
    }

    #[test]
    fn a_guide_walks_to_eos_only() {
        let c = byte_compiler();
        let p = GuidedDecodingParams {
            choice: Some(vec!["ab".into()]),
            ..Default::default()
        };
        let mut g = c.compile(&p, &[7]).unwrap().unwrap();
        let allowed = |m: &[u32]| {
            (0..257u32)
                .filter(|&t| m[t as usize / 32] & (1 << (t % 32)) != 0)
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(&g.compute_mask().unwrap()), vec![b'a' as u32]);
        let mut fork = g.fork();
        assert!(g.advance(b'a' as u32) && g.advance(b'b' as u32));
        assert!(g.is_accepting());
        // Complete: EOS, and the request's stop token 7 where EOS is allowed.
        assert_eq!(allowed(&g.compute_mask().unwrap()), vec![7, 256]);
        // The fork kept the state it was forked at.
        assert_eq!(allowed(&fork.compute_mask().unwrap()), vec![b'a' as u32]);
        assert!(!fork.advance(b'z' as u32));
        assert!(
            fork.compute_mask().is_none(),
            "a rejected token is a dead end"
        );
    }
}
