//! Text that came from an operator, a file or a client, made safe to show.

/// `text` with control characters (escape sequences, newlines, NUL, ...)
/// written as escapes, so quoting input in an error, a log line or a table
/// cannot move a terminal's cursor, recolour it or forge a line.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape_controls`] line by line: keeps the line structure of a
/// multi-line message (a config's list of problems) and nothing else.
pub fn escape_controls_in_lines(text: &str) -> String {
    text.split('\n')
        .map(escape_controls)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` cut to at most `max_bytes` bytes (at a character boundary) with
/// a marker that says how much was left out, for text a client or a feed
/// chose: an error, a record or a cell quotes what it was given, never
/// without bound.
pub fn truncated(text: &str, max_bytes: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max_bytes {
        return text.into();
    }
    let cut = text.floor_char_boundary(max_bytes.saturating_sub(TRUNCATION_MARKER_BYTES));
    format!("{}… ({} more bytes)", &text[..cut], text.len() - cut).into()
}

/// Room [`truncated`] leaves for its marker: "… (" and ")" and the
/// count, which fits 20 digits and " more bytes".
const TRUNCATION_MARKER_BYTES: usize = 36;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_with_a_marker_and_short_text_kept() {
        assert_eq!(truncated("short", 100), "short");
        let long = "é".repeat(1000);
        let cut = truncated(&long, 100);
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with(" more bytes)"), "{cut}");
        assert!(cut.starts_with("éé"));
        let bytes: usize = cut
            .trim_end_matches(" more bytes)")
            .rsplit('(')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(cut.split('…').next().unwrap().len() + bytes, long.len());
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_controls("vendor-é 1"), "vendor-é 1");
        assert_eq!(
            escape_controls("a\u{1b}[31mred\nb\0\u{7f}"),
            "a\\u{1b}[31mred\\nb\\u{0}\\u{7f}"
        );
        assert_eq!(
            escape_controls_in_lines("line 1\n  line\u{1b} 2"),
            "line 1\n  line\\u{1b} 2"
        );
    }
}
