//! Plain-text fields as every service takes them (ADR 0025): trimmed, Unicode NFC (so one text
//! has one stored form and one length), lengths counted in characters, and no control or
//! bidirectional-formatting characters (which can hide or reorder what a reader sees, as in
//! "exe.txt" shown for "txt.exe"). Markup is not special: it is stored as text and escaped where
//! it is shown (JSON answers escape `<`, `>` and `&`; email templates escape HTML).
use unicode_normalization::UnicodeNormalization;

/// How one field is checked.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Fewest characters (0: may be empty).
    pub min: usize,
    /// Most characters, after normalisation.
    pub max: usize,
    /// Whether line breaks (and tabs) are allowed: descriptions, notes.
    pub multiline: bool,
}

impl Rules {
    pub const fn line(min: usize, max: usize) -> Self {
        Self {
            min,
            max,
            multiline: false,
        }
    }

    pub const fn multiline(min: usize, max: usize) -> Self {
        Self {
            min,
            max,
            multiline: true,
        }
    }
}

/// Characters that change the direction text is shown in: embeddings, overrides, isolates and
/// the marks (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// The stored form of `raw` under `rules`, or why it is refused (for a field violation).
pub fn plain(raw: &str, rules: Rules) -> Result<String, String> {
    let text: String = raw.trim().nfc().collect();
    let len = text.chars().count();
    if len < rules.min {
        return Err(if rules.min == 1 {
            "must not be empty".to_owned()
        } else {
            format!("must be at least {} characters", rules.min)
        });
    }
    if len > rules.max {
        return Err(format!("must be at most {} characters", rules.max));
    }
    if text.chars().any(is_bidi_control) {
        return Err("must not contain bidirectional control characters".to_owned());
    }
    let allowed = |c: char| rules.multiline && matches!(c, '\n' | '\t' | '\r');
    if text.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(text)
}

/// [`plain`] for one field of a request: the stored form, or the raw value trimmed with the
/// violation added to `out` (so every field's problem is reported at once).
pub fn field(name: &str, raw: &str, rules: Rules, out: &mut Vec<crate::errors::Violation>) -> String {
    match plain(raw, rules) {
        Ok(text) => text,
        Err(why) => {
            out.push(crate::errors::Violation::new(name, why));
            raw.trim().to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_normalised_and_counted_in_characters() {
        // "é" as e + combining acute (2 chars) becomes one precomposed character.
        let decomposed = "Cafe\u{301} Chai";
        let stored = plain(decomposed, Rules::line(1, 9)).unwrap();
        assert_eq!(stored, "Café Chai");
        assert_eq!(stored.chars().count(), 9);
        assert_eq!(plain("  चाय  ", Rules::line(1, 3)).unwrap(), "चाय");
        assert!(
            plain("é".repeat(10).as_str(), Rules::line(1, 10)).is_ok(),
            "10 characters, 20 bytes"
        );
        assert!(plain("", Rules::line(1, 5)).unwrap_err().contains("empty"));
        assert!(plain("abcdef", Rules::line(1, 5)).unwrap_err().contains("at most 5"));
        assert_eq!(plain("", Rules::line(0, 5)).unwrap(), "");
    }

    #[test]
    fn control_and_bidi_characters_are_refused() {
        for bad in [
            "a\u{0}b",
            "a\u{1b}[31mb",
            "txt\u{202E}exe.doc",
            "a\u{2066}b",
            "a\u{200F}b",
            "a\u{7f}",
        ] {
            assert!(plain(bad, Rules::multiline(0, 100)).is_err(), "{bad:?}");
        }
        assert!(plain("line one\nline two", Rules::line(0, 100)).is_err());
        assert_eq!(
            plain("line one\nline two", Rules::multiline(0, 100)).unwrap(),
            "line one\nline two"
        );
        // Markup is text: kept as typed, escaped where shown.
        assert_eq!(
            plain("<b>hi</b> & bye", Rules::line(0, 100)).unwrap(),
            "<b>hi</b> & bye"
        );
    }
}
