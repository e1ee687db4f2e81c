//! `sources` arrays of `[[rules]]` tables, read straight from the text.
//!
//! A config listing 250k + 250k prefixes is 10 MB, nearly all of it in
//! `sources`. The toml crate lexes a whole file into a token vector, builds a
//! document tree of it and deserializes the tree: for half a million strings
//! that was about 0.1 s and 70 MB at the peak of every start and reload. Here
//! those arrays are found with the lexer toml itself uses, their strings are
//! parsed as prefixes as they are met, and the arrays are blanked in a copy of
//! the text that toml then reads for everything else. Blanking keeps every
//! byte offset, so spans, lines and errors stay where they were.
//!
//! Only the plainest form is taken: the value of a bare `sources` key in a
//! `[[rules]]` table, an array of one-line printable ASCII strings without
//! escapes, with whitespace, newlines and comments between them. Anything
//! else stays in the text and toml reads it as it always did. Because such an
//! array is well formed on its own and `[ ]` is valid wherever it was, the
//! blanked text is valid exactly when the original is; an error is reported
//! from the original all the same, and so is any config whose arrays are not
//! found where the lexer placed them.

use std::ops::Range;

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
    /// Offset of the array's `[`: where toml must find the blanked array.
    start: usize,
    /// Between the brackets: what is blanked.
    inside: Range<usize>,
    sources: Vec<Spanned<RawSource>>,
}

/// Takes the plain `sources` arrays out of `text`, or `None` if it has none.
pub(super) fn take(text: &str) -> Option<TakenSources> {
    let mut scan = Scan {
        text,
        tokens: Source::new(text).lex(),
        lists: Vec::new(),
    };
    scan.document();
    if scan.lists.is_empty() {
        return None;
    }
    let blanked = blank(text, scan.lists.iter().map(|list| list.inside.clone()));
    Some(TakenSources {
        blanked,
        lists: scan.lists,
    })
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
                    sources.span().start == list.start && sources.get_ref().is_empty()
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
                if bare_sources
                    && only_key
                    && value.kind() == TokenKind::LeftSquareBracket =>
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
        let mut sources = Vec::new();
        let mut expect_element = true;
        while let Some(token) = self.next() {
            let raw = self.raw(token);
            match token.kind() {
                TokenKind::Whitespace => {}
                TokenKind::Newline if matches!(raw.as_bytes(), b"\n" | b"\r\n") => {}
                TokenKind::Comment if is_plain(&raw[1..]) => {}
                TokenKind::Comma if !expect_element => expect_element = true,
                TokenKind::BasicString | TokenKind::LiteralString if expect_element => {
                    let Some(inner) = plain_string(raw) else {
                        return self.skip_value(token, 1);
                    };
                    let span = token.span().start()..token.span().end();
                    sources.push(Spanned::new(span, RawSource::read(inner)));
                    expect_element = false;
                }
                TokenKind::RightSquareBracket => {
                    let start = open.span().start();
                    self.lists.push(SourceList {
                        rule,
                        start,
                        inside: start + 1..token.span().start(),
                        sources,
                    });
                    return;
                }
                _ => return self.skip_value(token, 1),
            }
        }
    }
}

/// The inside of a one-line string token that means what it says: closed by
/// its own quote, printable ASCII, no escapes.
fn plain_string(raw: &str) -> Option<&str> {
    let (&quote, rest) = raw.as_bytes().split_first()?;
    let (&last, inner) = rest.split_last()?;
    let plain = last == quote
        && inner
            .iter()
            .all(|&byte| (b' '..=b'~').contains(&byte) && byte != b'\\' && byte != quote);
    // The quotes are ASCII, so `1..len - 1` falls on character boundaries.
    plain.then(|| &raw[1..raw.len() - 1])
}

/// Printable ASCII and tabs: what a comment or string may hold in any TOML.
fn is_plain(text: &str) -> bool {
    text.bytes().all(|byte| byte == b'\t' || (b' '..=b'~').contains(&byte))
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
