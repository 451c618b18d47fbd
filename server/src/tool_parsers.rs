//! vLLM's `--tool-call-parser`s for tool_choice "auto": how tool calls are
//! read out of a model's finished text. Each returns (content, calls); `None`
//! calls means the text is plain content (no call, or one that does not parse).

use serde_json::Value;

use crate::tools::call;

/// The formats `--tool-call-parser` names (vLLM's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolParser {
    /// Hermes/Qwen: `<tool_call>{"name", "arguments"}</tool_call>` blocks.
    Hermes,
    /// Llama 3.1/3.2 JSON: `{"name", "parameters"}` objects, separated by `;`,
    /// optionally after `<|python_tag|>`.
    #[value(name = "llama3_json")]
    Llama3Json,
    /// Mistral: `[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}`.
    Mistral,
}

pub type Parsed = (Option<String>, Option<Vec<Value>>);

impl ToolParser {
    pub fn parse(self, text: &str) -> Parsed {
        match self {
            ToolParser::Hermes => hermes(text),
            ToolParser::Llama3Json => llama3_json(text),
            ToolParser::Mistral => mistral(text),
        }
    }

    /// Whether the parser needs special tokens kept in the output text (the
    /// `[TOOL_CALLS]` marker is a special token, as vLLM's parser knows).
    pub fn keeps_special_tokens(self) -> bool {
        self == ToolParser::Mistral
    }
}

/// A call from `{"name": ..., <key>: ...}`; arguments as JSON text.
fn call_with(item: &Value, key: &str) -> Option<Value> {
    let name = item["name"].as_str()?;
    let arguments = match &item[key] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    Some(call(name, arguments))
}

fn content(text: &str) -> Parsed {
    (Some(text.to_string()), None)
}

fn hermes(text: &str) -> Parsed {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let Some(first) = text.find(OPEN) else {
        return content(text);
    };
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(start) = rest.find(OPEN) {
        let body = &rest[start + OPEN.len()..];
        let Some(end) = body.find(CLOSE) else { break };
        match serde_json::from_str::<Value>(body[..end].trim()) {
            Ok(v) => match call_with(&v, "arguments") {
                Some(c) => calls.push(c),
                None => return content(text),
            },
            // Not a call we can read: leave the text as content.
            Err(_) => return content(text),
        }
        rest = &body[end + CLOSE.len()..];
    }
    if calls.is_empty() {
        return content(text);
    }
    let before = text[..first].trim();
    (
        (!before.is_empty()).then(|| before.to_string()),
        Some(calls),
    )
}

fn llama3_json(text: &str) -> Parsed {
    const BOT: &str = "<|python_tag|>";
    let body = text.strip_prefix(BOT).unwrap_or(text);
    if body.len() == text.len() && !text.starts_with('{') {
        return content(text);
    }
    let mut calls = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let item = match values.next() {
            Some(Ok(v)) => v,
            _ => return content(text),
        };
        let end = values.byte_offset();
        let key = if item.get("arguments").is_some() {
            "arguments"
        } else {
            "parameters"
        };
        match call_with(&item, key) {
            Some(c) => calls.push(c),
            None => return content(text),
        }
        rest = rest[end..].trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    if calls.is_empty() {
        return content(text);
    }
    (None, Some(calls))
}

fn mistral(text: &str) -> Parsed {
    const BOT: &str = "[TOOL_CALLS]";
    let Some(at) = text.find(BOT) else {
        return content(text);
    };
    // What follows the marker (which may repeat between calls).
    let calls = text[at..].replace(BOT, "");
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(calls.trim()) else {
        return content(text);
    };
    let calls: Option<Vec<Value>> = items.iter().map(|i| call_with(i, "arguments")).collect();
    match calls {
        Some(calls) if !calls.is_empty() => {
            let before = text[..at].trim();
            (
                (!before.is_empty()).then(|| before.to_string()),
                Some(calls),
            )
        }
        _ => content(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &Parsed) -> Vec<String> {
        p.1.iter()
            .flatten()
            .map(|c| format!("{}{}", c["function"]["name"], c["function"]["arguments"]))
            .collect()
    }

    #[test]
    fn each_parser_reads_its_format_and_leaves_the_rest_as_content() {
        let h = ToolParser::Hermes.parse(
            "Let me check.\n<tool_call>\n{\"name\": \"w\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>",
        );
        assert_eq!(h.0.as_deref(), Some("Let me check."));
        assert_eq!(names(&h), [r#""w""{\"city\":\"Rome\"}""#]);
        let l = ToolParser::Llama3Json.parse(
            r#"<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "arguments": {}}"#,
        );
        assert_eq!(l.0, None);
        assert_eq!(names(&l), [r#""a""{\"x\":1}""#, r#""b""{}""#]);
        let l = ToolParser::Llama3Json.parse(r#"{"name": "a", "parameters": {"x": 1}}"#);
        assert_eq!(names(&l).len(), 1);
        let m = ToolParser::Mistral
            .parse(r#"Sure. [TOOL_CALLS] [{"name": "m", "arguments": {"q": "z"}}]"#);
        assert_eq!(m.0.as_deref(), Some("Sure."));
        assert_eq!(names(&m), [r#""m""{\"q\":\"z\"}""#]);
        for p in [
            ToolParser::Hermes,
            ToolParser::Llama3Json,
            ToolParser::Mistral,
        ] {
            for text in [
                "plain text",
                "{not json",
                "[TOOL_CALLS] [oops",
                "<tool_call>{}</tool_call>",
            ] {
                assert_eq!(
                    p.parse(text),
                    (Some(text.to_string()), None),
                    "{p:?} {text}"
                );
            }
        }
    }
}
