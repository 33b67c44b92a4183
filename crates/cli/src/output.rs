//! What commands print: a tiny JSON value with correct string escaping, aligned tables, and
//! progress lines that appear only on a terminal.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::error::{ClientError, Result};

/// A JSON value, built by commands and rendered compactly on one line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Arr(Vec<Json>),
    /// Keys keep the order they were given in.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An object from `(key, value)` pairs.
    pub(crate) fn obj<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Obj(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// An array of anything convertible.
    pub(crate) fn arr<T: Into<Json>>(items: impl IntoIterator<Item = T>) -> Json {
        Json::Arr(items.into_iter().map(Into::into).collect())
    }

    /// Bytes as a string; invalid UTF-8 is replaced (U+FFFD), as JSON has no byte strings.
    pub(crate) fn bytes(b: Option<&[u8]>) -> Json {
        match b {
            None => Json::Null,
            Some(b) => Json::Str(String::from_utf8_lossy(b).into_owned()),
        }
    }

    /// The compact rendering.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Str(s) => write_str(out, s),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Obj(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            // Other control characters are not allowed raw inside a JSON string; U+2028/2029 are
            // legal JSON but break JavaScript consumers, so escape them too.
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::Str(s.to_string())
    }
}
impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::Str(s)
    }
}
impl From<&String> for Json {
    fn from(s: &String) -> Json {
        Json::Str(s.clone())
    }
}
impl From<i64> for Json {
    fn from(i: i64) -> Json {
        Json::Int(i)
    }
}
impl From<i32> for Json {
    fn from(i: i32) -> Json {
        Json::Int(i.into())
    }
}
impl From<i16> for Json {
    fn from(i: i16) -> Json {
        Json::Int(i.into())
    }
}
impl From<u64> for Json {
    fn from(i: u64) -> Json {
        Json::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<usize> for Json {
    fn from(i: usize) -> Json {
        Json::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(o: Option<T>) -> Json {
        o.map_or(Json::Null, Into::into)
    }
}

/// An aligned text table: a header row and left-aligned columns two spaces apart.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines of text, each ending in a newline.
    pub(crate) fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let empty = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).unwrap_or(&empty);
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `-` for a missing value in a table cell.
pub(crate) fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Where a command prints: stdout, in human or JSON form.
pub(crate) struct Out {
    /// `--json` was given.
    pub(crate) json: bool,
    stdout: std::io::StdoutLock<'static>,
}

impl Out {
    /// Output to this process's stdout.
    pub(crate) fn stdout(json: bool) -> Out {
        Out {
            json,
            stdout: std::io::stdout().lock(),
        }
    }

    /// Writes raw bytes (record payloads are not necessarily text).
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stdout
            .write_all(bytes)
            .map_err(|source| ClientError::Io {
                what: "cannot write to stdout",
                source,
            })
    }

    /// Writes one JSON document and a newline.
    pub(crate) fn json(&mut self, doc: &Json) -> Result<()> {
        let mut s = doc.render();
        s.push('\n');
        self.write(s.as_bytes())
    }

    /// Writes text as it is.
    pub(crate) fn text(&mut self, s: &str) -> Result<()> {
        self.write(s.as_bytes())
    }

    /// Flushes stdout.
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.stdout.flush().map_err(|source| ClientError::Io {
            what: "cannot write to stdout",
            source,
        })
    }
}

/// A running count on stderr, shown only when stderr is a terminal so pipes and logs stay clean.
pub(crate) struct Progress {
    label: &'static str,
    enabled: bool,
    last: Option<Instant>,
    shown: bool,
}

impl Progress {
    /// A progress line for `label` (e.g. "consumed"), enabled if stderr is a terminal.
    pub(crate) fn new(label: &'static str) -> Progress {
        Progress {
            label,
            enabled: std::io::stderr().is_terminal(),
            last: None,
            shown: false,
        }
    }

    /// Shows `count` records, at most five times a second.
    pub(crate) fn update(&mut self, count: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        self.shown = true;
        eprint!("\r{} {count} records", self.label);
    }

    /// Erases the progress line.
    pub(crate) fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            self.shown = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let j = Json::obj([
            ("a\"b", Json::from("line\nnext\t\\ \u{1} \u{2028} é")),
            ("n", Json::Null),
            ("x", Json::arr([1i64, -2])),
            ("t", Json::from(true)),
        ]);
        assert_eq!(
            j.render(),
            r#"{"a\"b":"line\nnext\t\\ \u0001 \u2028 é","n":null,"x":[1,-2],"t":true}"#
        );
        assert_eq!(Json::bytes(Some(b"\xffok")).render(), "\"\u{fffd}ok\"");
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut t = Table::new(&["NAME", "PARTITIONS"]);
        t.row(vec!["orders".into(), "3".into()]);
        t.row(vec!["a".into(), "12".into()]);
        assert_eq!(t.render(), "NAME    PARTITIONS\norders  3\na       12\n");
    }
}
