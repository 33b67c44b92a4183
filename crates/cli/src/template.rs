//! kcat-style output formats for `consume --format`: `%k` key, `%v` value, `%p` partition,
//! `%o` offset, `%t` topic, `%T` timestamp (ms), `%h` headers (`k=v,...`), `%K`/`%S` key and
//! value lengths (-1 when null), `%%`; escapes `\n`, `\r`, `\t`, `\0`, `\\`.

/// One record as the template sees it.
pub struct FormatRecord<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition index.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp in ms.
    pub timestamp: i64,
    /// Key, `None` when null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` when null.
    pub value: Option<&'a [u8]>,
    /// Headers in order.
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Vec<u8>),
    Key,
    Value,
    Partition,
    Offset,
    Topic,
    Timestamp,
    Headers,
    KeyLen,
    ValueLen,
}

/// A parsed `--format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    tokens: Vec<Token>,
}

impl Template {
    /// Parses a format string; unknown `%x` or `\x` sequences are refused, not printed raw, so
    /// a typo shows up at once.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut tokens = Vec::new();
        let mut lit = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let t = match chars.next() {
                        Some('k') => Token::Key,
                        Some('v') => Token::Value,
                        Some('p') => Token::Partition,
                        Some('o') => Token::Offset,
                        Some('t') => Token::Topic,
                        Some('T') => Token::Timestamp,
                        Some('h') => Token::Headers,
                        Some('K') => Token::KeyLen,
                        Some('S') => Token::ValueLen,
                        Some('%') => {
                            lit.push(b'%');
                            continue;
                        }
                        other => {
                            return Err(format!(
                                "unknown format token '%{}'; use %k %v %p %o %t %T %h %K %S or %%",
                                other.map(String::from).unwrap_or_default()
                            ));
                        }
                    };
                    if !lit.is_empty() {
                        tokens.push(Token::Literal(std::mem::take(&mut lit)));
                    }
                    tokens.push(t);
                }
                '\\' => match chars.next() {
                    Some('n') => lit.push(b'\n'),
                    Some('r') => lit.push(b'\r'),
                    Some('t') => lit.push(b'\t'),
                    Some('0') => lit.push(0),
                    Some('\\') => lit.push(b'\\'),
                    other => {
                        return Err(format!(
                            "unknown escape '\\{}'; use \\n \\r \\t \\0 or \\\\",
                            other.map(String::from).unwrap_or_default()
                        ));
                    }
                },
                c => {
                    let mut buf = [0u8; 4];
                    lit.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        Ok(Template { tokens })
    }

    /// Appends the formatted record to `out`. Null keys and values print as nothing.
    pub fn render(&self, r: &FormatRecord<'_>, out: &mut Vec<u8>) {
        let len = |b: Option<&[u8]>| b.map_or(-1, |b| b.len() as i64);
        for t in &self.tokens {
            match t {
                Token::Literal(l) => out.extend_from_slice(l),
                Token::Key => out.extend_from_slice(r.key.unwrap_or_default()),
                Token::Value => out.extend_from_slice(r.value.unwrap_or_default()),
                Token::Partition => out.extend_from_slice(r.partition.to_string().as_bytes()),
                Token::Offset => out.extend_from_slice(r.offset.to_string().as_bytes()),
                Token::Topic => out.extend_from_slice(r.topic.as_bytes()),
                Token::Timestamp => out.extend_from_slice(r.timestamp.to_string().as_bytes()),
                Token::KeyLen => out.extend_from_slice(len(r.key).to_string().as_bytes()),
                Token::ValueLen => out.extend_from_slice(len(r.value).to_string().as_bytes()),
                Token::Headers => {
                    for (i, (k, v)) in r.headers.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(k);
                        out.push(b'=');
                        out.extend_from_slice(v.unwrap_or_default());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_token() {
        let t = Template::parse(r"%t/%p@%o %T [%k]=%v (%K,%S) {%h} 100%%\n").expect("parses");
        let headers = [(&b"a"[..], Some(&b"1"[..])), (&b"b"[..], None)];
        let r = FormatRecord {
            topic: "orders",
            partition: 2,
            offset: 41,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(b"hello"),
            headers: &headers,
        };
        let mut out = Vec::new();
        t.render(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "orders/2@41 1700000000000 []=hello (-1,5) {a=1,b=} 100%\n"
        );
    }

    #[test]
    fn typos_are_refused() {
        assert!(Template::parse("%x").is_err());
        assert!(Template::parse("%").is_err());
        assert!(Template::parse(r"\q").is_err());
    }
}
