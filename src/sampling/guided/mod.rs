//! Guided decoding (structured output): the request's constraint, as vLLM names
//! it, compiled by llguidance into a per-sequence matcher that masks the logits
//! before sampling.
//!
//! - [`GuidedDecodingParams`]: what the request asked for (`guided_json`,
//!   `guided_regex`, `guided_choice`, `guided_grammar`, `response_format`'s
//!   `json_object` / `json_schema`, `guided_whitespace_pattern`,
//!   `guided_decoding_backend`), checked with vLLM's messages.
//! - [`GuidedCompiler`] (one per model): turns it into an llguidance grammar,
//!   compiles it on the submitting thread (errors are the parser's message) and
//!   caches compiled grammars by their text.
//! - [`Guide`] (one per sequence): the matcher state; computes the allowed-token
//!   bitmask each step, advances with each sampled token and forks with the
//!   sequence.

mod bounded;
pub mod choice;
mod compiler;
mod guide;
mod token_bytes;

use serde_json::{json, Value};

use crate::error::{Error, Result};

pub use bounded::{
    COMPILE_STACK_BYTES, COMPILE_TIME_LIMIT, MAX_CONCURRENT_COMPILES, MAX_CONSTRAINT_BYTES,
    MAX_SCHEMA_PROPERTIES,
};
pub use compiler::{GuidedCompiler, LazyGuidedCompiler, COMPILED_GRAMMAR_CACHE_SIZE};
pub use guide::{apply_token_bitmask, Guide, TokenBitmask};
pub use token_bytes::token_bytes;

/// vLLM's message when a request names several constraints.
pub const ONE_KIND_MESSAGE: &str = "You can only use one kind of guided decoding \
     ('guided_json', 'guided_regex' or 'guided_choice').";

/// `guided_decoding_backend` values vLLM accepts; llguidance serves all of them.
pub const BACKENDS: &[&str] = &["outlines", "lm-format-enforcer", "llguidance"];

/// outlines' default whitespace between JSON tokens (an optional single space),
/// which vLLM v0.4 used when the request gives no `guided_whitespace_pattern`.
/// It also keeps a model that likes whitespace from padding JSON forever.
pub const DEFAULT_JSON_WHITESPACE: &str = "[ ]";

/// A request's output constraint (vLLM's `GuidedDecodingParams` fields). At most
/// one of `json`, `regex`, `choice`, `grammar` may be set ([`Self::verify`]);
/// `json_object` (response_format `{"type": "json_object"}`) applies only when
/// none is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GuidedDecodingParams {
    /// A JSON schema (a JSON string holding one is parsed by the front end).
    pub json: Option<Value>,
    /// The output must fullmatch this regex.
    pub regex: Option<String>,
    /// The output is exactly one of these strings.
    pub choice: Option<Vec<String>>,
    /// A Lark-style grammar in llguidance's dialect (see the README).
    pub grammar: Option<String>,
    /// response_format's `json_schema`: applies, like `json_object`, only when no
    /// guided_* field is set.
    pub json_schema: Option<Value>,
    /// Any JSON object.
    pub json_object: bool,
    /// Regex for the whitespace allowed between JSON tokens.
    pub whitespace_pattern: Option<String>,
    /// vLLM's backend name; every accepted name is served by llguidance.
    pub backend: Option<String>,
}

/// What a constraint compiles from: one llguidance grammar source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GrammarSource {
    Json(Value),
    Regex(String),
    Lark(String),
}

impl GuidedDecodingParams {
    /// Whether any constraint is set at all.
    pub fn is_active(&self) -> bool {
        self.json.is_some()
            || self.regex.is_some()
            || self.choice.is_some()
            || self.grammar.is_some()
            || self.json_schema.is_some()
            || self.json_object
    }

    /// vLLM's checks: one kind of constraint, a known backend, a non-empty choice.
    pub fn verify(&self) -> Result<()> {
        let kinds = [
            self.json.is_some(),
            self.regex.is_some(),
            self.choice.is_some(),
            self.grammar.is_some(),
        ];
        if kinds.iter().filter(|&&set| set).count() > 1 {
            return Err(Error::invalid(ONE_KIND_MESSAGE));
        }
        if let Some(backend) = &self.backend {
            if !BACKENDS.contains(&backend.as_str()) {
                return Err(Error::invalid(format!(
                    "guided_decoding_backend must be one of {} (all served by llguidance), got {backend:?}",
                    BACKENDS
                        .iter()
                        .map(|b| format!("'{b}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if self.choice.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::invalid("guided_choice must not be empty"));
        }
        if let Some(regex) = &self.regex {
            // llguidance's conversion lets some malformed patterns through as
            // a grammar that matches nothing useful ("\\" ran to an empty
            // output): the syntax is checked first.
            regex_syntax::ast::parse::Parser::new()
                .parse(regex)
                .map_err(|e| Error::invalid(format!("guided_regex: invalid regex: {e}")))?;
        }
        Ok(())
    }

    /// The grammar to compile, in vLLM's priority order (json, regex, choice,
    /// grammar, then response_format's json_schema or json_object); `None` when
    /// unconstrained.
    pub(crate) fn source(&self) -> Result<Option<GrammarSource>> {
        if let Some(schema) = &self.json {
            return Ok(Some(GrammarSource::Json(self.with_whitespace(schema)?)));
        }
        if let Some(regex) = &self.regex {
            return Ok(Some(GrammarSource::Regex(regex.clone())));
        }
        if let Some(choices) = &self.choice {
            // Literal alternatives; escaping makes every choice match itself only.
            let alternatives: Vec<String> =
                choices.iter().map(|c| regex_syntax::escape(c)).collect();
            return Ok(Some(GrammarSource::Regex(format!(
                "({})",
                alternatives.join("|")
            ))));
        }
        if let Some(grammar) = &self.grammar {
            return Ok(Some(GrammarSource::Lark(grammar.clone())));
        }
        if let Some(schema) = &self.json_schema {
            return Ok(Some(GrammarSource::Json(self.with_whitespace(schema)?)));
        }
        if self.json_object {
            let schema = json!({"type": "object"});
            return Ok(Some(GrammarSource::Json(self.with_whitespace(&schema)?)));
        }
        Ok(None)
    }

    /// The schema with llguidance's whitespace option: the request's pattern, or
    /// outlines' default. A schema that sets its own `x-guidance` keeps it.
    fn with_whitespace(&self, schema: &Value) -> Result<Value> {
        let mut schema = match schema {
            Value::Object(_) | Value::Bool(_) => schema.clone(),
            other => {
                return Err(Error::invalid(format!(
                    "a JSON schema must be an object or a boolean, got {other}"
                )))
            }
        };
        let pattern = self
            .whitespace_pattern
            .clone()
            .unwrap_or_else(|| DEFAULT_JSON_WHITESPACE.to_string());
        if let Value::Bool(accept) = schema {
            // `true` accepts any JSON value; `false` nothing (llguidance says so).
            schema = if accept {
                json!({})
            } else {
                json!({"not": {}})
            };
        }
        if let Value::Object(map) = &mut schema {
            map.entry("x-guidance").or_insert_with(
                || json!({"whitespace_flexible": false, "whitespace_pattern": pattern}),
            );
        }
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_kind_only_with_vllms_message() {
        let p = GuidedDecodingParams {
            regex: Some("a".into()),
            choice: Some(vec!["a".into()]),
            ..Default::default()
        };
        assert_eq!(
            p.verify().unwrap_err().to_string(),
            format!("invalid argument: {ONE_KIND_MESSAGE}")
        );
        let p = GuidedDecodingParams {
            json: Some(json!({})),
            grammar: Some("start: \"a\"".into()),
            ..Default::default()
        };
        assert!(p.verify().is_err());
        // response_format's json_object gives way to an explicit constraint.
        let p = GuidedDecodingParams {
            regex: Some("a".into()),
            json_object: true,
            ..Default::default()
        };
        assert!(p.verify().is_ok());
        assert_eq!(p.source().unwrap(), Some(GrammarSource::Regex("a".into())));
    }

    #[test]
    fn backends_are_vllms_names() {
        for b in BACKENDS {
            let p = GuidedDecodingParams {
                backend: Some(b.to_string()),
                ..Default::default()
            };
            assert!(p.verify().is_ok());
        }
        let p = GuidedDecodingParams {
            backend: Some("xgrammar".into()),
            ..Default::default()
        };
        assert!(p.verify().unwrap_err().to_string().contains("xgrammar"));
    }

    #[test]
    fn choices_are_escaped_literals() {
        let p = GuidedDecodingParams {
            choice: Some(vec!["C++".into(), "a|b".into()]),
            ..Default::default()
        };
        assert_eq!(
            p.source().unwrap(),
            Some(GrammarSource::Regex(r"(C\+\+|a\|b)".into()))
        );
    }

    #[test]
    fn json_gets_the_whitespace_option_unless_it_has_one() {
        let p = GuidedDecodingParams {
            json: Some(json!({"type": "integer"})),
            whitespace_pattern: Some("[\n ]".into()),
            ..Default::default()
        };
        let Some(GrammarSource::Json(schema)) = p.source().unwrap() else {
            panic!("json")
        };
        assert_eq!(schema["x-guidance"]["whitespace_pattern"], "[\n ]");
        let own = json!({"x-guidance": {"whitespace_flexible": true}});
        let p = GuidedDecodingParams {
            json: Some(own.clone()),
            ..Default::default()
        };
        assert_eq!(p.source().unwrap(), Some(GrammarSource::Json(own)));
        let p = GuidedDecodingParams {
            json: Some(json!(3)),
            ..Default::default()
        };
        assert!(p.source().is_err());
    }
}
