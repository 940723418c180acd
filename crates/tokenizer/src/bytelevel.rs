//! The GPT-2 byte-level alphabet: every byte is spelled as one printable character, so that a
//! BPE vocabulary of byte strings can be stored as text (`tokenizer.json`, GGUF `tokens`).
//!
//! Printable Latin-1 bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves; the other 68 bytes
//! are given the characters U+0100, U+0101, ... in byte order (so a space is `Ġ`, a newline `Ċ`).

/// Whether `b` is one of the bytes that is spelled by the character of the same code point.
fn is_self_spelled(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The character that spells each byte.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if is_self_spelled(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("U+0100..U+0143 are valid characters");
            next += 1;
            c
        };
    }
    table
}

/// Builds a lookup from the alphabet's characters (all below U+0144) to bytes.
pub(crate) struct ByteDecoder {
    table: Vec<Option<u8>>,
}

impl ByteDecoder {
    pub(crate) fn new() -> Self {
        let mut table = vec![None; 256 + 68];
        for (b, c) in byte_to_char_table().iter().enumerate() {
            table[*c as usize] = Some(b as u8);
        }
        ByteDecoder { table }
    }

    /// The bytes a token spelled in the alphabet stands for, or `None` if it uses another character.
    pub(crate) fn decode(&self, token: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(token.len());
        for c in token.chars() {
            out.push(*self.table.get(c as usize)?.as_ref()?);
        }
        Some(out)
    }
}

/// Spells bytes in the alphabet.
pub(crate) fn encode(bytes: &[u8], table: &[char; 256]) -> String {
    bytes.iter().map(|&b| table[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection_with_known_spellings() {
        let table = byte_to_char_table();
        let dec = ByteDecoder::new();
        let mut seen = std::collections::HashSet::new();
        for (b, c) in table.iter().enumerate() {
            assert!(seen.insert(*c), "character {c:?} used twice");
            assert_eq!(dec.decode(&c.to_string()), Some(vec![b as u8]));
        }
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[0xA0], 'ł');
        assert_eq!(table[0xAD], 'Ń');
        assert_eq!(dec.decode("ĠhelloĊ").unwrap(), b" hello\n");
        assert_eq!(dec.decode("中"), None);
        assert_eq!(encode(b" hi\n", &table), "ĠhiĊ");
    }
}
