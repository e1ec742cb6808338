//! Which characters a key's description and tag values may not hold: the
//! ones that change how text is shown without showing themselves. The
//! daemon refuses them when metadata is set; a client may escape them when
//! it shows text from an older daemon.

/// Whether `c` controls how text is displayed rather than showing as a
/// character of its own: a C0 or C1 control (DEL included), a Unicode
/// format character (general category Cf: bidirectional overrides and
/// isolates, zero-width spaces and joiners, the byte-order mark, invisible
/// operators, tag characters, ...), or a line or paragraph separator
/// (U+2028, U+2029). Text holding one can read differently from what it
/// is: `safe\u{202E}gnp.exe` shows as "safeexe.png".
pub fn is_display_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Cf, Unicode 16.
            '\u{AD}'
                | '\u{600}'..='\u{605}'
                | '\u{61C}'
                | '\u{6DD}'
                | '\u{70F}'
                | '\u{890}'..='\u{891}'
                | '\u{8E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
                // Zl, Zp.
                | '\u{2028}'
                | '\u{2029}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hiding_and_reordering_characters_are_display_controls() {
        for c in [
            '\n',
            '\u{1B}',
            '\u{7F}',
            '\u{9B}',
            '\u{202E}',
            '\u{2066}',
            '\u{200B}',
            '\u{200D}',
            '\u{FEFF}',
            '\u{2028}',
            '\u{2029}',
            '\u{E0041}',
        ] {
            assert!(is_display_control(c), "{:?}", c);
        }
        for c in ['a', ' ', 'é', '東', '—', '✓', '\u{5D0}'] {
            assert!(!is_display_control(c), "{:?}", c);
        }
    }
}
