//! Logprobs in the two OpenAI shapes, from the engine's per-token entries (the
//! chosen token first, then the top ones, values already clamped at -9999):
//! completions' `{tokens, token_logprobs, top_logprobs, text_offset}` and chat's
//! `{content: [{token, logprob, bytes, top_logprobs}]}`.

use serde_json::{json, Map, Value};

use engine_api::event::{LogprobEntry, TokenLogprobs};

/// How token strings are written.
pub struct TokenText<'a> {
    /// vLLM's `return_tokens_as_token_ids`: "token_id:N" instead of text.
    pub as_ids: bool,
    /// Text for a token with no entry (the first prompt token under echo).
    pub decode: &'a dyn Fn(u32) -> String,
}

impl TokenText<'_> {
    fn of(&self, id: u32, entry: Option<&LogprobEntry>) -> String {
        if self.as_ids {
            return format!("token_id:{id}");
        }
        match entry.and_then(|e| e.decoded_token.clone()) {
            Some(text) => text,
            None => (self.decode)(id),
        }
    }
}

/// The entry of `id` in a position's entries (the chosen token is first).
fn chosen(entries: &TokenLogprobs, id: u32) -> Option<&LogprobEntry> {
    entries.iter().find(|e| e.token_id == id)
}

/// Completions' logprobs for `ids`, one position each (`None`: nothing scored
/// it). `offset` is where the first token's text starts in the choice's text;
/// returns the object and the offset after the last token.
pub fn completion_logprobs(
    ids: &[u32],
    steps: &[Option<&TokenLogprobs>],
    mut offset: usize,
    text: &TokenText,
) -> (Value, usize) {
    let mut tokens = Vec::with_capacity(ids.len());
    let mut token_logprobs = Vec::with_capacity(ids.len());
    let mut top_logprobs = Vec::with_capacity(ids.len());
    let mut text_offset = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        let step = steps.get(i).copied().flatten();
        let entry = step.and_then(|s| chosen(s, id));
        let token = text.of(id, entry);
        token_logprobs.push(entry.map_or(Value::Null, |e| json!(e.logprob)));
        top_logprobs.push(match step {
            None => Value::Null,
            Some(entries) => {
                // Keys are token texts: equal texts collapse, as in vLLM's dict.
                let mut top = Map::new();
                for e in entries {
                    top.insert(text.of(e.token_id, Some(e)), json!(e.logprob));
                }
                Value::Object(top)
            }
        });
        text_offset.push(offset);
        offset += token.chars().count();
        tokens.push(token);
    }
    let value = json!({
        "text_offset": text_offset,
        "token_logprobs": token_logprobs,
        "tokens": tokens,
        "top_logprobs": top_logprobs,
    });
    (value, offset)
}

/// Chat's `content` entries for generated `ids`; each lists `top` alternatives.
pub fn chat_logprobs(
    ids: &[u32],
    steps: &[TokenLogprobs],
    top: usize,
    text: &TokenText,
) -> Vec<Value> {
    ids.iter()
        .enumerate()
        .map(|(i, &id)| {
            let step = steps.get(i);
            let entry = step.and_then(|s| chosen(s, id));
            // The main entry's bytes are the token's text even with token ids (vLLM).
            let plain = TokenText {
                as_ids: false,
                decode: text.decode,
            };
            let bytes = plain.of(id, entry).into_bytes();
            let alternatives: Vec<Value> = step
                .map(|s| {
                    s.iter()
                        .take(top)
                        .map(|e| {
                            let t = text.of(e.token_id, Some(e));
                            json!({"token": t, "logprob": e.logprob, "bytes": t.as_bytes()})
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "token": text.of(id, entry),
                "logprob": entry.map_or(-9999.0, |e| e.logprob),
                "bytes": bytes,
                "top_logprobs": alternatives,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, lp: f64, text: &str) -> LogprobEntry {
        LogprobEntry {
            token_id: id,
            logprob: lp,
            rank: 1,
            decoded_token: Some(text.into()),
        }
    }

    #[test]
    fn completion_shape_with_an_unscored_first_token() {
        let decode = |id: u32| format!("<{id}>");
        let text = TokenText {
            as_ids: false,
            decode: &decode,
        };
        let a = vec![entry(5, -0.5, " hi"), entry(6, -1.0, " ho")];
        let b = vec![entry(7, -2.0, "é"), entry(5, -0.1, " hi")];
        let (v, end) = completion_logprobs(&[1, 5, 7], &[None, Some(&a), Some(&b)], 3, &text);
        assert_eq!(v["tokens"], json!(["<1>", " hi", "é"]));
        assert_eq!(v["token_logprobs"], json!([null, -0.5, -2.0]));
        assert_eq!(v["top_logprobs"][0], Value::Null);
        assert_eq!(v["top_logprobs"][2], json!({"é": -2.0, " hi": -0.1}));
        assert_eq!(v["text_offset"], json!([3, 6, 9]));
        assert_eq!(end, 10, "offsets count characters, not bytes");
    }

    #[test]
    fn token_ids_instead_of_text() {
        let decode = |_: u32| unreachable!();
        let text = TokenText {
            as_ids: true,
            decode: &decode,
        };
        let a = vec![entry(5, -0.5, " hi"), entry(6, -1.0, " ho")];
        let content = chat_logprobs(&[5], &[a], 2, &text);
        assert_eq!(content[0]["token"], json!("token_id:5"));
        assert_eq!(content[0]["bytes"], json!(b" hi".to_vec()));
        assert_eq!(content[0]["top_logprobs"][1]["token"], json!("token_id:6"));
    }
}
