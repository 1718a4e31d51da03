//! The migration safety lint ("Review migration SQL before production") and
//! the statement splitter the runner needs. A small PostgreSQL lexer (strings,
//! quoted identifiers, dollar quotes, nested comments) turns a script into
//! statements of tokens; rules look at tokens, never at raw text, so a
//! keyword inside a string or a comment never fires. docs/migrations.md
//! explains why this is not a full SQL parser (figures in docs/benchmarks.md).

use std::collections::BTreeSet;

/// One lexical token. Words are lowercased; quoted identifiers keep their case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Word(String),
    Quoted(String),
    Str,
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
}

impl Statement {
    fn word(&self, i: usize) -> Option<&str> {
        match self.toks.get(i) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }
    fn has_word(&self, w: &str) -> bool {
        self.toks
            .iter()
            .any(|t| matches!(t, Tok::Word(x) if x == w))
    }
}

/// Split a script into statements. Never fails: an unterminated string or
/// comment runs to the end of the script, as PostgreSQL would read it.
pub fn split(sql: &str) -> Vec<Statement> {
    let b = sql.as_bytes();
    let n = b.len();
    let mut stmts = Vec::new();
    let mut toks: Vec<Tok> = Vec::new();
    let mut allows: Vec<String> = Vec::new();
    let mut start: Option<usize> = None;
    let mut depth = 0usize;
    let mut i = 0;
    let line_at = |pos: usize| sql[..pos].matches('\n').count() + 1;
    let flush = |toks: &mut Vec<Tok>,
                 allows: &mut Vec<String>,
                 start: &mut Option<usize>,
                 end: usize,
                 stmts: &mut Vec<Statement>| {
        if let Some(s) = start.take() {
            stmts.push(Statement {
                toks: std::mem::take(toks),
                start: s,
                end,
                line: line_at(s),
                allows: std::mem::take(allows),
            });
        }
    };
    while i < n {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // Comments.
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            let end = sql[i..].find('\n').map(|e| i + e).unwrap_or(n);
            collect_allows(&sql[i + 2..end], &mut allows);
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
            collect_allows(&sql[from..i.min(n)], &mut allows);
            continue;
        }
        if c == b';' && depth == 0 {
            flush(&mut toks, &mut allows, &mut start, i, &mut stmts);
            i += 1;
            continue;
        }
        if start.is_none() {
            start = Some(i);
        }
        // Strings: '...', E'...', and dollar quotes.
        if c == b'\'' || ((c == b'e' || c == b'E') && b.get(i + 1) == Some(&b'\'')) {
            let escapes = c != b'\'';
            i += if escapes { 2 } else { 1 };
            while i < n {
                if escapes && b[i] == b'\\' {
                    i += 2;
                } else if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            toks.push(Tok::Str);
            continue;
        }
        if c == b'$' {
            let tag_end = sql[i + 1..]
                .char_indices()
                .find(|(_, ch)| !(ch.is_alphanumeric() || *ch == '_'))
                .map(|(k, _)| i + 1 + k);
            if let Some(te) = tag_end {
                let tag = &sql[i..=te];
                let digits_only = sql[i + 1..te].chars().all(|ch| ch.is_ascii_digit());
                if b[te] == b'$' && !(digits_only && te > i + 1) {
                    let body = te + 1;
                    let close = sql[body..].find(tag).map(|k| body + k + tag.len());
                    i = close.unwrap_or(n);
                    toks.push(Tok::Str);
                    continue;
                }
            }
            i += 1;
            toks.push(Tok::Punct('$'));
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
            toks.push(Tok::Quoted(name));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let from = i;
            while i < n
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            toks.push(Tok::Word(sql[from..i].to_ascii_lowercase()));
            continue;
        }
        if c.is_ascii_digit() {
            while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            toks.push(Tok::Num);
            continue;
        }
        match c {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        toks.push(Tok::Punct(c as char));
        i += 1;
    }
    flush(&mut toks, &mut allows, &mut start, n, &mut stmts);
    stmts
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

// ---------------------------------------------------------------------------
// How a migration must run.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// BEGIN; script; COMMIT: a failure leaves the schema as it was.
    Transaction,
    /// Statement by statement, autocommit: something in it cannot run in a
    /// transaction block (the reason is given).
    NoTransaction(String),
    /// The script has its own BEGIN/COMMIT: sent as one query, as Prisma does.
    ScriptControlled,
}

impl Mode {
    pub fn describe(&self) -> String {
        match self {
            Mode::Transaction => "in a transaction".into(),
            Mode::NoTransaction(why) => format!("without a transaction ({why})"),
            Mode::ScriptControlled => "as written (the script has its own BEGIN/COMMIT)".into(),
        }
    }
}

pub fn mode(stmts: &[Statement]) -> Mode {
    for s in stmts {
        let w0 = s.word(0).unwrap_or("");
        if matches!(w0, "begin" | "commit" | "rollback" | "end" | "savepoint")
            || (w0 == "start" && s.word(1) == Some("transaction"))
        {
            return Mode::ScriptControlled;
        }
    }
    for s in stmts {
        let w0 = s.word(0).unwrap_or("");
        let w1 = s.word(1).unwrap_or("");
        let why = if s.has_word("concurrently")
            && matches!(w0, "create" | "drop" | "reindex" | "refresh")
        {
            Some(format!("line {}: CONCURRENTLY", s.line))
        } else if matches!(w0, "vacuum") {
            Some(format!("line {}: VACUUM", s.line))
        } else if matches!(w0, "create" | "drop") && matches!(w1, "database" | "tablespace") {
            Some(format!(
                "line {}: {} {}",
                s.line,
                w0.to_uppercase(),
                w1.to_uppercase()
            ))
        } else if w0 == "alter" && w1 == "system" {
            Some(format!("line {}: ALTER SYSTEM", s.line))
        } else if w0 == "alter" && w1 == "type" && s.has_word("add") && s.has_word("value") {
            // A new enum value cannot be used in the transaction that adds
            // it (55P04); Prisma applies such scripts statement by statement.
            Some(format!("line {}: ALTER TYPE ... ADD VALUE", s.line))
        } else {
            None
        };
        if let Some(why) = why {
            return Mode::NoTransaction(why);
        }
    }
    Mode::Transaction
}

// ---------------------------------------------------------------------------
// The rules.

pub struct Rule {
    pub name: &'static str,
    pub reason: &'static str,
    pub instead: &'static str,
}

pub const RULES: &[Rule] = &[
    Rule {
        name: "ban-drop-table",
        reason: "dropping a table loses its data, and code still running against it breaks",
        instead: "stop using the table in a release first; drop it in a later migration after a backup",
    },
    Rule {
        name: "ban-drop-column",
        reason: "dropping a column loses its data, and running code that selects it breaks",
        instead: "stop reading and writing the column in a release first (Prisma: remove it from the schema), then drop it later",
    },
    Rule {
        name: "adding-required-field",
        reason: "ADD COLUMN ... NOT NULL without a DEFAULT fails on a table that has rows",
        instead: "add it nullable or with a DEFAULT, backfill, then add the constraint (NOT VALID check, then SET NOT NULL)",
    },
    Rule {
        name: "adding-not-nullable-field",
        reason: "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock",
        instead: "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT c; then SET NOT NULL (PG 12+ skips the scan)",
    },
    Rule {
        name: "changing-column-type",
        reason: "a type change usually rewrites the table and its indexes under an ACCESS EXCLUSIVE lock",
        instead: "add a new column, backfill in batches, switch the code, then drop the old column",
    },
    Rule {
        name: "renaming-column",
        reason: "running code that uses the old name breaks the moment the rename commits",
        instead: "add the new column, write both, backfill, switch reads, then drop the old one (or use a view)",
    },
    Rule {
        name: "renaming-table",
        reason: "running code that uses the old name breaks the moment the rename commits",
        instead: "create the new table (or a view with the new name), migrate the code, then drop the old name",
    },
    Rule {
        name: "require-concurrent-index-creation",
        reason: "CREATE INDEX without CONCURRENTLY blocks writes to an existing table for the whole build",
        instead: "CREATE INDEX CONCURRENTLY (in a migration of its own; mre-ops then runs it without a transaction)",
    },
    Rule {
        name: "adding-foreign-key-constraint",
        reason: "adding a foreign key validates every row while blocking writes to both tables",
        instead: "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then ALTER TABLE ... VALIDATE CONSTRAINT in a later migration",
    },
    Rule {
        name: "constraint-missing-not-valid",
        reason: "adding a CHECK constraint scans the whole table under an ACCESS EXCLUSIVE lock",
        instead: "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in a later migration",
    },
    Rule {
        name: "require-lock-timeout",
        reason: "a statement that locks an existing table queues behind long transactions and blocks every query behind it",
        instead: "start the migration with SET lock_timeout = '5s'; (and retry the deploy if it times out)",
    },
];

pub fn rule(name: &str) -> &'static Rule {
    RULES
        .iter()
        .find(|r| r.name == name)
        .expect("every finding names a known rule")
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub line: usize,
    pub statement: String,
    pub reason: &'static str,
    pub instead: &'static str,
    /// Accepted by a `-- mre-ops:allow RULE` comment.
    pub allowed: bool,
}

/// The name a (possibly schema-qualified) table reference ends with, from `i`.
fn name_at(toks: &[Tok], mut i: usize) -> (Option<String>, usize) {
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

fn skip_words(toks: &[Tok], mut i: usize, words: &[&str]) -> usize {
    while let Some(Tok::Word(w)) = toks.get(i) {
        if words.contains(&w.as_str()) {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// `a , b , c` at parenthesis depth 0.
fn actions(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut from = 0;
    for (k, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                parts.push(&toks[from..k]);
                from = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&toks[from..]);
    parts
}

fn words_in(toks: &[Tok]) -> Vec<&str> {
    toks.iter()
        .filter_map(|t| match t {
            Tok::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .collect()
}

fn has_seq(words: &[&str], seq: &[&str]) -> bool {
    words.windows(seq.len()).any(|w| w == seq)
}

/// Lint one migration. `new_tables` holds the tables created by earlier
/// migrations of the same batch; this one's are added to it.
pub fn lint(sql: &str, new_tables: &mut BTreeSet<String>) -> Vec<Finding> {
    let stmts = split(sql);
    let mut found: Vec<Finding> = Vec::new();
    let mut lock_timeout = false;
    let mut lock_timeout_reported = false;
    for s in &stmts {
        let t = &s.toks;
        let w0 = s.word(0).unwrap_or("");
        let mut hits: Vec<&'static str> = Vec::new();
        let mut locks_existing = false;
        match w0 {
            "set" => {
                let i = skip_words(t, 1, &["session", "local"]);
                if matches!(t.get(i), Some(Tok::Word(w)) if w == "lock_timeout") {
                    lock_timeout = true;
                }
            }
            "create" => {
                let i = skip_words(
                    t,
                    1,
                    &[
                        "or",
                        "replace",
                        "global",
                        "local",
                        "temporary",
                        "temp",
                        "unlogged",
                    ],
                );
                match s.word(i) {
                    Some("table") => {
                        let j = skip_words(t, i + 1, &["if", "not", "exists"]);
                        if let (Some(name), _) = name_at(t, j) {
                            new_tables.insert(name);
                        }
                    }
                    Some("unique") | Some("index") => {
                        let words = words_in(t);
                        if let Some(on) = t
                            .iter()
                            .position(|x| matches!(x, Tok::Word(w) if w == "on"))
                        {
                            let j = skip_words(t, on + 1, &["only"]);
                            let (table, _) = name_at(t, j);
                            let existing = table.map(|n| !new_tables.contains(&n)).unwrap_or(false);
                            if existing && !words.contains(&"concurrently") {
                                hits.push("require-concurrent-index-creation");
                                locks_existing = true;
                            }
                        }
                    }
                    _ => {}
                }
            }
            "drop" if s.word(1) == Some("table") => {
                let j = skip_words(t, 2, &["if", "exists"]);
                let (table, _) = name_at(t, j);
                if table.map(|n| !new_tables.contains(&n)).unwrap_or(true) {
                    hits.push("ban-drop-table");
                    locks_existing = true;
                }
            }
            "alter" if s.word(1) == Some("table") => {
                let j = skip_words(t, 2, &["if", "exists", "only"]);
                let (table, after) = name_at(t, j);
                let existing = table.map(|n| !new_tables.contains(&n)).unwrap_or(true);
                let after = if t.get(after) == Some(&Tok::Punct('*')) {
                    after + 1
                } else {
                    after
                };
                for action in actions(&t[after.min(t.len())..]) {
                    let w = words_in(action);
                    let first = w.first().copied().unwrap_or("");
                    let mut a: Vec<&'static str> = Vec::new();
                    match first {
                        "drop"
                            if !matches!(
                                w.get(1),
                                Some(&"constraint") | Some(&"default") | Some(&"not")
                            ) =>
                        {
                            a.push("ban-drop-column");
                        }
                        "add" => {
                            let constraint = matches!(
                                w.get(1),
                                Some(&"constraint")
                                    | Some(&"check")
                                    | Some(&"foreign")
                                    | Some(&"unique")
                                    | Some(&"primary")
                                    | Some(&"exclude")
                            );
                            let not_valid = has_seq(&w, &["not", "valid"]);
                            if constraint {
                                if has_seq(&w, &["foreign", "key"]) && !not_valid {
                                    a.push("adding-foreign-key-constraint");
                                } else if w.contains(&"check") && !not_valid {
                                    a.push("constraint-missing-not-valid");
                                }
                            } else {
                                // ADD [COLUMN] name type ...
                                if has_seq(&w, &["not", "null"])
                                    && !w.contains(&"default")
                                    && !w.contains(&"generated")
                                    && !w.iter().any(|x| x.ends_with("serial"))
                                {
                                    a.push("adding-required-field");
                                }
                                if w.contains(&"references") && !not_valid {
                                    a.push("adding-foreign-key-constraint");
                                }
                            }
                        }
                        "alter" => {
                            if has_seq(&w, &["set", "not", "null"]) {
                                a.push("adding-not-nullable-field");
                            }
                            if w.contains(&"type") && !w.contains(&"default") {
                                a.push("changing-column-type");
                            }
                        }
                        "rename" => {
                            if w.get(1) == Some(&"to") {
                                a.push("renaming-table");
                            } else if w.get(1) != Some(&"constraint") {
                                a.push("renaming-column");
                            }
                        }
                        "validate" => {}
                        _ => {}
                    }
                    if existing {
                        locks_existing = true;
                        hits.extend(a);
                    }
                }
            }
            "alter" if s.word(1) == Some("index") && s.has_word("rename") => {}
            _ => {}
        }
        if locks_existing && !lock_timeout && !lock_timeout_reported {
            lock_timeout_reported = true;
            hits.push("require-lock-timeout");
        }
        let text = one_line(&sql[s.start..s.end]);
        let mut allows = s.allows.clone();
        for name in hits {
            let r = rule(name);
            let allowed = if let Some(k) = allows.iter().position(|a| a == name) {
                allows.remove(k);
                true
            } else {
                false
            };
            found.push(Finding {
                rule: r.name,
                line: s.line,
                statement: text.clone(),
                reason: r.reason,
                instead: r.instead,
                allowed,
            });
        }
    }
    found
}

fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 100 {
        format!("{}...", flat.chars().take(97).collect::<String>())
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sql: &str) -> Vec<&'static str> {
        lint(sql, &mut BTreeSet::new())
            .into_iter()
            .filter(|f| !f.allowed)
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn splits_strings_comments_and_dollar_quotes() {
        let s = split(
            "SELECT ';' /* ; /* nested ; */ */ FROM \"a;b\";\n-- x; y\nDO $f$ BEGIN; END $f$; SELECT E'\\';'",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].line, 3);
        assert_eq!(s[1].toks[1], Tok::Str);
    }

    #[test]
    fn modes() {
        assert_eq!(
            mode(&split("CREATE TABLE a (x int); CREATE INDEX a_x ON a (x);")),
            Mode::Transaction
        );
        assert!(matches!(
            mode(&split("CREATE INDEX CONCURRENTLY i ON a (x);")),
            Mode::NoTransaction(_)
        ));
        assert_eq!(
            mode(&split("BEGIN; CREATE TABLE a (x int); COMMIT;")),
            Mode::ScriptControlled
        );
        assert_eq!(
            mode(&split("SELECT 'begin; concurrently'")),
            Mode::Transaction
        );
    }

    #[test]
    fn each_rule_fires_on_danger_and_not_on_the_safe_form() {
        let t = "SET lock_timeout = '5s';\n";
        let cases: &[(&str, &str, &str)] = &[
            (
                "ban-drop-table",
                "DROP TABLE \"users\";",
                "CREATE TABLE x (a int); DROP TABLE x;",
            ),
            (
                "ban-drop-column",
                "ALTER TABLE \"users\" DROP COLUMN \"name\";",
                "ALTER TABLE users DROP CONSTRAINT c;",
            ),
            (
                "adding-required-field",
                "ALTER TABLE users ADD COLUMN age INTEGER NOT NULL;",
                "ALTER TABLE users ADD COLUMN age INTEGER NOT NULL DEFAULT 0;",
            ),
            (
                "adding-not-nullable-field",
                "ALTER TABLE users ALTER COLUMN name SET NOT NULL;",
                "ALTER TABLE users ALTER COLUMN name DROP NOT NULL;",
            ),
            (
                "changing-column-type",
                "ALTER TABLE users ALTER COLUMN name SET DATA TYPE VARCHAR(10);",
                "ALTER TABLE users ALTER COLUMN name SET DEFAULT 'x';",
            ),
            (
                "renaming-column",
                "ALTER TABLE users RENAME COLUMN name TO full_name;",
                "ALTER TABLE users RENAME CONSTRAINT a TO b;",
            ),
            (
                "renaming-table",
                "ALTER TABLE users RENAME TO people;",
                "CREATE VIEW people AS SELECT * FROM users;",
            ),
            (
                "require-concurrent-index-creation",
                "CREATE INDEX i ON users (name);",
                "CREATE INDEX CONCURRENTLY i ON users (name);",
            ),
            (
                "adding-foreign-key-constraint",
                "ALTER TABLE s ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES users(id);",
                "ALTER TABLE s ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES users(id) NOT VALID;",
            ),
            (
                "constraint-missing-not-valid",
                "ALTER TABLE users ADD CONSTRAINT c CHECK (age > 0);",
                "ALTER TABLE users ADD CONSTRAINT c CHECK (age > 0) NOT VALID;",
            ),
        ];
        for (rule, bad, good) in cases {
            let got = rules(&format!("{t}{bad}"));
            assert_eq!(got, vec![*rule], "{bad}");
            assert!(
                rules(&format!("{t}{good}")).is_empty(),
                "{good}: {:?}",
                rules(&format!("{t}{good}"))
            );
        }
        assert_eq!(
            rules("ALTER TABLE users ADD COLUMN x int;"),
            vec!["require-lock-timeout"]
        );
        assert!(rules("CREATE TABLE t (a int); ALTER TABLE t ADD COLUMN b int NOT NULL; CREATE INDEX i ON t(b);").is_empty());
    }

    #[test]
    fn allow_comment_accepts_one_finding() {
        let sql = "SET lock_timeout = '1s';\n-- mre-ops:allow ban-drop-column\nALTER TABLE users DROP COLUMN a;\nALTER TABLE users DROP COLUMN b;";
        let f = lint(sql, &mut BTreeSet::new());
        assert_eq!(f.len(), 2);
        assert!(f[0].allowed && !f[1].allowed);
        assert_eq!(f[1].line, 4);
    }
}
