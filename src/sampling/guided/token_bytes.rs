//! The bytes each token id stands for, which llguidance's token trie is built
//! from. Built here from our own `tokenizers` 0.23 tokenizer rather than with
//! `toktrie_hf_tokenizers`, which depends on `tokenizers` 0.21 (a second copy
//! of the crate, and of onig, in every build).

use std::collections::HashMap;

use tokenizers::DecoderWrapper;
use toktrie::TokTrie;

use crate::tokenizer::Tokenizer;

/// How vocabulary entries spell bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// GPT-2's byte-to-unicode map (Llama 3, Qwen2, the fixtures).
    ByteLevel,
    /// SentencePiece: `▁` for a space, `<0xNN>` byte-fallback tokens (Llama 2, Mistral).
    SentencePiece,
    /// Anything else: the token's decoded text.
    Decoded,
}

fn spelling(decoder: Option<&DecoderWrapper>) -> Spelling {
    fn find(d: &DecoderWrapper, byte_level: &mut bool, sentencepiece: &mut bool) {
        match d {
            DecoderWrapper::ByteLevel(_) => *byte_level = true,
            DecoderWrapper::ByteFallback(_) | DecoderWrapper::Metaspace(_) => *sentencepiece = true,
            DecoderWrapper::Replace(r) if r.content == " " => *sentencepiece = true,
            DecoderWrapper::Sequence(seq) => {
                for d in seq.get_decoders() {
                    find(d, byte_level, sentencepiece);
                }
            }
            _ => {}
        }
    }
    let (mut byte_level, mut sentencepiece) = (false, false);
    if let Some(d) = decoder {
        find(d, &mut byte_level, &mut sentencepiece);
    }
    if byte_level {
        Spelling::ByteLevel
    } else if sentencepiece {
        Spelling::SentencePiece
    } else {
        Spelling::Decoded
    }
}

/// GPT-2's `bytes_to_unicode`, inverted: printable Latin-1 bytes stand for
/// themselves, the other bytes for U+0100 onwards in byte order.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    let mut map = HashMap::with_capacity(256);
    for b in 0..=255u8 {
        if printable(b) {
            map.insert(b as char, b);
        } else if let Some(c) = char::from_u32(next) {
            map.insert(c, b);
            next += 1;
        }
    }
    map
}

/// Bytes of every id below `vocab_size` (the model's logits width): special
/// tokens as llguidance's marker byte + their text (so grammars never produce
/// them by accident), ids the tokenizer lacks as unreachable placeholders.
pub fn token_bytes(tokenizer: &Tokenizer, vocab_size: usize) -> Vec<Vec<u8>> {
    let inner = tokenizer.inner();
    let spelling = spelling(inner.get_decoder());
    let chars = byte_level_chars();
    let added = inner.get_added_tokens_decoder();
    (0..vocab_size as u32)
        .map(|id| {
            if let Some(t) = added.get(&id) {
                return if t.special {
                    special(&t.content)
                } else {
                    t.content.as_bytes().to_vec()
                };
            }
            let Some(piece) = inner.id_to_token(id) else {
                return special(&format!("<[{id}]>"));
            };
            match spelling {
                Spelling::ByteLevel => {
                    // A piece with a char outside the map cannot be spelled; it
                    // stays out of the trie (never allowed under a constraint).
                    piece
                        .chars()
                        .map(|c| chars.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .unwrap_or_default()
                }
                Spelling::SentencePiece => match sentencepiece_byte(&piece) {
                    Some(b) => vec![b],
                    None => piece.replace('\u{2581}', " ").into_bytes(),
                },
                Spelling::Decoded => tokenizer
                    .decode(&[id], false, true)
                    .map(String::into_bytes)
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// `<0xNN>` → the byte NN.
fn sentencepiece_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn special(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.push(TokTrie::SPECIAL_TOKEN_MARKER);
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_covers_every_byte_once() {
        let map = byte_level_chars();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }

    #[test]
    fn sentencepiece_bytes() {
        assert_eq!(sentencepiece_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(sentencepiece_byte("<0x0>"), None);
        assert_eq!(sentencepiece_byte("<s>"), None);
    }
}
