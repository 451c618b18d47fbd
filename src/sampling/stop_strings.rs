//! A request's stop strings, indexed so that the per-token checks cost what
//! the new text and the longest stop string cost, not what the whole list
//! does: every sequence of the batch checks its stop strings on every token,
//! on the engine thread, and 30,000 stop strings of 300 characters made each
//! token of each sequence take 50 ms (a red-team finding). An Aho-Corasick
//! automaton finds every stop string in the window vLLM searches at once; a
//! sorted copy answers "is this text the start of a stop string".

use std::sync::{Arc, OnceLock};

use aho_corasick::AhoCorasick;

/// Stop strings in the request's order (the first of the list that occurs
/// wins), with their index built on first use and shared by clones.
#[derive(Clone, Default)]
pub struct StopStrings {
    list: Vec<String>,
    index: Arc<OnceLock<StopIndex>>,
}

struct StopIndex {
    /// Characters of each string, in list order.
    chars: Vec<usize>,
    max_chars: usize,
    /// `None` without strings, or where the automaton could not be built
    /// (the scan of each string then stands in).
    matcher: Option<AhoCorasick>,
    /// List indices, sorted by their strings.
    sorted: Vec<usize>,
}

impl StopStrings {
    pub fn new(list: Vec<String>) -> StopStrings {
        StopStrings {
            list,
            index: Arc::default(),
        }
    }

    /// Builds the index now (validation does, off the engine thread).
    pub fn prepare(&self) {
        self.index();
    }

    fn index(&self) -> &StopIndex {
        self.index.get_or_init(|| {
            let chars: Vec<usize> = self.list.iter().map(|s| s.chars().count()).collect();
            let mut sorted: Vec<usize> = (0..self.list.len()).collect();
            sorted.sort_by(|&a, &b| self.list[a].cmp(&self.list[b]));
            StopIndex {
                max_chars: chars.iter().copied().max().unwrap_or(0),
                chars,
                matcher: (!self.list.is_empty())
                    .then(|| AhoCorasick::new(&self.list).ok())
                    .flatten(),
                sorted,
            }
        })
    }

    /// Characters in the longest string (0 without any).
    pub fn max_chars(&self) -> usize {
        self.index().max_chars
    }

    /// vLLM's search: the first string of the list that occurs starting at
    /// most `new_chars + its length` characters before the end of `text`
    /// (one the last `new_chars` characters could have completed), at its
    /// first such place. Returns the string and its byte range in `text`.
    pub fn find(&self, text: &str, new_chars: usize) -> Option<(&str, usize, usize)> {
        if new_chars == 0 || self.list.is_empty() {
            return None;
        }
        let index = self.index();
        let Some(matcher) = &index.matcher else {
            return self.find_by_scanning(text, new_chars);
        };
        // A match qualifies when it ends in (or right at the start of) the new
        // text: starting no earlier than new_chars + its length from the end.
        let new_start = start_of_last_chars(text, new_chars);
        let from = start_of_last_chars(text, new_chars + index.max_chars);
        let mut best: Option<(usize, usize)> = None;
        for m in matcher.find_overlapping_iter(&text[from..]) {
            let (pattern, start) = (m.pattern().as_usize(), from + m.start());
            if from + m.end() < new_start {
                continue;
            }
            if best.is_none_or(|(p, s)| (pattern, start) < (p, s)) {
                best = Some((pattern, start));
            }
        }
        best.map(|(p, start)| (self.list[p].as_str(), start, start + self.list[p].len()))
    }

    /// [`StopStrings::find`] string by string.
    fn find_by_scanning(&self, text: &str, new_chars: usize) -> Option<(&str, usize, usize)> {
        let chars = &self.index().chars;
        self.list.iter().zip(chars).find_map(|(s, &n)| {
            let from = start_of_last_chars(text, new_chars + n);
            let start = from + text[from..].find(s.as_str())?;
            Some((s.as_str(), start, start + s.len()))
        })
    }

    /// Bytes at the end of `text` that are the start of (or all of) a stop
    /// string, counting only endings of more than `longer_than` characters.
    pub fn held_suffix(&self, text: &str, longer_than: usize) -> usize {
        let index = self.index();
        if index.max_chars <= longer_than {
            return 0;
        }
        // Longest first: the suffixes of max_chars characters down to longer_than + 1.
        let from = start_of_last_chars(text, index.max_chars);
        let tail_chars = text[from..].chars().count();
        for (k, (i, _)) in text[from..].char_indices().enumerate() {
            if tail_chars - k <= longer_than {
                break;
            }
            let suffix = &text[from + i..];
            let at = index
                .sorted
                .partition_point(|&k| self.list[k].as_str() < suffix);
            if index
                .sorted
                .get(at)
                .is_some_and(|&k| self.list[k].starts_with(suffix))
            {
                return suffix.len();
            }
        }
        0
    }
}

/// The byte index where the last `chars` characters of `text` start (0 when
/// it has fewer).
pub(super) fn start_of_last_chars(text: &str, chars: usize) -> usize {
    if chars == 0 {
        return text.len();
    }
    text.char_indices()
        .rev()
        .nth(chars - 1)
        .map_or(0, |(i, _)| i)
}

impl std::ops::Deref for StopStrings {
    type Target = [String];

    fn deref(&self) -> &[String] {
        &self.list
    }
}

impl From<Vec<String>> for StopStrings {
    fn from(list: Vec<String>) -> StopStrings {
        StopStrings::new(list)
    }
}

impl FromIterator<String> for StopStrings {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> StopStrings {
        StopStrings::new(iter.into_iter().collect())
    }
}

impl PartialEq for StopStrings {
    fn eq(&self, other: &StopStrings) -> bool {
        self.list == other.list
    }
}

impl std::fmt::Debug for StopStrings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.list.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> StopStrings {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The scan (vLLM's loop) and the automaton agree on every window.
    #[test]
    fn the_automaton_finds_what_the_scan_finds() {
        let texts = [
            "xab", "xabc", "abxyz", "xabyz", "xyabz", "ßßé!", "aaaa", "ab ab ab", "",
        ];
        let lists: [&[&str]; 5] = [
            &["b", "a"],
            &["ab"],
            &["é!", "ß"],
            &["aa", "a"],
            &["b a", "ab"],
        ];
        for list in lists {
            let s = stops(list);
            for text in texts {
                for new in 0..=text.chars().count() + 1 {
                    assert_eq!(
                        s.find(text, new),
                        s.find_by_scanning(text, new).filter(|_| new > 0),
                        "{list:?} in {text:?}, {new} new"
                    );
                }
            }
        }
    }

    #[test]
    fn held_suffixes_are_stop_string_starts() {
        let s = stops(&["STOP", "xyz", "é!"]);
        assert_eq!(s.held_suffix("aST", 0), 2);
        assert_eq!(s.held_suffix("aSTOP", 0), 4);
        assert_eq!(s.held_suffix("ax", 0), 1);
        assert_eq!(s.held_suffix("abc", 0), 0);
        assert_eq!(s.held_suffix("aé", 0), "é".len());
        // Only endings longer than 3 characters: a whole "STOP" and nothing shorter.
        assert_eq!(s.held_suffix("aSTO", 3), 0);
        assert_eq!(s.held_suffix("aSTOP", 3), 4);
        assert_eq!(stops(&[]).held_suffix("abc", 0), 0);
    }

    /// A list at the bound (200 strings of 300 characters, 60 KB): the
    /// automaton's answers are the scan's as the text grows token by token.
    #[test]
    fn a_long_list_finds_what_the_scan_finds() {
        let mut list: Vec<String> = (0..200).map(|i| format!("{i:0>300}")).collect();
        list.push("w17 w1".into());
        let s = StopStrings::new(list);
        let mut text = String::new();
        for i in 0..100 {
            let word = format!(" w{i}");
            text.push_str(&word);
            let new = word.chars().count();
            assert_eq!(s.find(&text, new), s.find_by_scanning(&text, new), "{text}");
            assert!(s.held_suffix(&text, 0) <= 6);
        }
        assert_eq!(
            s.find("x w17 w1", 3).map(|(m, start, _)| (m, start)),
            Some(("w17 w1", 2))
        );
    }
}
