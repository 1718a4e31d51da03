//! Database Migration Procedures, the lint's lexer: a small PostgreSQL
//! lexer (strings, quoted identifiers, dollar quotes, nested comments) that
//! turns a script into statements of tokens, so that a keyword inside a
//! string or a comment never fires a rule.

/// One lexical token. Words are lowercased; quoted identifiers keep their case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Word(String),
    Quoted(String),
    /// A string constant's value (`''` unescaped in plain strings; the
    /// body of a dollar quote as written).
    Str(String),
    Num,
    Punct(char),
}

#[derive(Clone, Debug)]
pub struct Statement {
    pub toks: Vec<Tok>,
    /// Byte range of the statement's text (without the `;`).
    pub start: usize,
    pub end: usize,
    /// 1-based line where the statement's first token is.
    pub line: usize,
    /// Rules accepted by `-- mre-ops:allow RULE` comments written before the
    /// statement (since the previous one) or inside it.
    pub allows: Vec<String>,
    /// For each string token (`toks` index), the byte offset where its body
    /// starts in the script: a `DO $$ … $$` body is linted as SQL of its own,
    /// its findings on the script's lines.
    pub strs: Vec<(usize, usize)>,
    /// Byte offset of each token in the script.
    pub offs: Vec<usize>,
}

impl Statement {
    pub fn word(&self, i: usize) -> Option<&str> {
        match self.toks.get(i) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }
    pub fn has_word(&self, w: &str) -> bool {
        self.toks
            .iter()
            .any(|t| matches!(t, Tok::Word(x) if x == w))
    }
}

/// The UTF-8 byte order mark some editors write at the start of a file; psql
/// skips it, and so do we (the checksum stays that of the file's bytes).
pub const BOM: &str = "\u{feff}";

/// Split a script into statements as psql does before it sends them: at a
/// `;` outside parentheses, strings, quoted identifiers, comments and the
/// `BEGIN … END` body of a `CREATE FUNCTION`/`PROCEDURE` (SQL-standard
/// bodies, `BEGIN ATOMIC`), with psql's own rule for the latter (a `BEGIN`,
/// and a `CASE` inside one, opens; `END` closes). Never fails: an
/// unterminated string or comment runs to the end of the script, as
/// PostgreSQL would read it.
pub fn split(sql: &str) -> Vec<Statement> {
    let b = sql.as_bytes();
    let n = b.len();
    let mut stmts = Vec::new();
    let mut cur = Building::default();
    let mut depth = 0usize;
    let mut begin_depth = 0usize;
    let mut i = if sql.starts_with(BOM) { BOM.len() } else { 0 };
    let mut lines = Lines::default();
    while i < n {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // Comments.
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            let end = sql[i..].find('\n').map(|e| i + e).unwrap_or(n);
            collect_allows(&sql[i + 2..end], &mut cur.allows);
            i = end;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut level = 0;
            let from = i;
            while i < n {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    level += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    level -= 1;
                    i += 2;
                    if level == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            collect_allows(&sql[from..i.min(n)], &mut cur.allows);
            continue;
        }
        if c == b';' && depth == 0 && begin_depth == 0 {
            cur.flush(sql, i, &mut lines, &mut stmts);
            i += 1;
            continue;
        }
        if cur.start.is_none() {
            cur.start = Some(i);
        }
        // Every path below pushes exactly one token.
        cur.offs.push(i);
        // Strings: '...', E'...', and dollar quotes.
        if c == b'\'' || ((c == b'e' || c == b'E') && b.get(i + 1) == Some(&b'\'')) {
            let escapes = c != b'\'';
            i += if escapes { 2 } else { 1 };
            let body = i;
            let mut closed = false;
            while i < n {
                if escapes && b[i] == b'\\' {
                    i += 2;
                } else if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                    } else {
                        i += 1;
                        closed = true;
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            // Unterminated: the string runs to the end (never slice inside a
            // character).
            i = i.min(n);
            let raw = &sql[body..if closed { i - 1 } else { n }];
            cur.strs.push((cur.toks.len(), body));
            cur.toks.push(Tok::Str(if escapes {
                raw.to_string()
            } else {
                raw.replace("''", "'")
            }));
            continue;
        }
        if c == b'$' {
            // A tag is letters, digits, `_` and any non-ASCII character, as
            // PostgreSQL's lexer reads it; it ends at an ASCII character.
            let tag_end = sql[i + 1..]
                .char_indices()
                .find(|(_, ch)| !(ch.is_ascii_alphanumeric() || *ch == '_' || !ch.is_ascii()))
                .map(|(k, _)| i + 1 + k);
            if let Some(te) = tag_end.filter(|te| b[*te] == b'$') {
                let tag = &sql[i..=te];
                let digits_only = sql[i + 1..te].chars().all(|ch| ch.is_ascii_digit());
                if !(digits_only && te > i + 1) {
                    let body = te + 1;
                    let close = sql[body..].find(tag).map(|k| body + k + tag.len());
                    i = close.unwrap_or(n);
                    let inner_end = close.map(|c| c - tag.len()).unwrap_or(n);
                    cur.strs.push((cur.toks.len(), body));
                    cur.toks.push(Tok::Str(sql[body..inner_end].to_string()));
                    continue;
                }
            }
            i += 1;
            cur.toks.push(Tok::Punct('$'));
            continue;
        }
        if c == b'"' {
            let mut name = String::new();
            i += 1;
            let from = i;
            let mut seg = from;
            while i < n {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        name.push_str(&sql[seg..=i]);
                        i += 2;
                        seg = i;
                    } else {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            name.push_str(&sql[seg..i.min(n)]);
            i = (i + 1).min(n);
            cur.toks.push(Tok::Quoted(name));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let from = i;
            while i < n
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            let word = sql[from..i].to_ascii_lowercase();
            if depth == 0 && routine_with_body(&cur.toks) {
                match word.as_str() {
                    "begin" => begin_depth += 1,
                    "case" if begin_depth > 0 => begin_depth += 1,
                    "end" => begin_depth = begin_depth.saturating_sub(1),
                    _ => {}
                }
            }
            cur.toks.push(Tok::Word(word));
            continue;
        }
        if c.is_ascii_digit() {
            while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            cur.toks.push(Tok::Num);
            continue;
        }
        match c {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        cur.toks.push(Tok::Punct(c as char));
        i += 1;
    }
    cur.flush(sql, n, &mut lines, &mut stmts);
    stmts
}

/// The statement being read.
#[derive(Default)]
struct Building {
    toks: Vec<Tok>,
    strs: Vec<(usize, usize)>,
    offs: Vec<usize>,
    allows: Vec<String>,
    start: Option<usize>,
}

impl Building {
    /// The statement read so far, if any, ends at `end`.
    fn flush(&mut self, sql: &str, end: usize, lines: &mut Lines, stmts: &mut Vec<Statement>) {
        if let Some(s) = self.start.take() {
            stmts.push(Statement {
                toks: std::mem::take(&mut self.toks),
                start: s,
                end,
                line: lines.at(sql, s),
                allows: std::mem::take(&mut self.allows),
                strs: std::mem::take(&mut self.strs),
                offs: std::mem::take(&mut self.offs),
            });
        }
    }
}

/// Line numbers of increasing offsets, counted once (a file of many
/// statements is read in linear time).
#[derive(Default)]
struct Lines {
    pos: usize,
    line: usize,
}

impl Lines {
    fn at(&mut self, sql: &str, pos: usize) -> usize {
        if pos < self.pos {
            return sql[..pos].matches('\n').count() + 1;
        }
        self.line += sql[self.pos..pos].matches('\n').count();
        self.pos = pos;
        self.line + 1
    }
}

/// Whether the statement so far starts `CREATE [OR REPLACE] FUNCTION` or
/// `PROCEDURE`: its `BEGIN … END` is a body whose `;` do not end it.
fn routine_with_body(toks: &[Tok]) -> bool {
    let w = |k: usize| match toks.get(k) {
        Some(Tok::Word(w)) => w.as_str(),
        _ => "",
    };
    let at = if w(1) == "or" && w(2) == "replace" {
        3
    } else {
        1
    };
    w(0) == "create" && matches!(w(at), "function" | "procedure")
}

fn collect_allows(comment: &str, allows: &mut Vec<String>) {
    if let Some(pos) = comment.find("mre-ops:allow") {
        let rest = &comment[pos + "mre-ops:allow".len()..];
        for rule in rest
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|r| !r.is_empty())
        {
            if rule.starts_with("*/") {
                break;
            }
            allows.push(rule.trim_end_matches("*/").to_string());
        }
    }
}
