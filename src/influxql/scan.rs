//! InfluxQL's scanner, transcribed from influxql's `scanner.go` for what the read path needs:
//! where identifiers, strings, regexes and comments begin and end, so that a `;` or a keyword
//! is only seen where InfluxDB sees one. Whether a `/` starts a regex is the parser's
//! decision (`scan` gives a divide or a comment, `scan_regex` a regex); `classify` makes it
//! where InfluxDB's parser does. Reading as influxd does: `\r` is a newline, and bare
//! identifiers are ASCII. Unlike influxd, a NUL (which its reader takes for the end of the
//! query, silently dropping the rest) is an error.

/// One token. Identifier and keyword spellings are kept; other literals are not needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Ws,
    Comment,
    /// A bare word (keyword or identifier), or a double-quoted identifier (unescaped).
    Ident {
        text: String,
        quoted: bool,
    },
    /// `$name`: a bound parameter, replaced by a value of the request's `params`.
    BoundParam,
    /// A single-quoted string.
    Str,
    /// A number, integer or duration.
    Number,
    Regex,
    Dot,
    Comma,
    Semicolon,
    LParen,
    RParen,
    /// `=~` or `!~`: a regex follows.
    RegexOp,
    Div,
    /// Any other operator (`+ - * % & | ^ = != <> < <= > >= : ::`).
    Op,
    Eof,
}

/// Why a query could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("a string or quoted identifier is not closed on its line")]
    BadString,
    #[error("a string has an invalid escape")]
    BadEscape,
    #[error("a regex is not closed on its line")]
    BadRegex,
    #[error("a /* comment is not closed")]
    BadComment,
    #[error("an unexpected character")]
    Illegal,
    #[error("a NUL byte")]
    Nul,
}

/// A position in a query; cheap to copy, so a caller can look ahead and come back.
#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn is_letter(c: char) -> bool {
    c.is_ascii_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    /// The next character, `\r` read as `\n`.
    pub fn peek(&self) -> Option<char> {
        self.text[self.at..]
            .chars()
            .next()
            .map(|c| if c == '\r' { '\n' } else { c })
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.text[self.at..].chars().next()?;
        self.at += c.len_utf8();
        Some(if c == '\r' { '\n' } else { c })
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.bump();
        }
        found
    }

    /// Skips one run of whitespace, as the parser's `consumeWhitespace` does.
    pub fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(is_whitespace) {
            self.bump();
        }
    }

    /// The next token, with `/` as a divide or the start of a comment (`Scan`).
    pub fn scan(&mut self) -> Result<Token, ScanError> {
        let Some(c) = self.bump() else {
            return Ok(Token::Eof);
        };
        Ok(match c {
            '\0' => return Err(ScanError::Nul),
            c if is_whitespace(c) => {
                self.skip_whitespace();
                Token::Ws
            }
            c if is_letter(c) || c == '_' => {
                self.at -= 1;
                self.ident()?
            }
            '"' => {
                self.at -= 1;
                self.ident()?
            }
            c if c.is_ascii_digit() => {
                self.number();
                Token::Number
            }
            '\'' => {
                self.string('\'')?;
                Token::Str
            }
            '.' if self.peek().is_some_and(|c| c.is_ascii_digit()) => {
                self.number();
                Token::Number
            }
            '.' => Token::Dot,
            '$' => {
                // `scanIdent(false)`: a bare or quoted name, possibly empty.
                self.ident()?;
                Token::BoundParam
            }
            '-' if self.eat('-') => {
                while let Some(c) = self.bump() {
                    if c == '\n' {
                        break;
                    }
                    if c == '\0' {
                        return Err(ScanError::Nul);
                    }
                }
                Token::Comment
            }
            '/' if self.eat('*') => {
                self.block_comment()?;
                Token::Comment
            }
            '/' => Token::Div,
            '=' | '!' if self.eat('~') => Token::RegexOp,
            '!' if self.eat('=') => Token::Op,
            '!' => return Err(ScanError::Illegal),
            '+' | '-' | '*' | '%' | '&' | '|' | '^' | '=' => Token::Op,
            '<' => {
                let _ = self.eat('=') || self.eat('>');
                Token::Op
            }
            '>' => {
                self.eat('=');
                Token::Op
            }
            ':' => {
                self.eat(':');
                Token::Op
            }
            '(' => Token::LParen,
            ')' => Token::RParen,
            ',' => Token::Comma,
            ';' => Token::Semicolon,
            _ => return Err(ScanError::Illegal),
        })
    }

    /// The next significant token: whitespace and comments skipped (`ScanIgnoreWhitespace`).
    pub fn significant(&mut self) -> Result<Token, ScanError> {
        loop {
            match self.scan()? {
                Token::Ws | Token::Comment => {}
                token => return Ok(token),
            }
        }
    }

    /// A regex; the next character must be `/` (`ScanRegex`). `\/` escapes a slash; any
    /// other backslash stands for itself (and the character after it is read on its own).
    pub fn scan_regex(&mut self) -> Result<Token, ScanError> {
        debug_assert_eq!(self.peek(), Some('/'));
        self.bump();
        loop {
            match self.bump() {
                Some('/') => return Ok(Token::Regex),
                None | Some('\n') => return Err(ScanError::BadRegex),
                Some('\0') => return Err(ScanError::Nul),
                Some('\\') => match self.peek() {
                    None => return Err(ScanError::BadRegex),
                    Some('/') => {
                        self.bump();
                    }
                    Some(_) => {}
                },
                Some(_) => {}
            }
        }
    }

    /// A bare identifier (ASCII letters, digits, `_`), or a double-quoted one; a bare part
    /// directly followed by a quoted one is the quoted one, as in `scanIdent`.
    fn ident(&mut self) -> Result<Token, ScanError> {
        let start = self.at;
        loop {
            match self.peek() {
                Some('"') => {
                    let text = self.string('"')?;
                    return Ok(Token::Ident { text, quoted: true });
                }
                Some(c) if is_ident_char(c) => {
                    self.bump();
                }
                _ => break,
            }
        }
        Ok(Token::Ident {
            text: self.text[start..self.at].to_string(),
            quoted: false,
        })
    }

    /// A quoted string or identifier from its opening `quote` (`ScanString`): `\n`, `\\`,
    /// `\"` and `\'` are the only escapes, and a newline or the end ends it badly.
    fn string(&mut self, quote: char) -> Result<String, ScanError> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                Some(c) if c == quote => return Ok(out),
                None | Some('\n') => return Err(ScanError::BadString),
                Some('\0') => return Err(ScanError::Nul),
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some(c @ ('\\' | '"' | '\'')) => out.push(c),
                    Some('\0') => return Err(ScanError::Nul),
                    _ => return Err(ScanError::BadEscape),
                },
                Some(c) => out.push(c),
            }
        }
    }

    /// The rest of a `/* … */` comment.
    fn block_comment(&mut self) -> Result<(), ScanError> {
        let rest = &self.text[self.at..];
        if rest.contains('\0') && rest.find('\0') < rest.find("*/") {
            return Err(ScanError::Nul);
        }
        match rest.find("*/") {
            Some(end) => {
                self.at += end + 2;
                Ok(())
            }
            None => Err(ScanError::BadComment),
        }
    }

    /// A number from its first digit or `.` (`scanNumber`): digits, then `.` and digits
    /// (a `.` not followed by a digit is swallowed), or letters and digits for a duration.
    fn number(&mut self) {
        self.at -= 1;
        let digits = |s: &mut Self| {
            while s.peek().is_some_and(|c| c.is_ascii_digit()) {
                s.bump();
            }
        };
        if self.peek() != Some('.') {
            digits(self);
        }
        if self.eat('.') {
            digits(self);
            return;
        }
        let unit = |c: char| is_letter(c) || c == 'µ';
        if self.peek().is_some_and(unit) {
            while self.peek().is_some_and(unit) {
                self.bump();
            }
            while self.peek().is_some_and(|c| unit(c) || c.is_ascii_digit()) {
                self.bump();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Result<Vec<Token>, ScanError> {
        let mut s = Scanner::new(text);
        let mut out = vec![];
        loop {
            match s.significant()? {
                Token::Eof => return Ok(out),
                t => out.push(t),
            }
        }
    }

    fn word(text: &str) -> Token {
        Token::Ident {
            text: text.into(),
            quoted: false,
        }
    }

    fn quoted(text: &str) -> Token {
        Token::Ident {
            text: text.into(),
            quoted: true,
        }
    }

    #[test]
    fn quoting_hides_separators_and_keywords() {
        use Token::*;
        assert_eq!(
            tokens(r#"SELECT "a;b" FROM m WHERE t = 'x; DROP' -- c; d"#).unwrap(),
            vec![
                word("SELECT"),
                quoted("a;b"),
                word("FROM"),
                word("m"),
                word("WHERE"),
                word("t"),
                Op,
                Str
            ]
        );
        assert_eq!(
            tokens("a /* ; */ ;\r b").unwrap(),
            vec![word("a"), Semicolon, word("b")]
        );
        assert_eq!(tokens(r#""a\"b""#).unwrap(), vec![quoted("a\"b")]);
        assert_eq!(tokens(r#"x"y""#).unwrap(), vec![quoted("y")]);
        assert_eq!(
            tokens("$p $\"q\" 10s 1.5 .5 1µs").unwrap(),
            vec![BoundParam, BoundParam, Number, Number, Number, Number]
        );
        assert_eq!(
            tokens("a=~b!~c!=d<>e::f").unwrap(),
            vec![
                word("a"),
                RegexOp,
                word("b"),
                RegexOp,
                word("c"),
                Op,
                word("d"),
                Op,
                word("e"),
                Op,
                word("f")
            ]
        );
    }

    #[test]
    fn unclosed_or_odd_input_is_an_error() {
        assert_eq!(tokens("'abc"), Err(ScanError::BadString));
        assert_eq!(tokens("'a\nb'"), Err(ScanError::BadString));
        assert_eq!(tokens("'a\rb'"), Err(ScanError::BadString));
        assert_eq!(tokens(r"'a\qb'"), Err(ScanError::BadEscape));
        assert_eq!(tokens("\"abc"), Err(ScanError::BadString));
        assert_eq!(tokens("/* abc"), Err(ScanError::BadComment));
        assert_eq!(tokens("a ! b"), Err(ScanError::Illegal));
        assert_eq!(tokens("é"), Err(ScanError::Illegal));
        assert_eq!(tokens("a\0; DROP"), Err(ScanError::Nul));
        assert_eq!(tokens("-- x\0y"), Err(ScanError::Nul));
    }

    #[test]
    fn regexes_end_at_the_first_unescaped_slash() {
        let mut s = Scanner::new(r"/a\/b;c/ x");
        assert_eq!(s.scan_regex(), Ok(Token::Regex));
        assert_eq!(s.significant(), Ok(word("x")));
        // `\\` is not an escape: the second backslash escapes the slash.
        let mut s = Scanner::new(r"/a\\/b/ x");
        assert_eq!(s.scan_regex(), Ok(Token::Regex));
        assert_eq!(s.significant(), Ok(word("x")));
        assert_eq!(
            Scanner::new("/a\nb/").scan_regex(),
            Err(ScanError::BadRegex)
        );
        assert_eq!(Scanner::new("/ab").scan_regex(), Err(ScanError::BadRegex));
    }
}
