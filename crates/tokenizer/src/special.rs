//! Added tokens (special tokens such as `<|eot_id|>`, and user-defined ones) are found in the text
//! before pre-tokenization, leftmost-longest, like Hugging Face's added vocabulary.

/// A token matched whole in the text, never produced by BPE.
#[derive(Clone, Debug)]
pub(crate) struct AddedToken {
    pub content: String,
    pub id: u32,
    /// Special tokens are dropped by `decode(.., skip_special = true)`.
    pub special: bool,
    /// Also swallow the whitespace on the left of the match.
    pub lstrip: bool,
    /// Also swallow the whitespace on the right of the match.
    pub rstrip: bool,
    /// Match only where neither neighbour is a word character.
    pub single_word: bool,
}

/// A found added token: byte range in the text (with any stripped whitespace) and its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub start: usize,
    pub end: usize,
    pub id: u32,
}

/// Finds added tokens in text.
pub(crate) struct AddedMatcher {
    tokens: Vec<AddedToken>,
    /// Indices into `tokens` by first byte, longest content first.
    by_first: Vec<Vec<usize>>,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl AddedMatcher {
    pub(crate) fn new(mut tokens: Vec<AddedToken>) -> Self {
        tokens.retain(|t| !t.content.is_empty());
        let mut by_first = vec![Vec::new(); 256];
        for (i, t) in tokens.iter().enumerate() {
            by_first[t.content.as_bytes()[0] as usize].push(i);
        }
        for list in &mut by_first {
            list.sort_by_key(|&i| std::cmp::Reverse(tokens[i].content.len()));
        }
        AddedMatcher { tokens, by_first }
    }

    pub(crate) fn tokens(&self) -> &[AddedToken] {
        &self.tokens
    }

    /// The first added token in `text[from..]`, leftmost then longest.
    pub(crate) fn find(&self, text: &str, from: usize) -> Option<Found> {
        if self.tokens.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        for pos in from..bytes.len() {
            let candidates = &self.by_first[bytes[pos] as usize];
            for &i in candidates {
                let t = &self.tokens[i];
                if !bytes[pos..].starts_with(t.content.as_bytes()) {
                    continue;
                }
                let end = pos + t.content.len();
                if t.single_word {
                    let before = text[..pos].chars().next_back();
                    let after = text[end..].chars().next();
                    if before.is_some_and(is_word_char) || after.is_some_and(is_word_char) {
                        continue;
                    }
                }
                let mut start = pos;
                if t.lstrip {
                    let left = text[from..pos].trim_end();
                    start = from + left.len();
                }
                let mut stop = end;
                if t.rstrip {
                    let rest = &text[end..];
                    stop = end + (rest.len() - rest.trim_start().len());
                }
                return Some(Found { start, end: stop, id: t.id });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(content: &str, id: u32) -> AddedToken {
        AddedToken {
            content: content.into(),
            id,
            special: true,
            lstrip: false,
            rstrip: false,
            single_word: false,
        }
    }

    #[test]
    fn leftmost_longest_with_strip_options() {
        let mut m = AddedMatcher::new(vec![tok("<|a|>", 1), tok("<|a|><|b|>", 2), tok("<|b|>", 3)]);
        assert_eq!(m.find("x<|a|><|b|>y", 0), Some(Found { start: 1, end: 11, id: 2 }));
        assert_eq!(m.find("x<|b|>", 0).map(|f| f.id), Some(3));
        assert_eq!(m.find("x<|c|>", 0), None);
        m = AddedMatcher::new(vec![AddedToken { lstrip: true, rstrip: true, ..tok("<m>", 7) }]);
        assert_eq!(m.find("a  <m> b", 0), Some(Found { start: 1, end: 7, id: 7 }));
        m = AddedMatcher::new(vec![AddedToken { single_word: true, ..tok("ok", 9) }]);
        assert_eq!(m.find("book ok", 0).map(|f| f.start), Some(5));
    }
}
