//! Tokens of the DDL dialects: words (bare or "quoted"), strings ('..', `..`),
//! numbers and punctuation, each with its byte span in the input so errors can
//! point at it and expressions can be cut out of the text verbatim.

use super::ast::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A bare word (kept as written; compare case-insensitively) or a "quoted" identifier.
    Word {
        text: String,
        quoted: bool,
    },
    /// A string literal ('..' with '' escapes, or RisingWave's `..`).
    Str(String),
    Number(String),
    /// Punctuation and operators: ( ) [ ] , ; = . * => :: and any other symbol run.
    Punct(String),
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// How the token is shown in "at or near" messages.
    pub fn shown(&self, src: &str) -> String {
        src[self.start..self.end].to_string()
    }
}

/// Split `src` into tokens; comments and whitespace are skipped.
pub fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let start = i;
            i += 2;
            let mut depth = 1;
            while depth > 0 {
                if i + 1 >= b.len() {
                    return Err(ParseError::at(src, start, "unterminated /* comment", &["*/"]));
                }
                if b[i] == b'*' && b[i + 1] == b'/' {
                    depth -= 1;
                    i += 2;
                } else if b[i] == b'/' && b[i + 1] == b'*' {
                    depth += 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            continue;
        }
        let start = i;
        let tok = match c {
            b'\'' | b'`' | b'"' => {
                let (text, next) = quoted(src, i, c)?;
                i = next;
                if c == b'"' {
                    if text.is_empty() {
                        return Err(ParseError::at(src, start, "zero-length delimited identifier", &["an identifier"]));
                    }
                    Tok::Word { text, quoted: true }
                } else {
                    Tok::Str(text)
                }
            }
            b'0'..=b'9' => {
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
                    i += 1;
                }
                Tok::Number(src[start..i].to_string())
            }
            _ if c == b'_' || c.is_ascii_alphabetic() || c >= 0x80 => {
                while i < b.len() && (b[i] == b'_' || b[i] == b'$' || b[i].is_ascii_alphanumeric() || b[i] >= 0x80) {
                    i += 1;
                }
                Tok::Word { text: src[start..i].to_string(), quoted: false }
            }
            b'(' | b')' | b'[' | b']' | b',' | b';' | b'.' => {
                i += 1;
                Tok::Punct(src[start..i].to_string())
            }
            _ => {
                // Operator runs; `=>` and `::` are the ones the grammar knows.
                if src[i..].starts_with("=>") || src[i..].starts_with("::") {
                    i += 2;
                } else if c == b'=' || c == b'*' {
                    i += 1;
                } else {
                    while i < b.len() && b"+-*/<>=~!@#%^&|?:".contains(&b[i]) {
                        i += 1;
                        if src[i..].starts_with("--") || src[i..].starts_with("/*") {
                            break;
                        }
                    }
                    if i == start {
                        // Anything else is a one-character token of its own.
                        i += src[i..].chars().next().map_or(1, char::len_utf8);
                    }
                }
                Tok::Punct(src[start..i].to_string())
            }
        };
        out.push(Token { tok, start, end: i });
    }
    Ok(out)
}

/// A quoted run starting at `start` (delimiter `q`, doubled to escape).
fn quoted(src: &str, start: usize, q: u8) -> Result<(String, usize), ParseError> {
    let b = src.as_bytes();
    let mut i = start + 1;
    let mut text = String::new();
    let mut seg = i;
    loop {
        if i >= b.len() {
            let what = match q {
                b'"' => "unterminated quoted identifier",
                _ => "unterminated quoted string",
            };
            return Err(ParseError::at(src, start, what, &[&(q as char).to_string()]));
        }
        if b[i] == q {
            text.push_str(&src[seg..i]);
            if b.get(i + 1) == Some(&q) {
                text.push(q as char);
                i += 2;
                seg = i;
                continue;
            }
            return Ok((text, i + 1));
        }
        i += 1;
    }
}

/// Materialize's `PARTITION BY` helpers are ours in schema `sink`: qualify
/// unqualified calls of `seahash`, `kafka_murmur2` and `crc32`.
pub fn qualify_hash_functions(expr: &str) -> String {
    let Ok(tokens) = tokenize(expr) else {
        return expr.to_string();
    };
    let mut out = String::new();
    let mut last = 0;
    for (i, t) in tokens.iter().enumerate() {
        let Tok::Word { text, quoted: false } = &t.tok else {
            continue;
        };
        let is_call = tokens.get(i + 1).is_some_and(|n| n.tok == Tok::Punct("(".into()));
        let qualified = i > 0 && tokens[i - 1].tok == Tok::Punct(".".into());
        if is_call && !qualified && ["seahash", "kafka_murmur2", "crc32"].contains(&text.to_ascii_lowercase().as_str()) {
            out.push_str(&expr[last..t.start]);
            out.push_str("sink.");
            out.push_str(&text.to_ascii_lowercase());
            last = t.end;
        }
    }
    out.push_str(&expr[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn words_strings_numbers_and_punctuation() {
        let w = |t: &str| Tok::Word { text: t.into(), quoted: false };
        let p = |t: &str| Tok::Punct(t.into());
        assert_eq!(
            toks("CREATE \"My \"\"x\"\"\" 'it''s' 4 1.5 MAP['a' => 'b'] x::text -- c\n/* d /* e */ */;"),
            vec![
                w("CREATE"),
                Tok::Word { text: "My \"x\"".into(), quoted: true },
                Tok::Str("it's".into()),
                Tok::Number("4".into()),
                Tok::Number("1.5".into()),
                w("MAP"),
                p("["),
                Tok::Str("a".into()),
                p("=>"),
                Tok::Str("b".into()),
                p("]"),
                w("x"),
                p("::"),
                w("text"),
                p(";"),
            ]
        );
        assert_eq!(toks("a.b = `jwt`"), vec![w("a"), p("."), w("b"), p("="), Tok::Str("jwt".into())]);
        assert_eq!(toks("name || address"), vec![w("name"), p("||"), w("address")]);
    }

    #[test]
    fn unterminated_things_point_at_their_start() {
        let e = tokenize("CREATE SECRET s AS 'abc").unwrap_err();
        assert_eq!((e.position, e.message.as_str()), (20, "unterminated quoted string"));
        let e = tokenize("x \"abc").unwrap_err();
        assert_eq!(e.position, 3);
        assert!(tokenize("/* open").is_err());
        assert!(tokenize("\"\"").is_err());
    }
}
