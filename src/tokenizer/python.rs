//! Python behaviours that chat templates and vLLM's `--chat-template` flag depend on,
//! reproduced byte for byte because the rendered prompt is what the model sees:
//! `json.dumps` (transformers' `tojson` filter), `repr()` of floats, strings, lists and
//! dicts (what Jinja2 prints for `{{ value }}`), `str.isspace()`, and
//! `codecs.decode(s, "unicode_escape")`.

use std::fmt::Write as _;

use engine_api::python::{float_repr, str_repr};
use minijinja::value::{Value, ValueKind};
use minijinja::{Error as JinjaError, ErrorKind};

/// Python's `str.isspace()`: Rust's `char::is_whitespace` plus the ASCII information
/// separators U+001C..U+001F, which Python counts as whitespace (bidi class B/S).
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `str.rstrip()` with no argument.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// What Python's text-mode `open(path).read()` returns for `text`: universal newlines
/// turn `\r\n` and lone `\r` into `\n`. transformers and vLLM read template files so.
pub fn universal_newlines(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Options of Python's `json.dumps` that transformers' `tojson` filter exposes.
#[derive(Debug, Clone)]
pub struct JsonOptions {
    pub ensure_ascii: bool,
    /// `None`: everything on one line; `Some(unit)`: one item per line, indented by `unit` per level.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl Default for JsonOptions {
    /// transformers' defaults: `ensure_ascii=False`, no indent, `(", ", ": ")`.
    fn default() -> Self {
        JsonOptions {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
        }
    }
}

/// Python's `json.dumps(value, **options)`.
pub fn json_dumps(value: &Value, options: &JsonOptions) -> Result<String, JinjaError> {
    let mut out = String::new();
    write_json(&mut out, value, options, 0)?;
    Ok(out)
}

fn not_serializable(kind: &str) -> JinjaError {
    JinjaError::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {kind} is not JSON serializable"),
    )
}

fn write_json(
    out: &mut String,
    value: &Value,
    opts: &JsonOptions,
    level: usize,
) -> Result<(), JinjaError> {
    match value.kind() {
        ValueKind::Undefined => return Err(not_serializable("Undefined")),
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&json_number(value)),
        ValueKind::String => {
            write_json_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_json_container(
                out,
                ('[', ']'),
                items.len(),
                opts,
                level,
                |out, i, level| write_json(out, &items[i], opts, level),
            )?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_json_container(
                out,
                ('{', '}'),
                entries.len(),
                opts,
                level,
                |out, i, level| {
                    write_json_string(out, &entries[i].0, opts.ensure_ascii);
                    out.push_str(&opts.key_separator);
                    write_json(out, &entries[i].1, opts, level)
                },
            )?;
        }
        ValueKind::Bytes => return Err(not_serializable("bytes")),
        _ => return Err(not_serializable(&value.kind().to_string())),
    }
    Ok(())
}

/// Writes `[...]` / `{...}` the way Python's encoder lays them out, with or without indent.
fn write_json_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    opts: &JsonOptions,
    level: usize,
    mut write_item: impl FnMut(&mut String, usize, usize) -> Result<(), JinjaError>,
) -> Result<(), JinjaError> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let inner = level + 1;
    let newline = |out: &mut String, depth: usize| {
        if let Some(unit) = &opts.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(unit);
            }
        }
    };
    newline(out, inner);
    for i in 0..len {
        if i > 0 {
            out.push_str(&opts.item_separator);
            newline(out, inner);
        }
        write_item(out, i, inner)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

fn json_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) if f.is_nan() => "NaN".into(),
        Ok(f) if f.is_infinite() => (if f > 0.0 { "Infinity" } else { "-Infinity" }).into(),
        Ok(f) => float_repr(f),
        Err(_) => value.to_string(),
    }
}

/// Python converts non-string dict keys to strings before encoding them.
fn json_key(key: &Value) -> Result<String, JinjaError> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        ValueKind::Number => Ok(json_number(key)),
        other => Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {other}"),
        )),
    }
}

fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr()` of a value, as Jinja2 prints lists, dicts and floats.
pub fn py_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::String => str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(f) => out.push_str(&float_repr(f)),
            Err(_) => out.push_str(&value.to_string()),
        },
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(out, &key);
                out.push_str(": ");
                py_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// Python's `codecs.decode(text, "unicode_escape")`, which vLLM applies to an inline
/// `--chat-template`. Like Python it first encodes the text to UTF-8 and then reads
/// every byte that is not part of an escape as Latin-1, so non-ASCII characters in an
/// inline template come out as mojibake exactly as they do in vLLM.
pub fn decode_unicode_escape(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'\\' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let start = i;
        let Some(&e) = bytes.get(i + 1) else {
            return Err(escape_error(start, start + 1, "\\ at end of string"));
        };
        i += 2;
        match e {
            b'\n' => {}
            b'\\' => out.push('\\'),
            b'\'' => out.push('\''),
            b'"' => out.push('"'),
            b'a' => out.push('\u{7}'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'v' => out.push('\u{b}'),
            b'0'..=b'7' => out.push(octal_escape(bytes, &mut i, e)),
            b'x' | b'u' | b'U' => out.push(hex_escape(bytes, &mut i, start, e)?),
            b'N' => return Err(escape_error(start, i, "\\N{...} escapes are not supported")),
            other => {
                // Python keeps unknown escapes verbatim (with a DeprecationWarning).
                out.push('\\');
                out.push(char::from(other));
            }
        }
    }
    Ok(out)
}

/// Python's message for a bad escape in bytes `start..end`.
fn escape_error(start: usize, end: usize, why: &str) -> String {
    format!(
        "'unicodeescape' codec can't decode bytes in position {start}-{}: {why}",
        end.max(start + 1) - 1
    )
}

/// `\ooo`: `first` and up to two more octal digits from `bytes[*i..]`.
fn octal_escape(bytes: &[u8], i: &mut usize, first: u8) -> char {
    let mut n = u32::from(first - b'0');
    for _ in 0..2 {
        match bytes.get(*i) {
            Some(&d @ b'0'..=b'7') => {
                n = n * 8 + u32::from(d - b'0');
                *i += 1;
            }
            _ => break,
        }
    }
    char::from_u32(n).unwrap_or('\u{fffd}')
}

/// `\xXX`, `\uXXXX` or `\UXXXXXXXX` (`kind` the letter), its digits from
/// `bytes[*i..]`; the escape began at `start`.
fn hex_escape(bytes: &[u8], i: &mut usize, start: usize, kind: u8) -> Result<char, String> {
    let (width, name) = match kind {
        b'x' => (2, "truncated \\xXX escape"),
        b'u' => (4, "truncated \\uXXXX escape"),
        _ => (8, "truncated \\UXXXXXXXX escape"),
    };
    let hex = bytes
        .get(*i..*i + width)
        .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
    let Some(hex) = hex else {
        let end = *i
            + bytes[(*i).min(bytes.len())..]
                .iter()
                .take(width)
                .take_while(|h| h.is_ascii_hexdigit())
                .count();
        return Err(escape_error(start, end, name));
    };
    *i += width;
    let n = u32::from_str_radix(std::str::from_utf8(hex).unwrap_or("0"), 16).unwrap_or(0);
    match char::from_u32(n) {
        Some(c) => Ok(c),
        None if n > 0x10ffff => Err(escape_error(start, *i, "illegal Unicode character")),
        None => Err(escape_error(
            start,
            *i,
            "lone surrogates cannot be represented",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_escape_matches_python() {
        assert_eq!(
            decode_unicode_escape(r"a\nb\t\\c\'\x41\u00e9\101").unwrap(),
            "a\nb\t\\c'AéA"
        );
        assert_eq!(decode_unicode_escape("é").unwrap(), "Ã©");
        assert_eq!(decode_unicode_escape(r"\q").unwrap(), r"\q");
        assert_eq!(decode_unicode_escape("line\\\ncont").unwrap(), "linecont");
        assert!(decode_unicode_escape(r"\x4")
            .unwrap_err()
            .contains("truncated \\xXX"));
        assert!(decode_unicode_escape("end\\")
            .unwrap_err()
            .contains("end of string"));
        assert_eq!(decode_unicode_escape(r"\U0001F600").unwrap(), "😀");
    }

    #[test]
    fn repr_of_containers() {
        let list: Value = [
            Value::from(1),
            Value::from(2.0),
            Value::from(()),
            Value::from(true),
            Value::from("it's"),
        ]
        .into_iter()
        .collect();
        let v = Value::from_pairs([("a", list), ("b", Value::from("x\ny\u{a0}"))]);
        let mut s = String::new();
        py_repr(&mut s, &v);
        assert_eq!(s, r#"{'a': [1, 2.0, None, True, "it's"], 'b': 'x\ny\xa0'}"#);
    }

    #[test]
    fn text_mode_newlines() {
        assert_eq!(universal_newlines("a\r\nb\rc\n".into()), "a\nb\nc\n");
    }

    #[test]
    fn python_whitespace() {
        assert_eq!(py_strip("\u{1c} \t x \u{3000}\n"), "x");
        assert_eq!(py_rstrip(" x \u{85}"), " x");
    }
}
