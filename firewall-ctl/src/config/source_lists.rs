//! `sources` arrays of `[[rules]]` tables, read straight from the text.
//!
//! A config listing 250k + 250k prefixes is 10 MB, nearly all of it in
//! `sources`. The toml crate lexes a whole file into a token vector, builds a
//! document tree of it and deserializes the tree: for half a million strings
//! that was about 0.1 s and 70 MB at the peak of every start and reload. Here
//! those arrays are found with the lexer toml itself uses, their strings are
//! parsed as prefixes, and the arrays are blanked in a copy of the text that
//! toml then reads for everything else. Blanking keeps every byte offset, so
//! spans, lines and errors stay where they were.
//!
//! Only the plainest form is taken: the value of a bare `sources` key in a
//! `[[rules]]` table, an array of one-line printable ASCII strings without
//! escapes, with whitespace, newlines and comments between them. Anything
//! else stays in the text and toml reads it as it always did. Because such an
//! array is well formed on its own and `[ ]` is valid wherever it was, the
//! blanked text is valid exactly when the original is; an error is reported
//! from the original all the same, and so is any config whose arrays are not
//! found where the lexer placed them.
//!
//! The strings are parsed on a thread of their own while the scan goes on,
//! in batches sent as they fill: the two took about as long (25 ms each for
//! that config).
//!
//! The speed argument still holds. Measured on the bench's 250k + 250k
//! config (release build, 2-core VM, median of 15 alternating runs of
//! `firewall-ctl check`): 91.5 ms and a 51 MB peak with this pre-scan,
//! 135.4 ms and 90 MB with toml reading the whole text.

use std::{
    ops::Range,
    sync::mpsc::{Receiver, Sender, channel},
};

use toml::Spanned;
use toml_parser::{
    Source,
    lexer::{Lexer, Token, TokenKind},
};

use super::{RawRule, RawSource};

/// The taken arrays and the text left for toml.
pub(super) struct TakenSources {
    /// The config with the taken arrays' insides turned into spaces.
    pub blanked: String,
    lists: Vec<SourceList>,
}

/// One taken array.
struct SourceList {
    /// Which `[[rules]]` table, counted from 0 in file order.
    rule: usize,
    /// Between the brackets: what is blanked. The `[` before it is where
    /// toml must find the blanked array.
    inside: Range<usize>,
    sources: Vec<Spanned<RawSource>>,
}

/// Strings sent to the parsing thread at a time.
const BATCH: usize = 4096;

/// Takes the plain `sources` arrays out of `text`, or `None` if it has none.
pub(super) fn take(text: &str) -> Option<TakenSources> {
    let (to_parser, batches) = channel();
    let (to_scan, parsed) = channel();
    let (mut lists, arrays) = std::thread::scope(|scope| {
        scope.spawn(move || parse_batches(text, batches, to_scan));
        let mut scan = Scan {
            text,
            tokens: Source::new(text).lex(),
            lists: Vec::new(),
            parsing: Parsing {
                batch: Vec::new(),
                to_parser,
                sent: 0,
                arrays: Vec::new(),
            },
        };
        scan.document();
        // Dropping the sender ends the parsing thread once it is done.
        (scan.lists, scan.parsing.arrays)
    });
    if lists.is_empty() {
        return None;
    }
    // The parsing thread answered the batches in the order they were sent,
    // array by array; a batch of an array not taken is dropped.
    let mut parsed = parsed.into_iter();
    for (list, batches) in arrays {
        for batch in parsed.by_ref().take(batches) {
            if let Some(list) = list {
                lists[list].sources.extend(batch);
            }
        }
    }
    let blanked = blank(text, lists.iter().map(|list| list.inside.clone()));
    Some(TakenSources { blanked, lists })
}

/// Parses each batch of string tokens' spans in `text` as prefixes, and
/// sends the results back in the same order.
fn parse_batches(
    text: &str,
    batches: Receiver<Vec<Range<usize>>>,
    parsed: Sender<Vec<Spanned<RawSource>>>,
) {
    for batch in batches {
        let sources = batch
            .into_iter()
            .map(|span| {
                // Inside the quotes, which are ASCII.
                let inner = &text[span.start + 1..span.end - 1];
                Spanned::new(span, RawSource::read(inner))
            })
            .collect();
        if parsed.send(sources).is_err() {
            return;
        }
    }
}

/// The strings of the array being scanned, on their way to the parsing
/// thread, and which array each batch sent belongs to.
struct Parsing {
    batch: Vec<Range<usize>>,
    to_parser: Sender<Vec<Range<usize>>>,
    /// Batches sent for the array being scanned: full ones until it ends.
    sent: usize,
    /// Per array scanned, in order: the list it became (`None`: not taken)
    /// and how many batches it sent.
    arrays: Vec<(Option<usize>, usize)>,
}

impl Parsing {
    /// Queues the string token at `span`.
    fn push(&mut self, span: Range<usize>) {
        self.batch.push(span);
        if self.batch.len() == BATCH {
            self.send();
        }
    }

    /// Strings of the array being scanned.
    fn queued(&self) -> usize {
        self.sent * BATCH + self.batch.len()
    }

    fn send(&mut self) {
        if !self.batch.is_empty() {
            // The thread only stops once this sender is dropped.
            let _ = self.to_parser.send(std::mem::take(&mut self.batch));
            self.sent += 1;
        }
    }

    /// Ends the array being scanned: taken as list `list`, or not.
    fn end_array(&mut self, list: Option<usize>) {
        if list.is_some() {
            self.send();
        } else {
            self.batch.clear();
        }
        self.arrays.push((list, self.sent));
        self.sent = 0;
    }
}

impl TakenSources {
    /// Puts the taken arrays into the rules toml read from the blanked text.
    /// False if a blanked array is not where it was taken from, which would
    /// mean the scan misread the file: the caller then parses the original.
    pub fn restore(self, rules: &mut [RawRule]) -> bool {
        let found_all = self.lists.iter().all(|list| {
            rules
                .get(list.rule)
                .and_then(|rule| rule.sources.as_ref())
                .is_some_and(|sources| {
                    sources.span().start + 1 == list.inside.start && sources.get_ref().is_empty()
                })
        });
        if found_all {
            for list in self.lists {
                if let Some(sources) = rules[list.rule].sources.as_mut() {
                    *sources = Spanned::new(sources.span(), list.sources);
                }
            }
        }
        found_all
    }
}

struct Scan<'i> {
    text: &'i str,
    tokens: Lexer<'i>,
    lists: Vec<SourceList>,
    parsing: Parsing,
}

/// The table the keys being read belong to.
#[derive(Clone, Copy)]
enum Table {
    /// The `n`th `[[rules]]` table.
    Rule(usize),
    Other,
}

impl<'i> Scan<'i> {
    fn raw(&self, token: Token) -> &'i str {
        &self.text[token.span().start()..token.span().end()]
    }

    /// The next token; `None` at the end of the text.
    fn next(&mut self) -> Option<Token> {
        self.tokens
            .next()
            .filter(|token| token.kind() != TokenKind::Eof)
    }

    /// The next token that is not whitespace.
    fn next_solid(&mut self) -> Option<Token> {
        loop {
            let token = self.next()?;
            if token.kind() != TokenKind::Whitespace {
                return Some(token);
            }
        }
    }

    /// Walks the top level: headers, and the key/value lines under them.
    fn document(&mut self) {
        let mut table = Table::Other;
        let mut rules = 0;
        while let Some(token) = self.next_solid() {
            match token.kind() {
                TokenKind::Newline | TokenKind::Comment => {}
                TokenKind::LeftSquareBracket => {
                    let Some(is_rule) = self.header() else {
                        // A quoted or otherwise unusual header may name
                        // `rules` too; counting on would misnumber them.
                        return;
                    };
                    table = if is_rule {
                        rules += 1;
                        Table::Rule(rules - 1)
                    } else {
                        Table::Other
                    };
                }
                _ => self.key_value(token, table),
            }
        }
    }

    /// Reads a header after its first `[`: `Some(true)` for `[[rules]]`,
    /// `Some(false)` for other headers of bare keys, `None` for any other.
    fn header(&mut self) -> Option<bool> {
        let mut words = Vec::new();
        while let Some(token) = self.next_solid() {
            match token.kind() {
                TokenKind::Newline | TokenKind::Comment => break,
                TokenKind::Atom
                | TokenKind::Dot
                | TokenKind::LeftSquareBracket
                | TokenKind::RightSquareBracket => words.push(self.raw(token)),
                _ => return None,
            }
        }
        Some(words == ["[", "rules", "]", "]"])
    }

    /// Reads one `key = value`, starting at the key's first token.
    fn key_value(&mut self, first: Token, table: Table) {
        let bare_sources = first.kind() == TokenKind::Atom && self.raw(first) == "sources";
        let mut only_key = true;
        loop {
            let Some(token) = self.next_solid() else {
                return;
            };
            match token.kind() {
                TokenKind::Equals => break,
                TokenKind::Newline => return,
                _ => only_key = false,
            }
        }
        let Some(value) = self.next_solid() else {
            return;
        };
        match table {
            Table::Rule(rule)
                if bare_sources && only_key && value.kind() == TokenKind::LeftSquareBracket =>
            {
                self.sources(rule, value)
            }
            _ => self.skip_value(value, 0),
        }
    }

    /// Skips a value from `token`, inside `depth` brackets or braces, up to
    /// the end of its line.
    fn skip_value(&mut self, token: Token, mut depth: usize) {
        let mut token = Some(token);
        while let Some(current) = token {
            match current.kind() {
                TokenKind::Newline if depth == 0 => return,
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                    depth = depth.saturating_sub(1)
                }
                _ => {}
            }
            token = self.next();
        }
    }

    /// Takes the array opened by `open` if it is plain; otherwise skips it
    /// from the first token that is not.
    fn sources(&mut self, rule: usize, open: Token) {
        let list = self.plain_array(open).map(|inside| {
            self.lists.push(SourceList {
                rule,
                inside,
                sources: Vec::with_capacity(self.parsing.queued()),
            });
            self.lists.len() - 1
        });
        self.parsing.end_array(list);
    }

    /// Reads the array opened by `open`, sending its strings to be parsed:
    /// the range between its brackets if it is plain; otherwise `None`,
    /// having skipped it from the first token that is not.
    fn plain_array(&mut self, open: Token) -> Option<Range<usize>> {
        let mut expect_element = true;
        while let Some(token) = self.next() {
            let raw = self.raw(token);
            match token.kind() {
                TokenKind::Whitespace => {}
                TokenKind::Newline if matches!(raw.as_bytes(), b"\n" | b"\r\n") => {}
                TokenKind::Comment if is_plain(&raw[1..]) => {}
                TokenKind::Comma if !expect_element => expect_element = true,
                TokenKind::BasicString | TokenKind::LiteralString
                    if expect_element && is_plain_string(raw) =>
                {
                    self.parsing.push(token.span().start()..token.span().end());
                    expect_element = false;
                }
                TokenKind::RightSquareBracket => {
                    return Some(open.span().end()..token.span().start());
                }
                _ => {
                    self.skip_value(token, 1);
                    return None;
                }
            }
        }
        None
    }
}

/// Whether a string token means what it says: one line, closed by its own
/// quote, printable ASCII, no escapes.
fn is_plain_string(raw: &str) -> bool {
    let Some((&quote, rest)) = raw.as_bytes().split_first() else {
        return false;
    };
    rest.split_last().is_some_and(|(&last, inner)| {
        last == quote
            && inner
                .iter()
                .all(|&byte| (b' '..=b'~').contains(&byte) && byte != b'\\' && byte != quote)
    })
}

/// Printable ASCII and tabs: what a comment or string may hold in any TOML.
fn is_plain(text: &str) -> bool {
    text.bytes()
        .all(|byte| byte == b'\t' || (b' '..=b'~').contains(&byte))
}

/// `text` with the given ranges' bytes turned into spaces, newlines kept.
/// The ranges hold ASCII only, so the result is valid UTF-8 of the same length.
fn blank(text: &str, ranges: impl Iterator<Item = Range<usize>>) -> String {
    const SPACES: &str = "                                                                ";
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for range in ranges {
        out.push_str(&text[at..range.start]);
        for (index, line) in text[range.clone()].split('\n').enumerate() {
            if index > 0 {
                out.push('\n');
            }
            let mut left = line.len();
            while left > 0 {
                let run = left.min(SPACES.len());
                out.push_str(&SPACES[..run]);
                left -= run;
            }
        }
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::{
        super::{IpPrefix, PrefixError, RawConfig},
        *,
    };

    type Sources = Option<(
        Range<usize>,
        Vec<(Range<usize>, Result<IpPrefix, Box<PrefixError>>)>,
    )>;

    fn sources_of(raw: RawConfig) -> Vec<Sources> {
        raw.rules
            .into_iter()
            .map(|rule| {
                rule.sources.map(|sources| {
                    let span = sources.span();
                    let elements = sources
                        .into_inner()
                        .into_iter()
                        .map(|element| (element.span(), element.into_inner().0))
                        .collect();
                    (span, elements)
                })
            })
            .collect()
    }

    /// Reads `text` through [`super::super::read_raw`] and through toml
    /// alone, and checks both give the same sources or the same error;
    /// returns how many arrays were taken.
    fn same_both_ways(text: &str) -> usize {
        let taken = take(text).map_or(0, |taken| taken.lists.len());
        match (
            super::super::read_raw(text),
            toml::from_str::<RawConfig>(text),
        ) {
            (Ok(fast), Ok(toml)) => assert_eq!(sources_of(fast), sources_of(toml), "{text}"),
            (Err(fast), Err(toml)) => {
                assert_eq!(
                    (fast.message(), fast.span()),
                    (toml.message(), toml.span()),
                    "{text}"
                )
            }
            (fast, toml) => panic!(
                "{text}\nread apart: {:?}\ntoml alone: {:?}",
                fast.err(),
                toml.err()
            ),
        }
        taken
    }

    const HEAD: &str = "interfaces = [\"eth0\"]\n";

    #[test]
    fn plain_arrays_are_taken_and_read_as_toml_reads_them() {
        for (rules, arrays) in [
            (
                "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\", '2001:db8::/32']\n",
                1,
            ),
            // Over lines, with comments, a trailing comma, CRLF, tabs.
            (
                "[[rules]]\r\nname = \"a\"\r\nports = [\"443\"]\r\nsources = [ # vendors\r\n\t\"203.0.113.0/24\", # one\r\n  \"198.51.100.7\",\r\n]\r\n",
                1,
            ),
            (
                "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = []\n\n[[rules]]\nname = \"b\"\nports = [\"22\"]\nsources=[\"192.0.2.1\"] # office\n",
                2,
            ),
            // Bad prefixes are read, and reported, as before.
            (
                "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.5/24\", \"nonsense\", \"\"]\n",
                1,
            ),
            // Sources before the name, other tables between rules.
            (
                "[[rules]]\nsources = [\"192.0.2.0/24\"]\nname = \"a\"\nports = [\"443\"]\n[[feeds]]\nname = \"f\"\nurl = \"https://example.com/x]\"\nformat = \"lines\"\n[[rules]]\nname = \"b\"\nports = [\"443\"]\nsources = [\"192.0.2.9\"]\n",
                2,
            ),
        ] {
            assert_eq!(same_both_ways(&format!("{HEAD}{rules}")), arrays, "{rules}");
        }
    }

    #[test]
    fn arrays_of_many_batches_keep_their_order_and_an_array_left_to_toml_drops_its_batches() {
        let strings = |from: usize, count: usize| {
            (from..from + count)
                .map(|index| format!("\"2001:db8::{index:x}\""))
                .collect::<Vec<_>>()
                .join(",\n")
        };
        let rules = format!(
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [{}]\n\
             [[rules]]\nname = \"b\"\nports = [\"443\"]\nsources = [{}, \"192.0.2.\\u0031\"]\n\
             [[rules]]\nname = \"c\"\nports = [\"443\"]\nsources = [{}]\n",
            strings(0, BATCH + 3),
            strings(BATCH + 3, BATCH + 2),
            strings(3 * BATCH, 2 * BATCH + 1),
        );
        // `b`'s array holds an escape: left to toml after a batch was sent.
        assert_eq!(same_both_ways(&format!("{HEAD}{rules}")), 2);
    }

    #[test]
    fn other_forms_are_left_to_toml() {
        for rules in [
            // An escape, a nested array, a non-string, a missing comma.
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0\\u002f24\"]\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [[\"203.0.113.0/24\"]]\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\", 7]\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\" \"192.0.2.1\"]\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [,\"203.0.113.0/24\"]\n",
            // A comment toml refuses, a string with a control character.
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\" # \u{7}\n]\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\u{1}\"]\n",
            // Rules written inline, a quoted key or header, a dotted key.
            "rules = [{name = \"a\", ports = [\"443\"], sources = [\"203.0.113.0/24\"]}]\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\n\"sources\" = [\"203.0.113.0/24\"]\n",
            "[[\"rules\"]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\"]\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources.x = [\"203.0.113.0/24\"]\n",
            // No value on the line, an unclosed array.
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources =\n[\"203.0.113.0/24\"]\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"203.0.113.0/24\",\n",
        ] {
            assert_eq!(same_both_ways(&format!("{HEAD}{rules}")), 0, "{rules}");
        }
    }

    #[test]
    fn errors_around_taken_arrays_are_toml_errors_on_the_original() {
        for rules in [
            // Twice the same key; a key toml does not know; garbage after.
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\nsources = [\"192.0.2.2\"]\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\nsorces = 1\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"] x\n",
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\nsources = [\"192.0.2.1\"]\n[rules]\n",
            // A `sources` in a sub-table of a rule is another table's.
            "[[rules]]\nname = \"a\"\nports = [\"443\"]\n[rules.extra]\nsources = [\"192.0.2.1\"]\n",
        ] {
            same_both_ways(&format!("{HEAD}{rules}"));
        }
    }

    #[test]
    fn blanking_keeps_offsets_and_lines() {
        let text = "a = [\"x\", # é? no: ascii only\n \"y\"]\nb = 1\n";
        let blanked = blank(text, std::iter::once(5..35));
        assert_eq!(blanked.len(), text.len());
        assert_eq!(
            blanked,
            format!("a = [{}\n{}]\nb = 1\n", " ".repeat(25), " ".repeat(4))
        );
    }
}
