//! Offline checks of a custom SQL source (`query:`): not empty, one statement, no parameters of
//! its own (datasync binds the cursor bound as the only parameter). Pure: a small lexer that
//! knows each engine's strings, quoted identifiers and comments, so a `;` or a `?` inside
//! them is not mistaken for SQL.

use crate::schema::SourceKind;

/// A problem with the query text (the message names the line and column in the query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryProblem {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: &'static str,
}

/// What a query is made of, outside strings and comments.
#[derive(Debug, Default)]
struct Scan {
    /// Byte offset of the first `;` followed by more SQL (a second statement).
    second_statement: Option<usize>,
    /// Byte offset of the first `;` (a trailing one is cut off).
    first_semicolon: Option<usize>,
    /// Byte offset and text of the first parameter placeholder.
    parameter: Option<(usize, String)>,
    /// Whether anything but blanks and comments was seen.
    has_sql: bool,
    /// What was left open at the end: a string, a quoted identifier or a comment.
    unterminated: Option<(usize, &'static str)>,
}

impl Scan {
    /// SQL (not a blank or a comment) was seen: after a `;`, it is a second statement.
    fn saw_sql(&mut self) {
        if self.first_semicolon.is_some() && self.second_statement.is_none() {
            self.second_statement = self.first_semicolon;
        }
        self.has_sql = true;
    }
}

/// 1-based line and column of byte `at` in `text`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(1, |line| line.chars().count() + 1);
    (line, column)
}

/// Checks a query for `kind` and returns it as datasync sends it: trimmed, a trailing `;`
/// removed.
pub fn check(text: &str, kind: SourceKind) -> Result<String, QueryProblem> {
    let scan = scan(text, kind);
    let at = |offset: usize| {
        let (line, column) = position(text, offset);
        format!("line {line}, column {column} of the query")
    };
    if let Some((offset, what)) = scan.unterminated {
        return Err(QueryProblem {
            message: format!(
                "the query has an unterminated {what} (opened at {})",
                at(offset)
            ),
            help: "close it; the query is sent as written",
        });
    }
    if !scan.has_sql {
        return Err(QueryProblem {
            message: "`query` is empty".into(),
            help: "write one SELECT, e.g. `SELECT id, total FROM orders`",
        });
    }
    if let Some(offset) = scan.second_statement {
        return Err(QueryProblem {
            message: format!(
                "`query` holds more than one statement: the `;` at {} is followed by another",
                at(offset)
            ),
            help: "datasync reads one SELECT per entry: make another table entry for the other statement",
        });
    }
    if let Some((offset, placeholder)) = scan.parameter {
        return Err(QueryProblem {
            message: format!(
                "`query` has a parameter `{placeholder}` at {}: datasync binds the cursor bound as the only parameter",
                at(offset)
            ),
            help: "write the value into the query, or use `cursor` for the incremental bound",
        });
    }
    let end = scan.first_semicolon.unwrap_or(text.len());
    Ok(text[..end].trim().to_string())
}

/// Whether `c` may continue an identifier (or a dollar-quote tag).
fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The dollar-quote opener (`$$`, `$tag$`) at the start of `rest`, if it is one.
fn dollar_tag(rest: &str) -> Option<&str> {
    let body = rest.strip_prefix('$')?;
    let end = body.find('$')?;
    let tag = &body[..end];
    let valid =
        tag.chars().next().is_none_or(|c| !c.is_ascii_digit()) && tag.chars().all(ident_char);
    valid.then(|| &rest[..end + 2])
}

/// The placeholder starting at `rest` (after SQL, not inside strings), if `kind` would take it
/// for one.
fn placeholder(rest: &str, kind: SourceKind, previous: Option<char>) -> Option<String> {
    let mut chars = rest.chars();
    let first = chars.next()?;
    let after: String = chars.take_while(|c| ident_char(*c)).collect();
    let glued = previous.is_some_and(ident_char);
    match (kind, first) {
        // `$1`; `?` is a jsonb operator in PostgreSQL.
        (SourceKind::Postgres, '$')
            if !glued && !after.is_empty() && after.chars().all(|c| c.is_ascii_digit()) =>
        {
            Some(format!("${after}"))
        }
        (SourceKind::Mysql, '?') => Some("?".into()),
        (SourceKind::Sqlite, '?') => Some(format!(
            "?{}",
            after
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        )),
        // `:name`, `@name`, `$name` (not `::` casts).
        (SourceKind::Sqlite, ':' | '@' | '$')
            if !glued
                && previous != Some(':')
                && !rest[1..].starts_with(':')
                && !after.is_empty() =>
        {
            Some(format!("{first}{after}"))
        }
        _ => None,
    }
}

/// Lexes `text` as `kind` reads it.
fn scan(text: &str, kind: SourceKind) -> Scan {
    let mut found = Scan::default();
    let mut previous: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let rest = &text[at..];
        let closing = match c {
            '\'' => Some(("'", "string")),
            '"' => Some(("\"", "quoted identifier")),
            '`' if kind == SourceKind::Mysql => Some(("`", "quoted identifier")),
            '-' if rest.starts_with("--") => Some(("\n", "")),
            '#' if kind == SourceKind::Mysql => Some(("\n", "")),
            '/' if rest.starts_with("/*") => Some(("*/", "comment")),
            _ => None,
        };
        if let Some((close, what)) = closing {
            // MySQL strings take backslash escapes, and so do PostgreSQL's E'…' strings.
            let backslashes = c == '\'' && kind == SourceKind::Mysql
                || c == '\''
                    && kind == SourceKind::Postgres
                    && matches!(previous, Some('e' | 'E'))
                    && text[..at]
                        .chars()
                        .rev()
                        .nth(1)
                        .is_none_or(|before| !ident_char(before));
            let start = if close == "*/" { 2 } else { 1 };
            match find_close(&text[at + start..], close, backslashes) {
                Some(length) => {
                    let end = at + start + length;
                    while chars.peek().is_some_and(|(next, _)| *next < end) {
                        chars.next();
                    }
                }
                None if close == "\n" => break,
                None => {
                    found.unterminated = Some((at, what));
                    return found;
                }
            }
            if !what.is_empty() && what != "comment" {
                found.saw_sql();
                previous = Some('x');
            }
            continue;
        }
        if kind == SourceKind::Postgres
            && c == '$'
            && !previous.is_some_and(ident_char)
            && let Some(tag) = dollar_tag(rest)
        {
            let body = &text[at + tag.len()..];
            match body.find(tag) {
                Some(length) => {
                    let end = at + tag.len() + length + tag.len();
                    while chars.peek().is_some_and(|(next, _)| *next < end) {
                        chars.next();
                    }
                    found.saw_sql();
                    previous = Some('x');
                    continue;
                }
                None => {
                    found.unterminated = Some((at, "dollar-quoted string"));
                    return found;
                }
            }
        }
        if c == ';' {
            found.first_semicolon.get_or_insert(at);
        } else if !c.is_whitespace() {
            found.saw_sql();
            if found.parameter.is_none()
                && let Some(text) = placeholder(rest, kind, previous)
            {
                found.parameter = Some((at, text));
            }
        }
        previous = Some(c);
    }
    found
}

/// The length up to and including `close` in `rest`; a doubled quote (`''`) and, with
/// `backslashes`, `\x` do not close.
fn find_close(rest: &str, close: &str, backslashes: bool) -> Option<usize> {
    if close.len() > 1 || close == "\n" {
        return rest.find(close).map(|at| at + close.len());
    }
    let quote = close.chars().next()?;
    let mut chars = rest.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if backslashes && c == '\\' {
            chars.next();
        } else if c == quote {
            if chars.peek().is_some_and(|(_, next)| *next == quote) {
                chars.next();
            } else {
                return Some(at + c.len_utf8());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [SourceKind; 3] = [SourceKind::Postgres, SourceKind::Mysql, SourceKind::Sqlite];

    fn ok(text: &str, kind: SourceKind) -> String {
        check(text, kind).unwrap_or_else(|problem| panic!("{text:?}: {}", problem.message))
    }

    fn problem(text: &str, kind: SourceKind) -> String {
        check(text, kind)
            .map(|sent| panic!("{text:?} was accepted as {sent:?}"))
            .unwrap_err()
            .message
    }

    #[test]
    fn one_statement_is_sent_trimmed_without_its_trailing_semicolon() {
        for kind in ALL {
            assert_eq!(ok("  SELECT 1 AS x ;  \n", kind), "SELECT 1 AS x");
            assert_eq!(ok("SELECT 1 AS x; -- done\n", kind), "SELECT 1 AS x");
            assert_eq!(
                ok("SELECT ';' AS a, \"x;y\" FROM t -- ; not a statement", kind),
                "SELECT ';' AS a, \"x;y\" FROM t -- ; not a statement"
            );
            assert_eq!(ok("SELECT /* ; */ 1 AS x", kind), "SELECT /* ; */ 1 AS x");
            assert_eq!(ok("SELECT 'it''s' AS x", kind), "SELECT 'it''s' AS x");
            assert!(problem("SELECT 1; 'x'", kind).contains("more than one statement"));
        }
        assert_eq!(
            ok("SELECT `a;b` FROM t # ;", SourceKind::Mysql),
            "SELECT `a;b` FROM t # ;"
        );
        assert_eq!(
            ok("SELECT 'a\\';' AS x", SourceKind::Mysql),
            "SELECT 'a\\';' AS x"
        );
        assert_eq!(
            ok("SELECT $$a;b$$ AS x, $f$ ; $f$ AS y", SourceKind::Postgres),
            "SELECT $$a;b$$ AS x, $f$ ; $f$ AS y"
        );
        assert_eq!(
            ok("SELECT E'a\\';' AS x", SourceKind::Postgres),
            "SELECT E'a\\';' AS x"
        );
    }

    #[test]
    fn several_statements_are_refused_with_their_position() {
        for kind in ALL {
            assert_eq!(
                problem("SELECT 1;\n  DELETE FROM t", kind),
                "`query` holds more than one statement: the `;` at line 1, column 9 of the query is followed by another"
            );
        }
        assert!(
            problem("SELECT 1 # x\n; SELECT 2", SourceKind::Mysql).contains("line 2, column 1")
        );
    }

    #[test]
    fn empty_and_unterminated_queries_are_refused() {
        for kind in ALL {
            assert_eq!(problem("  ", kind), "`query` is empty");
            assert_eq!(problem(" -- nothing\n;", kind), "`query` is empty");
            assert_eq!(problem("/* */", kind), "`query` is empty");
            assert_eq!(
                problem("SELECT 'open", kind),
                "the query has an unterminated string (opened at line 1, column 8 of the query)"
            );
            assert!(problem("SELECT 1 /* open", kind).contains("unterminated comment"));
        }
        assert!(problem("SELECT $x$ open", SourceKind::Postgres).contains("dollar-quoted string"));
    }

    #[test]
    fn parameters_of_its_own_are_refused_but_look_alikes_are_not() {
        assert!(
            problem("SELECT * FROM t WHERE id > $1", SourceKind::Postgres)
                .starts_with("`query` has a parameter `$1` at line 1, column 28")
        );
        assert!(problem("SELECT * FROM t WHERE id = ?", SourceKind::Mysql).contains("`?`"));
        assert!(problem("SELECT * FROM t WHERE id = ?2", SourceKind::Sqlite).contains("`?2`"));
        assert!(problem("SELECT * FROM t WHERE id = :id", SourceKind::Sqlite).contains("`:id`"));
        // jsonb `?`, casts, `$` inside names and strings, MySQL user variables.
        ok(
            "SELECT doc ? 'k' AS has, x::text, a$1 FROM t WHERE s = '$1'",
            SourceKind::Postgres,
        );
        ok("SELECT @rank AS r, '?' AS q FROM t", SourceKind::Mysql);
        ok("SELECT '?' AS q, \"a:b\" FROM t", SourceKind::Sqlite);
    }
}
