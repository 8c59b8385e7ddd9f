//! Splits a query into statements and classifies each one. The statement's kind comes from
//! its leading keywords (`KINDS`); what it reads comes from a walk over its tokens that makes
//! InfluxDB's parser's one context-dependent choice the way the parser makes it: a `/` is a
//! regex only where the parser looks for one (a field, a dimension, a call's argument, after
//! `=~`/`!~`, a `FROM` source), and a divide or a comment everywhere else. So a `;`, a
//! keyword or a database name is seen exactly where influxd sees one. Whatever this cannot
//! read, influxd could not either, or reads differently: such a query is refused, never
//! guessed at.

use super::scan::{ScanError, Scanner, Token};

/// What a statement does, as far as authorization cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Reads the databases in `Statement::reads`.
    Read,
    /// `SHOW DATABASES`: its answer is filtered to the readable databases.
    ShowDatabases,
    /// `CREATE DATABASE <name>`.
    CreateDatabase(String),
    /// Changes schema, data, users or the server, or shows what only an admin may see.
    Admin,
}

/// A measurement source of a statement: `db` is empty when the statement's default
/// database applies and none was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub db: String,
    pub rp: Option<String>,
}

/// One classified statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// From `KINDS` (`"SELECT"`, `"SHOW TAG VALUES"`, `"SELECT INTO"`, …).
    pub kind: &'static str,
    pub class: Class,
    /// What it reads (for `Read`, and the sources of `SELECT INTO`), databases resolved.
    pub reads: Vec<Source>,
    /// Every database the statement names or reads, for routing.
    pub databases: Vec<String>,
    /// It relies on the request's `db` parameter.
    pub uses_default: bool,
}

/// Why a query was not classified; `statement` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("statement {statement}: {error}")]
    Scan { statement: usize, error: ScanError },
    #[error("statement {statement} is not one the proxy knows")]
    Unknown { statement: usize },
    #[error("statement {statement} names a database or measurement with a bound parameter")]
    BoundName { statement: usize },
}

/// Leading keywords → kind and class (`Read`, `Admin`; the two special ones are matched in
/// `class_of`). The longest match wins.
const KINDS: &[(&[&str], &str, Kind)] = &[
    (&["SELECT"], "SELECT", Kind::Read),
    (&["EXPLAIN"], "EXPLAIN", Kind::Read),
    (
        &["SHOW", "DATABASES"],
        "SHOW DATABASES",
        Kind::ShowDatabases,
    ),
    (&["SHOW", "MEASUREMENTS"], "SHOW MEASUREMENTS", Kind::Read),
    (
        &["SHOW", "MEASUREMENT"],
        "SHOW MEASUREMENT CARDINALITY",
        Kind::Read,
    ),
    (&["SHOW", "SERIES"], "SHOW SERIES", Kind::Read),
    (&["SHOW", "TAG", "KEYS"], "SHOW TAG KEYS", Kind::Read),
    (
        &["SHOW", "TAG", "KEY"],
        "SHOW TAG KEY CARDINALITY",
        Kind::Read,
    ),
    (&["SHOW", "TAG", "VALUES"], "SHOW TAG VALUES", Kind::Read),
    (&["SHOW", "FIELD", "KEYS"], "SHOW FIELD KEYS", Kind::Read),
    (
        &["SHOW", "FIELD", "KEY"],
        "SHOW FIELD KEY CARDINALITY",
        Kind::Read,
    ),
    (
        &["SHOW", "RETENTION", "POLICIES"],
        "SHOW RETENTION POLICIES",
        Kind::Read,
    ),
    // InfluxDB itself needs admin for these; the others list what other databases and
    // users do (queries, continuous queries), which a read grant on one does not cover.
    (&["SHOW", "USERS"], "SHOW USERS", Kind::Admin),
    (&["SHOW", "GRANTS"], "SHOW GRANTS", Kind::Admin),
    (&["SHOW", "QUERIES"], "SHOW QUERIES", Kind::Admin),
    (&["SHOW", "STATS"], "SHOW STATS", Kind::Admin),
    (&["SHOW", "DIAGNOSTICS"], "SHOW DIAGNOSTICS", Kind::Admin),
    (&["SHOW", "SHARDS"], "SHOW SHARDS", Kind::Admin),
    (
        &["SHOW", "SHARD", "GROUPS"],
        "SHOW SHARD GROUPS",
        Kind::Admin,
    ),
    (
        &["SHOW", "SUBSCRIPTIONS"],
        "SHOW SUBSCRIPTIONS",
        Kind::Admin,
    ),
    (
        &["SHOW", "CONTINUOUS", "QUERIES"],
        "SHOW CONTINUOUS QUERIES",
        Kind::Admin,
    ),
    (
        &["CREATE", "DATABASE"],
        "CREATE DATABASE",
        Kind::CreateDatabase,
    ),
    (
        &["CREATE", "RETENTION", "POLICY"],
        "CREATE RETENTION POLICY",
        Kind::Admin,
    ),
    (&["CREATE", "USER"], "CREATE USER", Kind::Admin),
    (
        &["CREATE", "CONTINUOUS", "QUERY"],
        "CREATE CONTINUOUS QUERY",
        Kind::Admin,
    ),
    (
        &["CREATE", "SUBSCRIPTION"],
        "CREATE SUBSCRIPTION",
        Kind::Admin,
    ),
    (&["DROP", "DATABASE"], "DROP DATABASE", Kind::Admin),
    (&["DROP", "SERIES"], "DROP SERIES", Kind::Admin),
    (&["DROP", "MEASUREMENT"], "DROP MEASUREMENT", Kind::Admin),
    (
        &["DROP", "RETENTION", "POLICY"],
        "DROP RETENTION POLICY",
        Kind::Admin,
    ),
    (&["DROP", "USER"], "DROP USER", Kind::Admin),
    (
        &["DROP", "CONTINUOUS", "QUERY"],
        "DROP CONTINUOUS QUERY",
        Kind::Admin,
    ),
    (&["DROP", "SHARD"], "DROP SHARD", Kind::Admin),
    (&["DROP", "SUBSCRIPTION"], "DROP SUBSCRIPTION", Kind::Admin),
    (&["DELETE"], "DELETE", Kind::Admin),
    (
        &["ALTER", "RETENTION", "POLICY"],
        "ALTER RETENTION POLICY",
        Kind::Admin,
    ),
    (&["GRANT"], "GRANT", Kind::Admin),
    (&["REVOKE"], "REVOKE", Kind::Admin),
    (&["SET", "PASSWORD"], "SET PASSWORD", Kind::Admin),
    (&["KILL", "QUERY"], "KILL QUERY", Kind::Admin),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    ShowDatabases,
    CreateDatabase,
    Admin,
}

/// Keywords after which a directly following `(` is not a function call's (a grouped
/// expression, a subquery, an `IN` list). After any other word it is a call, whose
/// arguments may be regexes: for a word that is a keyword in some InfluxDB version, that
/// `(` is a parse error there, so reading it as a call is safe either way.
const NOT_CALLS: &[&str] = &["SELECT", "FROM", "WHERE", "AND", "OR", "IN", "BY"];

/// Classifies every statement of `query`; `default_db` is the request's `db` parameter.
pub fn classify(query: &str, default_db: &str) -> Result<Vec<Statement>, ClassifyError> {
    let mut scanner = Scanner::new(query);
    let mut statements = vec![];
    loop {
        let number = statements.len() + 1;
        let scan = |error| ClassifyError::Scan {
            statement: number,
            error,
        };
        let start = scanner.clone();
        match scanner.significant().map_err(scan)? {
            Token::Eof => return Ok(statements),
            Token::Semicolon => continue,
            _ => scanner = start,
        }
        let (kind, class) =
            kind_of(&scanner).ok_or(ClassifyError::Unknown { statement: number })?;
        let mut walk = Walk {
            s: scanner,
            takes_sources: kind != "REVOKE",
            on_names_database: kind != "KILL QUERY",
            found: Found::default(),
        };
        walk.block(false).map_err(|why| match why {
            Why::Scan(error) => scan(error),
            Why::BoundName => ClassifyError::BoundName { statement: number },
        })?;
        scanner = walk.s;
        statements.push(statement(kind, class, walk.found, default_db));
    }
}

/// The kind of the statement starting at `s`: its leading bare words against `KINDS`.
fn kind_of(s: &Scanner<'_>) -> Option<(&'static str, Kind)> {
    let mut s = s.clone();
    let mut words: Vec<String> = vec![];
    while words.len() < 3 {
        match s.significant() {
            Ok(Token::Ident {
                text,
                quoted: false,
            }) => words.push(text.to_ascii_uppercase()),
            _ => break,
        }
    }
    KINDS
        .iter()
        .filter(|(lead, _, _)| {
            words.len() >= lead.len() && lead.iter().zip(&words).all(|(a, b)| a == b)
        })
        .max_by_key(|(lead, _, _)| lead.len())
        .map(|&(_, kind, class)| (kind, class))
}

fn statement(kind: &'static str, class: Kind, found: Found, default_db: &str) -> Statement {
    // The statement's own default: `ON db` (SHOW statements), else the `db` parameter.
    let own_default = found.on.first().cloned();
    let fallback = own_default.as_deref().unwrap_or(default_db).to_string();
    let mut uses_default = false;
    let mut resolve = |db: &str| {
        if !db.is_empty() {
            return db.to_string();
        }
        uses_default |= own_default.is_none();
        fallback.clone()
    };
    let mut sources: Vec<Source> = found
        .sources
        .iter()
        .map(|s| Source {
            db: resolve(&s.db),
            rp: s.rp.clone(),
        })
        .collect();
    if kind.starts_with("SHOW ") && class == Kind::Read && sources.is_empty() {
        sources.push(Source {
            db: resolve(""),
            rp: None,
        });
    }
    let into = found.into.as_ref().map(|t| resolve(&t.db));
    if kind == "DROP MEASUREMENT" {
        resolve("");
    }
    sources.retain(|s| !s.db.is_empty());
    let select = matches!(kind, "SELECT" | "EXPLAIN");
    let (kind, class) = match class {
        Kind::Read if select && found.saw_into => ("SELECT INTO", Class::Admin),
        Kind::Read => (kind, Class::Read),
        Kind::ShowDatabases => (kind, Class::ShowDatabases),
        Kind::CreateDatabase => (
            kind,
            Class::CreateDatabase(found.database_name.clone().unwrap_or_default()),
        ),
        Kind::Admin => (kind, Class::Admin),
    };
    let mut databases: Vec<String> = sources.iter().map(|s| s.db.clone()).collect();
    databases.extend(found.on.iter().cloned());
    databases.extend(into);
    databases.extend(found.database_name.clone());
    databases.retain(|d| !d.is_empty());
    databases.sort();
    databases.dedup();
    // What it reads: a read's sources, and those of a `SELECT INTO` (an admin statement that
    // copies what it reads).
    let reads = match (&class, kind) {
        (Class::Read, _) | (_, "SELECT INTO") => sources,
        _ => vec![],
    };
    Statement {
        kind,
        class,
        reads,
        databases,
        uses_default,
    }
}

/// What a walk over one statement found.
#[derive(Debug, Default)]
struct Found {
    sources: Vec<Source>,
    /// `ON <db>` (first one first).
    on: Vec<String>,
    into: Option<Source>,
    saw_into: bool,
    /// The name after `CREATE DATABASE` / `DROP DATABASE`.
    database_name: Option<String>,
}

enum Why {
    Scan(ScanError),
    BoundName,
}

impl From<ScanError> for Why {
    fn from(e: ScanError) -> Self {
        Why::Scan(e)
    }
}

/// Which list the statement-level commas belong to: in a field list, a dimension list or a
/// call's arguments, a `/` after a comma starts a regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    None,
    Fields,
    Dimensions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paren {
    Call,
    Group,
}

struct Walk<'a> {
    s: Scanner<'a>,
    /// `FROM` starts a list of sources (everywhere but `REVOKE … FROM <user>`).
    takes_sources: bool,
    /// `ON` names a database (everywhere but `KILL QUERY … ON <host>`).
    on_names_database: bool,
    found: Found,
}

/// Where a walk over part of a statement stopped.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// `;` or the end of the query: the statement is over.
    Statement,
    /// The statement goes on: a subquery's `)` closed it, or a source list ended.
    Continues,
}

impl Walk<'_> {
    /// A statement, or a subquery's body after its `SELECT` (`sub`), token by token.
    fn block(&mut self, sub: bool) -> Result<End, Why> {
        let mut list = if sub { List::Fields } else { List::None };
        let mut parens: Vec<Paren> = vec![];
        let mut regex_next = sub;
        let mut previous_word: Option<String> = None;
        loop {
            if std::mem::take(&mut regex_next) && self.regex()? {
                previous_word = None;
                continue;
            }
            let token = self.s.scan()?;
            let word = match &token {
                Token::Ident {
                    text,
                    quoted: false,
                } => Some(text.to_ascii_uppercase()),
                _ => None,
            };
            match token {
                Token::Ws | Token::Comment => continue,
                Token::Eof | Token::Semicolon => return Ok(End::Statement),
                Token::LParen => parens.push(Paren::Group),
                Token::RParen if parens.pop().is_none() && sub => return Ok(End::Continues),
                Token::Comma => {
                    regex_next = match parens.last() {
                        Some(Paren::Call) => true,
                        Some(Paren::Group) => false,
                        None => list != List::None,
                    }
                }
                Token::RegexOp => regex_next = true,
                Token::Ident { .. } | Token::BoundParam if self.s.peek() == Some('(') => {
                    // `name(`: a call, as the parser reads `IDENT` then `(` (DISTINCT too);
                    // after the keywords of `NOT_CALLS`, a group.
                    let call = match &word {
                        Some(w) => !NOT_CALLS.contains(&w.as_str()),
                        None => true,
                    };
                    if call {
                        self.s.scan()?;
                        parens.push(Paren::Call);
                        regex_next = true;
                        previous_word = None;
                        continue;
                    }
                }
                _ => {}
            }
            let Some(word) = word else {
                previous_word = None;
                continue;
            };
            let top = parens.is_empty();
            match word.as_str() {
                "SELECT" => {
                    if top {
                        list = List::Fields;
                    }
                    regex_next = true;
                }
                "FROM" if self.takes_sources && top => {
                    list = List::None;
                    if self.sources()? == End::Statement {
                        return Ok(End::Statement);
                    }
                }
                "INTO" => {
                    self.found.saw_into = true;
                    list = List::None;
                    self.target()?;
                }
                "ON" if self.on_names_database => {
                    if let Some(db) = self.name()? {
                        self.found.on.push(db);
                    }
                }
                "DATABASE"
                    if matches!(previous_word.as_deref(), Some("CREATE" | "DROP"))
                        && self.found.database_name.is_none() =>
                {
                    self.found.database_name = self.name()?;
                }
                "BY" if previous_word.as_deref() == Some("GROUP") => {
                    if top {
                        list = List::Dimensions;
                    }
                    regex_next = true;
                }
                "WHERE" | "ORDER" | "LIMIT" | "OFFSET" | "SLIMIT" | "SOFFSET" if top => {
                    list = List::None;
                }
                _ => {}
            }
            previous_word = Some(word);
        }
    }

    /// Where the parser calls `parseRegex`: one run of whitespace, then a regex if a `/`
    /// comes (comments are not skipped: after one, a `/` is a divide again).
    fn regex(&mut self) -> Result<bool, Why> {
        self.s.skip_whitespace();
        if self.s.peek() == Some('/') {
            self.s.scan_regex()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// An identifier where a name must come (`ParseIdent`): `None` when something else
    /// comes (influxd refuses the statement), an error for a bound parameter.
    fn name(&mut self) -> Result<Option<String>, Why> {
        let back = self.s.clone();
        match self.s.significant()? {
            Token::Ident { text, .. } => Ok(Some(text)),
            Token::BoundParam => Err(Why::BoundName),
            _ => {
                self.s = back;
                Ok(None)
            }
        }
    }

    /// `parseSegmentedIdents`: `a`, `a.b`, `a.b.c`, `a..c`; stops before a `.` that a regex
    /// or `:MEASUREMENT` follows.
    fn segments(&mut self) -> Result<Vec<String>, Why> {
        let Some(first) = self.name()? else {
            return Ok(vec![]);
        };
        let mut names = vec![first];
        loop {
            let back = self.s.clone();
            if self.s.scan()? != Token::Dot {
                self.s = back;
                return Ok(names);
            }
            match self.s.peek() {
                Some('/' | ':') => return Ok(names),
                Some('.') => names.push(String::new()),
                _ => match self.name()? {
                    Some(name) => names.push(name),
                    None => return Ok(names),
                },
            }
        }
    }

    /// `parseSources`: sources separated by commas, each a regex, a subquery, or segmented
    /// identifiers optionally followed by a regex.
    fn sources(&mut self) -> Result<End, Why> {
        loop {
            if self.source()? == End::Statement {
                return Ok(End::Statement);
            }
            let back = self.s.clone();
            if self.s.significant()? != Token::Comma {
                self.s = back;
                return Ok(End::Continues);
            }
        }
    }

    fn source(&mut self) -> Result<End, Why> {
        let default = || Source {
            db: String::new(),
            rp: None,
        };
        if self.bound_next() {
            return Err(Why::BoundName);
        }
        if self.regex()? {
            self.found.sources.push(default());
            return Ok(End::Continues);
        }
        let back = self.s.clone();
        if self.s.significant()? == Token::LParen {
            let inner = self.s.clone();
            let select = matches!(self.s.significant()?,
                Token::Ident { text, quoted: false } if text.eq_ignore_ascii_case("SELECT"));
            if !select {
                // Not a subquery: influxd refuses it; walk on as plain tokens.
                self.s = inner;
                return Ok(End::Continues);
            }
            return self.block(true);
        }
        self.s = back;
        let names = self.segments()?;
        if names.len() == 3 {
            self.found.sources.push(Source {
                db: names[0].clone(),
                rp: Some(names[1].clone()).filter(|rp| !rp.is_empty()),
            });
            return Ok(End::Continues);
        }
        if self.bound_next() {
            return Err(Why::BoundName);
        }
        let regex = self.regex()?;
        let source = match (names.len(), regex) {
            (2, true) => Source {
                db: names[0].clone(),
                rp: Some(names[1].clone()).filter(|rp| !rp.is_empty()),
            },
            (2, false) => Source {
                db: String::new(),
                rp: Some(names[0].clone()).filter(|rp| !rp.is_empty()),
            },
            (1, true) => Source {
                db: String::new(),
                rp: Some(names[0].clone()).filter(|rp| !rp.is_empty()),
            },
            _ => default(),
        };
        self.found.sources.push(source);
        Ok(End::Continues)
    }

    /// After whitespace, a `$`: a bound parameter where a name or regex source goes.
    fn bound_next(&self) -> bool {
        let mut s = self.s.clone();
        s.skip_whitespace();
        s.peek() == Some('$')
    }

    /// `parseTarget`: `INTO` segmented identifiers, possibly ending in `:MEASUREMENT`.
    fn target(&mut self) -> Result<(), Why> {
        if self.bound_next() {
            return Err(Why::BoundName);
        }
        let mut names = self.segments()?;
        if names.len() < 3 && self.s.peek() == Some(':') {
            names.push(String::new());
        }
        self.found.into = Some(Source {
            db: if names.len() == 3 {
                names[0].clone()
            } else {
                String::new()
            },
            rp: None,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (kind, class) of each statement of `q`, with `db=d`.
    fn kinds(q: &str) -> Vec<(&'static str, Class)> {
        classify(q, "d")
            .unwrap_or_else(|e| panic!("{q:?}: {e}"))
            .into_iter()
            .map(|s| (s.kind, s.class))
            .collect()
    }

    fn reads(q: &str) -> Vec<(String, Option<String>)> {
        classify(q, "d")
            .unwrap()
            .into_iter()
            .flat_map(|s| s.reads)
            .map(|s| (s.db, s.rp))
            .collect()
    }

    fn read(db: &str) -> (String, Option<String>) {
        (db.to_string(), None)
    }

    #[test]
    fn statements_split_at_unquoted_semicolons_only() {
        use Class::*;
        assert_eq!(
            kinds(r#"SELECT "DROP" FROM m WHERE t = 'x; DROP DATABASE d'"#),
            [("SELECT", Read)]
        );
        assert_eq!(
            kinds("SELECT * FROM m -- ; DROP DATABASE d"),
            [("SELECT", Read)]
        );
        assert_eq!(
            kinds("SELECT * FROM m /* ; DROP DATABASE d; */"),
            [("SELECT", Read)]
        );
        assert_eq!(
            kinds("SELECT * FROM /;DROP DATABASE d;/"),
            [("SELECT", Read)]
        );
        assert_eq!(
            kinds("select * from m;drop database d"),
            [("SELECT", Read), ("DROP DATABASE", Admin)]
        );
        assert_eq!(
            kinds("SELECT * FROM m -- c\n; DROP DATABASE d"),
            [("SELECT", Read), ("DROP DATABASE", Admin)]
        );
        assert_eq!(
            kinds(";; SHOW DATABASES ;"),
            [("SHOW DATABASES", ShowDatabases)]
        );
    }

    #[test]
    fn a_slash_is_a_regex_only_where_influxd_reads_one() {
        use Class::*;
        // After a source name and whitespace, influxd reads a regex (rp m, regex x'): the
        // quotes inside it open no string, so the DROP between is a statement.
        assert_eq!(
            kinds("SELECT * FROM m /x'/; DROP DATABASE d; SELECT * FROM m /'/"),
            [("SELECT", Read), ("DROP DATABASE", Admin), ("SELECT", Read)]
        );
        // In a grouped expression a `/*` is a comment, not a regex.
        assert_eq!(
            kinds("SELECT * FROM m WHERE (/* a / ' */ a = 1); DROP DATABASE d; SELECT * FROM m WHERE a = 'x' -- '"),
            [("SELECT", Read), ("DROP DATABASE", Admin), ("SELECT", Read)]
        );
        // tz() and fill() are calls: their arguments may be regexes.
        assert_eq!(
            kinds("SELECT * FROM m tz(/;DROP DATABASE d;/)"),
            [("SELECT", Read)]
        );
        // After an operand, a divide; `/*` a comment.
        assert_eq!(
            kinds("SELECT a / 2 FROM m; DROP DATABASE d; SELECT b /2 FROM m"),
            [("SELECT", Read), ("DROP DATABASE", Admin), ("SELECT", Read)]
        );
        assert_eq!(
            kinds("SELECT a /* / */ FROM m; DROP DATABASE d"),
            [("SELECT", Read), ("DROP DATABASE", Admin)]
        );
        // Field, dimension and call-argument positions, and after =~.
        assert_eq!(
            kinds("SELECT /a;/, mean(/b;/) FROM m WHERE t =~ /c;/ GROUP BY /d;/, time(1m)"),
            [("SELECT", Read)]
        );
        // After a comment the parser no longer looks for a regex: a divide, then `;`.
        assert_eq!(
            classify("SELECT * FROM m WHERE t =~ -- c\n/x;/", ""),
            Err(ClassifyError::Unknown { statement: 2 })
        );
        // ORDER BY fields are identifiers: a `/*` after their comma is a comment.
        assert_eq!(
            kinds("SELECT * FROM m ORDER BY time, /* / ' */ x; DROP DATABASE d; SELECT 'a' -- '"),
            [("SELECT", Read), ("DROP DATABASE", Admin), ("SELECT", Read)]
        );
        // REVOKE … FROM names a user, not a source.
        assert_eq!(
            kinds("REVOKE ALL PRIVILEGES FROM /* / ' */ bob; SELECT * FROM x..m; SELECT 'a' -- '"),
            [("REVOKE", Admin), ("SELECT", Read), ("SELECT", Read)]
        );
    }

    #[test]
    fn kinds_come_from_the_leading_keywords() {
        use Class::*;
        let cases: &[(&str, &str, Class)] = &[
            ("SELECT mean(v) INTO d2..m FROM m", "SELECT INTO", Admin),
            ("EXPLAIN ANALYZE SELECT * FROM m", "EXPLAIN", Read),
            ("SHOW MEASUREMENTS ON x", "SHOW MEASUREMENTS", Read),
            ("SHOW TAG VALUES WITH KEY = host", "SHOW TAG VALUES", Read),
            ("SHOW TAG KEY CARDINALITY", "SHOW TAG KEY CARDINALITY", Read),
            ("SHOW SERIES EXACT CARDINALITY", "SHOW SERIES", Read),
            ("SHOW FIELD KEYS FROM m", "SHOW FIELD KEYS", Read),
            (
                "show retention policies on x",
                "SHOW RETENTION POLICIES",
                Read,
            ),
            ("SHOW USERS", "SHOW USERS", Admin),
            ("SHOW QUERIES", "SHOW QUERIES", Admin),
            ("SHOW CONTINUOUS QUERIES", "SHOW CONTINUOUS QUERIES", Admin),
            ("SHOW SHARD GROUPS", "SHOW SHARD GROUPS", Admin),
            (
                "CREATE DATABASE \"x y\"",
                "CREATE DATABASE",
                CreateDatabase("x y".into()),
            ),
            ("CREATE USER u WITH PASSWORD 'p'", "CREATE USER", Admin),
            ("DROP SERIES FROM m", "DROP SERIES", Admin),
            ("DELETE FROM m WHERE time < 0", "DELETE", Admin),
            (
                "ALTER RETENTION POLICY rp ON x DEFAULT",
                "ALTER RETENTION POLICY",
                Admin,
            ),
            ("GRANT READ ON x TO u", "GRANT", Admin),
            ("SET PASSWORD FOR u = 'p'", "SET PASSWORD", Admin),
            ("KILL QUERY 12 ON \"host:8088\"", "KILL QUERY", Admin),
        ];
        for (q, kind, class) in cases {
            assert_eq!(kinds(q), [(*kind, class.clone())], "{q}");
        }
    }

    #[test]
    fn unknown_and_unreadable_statements_are_errors() {
        assert_eq!(
            classify("SELECT 1; FROB x", ""),
            Err(ClassifyError::Unknown { statement: 2 })
        );
        assert_eq!(
            classify("\"SELECT\" * FROM m", ""),
            Err(ClassifyError::Unknown { statement: 1 })
        );
        assert_eq!(
            classify("SHOW", ""),
            Err(ClassifyError::Unknown { statement: 1 })
        );
        assert!(matches!(
            classify("SELECT * FROM m WHERE a = 'x", ""),
            Err(ClassifyError::Scan { statement: 1, .. })
        ));
        assert!(matches!(
            classify("SELECT * FROM m; SELECT * FROM /x", ""),
            Err(ClassifyError::Scan { statement: 2, .. })
        ));
        for q in [
            "SELECT * FROM $m",
            "SELECT * FROM d.$rp.m",
            "SELECT * FROM $re",
            "SHOW MEASUREMENTS ON $db",
            "SELECT * INTO $t FROM m",
        ] {
            assert_eq!(
                classify(q, ""),
                Err(ClassifyError::BoundName { statement: 1 }),
                "{q}"
            );
        }
        // Bound values elsewhere are fine.
        assert_eq!(
            kinds("SELECT * FROM m WHERE t = $t AND u =~ $re"),
            [("SELECT", Class::Read)]
        );
    }

    #[test]
    fn reads_name_every_database_a_statement_touches() {
        assert_eq!(reads("SELECT * FROM m"), [read("d")]);
        assert_eq!(
            reads(r#"SELECT * FROM "x"."rp"."m", y..n, rp.m, /re/, "z"."rp2"./re/"#),
            [
                ("x".into(), Some("rp".into())),
                read("y"),
                ("d".into(), Some("rp".into())),
                read("d"),
                ("z".into(), Some("rp2".into())),
            ]
        );
        assert_eq!(
            reads("SELECT * FROM (SELECT max(v) FROM x..m), (SELECT * FROM (SELECT * FROM y..n))"),
            [read("x"), read("y")]
        );
        assert_eq!(reads("SHOW MEASUREMENTS"), [read("d")]);
        assert_eq!(
            reads("SHOW TAG KEYS ON x FROM m, y..n"),
            [read("x"), read("y")]
        );
        assert_eq!(reads("SHOW RETENTION POLICIES ON \"x\""), [read("x")]);
        assert_eq!(reads("SELECT v INTO t..m FROM x..m"), [read("x")]);
        assert_eq!(reads("SHOW DATABASES"), []);
        assert_eq!(reads("DROP SERIES FROM x..m"), []);
        let none = classify("SELECT * FROM m", "").unwrap();
        assert!(none[0].reads.is_empty() && none[0].uses_default);
    }

    #[test]
    fn databases_named_for_routing() {
        let dbs = |q: &str| -> Vec<Vec<String>> {
            classify(q, "d")
                .unwrap()
                .into_iter()
                .map(|s| s.databases)
                .collect()
        };
        assert_eq!(dbs("DROP DATABASE x"), [["x"]]);
        assert_eq!(
            dbs("CREATE RETENTION POLICY rp ON x DURATION 1d REPLICATION 1"),
            [["x"]]
        );
        assert_eq!(
            dbs("CREATE CONTINUOUS QUERY cq ON x BEGIN SELECT mean(v) INTO y.rp.m FROM m GROUP BY time(1m) END"),
            [vec!["x".to_string(), "y".to_string()]]
        );
        assert_eq!(
            dbs("SELECT * INTO z..:MEASUREMENT FROM x../.*/"),
            [["x", "z"]]
        );
        assert_eq!(dbs("KILL QUERY 1 ON host1"), [Vec::<String>::new()]);
        assert_eq!(dbs("SHOW DATABASES"), [Vec::<String>::new()]);
        let uses = |q: &str| classify(q, "d").unwrap()[0].uses_default;
        assert!(uses("DROP MEASUREMENT m"));
        assert!(uses("SHOW SERIES"));
        assert!(!uses("SHOW SERIES ON x"));
        assert!(!uses("SELECT * FROM x..m"));
        assert!(!uses("SHOW DATABASES"));
    }

    /// Whatever comes before it, a statement after a newline and a `;` is seen: a string,
    /// quoted identifier or regex cannot span a newline, and an open `/*` is an error.
    #[test]
    fn no_prefix_hides_a_statement_that_follows_a_newline() {
        const PIECES: &[&str] = &[
            "SELECT ",
            "* ",
            "FROM ",
            "m",
            " ",
            "/",
            "*",
            "'",
            "\"",
            "\\",
            "-",
            "--",
            ";",
            "(",
            ")",
            ",",
            ".",
            "..",
            "=~",
            "!~",
            "x",
            "mean(",
            "tz(",
            "GROUP BY ",
            "ORDER BY ",
            "WHERE ",
            "INTO ",
            "$p",
            "1",
            "\n",
            "\t",
            ":",
            "REVOKE ",
            "ON ",
            "SHOW ",
            "é",
        ];
        let mut seed = fastrand::Rng::with_seed(0x1f1);
        for _ in 0..50_000 {
            let mut prefix = String::new();
            for _ in 0..seed.usize(1..14) {
                prefix.push_str(PIECES[seed.usize(..PIECES.len())]);
            }
            for query in [
                format!("{prefix}\n;DROP DATABASE x"),
                format!("DROP DATABASE x;{prefix}"),
            ] {
                if let Ok(statements) = classify(&query, "d") {
                    assert!(
                        statements.iter().any(|s| s.class == Class::Admin),
                        "{query:?} classified as {statements:?}"
                    );
                }
            }
        }
    }
}
