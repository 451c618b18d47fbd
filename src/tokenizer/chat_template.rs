//! Chat templates rendered byte-identical to transformers' `apply_chat_template`.
//!
//! transformers renders with Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls), a
//! `tojson` filter that is plain `json.dumps` (no HTML escaping, `ensure_ascii=False`),
//! and the globals `raise_exception` and `strftime_now`. We use minijinja with the same
//! settings, Python string/dict methods from minijinja-contrib's pycompat, and print
//! values the way Python does (`None`, `True`, `[1, 'a']`, `1e-05`).

use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, Value, ValueKind, ValueOrKwargs};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Output, State};
use serde_json::{Map, Value as Json};

use super::python::{self, JsonOptions};
use crate::error::{Error, Result};

/// Name under which the single template lives inside its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// transformers' sentinel for `continue_final_message`: appended to the final
/// message before rendering, then the render is cut where it shows up.
const CONTINUE_FINAL_MESSAGE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// The tokenizer's special tokens, passed to templates as `bos_token`, `eos_token`,
/// `unk_token` and `pad_token` (each only when the tokenizer defines it, as
/// transformers' `special_tokens_map` leaves unset tokens out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

/// Everything `apply_chat_template` takes besides the messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions<'a> {
    /// Append the header that starts an assistant turn.
    pub add_generation_prompt: bool,
    /// Leave the final message open so the model continues it (transformers'
    /// `continue_final_message`); incompatible with `add_generation_prompt`.
    pub continue_final_message: bool,
    /// Tool schemas (`tools` in the template; `None` when absent, as transformers passes it).
    pub tools: Option<&'a Json>,
    /// Documents for RAG templates (`documents`; `None` when absent).
    pub documents: Option<&'a Json>,
    /// Extra template variables (vLLM's `chat_template_kwargs`); they override the special tokens.
    pub extra: Option<&'a Map<String, Json>>,
}

/// A compiled chat template. Compiled once; rendering is `&self` and thread-safe.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    tokens: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; errors carry minijinja's message and line.
    pub fn new(source: impl Into<String>, tokens: SpecialTokens) -> Result<ChatTemplate> {
        let source = source.into();
        let mut env = new_environment().map_err(|e| Error::ChatTemplate(describe(&e)))?;
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(&source))
            .map_err(|e| Error::ChatTemplate(format!("failed to compile: {}", describe(&e))))?;
        Ok(ChatTemplate {
            env,
            source,
            tokens,
        })
    }

    /// The template text as loaded (before any internal rewriting).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The special tokens the template sees.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.tokens
    }

    /// Renders `messages` (a JSON array of message objects) with `add_generation_prompt`
    /// and optional extra variables.
    pub fn render(
        &self,
        messages: &Json,
        add_generation_prompt: bool,
        extra: Option<&Map<String, Json>>,
    ) -> Result<String> {
        self.render_with(
            messages,
            &RenderOptions {
                add_generation_prompt,
                extra,
                ..RenderOptions::default()
            },
        )
    }

    /// Renders with every option `apply_chat_template` has.
    pub fn render_with(&self, messages: &Json, options: &RenderOptions<'_>) -> Result<String> {
        if !messages.is_array() {
            return Err(Error::invalid(
                "chat messages must be a JSON array of message objects",
            ));
        }
        if options.continue_final_message && options.add_generation_prompt {
            return Err(Error::invalid(
                "continue_final_message and add_generation_prompt are not compatible: use continue_final_message \
                 to have the model continue the final message, add_generation_prompt to start a new assistant message",
            ));
        }
        let tagged = if options.continue_final_message {
            Some(self.tag_final_message(messages)?)
        } else {
            None
        };
        let messages = tagged.as_ref().map_or(messages, |(m, _)| m);
        let rendered = self.render_raw(messages, options)?;
        match &tagged {
            Some((_, final_text)) => cut_at_continue_tag(rendered, final_text),
            None => Ok(rendered),
        }
    }

    fn render_raw(&self, messages: &Json, options: &RenderOptions<'_>) -> Result<String> {
        let mut ctx = Map::new();
        let tokens = [
            ("bos_token", &self.tokens.bos_token),
            ("eos_token", &self.tokens.eos_token),
            ("unk_token", &self.tokens.unk_token),
            ("pad_token", &self.tokens.pad_token),
        ];
        for (name, token) in tokens {
            if let Some(token) = token {
                ctx.insert(name.into(), Json::String(token.clone()));
            }
        }
        for (key, value) in options.extra.into_iter().flatten() {
            if matches!(
                key.as_str(),
                "messages" | "tools" | "documents" | "add_generation_prompt"
            ) {
                return Err(Error::invalid(format!(
                    "chat template argument {key:?} cannot be passed as an extra variable; use the dedicated field"
                )));
            }
            ctx.insert(key.clone(), value.clone());
        }
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("tools".into(), options.tools.cloned().unwrap_or(Json::Null));
        ctx.insert(
            "documents".into(),
            options.documents.cloned().unwrap_or(Json::Null),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(options.add_generation_prompt),
        );
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::ChatTemplate(describe(&e)))?;
        template
            .render(json_to_value(&Json::Object(ctx)))
            .map_err(|e| Error::ChatTemplate(describe(&e)))
    }

    /// Copies the messages with the continue tag appended to the final message's text
    /// (its string content, or the last text block of a content list). Returns the copy
    /// and the final text before tagging.
    fn tag_final_message(&self, messages: &Json) -> Result<(Json, String)> {
        if !self.source.contains("content") {
            return Err(Error::invalid(
                "continue_final_message is set to \"content\" but this is not an accepted field in the chat template",
            ));
        }
        let mut messages = messages.clone();
        let last = messages
            .as_array_mut()
            .and_then(|m| m.last_mut())
            .ok_or_else(|| {
                Error::invalid("continue_final_message is set but there are no messages")
            })?;
        let no_text = || {
            Error::invalid(
                "continue_final_message is set but the final message has no text to continue",
            )
        };
        let text_slot = match last.get_mut("content") {
            Some(Json::String(s)) => s,
            Some(Json::Array(blocks)) => blocks
                .iter_mut()
                .rev()
                .find_map(|b| match b.get_mut("text") {
                    Some(Json::String(s)) => Some(s),
                    _ => None,
                })
                .ok_or_else(no_text)?,
            _ => return Err(no_text()),
        };
        let final_text = text_slot.clone();
        text_slot.push_str(CONTINUE_FINAL_MESSAGE_TAG);
        Ok((messages, final_text))
    }
}

/// Cuts a render at the continue tag, as transformers does: right before the tag when
/// the template kept it intact, else (the template trimmed the message) before it with
/// trailing whitespace removed.
fn cut_at_continue_tag(rendered: String, final_text: &str) -> Result<String> {
    let tag = CONTINUE_FINAL_MESSAGE_TAG.trim_end();
    let (Some(loc), true) = (
        rendered.rfind(tag),
        rendered.contains(python::py_strip(final_text)),
    ) else {
        return Err(Error::ChatTemplate(format!(
            "continue_final_message is set but the final message does not appear in the chat after applying the \
             chat template (the template deletes part of it); final message: {:?}",
            python::py_strip(final_text)
        )));
    };
    if rendered[loc..].starts_with(CONTINUE_FINAL_MESSAGE_TAG) {
        Ok(rendered[..loc].to_string())
    } else {
        Ok(python::py_rstrip(&rendered[..loc]).to_string())
    }
}

/// JSON data as template values, keeping object key order (Python dicts do too).
fn json_to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => items.iter().map(json_to_value).collect(),
        Json::Object(map) => {
            Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), json_to_value(v))))
        }
    }
}

/// The Jinja environment transformers builds, rebuilt in minijinja.
fn new_environment() -> std::result::Result<Environment<'static>, JinjaError> {
    let mut env = Environment::new();
    // Jinja2's whitespace handling as transformers configures it (and its default of
    // dropping the template's final newline).
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()?,
    );
    env.set_debug(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    Ok(env)
}

/// Prints values as Jinja2 does, i.e. as Python's `str()`: floats, lists and dicts
/// through `repr()`; everything else (strings, ints, `None`, `True`) minijinja already
/// prints the Python way.
fn python_formatter(
    out: &mut Output<'_>,
    state: &mut State<'_, '_>,
    value: &Value,
) -> std::result::Result<(), JinjaError> {
    let pythonic = match value.kind() {
        ValueKind::Seq | ValueKind::Map => true,
        ValueKind::Number => !value.is_integer(),
        _ => false,
    };
    if !pythonic {
        return minijinja::escape_formatter(out, state, value);
    }
    let mut text = String::new();
    python::py_repr(&mut text, value);
    out.write_str(&text)
        .map_err(|_| JinjaError::new(ErrorKind::WriteFailure, "could not write output"))
}

/// The error `raise_exception` produces, recognised again after rendering so the
/// template's own message reaches the user unadorned.
#[derive(Debug)]
struct TemplateRaised(String);

impl std::fmt::Display for TemplateRaised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateRaised {}

fn raise_exception(message: Value) -> std::result::Result<Value, JinjaError> {
    let message = message.to_string();
    Err(
        JinjaError::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(TemplateRaised(message)),
    )
}

/// A render error as the user should read it: the template's `raise_exception` message
/// when it raised one, minijinja's description (with line) otherwise.
fn describe(err: &JinjaError) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<TemplateRaised>() {
            return raised.0.clone();
        }
        source = e.source();
    }
    err.to_string()
}

/// `strftime_now(format)`: the local time formatted like Python's `datetime.strftime`.
fn strftime_now(format: &str) -> std::result::Result<Value, JinjaError> {
    jiff::fmt::strtime::format(format, &jiff::Zoned::now())
        .map(Value::from)
        .map_err(|e| {
            JinjaError::new(
                ErrorKind::InvalidOperation,
                format!("strftime_now({format:?}): {e}"),
            )
        })
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, args: Rest<ValueOrKwargs>) -> std::result::Result<Value, JinjaError> {
    let mut positional = args.into_values();
    let kwargs = match positional.last() {
        Some(last) if last.is_kwargs() => Kwargs::try_from(positional.pop().unwrap_or_default())?,
        _ => Kwargs::try_from(Value::UNDEFINED)?,
    };
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(JinjaError::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut params: [Value; 4] = Default::default();
    for (i, name) in NAMES.iter().enumerate() {
        let from_kwargs: Option<Value> = kwargs.get(name)?;
        params[i] = match (positional.get(i), from_kwargs) {
            (Some(_), Some(_)) => {
                return Err(JinjaError::new(
                    ErrorKind::TooManyArguments,
                    format!("tojson got multiple values for {name}"),
                ))
            }
            (Some(v), None) => v.clone(),
            (None, Some(v)) => v,
            (None, None) => Value::from(()),
        };
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = params;
    let mut options = JsonOptions {
        ensure_ascii: ensure_ascii.is_true(),
        sort_keys: sort_keys.is_true(),
        ..Default::default()
    };
    match indent.kind() {
        ValueKind::None | ValueKind::Undefined => {}
        ValueKind::String => options.indent = Some(indent.as_str().unwrap_or_default().to_string()),
        ValueKind::Number if indent.is_integer() => {
            let width = indent.as_i64().unwrap_or(0).clamp(0, 64) as usize;
            options.indent = Some(" ".repeat(width));
        }
        _ => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                "tojson indent must be an integer or a string",
            ))
        }
    }
    if options.indent.is_some() {
        // Python's default item separator drops the space when indenting.
        options.item_separator = ",".into();
    }
    if !(separators.is_none() || separators.is_undefined()) {
        let parts: Vec<Value> = separators.try_iter()?.collect();
        match parts.as_slice() {
            [item, key] if item.as_str().is_some() && key.as_str().is_some() => {
                options.item_separator = item.as_str().unwrap_or_default().to_string();
                options.key_separator = key.as_str().unwrap_or_default().to_string();
            }
            _ => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    "tojson separators must be two strings",
                ))
            }
        }
    }
    python::json_dumps(value, &options).map(Value::from_safe_string)
}

/// Turns transformers' `{% generation %}...{% endgeneration %}` (which only marks the
/// assistant's tokens for training masks) into an always-true `if` block, keeping the
/// tags' whitespace control so the output is unchanged.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let inner = &tag[2..tag.len() - 2];
        let open_mod = inner.chars().next().filter(|c| matches!(c, '-' | '+'));
        let close_mod = inner.chars().last().filter(|c| matches!(c, '-' | '+'));
        let body = inner
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+'])
            .trim();
        let replacement = match body {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        out.push_str(&rest[..start]);
        match replacement {
            Some(body) => {
                out.push_str("{%");
                out.extend(open_mod);
                out.push(' ');
                out.push_str(body);
                out.push(' ');
                out.extend(close_mod);
                out.push_str("%}");
            }
            None => out.push_str(tag),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// The most bytes a chat template file may hold (real ones take a few KB; a
/// path such as /dev/zero would otherwise be read until memory ran out).
const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// The file's bytes, or `None` past [`MAX_TEMPLATE_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_TEMPLATE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= MAX_TEMPLATE_BYTES).then_some(bytes))
}

/// vLLM's `--chat-template` argument: a file to read, or else the template itself.
///
/// As vLLM does: the argument is first opened as a path. If that fails and it contains
/// none of `{`, `}` or a newline, it was meant as a path and the failure is an error;
/// otherwise it is an inline template whose escape sequences are decoded with Python's
/// `unicode_escape` codec (so `\n` typed on a command line becomes a newline).
pub fn load_chat_template_arg(arg: &str) -> Result<String> {
    let path = Path::new(arg);
    match read_bounded(path) {
        Ok(Some(bytes)) => String::from_utf8(bytes)
            .map(python::universal_newlines)
            .map_err(|_| Error::bad_file(path, "chat template is not valid UTF-8")),
        Ok(None) => Err(Error::bad_file(
            path,
            format!("a chat template file may hold at most {MAX_TEMPLATE_BYTES} bytes"),
        )),
        Err(e) => {
            if !arg.contains(['{', '}', '\n']) {
                return Err(Error::invalid(format!(
                    "the supplied chat template ({arg}) looks like a file path, but it failed to be opened: {e}"
                )));
            }
            python::decode_unicode_escape(arg).map_err(|why| {
                Error::invalid(format!(
                    "the supplied inline chat template has a bad escape: {why}"
                ))
            })
        }
    }
}
