//! Tool calling for chat: `tools` go to the chat template; `tool_choice` decides
//! what comes back. A named function or "required" constrains the output with a
//! JSON schema (the engine's `guided_json`), so the arguments always parse;
//! "auto" (also what tools without a tool_choice mean) lets the model choose and
//! reads its calls with the `--tool-call-parser`; as in vLLM, it needs
//! `--enable-auto-tool-choice`.

use serde_json::{json, Value};

use crate::endpoints::random_id;
use crate::error::{ApiError, ApiResult};
use crate::tool_parsers::ToolParser;

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// Tools are shown to the model; no call is parsed.
    None,
    /// This function must be called: the output is its arguments.
    Named(String),
    /// At least one call: the output is `[{"name", "arguments"}, ...]`.
    Required,
    /// The model decides; calls are parsed out of its text with this parser.
    Auto(ToolParser),
}

/// The request's tools and what to do with them.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    pub tools: Vec<Value>,
    pub choice: ToolChoice,
}

/// Reads `tools` and `tool_choice`. `None` when the request has no tools.
/// `auto`: the server's parser for "auto" (`--enable-auto-tool-choice` with
/// `--tool-call-parser`), if it has one.
pub fn plan(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    auto: Option<ToolParser>,
) -> ApiResult<Option<ToolPlan>> {
    let tools = match tools {
        None | Some(Value::Null) => {
            if tool_choice.is_some_and(|c| !c.is_null() && c != "none") {
                return Err(ApiError::bad_request(
                    "When using `tool_choice`, `tools` must be set.",
                ));
            }
            return Ok(None);
        }
        Some(Value::Array(t)) => t.clone(),
        Some(_) => return Err(ApiError::bad_request("`tools` must be an array")),
    };
    for t in &tools {
        let name = t["function"]["name"].as_str();
        if t["type"] != "function" || name.is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "each tool must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \
                 \"parameters\": {{...}}}}}}, got {t}"
            )));
        }
    }
    // vLLM: tools without a tool_choice mean "auto", which needs the flags.
    let auto = || {
        auto.map(ToolChoice::Auto).ok_or_else(|| {
            ApiError::bad_request(
                "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
            )
        })
    };
    let choice = match tool_choice {
        None | Some(Value::Null) => auto()?,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => auto()?,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::bad_request(format!(
                    "tool_choice must be \"none\", \"auto\", \"required\" or a named function, got \"{other}\""
                )))
            }
        },
        Some(c) => match c["function"]["name"].as_str() {
            Some(name) if c["type"] == "function" => {
                if !tools.iter().any(|t| t["function"]["name"] == name) {
                    return Err(ApiError::bad_request(format!(
                        "tool_choice names the function `{name}`, which is not in `tools`."
                    )));
                }
                ToolChoice::Named(name.to_string())
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "tool_choice must be \"none\", \"auto\", \"required\" or \
                     {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {c}"
                )))
            }
        },
    };
    if matches!(choice, ToolChoice::Required | ToolChoice::Auto(_)) && tools.is_empty() {
        return Err(ApiError::bad_request("`tools` is empty."));
    }
    Ok(Some(ToolPlan { tools, choice }))
}

fn parameters(tool: &Value) -> Value {
    match &tool["function"]["parameters"] {
        Value::Null => json!({"type": "object"}),
        p => p.clone(),
    }
}

impl ToolPlan {
    /// The JSON schema the output must follow, if the choice forces a call.
    pub fn schema(&self) -> Option<Value> {
        match &self.choice {
            ToolChoice::Named(name) => self
                .tools
                .iter()
                .find(|t| t["function"]["name"] == name.as_str())
                .map(parameters),
            ToolChoice::Required => {
                let calls: Vec<Value> = self
                    .tools
                    .iter()
                    .map(|t| {
                        json!({
                            "type": "object",
                            "properties": {
                                "name": {"const": t["function"]["name"]},
                                "arguments": parameters(t),
                            },
                            "required": ["name", "arguments"],
                            "additionalProperties": false,
                        })
                    })
                    .collect();
                Some(json!({"type": "array", "minItems": 1, "items": {"anyOf": calls}}))
            }
            ToolChoice::None | ToolChoice::Auto(_) => None,
        }
    }

    /// Splits a finished output into content and tool calls. `None` calls: the
    /// output is plain content (no call, or one that did not finish).
    pub fn parse(&self, text: &str) -> (Option<String>, Option<Vec<Value>>) {
        match &self.choice {
            ToolChoice::None => (Some(text.to_string()), None),
            ToolChoice::Named(name) => (None, Some(vec![call(name, text.to_string())])),
            ToolChoice::Required => match serde_json::from_str::<Vec<Value>>(text) {
                Ok(items) => (None, Some(items.iter().map(call_from_json).collect())),
                Err(_) => (Some(text.to_string()), None),
            },
            ToolChoice::Auto(parser) => parser.parse(text),
        }
    }
}

/// One OpenAI tool call.
pub fn call(name: &str, arguments: String) -> Value {
    json!({
        "id": format!("chatcmpl-tool-{}", random_id()),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    })
}

fn call_from_json(item: &Value) -> Value {
    let arguments = match &item["arguments"] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    call(item["name"].as_str().unwrap_or_default(), arguments)
}

/// "auto" needs a template that tells the model how to call tools in a format we
/// parse: the rendered prompt shows it.
/// (Checked for the Hermes parser, whose format templates spell out.)
pub fn check_auto(plan: &ToolPlan, rendered_prompt: &str) -> ApiResult<()> {
    if plan.choice == ToolChoice::Auto(ToolParser::Hermes)
        && !rendered_prompt.contains("<tool_call>")
    {
        return Err(ApiError::bad_request(
            "tool_choice \"auto\" needs a chat template that asks for tool calls in a format \
             this server parses (Hermes/Qwen `<tool_call>` JSON); this model's template does \
             not. Use tool_choice \"required\", a named function, or \"none\".",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn choices_and_errors() {
        let tools = weather();
        let p = plan(
            Some(&tools),
            Some(&json!({"type": "function", "function": {"name": "get_weather"}})),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.choice, ToolChoice::Named("get_weather".into()));
        assert_eq!(p.schema().unwrap()["required"], json!(["city"]));
        assert!(plan(None, Some(&json!("required")), None).is_err());
        assert!(plan(
            Some(&tools),
            Some(&json!({"type": "function", "function": {"name": "x"}})),
            None
        )
        .is_err());
        assert!(plan(Some(&json!([{"type": "code"}])), None, None).is_err());
        // Tools without a tool_choice mean "auto": vLLM's error without the flags.
        let hermes = Some(ToolParser::Hermes);
        assert_eq!(
            plan(Some(&tools), None, hermes).unwrap().unwrap().choice,
            ToolChoice::Auto(ToolParser::Hermes)
        );
        for choice in [None, Some(json!("auto"))] {
            let e = plan(Some(&tools), choice.as_ref(), None).unwrap_err();
            assert!(
                e.message.contains("requires --enable-auto-tool-choice"),
                "{e:?}"
            );
        }
        assert!(plan(None, None, None).unwrap().is_none());
    }

    #[test]
    fn parsing_outputs() {
        let tools = weather();
        let required = plan(Some(&tools), Some(&json!("required")), None)
            .unwrap()
            .unwrap();
        let (content, calls) =
            required.parse(r#"[{"name": "get_weather", "arguments": {"city": "Oslo"}}]"#);
        assert!(content.is_none());
        let calls = calls.unwrap();
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Oslo"}"#);
        let auto = plan(Some(&tools), Some(&json!("auto")), Some(ToolParser::Hermes))
            .unwrap()
            .unwrap();
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>";
        let (content, calls) = auto.parse(text);
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(calls.unwrap().len(), 1);
        assert_eq!(auto.parse("no call").1, None);
        assert!(check_auto(&auto, "plain prompt").is_err());
    }
}
