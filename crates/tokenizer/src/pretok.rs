//! Pre-tokenizers: cut text into the pieces that BPE then encodes one by one.
//!
//! The split regexes of the supported tokenizers are implemented by hand as small scanners (no
//! regex engine); each follows the regex's leftmost-first alternation and backtracking exactly:
//!
//! - Llama-3 (tiktoken `cl100k`-style), as in Llama-3's `tokenizer.json` and llama.cpp `llama-bpe`:
//!   `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! - Qwen2 (Qwen2, Qwen2.5, Qwen3 `tokenizer.json`, llama.cpp `qwen2`): the Llama-3 regex with
//!   single digits, `\p{N}` in place of `\p{N}{1,3}`.
//! - GPT-2 (Hugging Face `ByteLevel` with `use_regex`):
//!   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
//!   optionally after isolating every numeric character (`Digits(individual_digits)`, llama.cpp
//!   `smollm`), which is how SmolLM2 was trained.
//!
//! `\s` is Unicode White_Space, `\p{L}` and `\p{N}` the Unicode general categories.

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// The split rule applied before BPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The Llama-3 split regex.
    Llama3,
    /// The Qwen2 split regex: Llama-3's with every numeric character a piece of its own.
    Qwen2,
    /// The GPT-2 split regex; with `individual_digits`, every numeric character is first cut out
    /// as a piece of its own and the regex runs on the text between them.
    Gpt2 {
        /// Isolate each `\p{N}` character before applying the regex.
        individual_digits: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_ascii() {
        return match c {
            'a'..='z' | 'A'..='Z' => Class::Letter,
            '0'..='9' => Class::Number,
            ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' => Class::Space,
            _ => Class::Other,
        };
    }
    if c.is_whitespace() {
        return Class::Space;
    }
    match get_general_category(c) {
        G::UppercaseLetter | G::LowercaseLetter | G::TitlecaseLetter | G::ModifierLetter | G::OtherLetter => {
            Class::Letter
        }
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Class::Number,
        _ => Class::Other,
    }
}

/// One character of the text being split: its byte offset, itself and its class.
#[derive(Clone, Copy)]
struct Ch {
    at: usize,
    c: char,
    k: Class,
}

impl PreTokenizer {
    /// The pre-tokens of `text`, in order (they concatenate to `text`).
    pub fn split_text<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut out = Vec::new();
        self.split(text, |p| out.push(p));
        out
    }

    /// Calls `piece` with each pre-token of `text`, in order; the pieces concatenate to `text`.
    pub(crate) fn split<'t>(&self, text: &'t str, mut piece: impl FnMut(&'t str)) {
        if text.is_empty() {
            return;
        }
        let cs: Vec<Ch> = text.char_indices().map(|(at, c)| Ch { at, c, k: class(c) }).collect();
        let byte_at = |i: usize| cs.get(i).map_or(text.len(), |ch| ch.at);
        let mut emit = |from: usize, to: usize| piece(&text[byte_at(from)..byte_at(to)]);
        match *self {
            PreTokenizer::Llama3 | PreTokenizer::Qwen2 => {
                let max_digits = if *self == PreTokenizer::Llama3 { 3 } else { 1 };
                let mut i = 0;
                while i < cs.len() {
                    let e = llama3_end(&cs, i, max_digits);
                    emit(i, e);
                    i = e;
                }
            }
            PreTokenizer::Gpt2 { individual_digits } => {
                let mut start = 0;
                while start < cs.len() {
                    // The fragment runs to the next numeric character (or the end). HF's
                    // `Digits` asks Rust's `char::is_numeric`, whose Unicode tables can be newer
                    // than the regex engine's `\p{N}`, so this test is kept apart from `class`.
                    let end = if individual_digits {
                        (start..cs.len()).find(|&i| cs[i].c.is_numeric()).unwrap_or(cs.len())
                    } else {
                        cs.len()
                    };
                    let frag = &cs[start..end];
                    let mut i = 0;
                    while i < frag.len() {
                        let e = gpt2_end(frag, i);
                        emit(start + i, start + e);
                        i = e;
                    }
                    if end < cs.len() {
                        emit(end, end + 1);
                    }
                    start = end + 1;
                }
            }
        }
    }
}

/// End of the run of characters of class `k` starting at `i`.
fn run(cs: &[Ch], i: usize, k: Class) -> usize {
    let mut e = i;
    while e < cs.len() && cs[e].k == k {
        e += 1;
    }
    e
}

fn is_crlf(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// Matches `s|t|re|ve|m|ll|d` at `j` (just after an apostrophe); returns the end.
fn contraction(cs: &[Ch], j: usize, ignore_case: bool) -> Option<usize> {
    let at = |i: usize| -> Option<char> {
        let c = cs.get(i)?.c;
        Some(if !ignore_case {
            c
        } else if c == '\u{17F}' {
            // LATIN SMALL LETTER LONG S folds to 's' under Unicode case-insensitive matching.
            's'
        } else {
            c.to_ascii_lowercase()
        })
    };
    match at(j)? {
        's' | 't' | 'm' | 'd' => Some(j + 1),
        'r' | 'v' if at(j + 1)? == 'e' => Some(j + 2),
        'l' if at(j + 1)? == 'l' => Some(j + 2),
        _ => None,
    }
}

/// Whitespace alternatives shared by both regexes: `\s+(?!\S)|\s+` (and, for Llama-3, first
/// `\s*[\r\n]+`). `i` is a whitespace character.
fn whitespace_end(cs: &[Ch], i: usize, newline_alt: bool) -> usize {
    let run_end = run(cs, i, Class::Space);
    if newline_alt {
        // `\s*[\r\n]+`: up to and including the last CR/LF of the run.
        if let Some(p) = (i..run_end).rev().find(|&p| is_crlf(cs[p].c)) {
            return p + 1;
        }
    }
    if run_end == cs.len() || run_end - i < 2 {
        // `\s+(?!\S)` takes a run that ends the text; `\s+` a single space before a non-space.
        run_end
    } else {
        // `\s+(?!\S)` backs off one character so the next piece can start with it.
        run_end - 1
    }
}

/// End of the Llama-3 (`max_digits` 3) or Qwen2 (`max_digits` 1) pre-token that starts at `i`.
fn llama3_end(cs: &[Ch], i: usize, max_digits: usize) -> usize {
    let Ch { c, k, .. } = cs[i];
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if c == '\'' {
        if let Some(e) = contraction(cs, i + 1, true) {
            return e;
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if k == Class::Letter {
        return run(cs, i, Class::Letter);
    }
    if k != Class::Number && !is_crlf(c) && cs.get(i + 1).is_some_and(|n| n.k == Class::Letter) {
        return run(cs, i + 1, Class::Letter);
    }
    // \p{N}{1,3} (Llama-3) or \p{N} (Qwen2)
    if k == Class::Number {
        return run(cs, i, Class::Number).min(i + max_digits);
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    let j = if c == ' ' { i + 1 } else { i };
    if cs.get(j).is_some_and(|n| n.k == Class::Other) {
        let mut e = run(cs, j, Class::Other);
        while e < cs.len() && is_crlf(cs[e].c) {
            e += 1;
        }
        return e;
    }
    // Only whitespace is left: \s*[\r\n]+|\s+(?!\S)|\s+
    whitespace_end(cs, i, true)
}

/// End of the GPT-2 pre-token that starts at `i`.
fn gpt2_end(cs: &[Ch], i: usize) -> usize {
    let Ch { c, k, .. } = cs[i];
    // 's|'t|'re|'ve|'m|'ll|'d
    if c == '\'' {
        if let Some(e) = contraction(cs, i + 1, false) {
            return e;
        }
    }
    // ' ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+'
    let j = if c == ' ' && i + 1 < cs.len() { i + 1 } else { i };
    let kj = if j == i { k } else { cs[j].k };
    if kj != Class::Space {
        return run(cs, j, kj);
    }
    // \s+(?!\S)|\s+
    whitespace_end(cs, i, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(p: PreTokenizer, s: &str) -> Vec<&str> {
        p.split_text(s)
    }

    #[test]
    fn llama3_splits_follow_the_regex() {
        let p = PreTokenizer::Llama3;
        assert_eq!(pieces(p, "Hello world"), ["Hello", " world"]);
        assert_eq!(pieces(p, "I'm DON'T 'sa"), ["I", "'m", " DON", "'T", " '", "sa"]);
        assert_eq!(pieces(p, "12345 x"), ["123", "45", " x"]);
        assert_eq!(pieces(p, "a   b"), ["a", "  ", " b"]);
        assert_eq!(pieces(p, "a \n\n b"), ["a", " \n\n", " b"]);
        assert_eq!(pieces(p, "x  "), ["x", "  "]);
        assert_eq!(pieces(p, "f(x):\n\tpass"), ["f", "(x", "):\n", "\tpass"]);
        assert_eq!(pieces(p, " 1"), [" ", "1"]);
        assert_eq!(pieces(p, ""), Vec::<&str>::new());
    }

    #[test]
    fn qwen2_splits_digits_one_by_one() {
        let p = PreTokenizer::Qwen2;
        assert_eq!(pieces(p, "12345 x"), ["1", "2", "3", "4", "5", " x"]);
        assert_eq!(pieces(p, "I'm DON'T"), ["I", "'m", " DON", "'T"]);
        assert_eq!(pieces(p, "f(x):\n\tpass"), ["f", "(x", "):\n", "\tpass"]);
        assert_eq!(pieces(p, "a1b"), ["a", "1", "b"]);
    }

    #[test]
    fn gpt2_splits_follow_the_regex() {
        let p = PreTokenizer::Gpt2 { individual_digits: false };
        assert_eq!(pieces(p, "I'm DON'T"), ["I", "'m", " DON", "'", "T"]);
        assert_eq!(pieces(p, "a  3 x"), ["a", " ", " 3", " x"]);
        assert_eq!(pieces(p, "x\n\ny"), ["x", "\n", "\n", "y"]);
        let d = PreTokenizer::Gpt2 { individual_digits: true };
        assert_eq!(pieces(d, "a  32 x"), ["a", "  ", "3", "2", " x"]);
        assert_eq!(pieces(d, "1,000"), ["1", ",", "0", "0", "0"]);
    }
}
