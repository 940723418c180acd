//! A small English/Spanish detector for the `language` reward.
//!
//! The text is split into words (runs of letters, lowercased); each word found in the English
//! list counts one for English, each in the Spanish list one for Spanish, and each of the
//! letters and marks only Spanish writes (`ñ`, `á`, `é`, `í`, `ó`, `ú`, `¿`, `¡`) one more for
//! Spanish. The larger count wins; a tie (no word of either list, say) is "cannot tell"
//! (`None`). The lists are function words and the words of the answer formats (`answer`,
//! `respuesta`), without the words both languages write (`a`, `no`, `me`, `total`, ...).

const EN: &[&str] = &[
    "the", "and", "is", "are", "was", "were", "of", "to", "in", "it", "its", "that", "this", "with", "for",
    "on", "has", "have", "had", "he", "she", "they", "you", "we", "what", "how", "many", "much", "there",
    "answer", "left", "more", "each", "so", "if", "be", "by", "from", "at", "an", "or", "his", "her",
    "their", "now", "after", "then", "plus", "minus", "equals", "which", "will", "would", "can", "not",
    "but", "all", "one", "two", "three", "gives", "buys", "bought", "gets", "got", "apples", "does", "do",
    "did", "let", "us", "our", "first", "add", "subtract", "times", "result", "final", "number", "i",
];

const ES: &[&str] = &[
    "el",
    "la",
    "los",
    "las",
    "de",
    "del",
    "que",
    "y",
    "es",
    "en",
    "un",
    "una",
    "unos",
    "unas",
    "por",
    "con",
    "para",
    "al",
    "se",
    "su",
    "sus",
    "lo",
    "le",
    "les",
    "como",
    "pero",
    "más",
    "mas",
    "hay",
    "tiene",
    "tienen",
    "son",
    "está",
    "están",
    "respuesta",
    "cuántos",
    "cuántas",
    "cuantos",
    "cuantas",
    "quedan",
    "entonces",
    "después",
    "cada",
    "ahora",
    "él",
    "ella",
    "ellos",
    "también",
    "muy",
    "sin",
    "sobre",
    "entre",
    "menos",
    "igual",
    "da",
    "compra",
    "compró",
    "tenía",
    "tenemos",
    "primero",
    "sumamos",
    "restamos",
    "resultado",
    "número",
    "final",
    "manzanas",
    "uno",
    "dos",
    "tres",
    "si",
    "este",
    "esta",
    "hace",
    "eso",
    "nos",
    "yo",
    "sumar",
    "restar",
    "veces",
];

/// `"en"`, `"es"`, or `None` when the text gives no lead (see the module documentation).
pub fn detect_language(text: &str) -> Option<&'static str> {
    let (mut en, mut es) = (0usize, 0usize);
    for c in text.chars() {
        if matches!(c, 'ñ' | 'Ñ' | 'á' | 'é' | 'í' | 'ó' | 'ú' | 'Á' | 'É' | 'Í' | 'Ó' | 'Ú' | '¿' | '¡')
        {
            es += 1;
        }
    }
    for word in text.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()) {
        let w = word.to_lowercase();
        // "final" is in both lists: it counts for neither.
        let (e, s) = (EN.contains(&w.as_str()), ES.contains(&w.as_str()));
        if e && !s {
            en += 1;
        } else if s && !e {
            es += 1;
        }
    }
    match en.cmp(&es) {
        std::cmp::Ordering::Greater => Some("en"),
        std::cmp::Ordering::Less => Some("es"),
        std::cmp::Ordering::Equal => None,
    }
}

/// A row's language as the detector names it: `en`/`es` from codes (`en`, `EN`, `en-US`,
/// `es_MX`) or names (`english`, `spanish`, `español`); `None` for any other language.
pub(crate) fn normalize(code: &str) -> Option<&'static str> {
    let c = code.trim().to_lowercase();
    let head = c.split(['-', '_']).next().unwrap_or("");
    match head {
        "en" | "eng" | "english" | "inglés" | "ingles" => Some("en"),
        "es" | "spa" | "spanish" | "español" | "espanol" | "castellano" => Some("es"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_english_from_spanish() {
        assert_eq!(detect_language("Tom has 3 apples and buys 4 more. Answer: 7"), Some("en"));
        assert_eq!(detect_language("Ana tiene 3 manzanas y compra 4 más. Respuesta: 7"), Some("es"));
        assert_eq!(detect_language("¿Cuántas quedan?"), Some("es"));
        assert_eq!(detect_language("42"), None);
        assert_eq!(detect_language(""), None);
        assert_eq!(normalize("en-US"), Some("en"));
        assert_eq!(normalize("Español"), Some("es"));
        assert_eq!(normalize("fr"), None);
    }
}
