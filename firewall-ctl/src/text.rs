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

#[cfg(test)]
mod tests {
    use super::*;

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
