//! Token statistics for `afinar tokenize --stats`.

use crate::{Tokenizer, TokenizerError};

/// How many tokens a text costs, relative to its words and characters.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenStats {
    /// Words: runs of non-whitespace that contain at least one letter or digit.
    pub words: usize,
    /// Tokens, without BOS.
    pub tokens: usize,
    /// Unicode scalar values (Rust `char`s).
    pub chars: usize,
    /// `tokens / words` (0 when there are no words).
    pub tokens_per_word: f64,
    /// `chars / tokens` (0 when there are no tokens).
    pub chars_per_token: f64,
}

/// Counts the words of a text: it is split on Unicode whitespace, and the runs that contain a
/// letter or a digit count (so "—" or "..." standing alone do not).
pub fn count_words(text: &str) -> usize {
    text.split_whitespace().filter(|w| w.chars().any(char::is_alphanumeric)).count()
}

/// Encodes `text` (without BOS) and measures tokens per word and characters per token.
pub fn token_stats(tok: &Tokenizer, text: &str) -> Result<TokenStats, TokenizerError> {
    let tokens = tok.encode(text, false)?.len();
    let words = count_words(text);
    let chars = text.chars().count();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(TokenStats {
        words,
        tokens,
        chars,
        tokens_per_word: ratio(tokens, words),
        chars_per_token: ratio(chars, tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_need_a_letter_or_digit() {
        assert_eq!(count_words("Hello, world — 42 ... ¿qué?  "), 4);
        assert_eq!(count_words(""), 0);
        assert_eq!(count_words(" \n\t "), 0);
        assert_eq!(count_words("niño\u{00a0}año"), 2);
    }
}
