//! Chat templates against transformers' `apply_chat_template` reference renderings, and
//! the Jinja2/Python behaviours templates rely on.

mod tokenizer_fixtures;

use engine::tokenizer::{
    load_chat_template_arg, ChatTemplate, RenderOptions, SpecialTokens, Tokenizer,
};
use engine::Error;
use serde_json::{json, Map, Value};
use tokenizer_fixtures::*;

#[test]
fn chat_cases_render_and_tokenize_like_transformers() {
    for model in MODELS {
        let tok = load(model);
        let reference = tokenizer_reference(model);
        let template = tok.chat_template().unwrap();
        assert_eq!(
            Some(template.source()),
            reference["meta"]["chat_template"].as_str(),
            "{model}: template source"
        );
        let cases = array(&reference, "chat");
        assert!(cases.len() >= 20, "{model}: too few chat cases");
        let mut errors = 0;
        for case in cases {
            let name = str_of(case, "name");
            let options = RenderOptions {
                add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
                continue_final_message: case["continue_final_message"].as_bool().unwrap_or(false),
                ..RenderOptions::default()
            };
            let ctx = format!(
                "{model} {name} (generation prompt {})",
                options.add_generation_prompt
            );
            let result = template.render_with(&case["messages"], &options);
            if let Some(expected) = case["error"].as_str() {
                // transformers reports `TemplateError: <raise_exception message>`.
                let message = expected.strip_prefix("TemplateError: ").unwrap_or(expected);
                let err = result.expect_err(&ctx);
                assert!(matches!(err, Error::ChatTemplate(_)), "{ctx}: {err:?}");
                assert!(
                    err.to_string().contains(message),
                    "{ctx}: {err} lacks {message:?}"
                );
                errors += 1;
                continue;
            }
            let rendered = result.unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(rendered, str_of(case, "rendered"), "{ctx}: rendered text");

            let no_special = tok.encode(&rendered, false).unwrap();
            assert_eq!(no_special, ids(&case["token_ids"]), "{ctx}: token ids");
            assert!(
                case["retokenize_no_special_equal"].as_bool().unwrap(),
                "{ctx}: reference flag"
            );
            let with_special = tok.encode(&rendered, true).unwrap();
            assert_eq!(
                with_special,
                ids(&case["token_ids_if_retokenized_with_special"]),
                "{ctx}: with special"
            );
            let bos = tok.bos_token_id().unwrap();
            let double_bos = with_special.starts_with(&[bos, bos]);
            assert_eq!(
                double_bos,
                case["double_bos_if_add_special_tokens"].as_bool().unwrap(),
                "{ctx}: double bos"
            );

            // The plain entry point agrees with the options one.
            if !options.continue_final_message {
                let plain = template
                    .render(&case["messages"], options.add_generation_prompt, None)
                    .unwrap();
                assert_eq!(plain, rendered, "{ctx}: render vs render_with");
            }
        }
        let expect_errors = if model == "tiny-mistral" { 2 } else { 0 };
        assert_eq!(errors, expect_errors, "{model}: error cases");
    }
}

#[test]
fn chat_prompts_of_the_model_reference() {
    for model in MODELS {
        let tok = load(model);
        let reference = model_reference(model);
        let mut checked = 0;
        for result in array(&reference, "results")
            .iter()
            .filter(|r| r["kind"] == "chat")
        {
            let input = &result["input"];
            let add = input["add_generation_prompt"].as_bool().unwrap();
            let rendered = tok
                .chat_template()
                .unwrap()
                .render(&input["messages"], add, None)
                .unwrap();
            assert_eq!(rendered, str_of(result, "prompt_text"), "{model}");
            assert_eq!(
                tok.encode(&rendered, false).unwrap(),
                ids(&result["prompt_token_ids"]),
                "{model}"
            );
            checked += 1;
        }
        assert_eq!(checked, 2, "{model}");
    }
}

/// Renders an inline template with `vars` as extra variables.
fn render(source: &str, vars: Value) -> Result<String, Error> {
    let template = ChatTemplate::new(source, SpecialTokens::default())?;
    let Value::Object(vars) = vars else {
        panic!("vars must be an object")
    };
    template.render(&json!([]), false, Some(&vars))
}

#[test]
fn tojson_is_python_json_dumps() {
    let data = json!({"name": "get_weather", "n": 3, "f": 1.0, "small": 1e-5, "big": 1e16, "ok": true, "none": null,
                      "text": "<b>&'\"é😀\n\t\u{1}\u{7f}", "list": [], "obj": {}, "nested": [1, {"a": [2]}]});
    let out = render("{{ data|tojson }}", json!({ "data": data })).unwrap();
    let want = r#"{"name": "get_weather", "n": 3, "f": 1.0, "small": 1e-05, "big": 1e+16, "ok": true, "none": null, "text": "<b>&'\"é😀\n\t\u0001", "list": [], "obj": {}, "nested": [1, {"a": [2]}]}"#;
    assert_eq!(out, want.replace("\\u0001\"", "\\u0001\u{7f}\""));

    let out = render(
        "{{ data|tojson(indent=2) }}",
        json!({"data": {"a": [1, 2], "b": {}, "c": "x"}}),
    )
    .unwrap();
    assert_eq!(
        out,
        "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {},\n  \"c\": \"x\"\n}"
    );
    let out = render("{{ data|tojson(indent='\t') }}", json!({"data": [1]})).unwrap();
    assert_eq!(out, "[\n\t1\n]");
    let out = render(
        "{{ data|tojson(ensure_ascii=true) }}",
        json!({"data": "é😀\u{7f}"}),
    )
    .unwrap();
    assert_eq!(out, r#""\u00e9\ud83d\ude00\u007f""#);
    let out = render(
        "{{ data|tojson(sort_keys=true, separators=(',', ':')) }}",
        json!({"data": {"b": 1, "a": [1, 2]}}),
    )
    .unwrap();
    assert_eq!(out, r#"{"a":[1,2],"b":1}"#);
    // transformers' signature: ensure_ascii is the first positional argument.
    assert_eq!(
        render("{{ 'é'|tojson(true) }}", json!({})).unwrap(),
        r#""\u00e9""#
    );
    assert!(render("{{ undefined_thing|tojson }}", json!({})).is_err());
}

#[test]
fn values_print_like_python() {
    let vars = json!({"list": [1, "a", null, true, 1.5, "it's"], "dict": {"k": [false]}, "f": 2.0, "tiny": 1e-7});
    let out = render(
        "{{ list }}|{{ dict }}|{{ none }}|{{ true }}|{{ f }}|{{ tiny }}|{{ 7 }}",
        vars,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"[1, 'a', None, True, 1.5, "it's"]|{'k': [False]}|None|True|2.0|1e-07|7"#
    );
}

#[test]
fn jinja2_features_used_by_real_templates() {
    let source = "{%- set ns = namespace(found=false, count=0) -%}
{%- for m in messages -%}
  {%- if m.role == 'stop' %}{% break %}{% endif -%}
  {%- if m.role == 'skip' %}{% continue %}{% endif -%}
  {%- set ns.count = ns.count + 1 -%}
  {%- if m['content'].startswith(' x') %}{% set ns.found = true %}{% endif -%}
  [{{ loop.index0 }}{{ '!' if loop.last }}:{{ m.content.strip() }}|{{ m.content.split()|join(',') }}]
{%- endfor -%}
{{ ns.found }} {{ ns.count }} {{ messages[1:]|length }} {{ messages[-1]['role'] }} {{ 'ab'.upper() }}
{{- ' ' ~ ('x' * 3) -}}
{{ ' ' + {'a': 1}.get('a')|string }}{{ ' ' ~ (messages|selectattr('role', 'equalto', 'user')|list|length) }}";
    let messages = json!([
        {"role": "user", "content": " x y "},
        {"role": "skip", "content": "hidden"},
        {"role": "user", "content": "a b"},
        {"role": "stop", "content": "never"},
        {"role": "assistant", "content": "after"}
    ]);
    let template = ChatTemplate::new(source, SpecialTokens::default()).unwrap();
    let out = template.render(&messages, false, None).unwrap();
    assert_eq!(out, "[0:x y|x,y][2:a b|a,b]True 2 4 assistant AB xxx 1 2");
}

#[test]
fn whitespace_control_matches_jinja2_settings() {
    // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before it,
    // and the template's single trailing newline is dropped (keep_trailing_newline=False).
    let source = "<start>\n  {% for m in messages %}\n    {{ m.content }}\n  {% endfor %}\n<end>\n";
    let template = ChatTemplate::new(source, SpecialTokens::default()).unwrap();
    let out = template
        .render(&json!([{"content": "a"}, {"content": "b"}]), false, None)
        .unwrap();
    assert_eq!(out, "<start>\n    a\n    b\n<end>");
}

#[test]
fn context_has_special_tokens_tools_and_extra_variables() {
    let tokens = SpecialTokens {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        unk_token: None,
        pad_token: Some("<pad>".into()),
    };
    let source = "{{ bos_token }}|{{ eos_token }}|{{ unk_token is defined }}|{{ pad_token }}|{{ tools is none }}|\
                  {{ documents is none }}|{{ add_generation_prompt }}|{{ mode }}|{{ tools|tojson if tools is not none }}";
    let template = ChatTemplate::new(source, tokens).unwrap();
    let extra: Map<String, Value> = [("mode".to_string(), json!("fast"))].into_iter().collect();
    let out = template.render(&json!([]), true, Some(&extra)).unwrap();
    assert_eq!(out, "<s>|</s>|False|<pad>|True|True|True|fast|");

    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let options = RenderOptions {
        tools: Some(&tools),
        extra: Some(&extra),
        ..RenderOptions::default()
    };
    let out = template.render_with(&json!([]), &options).unwrap();
    assert!(
        out.ends_with(
            r#"|False|True|False|fast|[{"type": "function", "function": {"name": "f"}}]"#
        ),
        "{out}"
    );

    // Extra variables may override special tokens but not the reserved arguments.
    let extra: Map<String, Value> = [("eos_token".to_string(), json!("<end>"))]
        .into_iter()
        .collect();
    assert!(template
        .render(&json!([]), false, Some(&extra))
        .unwrap()
        .starts_with("<s>|<end>|"));
    let extra: Map<String, Value> = [("messages".to_string(), json!([]))].into_iter().collect();
    assert!(matches!(
        template.render(&json!([]), false, Some(&extra)),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn raise_exception_and_strftime_now() {
    let err = render(
        "{{ raise_exception('Only user and assistant roles are supported!') }}",
        json!({}),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "chat template: Only user and assistant roles are supported!"
    );
    let year = render("{{ strftime_now('%Y') }}", json!({})).unwrap();
    assert_eq!(year, jiff::Zoned::now().year().to_string());
    let date = render("{{ strftime_now('%d %b %Y') }}", json!({})).unwrap();
    assert_eq!(date.len(), 11, "{date}");
    // Other failures keep minijinja's description.
    let err = render("{{ messages.nope.deeper }}", json!({})).unwrap_err();
    assert!(matches!(err, Error::ChatTemplate(_)), "{err:?}");
}

#[test]
fn generation_tags_are_accepted() {
    let source = "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}\
                  {% else %}{{ m.content }}{% endif %}{% endfor %}";
    let template = ChatTemplate::new(source, SpecialTokens::default()).unwrap();
    let messages = json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]);
    assert_eq!(template.render(&messages, false, None).unwrap(), "qa");
}

#[test]
fn continue_final_message_cuts_after_the_final_text() {
    let source = "{% for m in messages %}{{ m.role }}: {% if m.content is string %}{{ m.content }}\
                  {% else %}{% for b in m.content %}{{ b.text }}{% endfor %}{% endif %}<end>\n{% endfor %}";
    let template = ChatTemplate::new(source, SpecialTokens::default()).unwrap();
    let options = RenderOptions {
        continue_final_message: true,
        ..RenderOptions::default()
    };
    let messages = json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [
        {"type": "text", "text": "first "}, {"type": "image"}, {"type": "text", "text": "Once upon"}, {"type": "image"}]}]);
    let out = template.render_with(&messages, &options).unwrap();
    assert_eq!(out, "user: Hi<end>\nassistant: first Once upon");
    let plain =
        json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Once upon "}]);
    assert_eq!(
        template.render_with(&plain, &options).unwrap(),
        "user: Hi<end>\nassistant: Once upon "
    );

    // A template that strips the message: the cut drops the trailing whitespace too.
    let stripping = ChatTemplate::new(
        "{% for m in messages %}[{{ m.content.strip() }}]{% endfor %}",
        SpecialTokens::default(),
    )
    .unwrap();
    assert_eq!(
        stripping.render_with(&plain, &options).unwrap(),
        "[Hi][Once upon"
    );

    let both = RenderOptions {
        continue_final_message: true,
        add_generation_prompt: true,
        ..RenderOptions::default()
    };
    assert!(matches!(
        template.render_with(&messages, &both),
        Err(Error::InvalidArgument(_))
    ));
    let no_text = json!([{"role": "user", "content": [{"type": "image"}]}]);
    assert!(template.render_with(&no_text, &options).is_err());
    // A template that drops the final message cannot be continued.
    let dropping =
        ChatTemplate::new("{{ messages[0].content }}", SpecialTokens::default()).unwrap();
    let err = dropping.render_with(&plain, &options).unwrap_err();
    assert!(err.to_string().contains("does not appear"), "{err}");
}

#[test]
fn compile_errors_are_reported() {
    let err = ChatTemplate::new("{% for x in %}", SpecialTokens::default()).unwrap_err();
    assert!(
        matches!(err, Error::ChatTemplate(ref m) if m.contains("failed to compile")),
        "{err:?}"
    );
}

#[test]
fn chat_template_arg_follows_vllm_rule() {
    let dir = scratch_dir("template-arg");
    let path = dir.join("template.jinja");
    // Read in text mode like Python: CRLF becomes LF.
    std::fs::write(&path, "{{ messages[0]['content'] }}\r\n").unwrap();
    assert_eq!(
        load_chat_template_arg(path.to_str().unwrap()).unwrap(),
        "{{ messages[0]['content'] }}\n"
    );

    // Inline: escape sequences are decoded, as vLLM does with codecs' unicode_escape.
    let inline = r"{% for m in messages %}{{ m.content }}\n{% endfor %}";
    assert_eq!(
        load_chat_template_arg(inline).unwrap(),
        "{% for m in messages %}{{ m.content }}\n{% endfor %}"
    );

    let missing = dir.join("missing.jinja");
    let err = load_chat_template_arg(missing.to_str().unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(
        msg.contains("looks like a file path") && msg.contains(missing.to_str().unwrap()),
        "{msg}"
    );
    assert!(msg.contains("No such file or directory"), "{msg}");
    // A directory cannot be read either.
    let msg = load_chat_template_arg(dir.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("looks like a file path"), "{msg}");
    // An endless file is refused after 1 MiB, not read until memory runs out.
    let msg = load_chat_template_arg("/dev/zero").unwrap_err().to_string();
    assert!(msg.contains("at most 1048576 bytes"), "{msg}");
}

#[test]
fn with_chat_template_overrides_the_model_template() {
    let tok = load("tiny-mistral")
        .with_chat_template("{{ bos_token }}{{ messages[0].content }}".into())
        .unwrap();
    assert_eq!(
        tok.chat_template()
            .unwrap()
            .render(&json!([{"content": "hi"}]), true, None)
            .unwrap(),
        "<s>hi"
    );
    let err = load("tiny-mistral")
        .with_chat_template("{% if %}".into())
        .unwrap_err();
    assert!(err.to_string().contains("--chat-template"), "{err}");
}

#[test]
fn named_templates_from_tokenizer_config() {
    let dir = copy_tokenizer_files("tiny-llama", "named-templates");
    let config_path = dir.join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = json!([
        {"name": "default", "template": "D{{ messages|length }}"},
        {"name": "tool_use", "template": "T{{ tools|length }}"}
    ]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(tok.chat_template_names(), vec!["default", "tool_use"]);
    assert_eq!(
        tok.chat_template()
            .unwrap()
            .render(&json!([1, 2]), false, None)
            .unwrap(),
        "D2"
    );
    let tools = json!([{}]);
    let options = RenderOptions {
        tools: Some(&tools),
        ..RenderOptions::default()
    };
    let tool_use = tok.select_chat_template(None, true).unwrap();
    assert_eq!(tool_use.render_with(&json!([]), &options).unwrap(), "T1");
    assert_eq!(
        tok.select_chat_template(Some("default"), true)
            .unwrap()
            .source(),
        "D{{ messages|length }}"
    );
    assert!(tok.select_chat_template(Some("nope"), false).is_err());

    // Without a "default" entry there is no implicit choice.
    config["chat_template"] =
        json!([{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    let msg = tok.chat_template().unwrap_err().to_string();
    assert!(msg.contains("default"), "{msg}");
    assert_eq!(
        tok.select_chat_template(Some("b"), false).unwrap().source(),
        "B"
    );
}

#[test]
fn chat_template_jinja_takes_precedence() {
    let dir = copy_tokenizer_files("tiny-llama", "template-file");
    std::fs::write(
        dir.join("chat_template.jinja"),
        "FILE\r\n{{ messages[0]['content'] }}\r\n",
    )
    .unwrap();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    let out = tok
        .chat_template()
        .unwrap()
        .render(&json!([{"role": "user", "content": "hi"}]), false, None)
        .unwrap();
    assert_eq!(out, "FILE\nhi");

    std::fs::create_dir_all(dir.join("additional_chat_templates")).unwrap();
    std::fs::write(dir.join("additional_chat_templates/rag.jinja"), "RAG").unwrap();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(tok.chat_template_names(), vec!["default", "rag"]);
}

#[test]
fn broken_model_templates_fail_at_use_and_name_their_file() {
    let dir = copy_tokenizer_files("tiny-llama", "broken-template");
    let config_path = dir.join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = json!("{% for m in messages %}");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let tok = Tokenizer::from_model_dir(&dir).expect("text completions still work");
    assert_eq!(
        tok.encode("Hello world", false).unwrap(),
        vec![1977, 358, 290, 2917]
    );
    let msg = tok.chat_template().unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("failed to compile"),
        "{msg}"
    );
    // An explicit --chat-template rescues it.
    let tok = tok.with_chat_template("ok".into()).unwrap();
    assert_eq!(
        tok.chat_template()
            .unwrap()
            .render(&json!([]), false, None)
            .unwrap(),
        "ok"
    );
}

/// Templates with the constructs of real model templates, rendered by Jinja2 3.1.6 set
/// up as transformers sets it up (tests/fixtures/chat-templates/generate.py).
#[test]
fn jinja2_reference_renderings() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat-templates/cases.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let special = &reference["special_tokens"];
    let tokens = SpecialTokens {
        bos_token: special["bos_token"].as_str().map(String::from),
        eos_token: special["eos_token"].as_str().map(String::from),
        unk_token: special["unk_token"].as_str().map(String::from),
        pad_token: None,
    };
    let cases = array(&reference, "cases");
    assert!(cases.len() >= 6);
    for case in cases {
        let name = str_of(case, "name");
        let template = ChatTemplate::new(str_of(case, "template"), tokens.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let options = RenderOptions {
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            tools: case.get("tools").filter(|t| !t.is_null()),
            extra: case.get("extra").and_then(Value::as_object),
            ..RenderOptions::default()
        };
        let result = template.render_with(&case["messages"], &options);
        match case["error"].as_str() {
            Some(message) => {
                let err = result.expect_err(name);
                assert_eq!(
                    err.to_string(),
                    format!("chat template: {message}"),
                    "{name}"
                );
            }
            None => assert_eq!(
                result.unwrap_or_else(|e| panic!("{name}: {e}")),
                str_of(case, "rendered"),
                "{name}"
            ),
        }
    }
}
