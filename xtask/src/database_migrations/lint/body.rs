//! Database Migration Procedures, the lint's view inside a statement: names,
//! string constants with the type they are cast to, and the SQL inside a
//! `DO $$ … $$` block (PL/pgSQL) or a routine body, read with the same lexer.

use super::lexer::{split, Statement, Tok};

/// The name a (possibly schema-qualified) reference ends with, from `i`, and
/// the index after it.
pub fn name_at(toks: &[Tok], mut i: usize) -> (Option<String>, usize) {
    let mut last = None;
    loop {
        match toks.get(i) {
            Some(Tok::Word(w)) => last = Some(w.clone()),
            Some(Tok::Quoted(q)) => last = Some(q.clone()),
            _ => return (last, i),
        }
        i += 1;
        if toks.get(i) == Some(&Tok::Punct('.')) {
            i += 1;
        } else {
            return (last, i);
        }
    }
}

/// The code bodies of a statement: a `DO` block's, or a `CREATE FUNCTION` /
/// `PROCEDURE`'s `AS '…'`, each with its byte offset in the script.
pub fn code_bodies(s: &Statement) -> Vec<(&str, usize)> {
    let routine = s.word(0) == Some("create")
        && s.toks
            .iter()
            .take(4)
            .any(|t| matches!(t, Tok::Word(w) if w == "function" || w == "procedure"));
    let is_do = s.word(0) == Some("do");
    if !routine && !is_do {
        return Vec::new();
    }
    s.strs
        .iter()
        .filter(|(k, _)| {
            // DO [LANGUAGE x] 'body' | DO 'body' LANGUAGE x; AS 'body'.
            is_do && !matches!(s.toks.get(k.wrapping_sub(1)), Some(Tok::Word(w)) if w == "language")
                || routine
                    && matches!(s.toks.get(k.wrapping_sub(1)), Some(Tok::Word(w)) if w == "as")
        })
        .filter_map(|(k, off)| match &s.toks[*k] {
            Tok::Str(body) => Some((body.as_str(), *off)),
            _ => None,
        })
        .collect()
}

/// Every string constant of a statement, and of the code bodies inside it,
/// with the type it is cast to (`'v'::"T"`, `CAST('v' AS "T")`), if any.
pub fn typed_strings(s: &Statement) -> Vec<(String, Option<String>)> {
    let mut list = Vec::new();
    let t = &s.toks;
    for (k, tok) in t.iter().enumerate() {
        let Tok::Str(v) = tok else { continue };
        let cast =
            if t.get(k + 1) == Some(&Tok::Punct(':')) && t.get(k + 2) == Some(&Tok::Punct(':')) {
                name_at(t, k + 3).0
            } else if k >= 2
                && matches!(&t[k - 2], Tok::Word(w) if w == "cast")
                && t[k - 1] == Tok::Punct('(')
                && matches!(t.get(k + 1), Some(Tok::Word(w)) if w == "as")
            {
                name_at(t, k + 2).0
            } else {
                None
            };
        list.push((v.clone(), cast));
    }
    for (body, _) in code_bodies(s) {
        for inner in split(body) {
            list.extend(typed_strings(&inner));
        }
    }
    list
}

/// Statement heads the lint has rules for.
const HEADS: &[&str] = &["alter", "create", "drop", "set"];

/// The SQL statements inside a `DO` block, as statements of the script
/// (absolute offsets and lines; the `-- mre-ops:allow` comments before the
/// `DO` apply to them too), and what could not be read: `EXECUTE` of SQL
/// built at run time.
pub fn do_statements(s: &Statement, sql: &str) -> (Vec<Statement>, Vec<String>) {
    let mut found = Vec::new();
    let mut unread = Vec::new();
    if s.word(0) != Some("do") {
        return (found, unread);
    }
    for (body, off) in code_bodies(s) {
        collect(
            body,
            off,
            (sql, s.start, s.line, s.end),
            &s.allows,
            &mut found,
            &mut unread,
        );
    }
    (found, unread)
}

fn collect(
    body: &str,
    off: usize,
    file: (&str, usize, usize, usize),
    allows: &[String],
    found: &mut Vec<Statement>,
    unread: &mut Vec<String>,
) {
    // Lines counted from the DO statement's own (known) line, not from the
    // top of the file: linear in the file's size.
    let (sql, from, from_line, to) = file;
    let line_at = |pos: usize| {
        let pos = pos.clamp(from, sql.len());
        from_line + sql.get(from..pos).map_or(0, |t| t.matches('\n').count())
    };
    // A body read from a plain string had its doubled quotes undone: its
    // offsets are not the file's. Its statements then stand at the
    // enclosing statement's place (its text and line), never a shifted one.
    let exact = sql.get(off..off + body.len()) == Some(body);
    let end_of = |o: usize| if exact { off + o } else { file.1 };
    for piece in split(body) {
        let t = &piece.toks;
        let mut depth = 0i32;
        for k in 0..t.len() {
            match &t[k] {
                Tok::Punct('(') => depth += 1,
                Tok::Punct(')') => depth -= 1,
                Tok::Word(w) if depth == 0 => {
                    let after_control = k == 0
                        || matches!(&t[k - 1], Tok::Word(p) if matches!(p.as_str(), "begin" | "then" | "else" | "loop"));
                    if !after_control {
                        continue;
                    }
                    if HEADS.contains(&w.as_str()) {
                        let start = end_of(piece.offs[k]);
                        let mut allows = allows.to_vec();
                        allows.extend(piece.allows.iter().cloned());
                        found.push(Statement {
                            toks: t[k..].to_vec(),
                            start,
                            end: if exact { off + piece.end } else { to },
                            line: line_at(start),
                            allows,
                            strs: piece
                                .strs
                                .iter()
                                .filter(|(i, _)| *i >= k)
                                .map(|(i, o)| (i - k, off + o))
                                .collect(),
                            offs: piece.offs[k..].iter().map(|o| off + o).collect(),
                        });
                        break;
                    }
                    if w == "execute" {
                        match (t.get(k + 1), t.get(k + 2)) {
                            (Some(Tok::Str(inner)), None) => {
                                let at = piece.strs.iter().find(|(i, _)| *i == k + 1).map(|(_, o)| off + o).unwrap_or(off);
                                collect(inner, at, file, allows, found, unread);
                            }
                            _ => unread.push(format!(
                                "line {}: EXECUTE of SQL built at run time inside a DO block is not linted; review it by hand",
                                line_at(off + piece.offs[k])
                            )),
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
    }
}

/// The (possibly schema-qualified) name at `i`, quoted for SQL
/// (`"public"."t_x"`), for a catalog lookup or a statement built from it.
pub fn qualified_at(toks: &[Tok], mut i: usize) -> Option<String> {
    let mut parts = Vec::new();
    while let Some(Tok::Word(w) | Tok::Quoted(w)) = toks.get(i) {
        parts.push(format!("\"{}\"", w.replace('"', "\"\"")));
        i += 1;
        if toks.get(i) != Some(&Tok::Punct('.')) {
            break;
        }
        i += 1;
    }
    (!parts.is_empty()).then(|| parts.join("."))
}

/// The index of the first token after the words `seq` (in order, adjacent).
pub fn after_words(toks: &[Tok], seq: &[&str]) -> Option<usize> {
    toks.windows(seq.len())
        .position(|w| {
            w.iter()
                .zip(seq)
                .all(|(t, s)| matches!(t, Tok::Word(x) if x == s))
        })
        .map(|p| p + seq.len())
}

/// The table of an `ALTER TABLE [IF EXISTS] [ONLY] name ...`, quoted.
pub fn altered_table(s: &Statement) -> Option<String> {
    if s.word(0) != Some("alter") || s.word(1) != Some("table") {
        return None;
    }
    let mut i = 2;
    while matches!(s.toks.get(i), Some(Tok::Word(w)) if matches!(w.as_str(), "if" | "exists" | "only"))
    {
        i += 1;
    }
    qualified_at(&s.toks, i)
}

/// The index a `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON
/// [ONLY] table` builds, quoted and, when only the table is qualified, in
/// the table's schema (where PostgreSQL puts it). `None` without a name.
pub fn concurrent_index(s: &Statement) -> Option<String> {
    if s.word(0) != Some("create") || !s.has_word("index") {
        return None;
    }
    let mut i = after_words(&s.toks, &["concurrently"])?;
    if after_words(&s.toks[i..], &["if", "not", "exists"]) == Some(3) {
        i += 3;
    }
    if matches!(s.toks.get(i), Some(Tok::Word(w)) if w == "on") {
        return None;
    }
    let name = qualified_at(&s.toks, i)?;
    if name.contains("\".\"") {
        return Some(name);
    }
    let on = after_words(&s.toks, &["on"])?;
    let on = if matches!(s.toks.get(on), Some(Tok::Word(w)) if w == "only") {
        on + 1
    } else {
        on
    };
    match qualified_at(&s.toks, on) {
        Some(table) if table.contains("\".\"") => {
            let schema = &table[..table.find("\".\"").map_or(0, |p| p + 1)];
            Some(format!("{schema}.{name}"))
        }
        _ => Some(name),
    }
}

/// The names of the indexes a script builds with `CREATE INDEX CONCURRENTLY`, quoted.
pub fn concurrent_indexes(stmts: &[Statement]) -> Vec<String> {
    stmts.iter().filter_map(concurrent_index).collect()
}
