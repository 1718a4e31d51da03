//! Database Migration Procedures, the lint's rules: each names a statement
//! that can break a release running against the schema before or after it,
//! why, and the safer way. A `-- mre-ops:allow RULE` comment accepts one.

use std::collections::BTreeSet;

use super::body::do_statements;
use super::lexer::{split, Statement, Tok};

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

/// What the lint knows of the tables a batch of migrations touches: those
/// in the database before it (`None`: not known, as in `review --all`, and
/// then every table the batch did not create counts as existing), and those
/// the batch created (or renamed from one it created). Only a statement on
/// an existing table can hurt the running release.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub existing: Option<BTreeSet<String>>,
    pub fresh: BTreeSet<String>,
}

impl Tables {
    /// The database's tables are known (`deploy`, `review` of the pending ones).
    pub fn known(existing: BTreeSet<String>) -> Tables {
        Tables {
            existing: Some(existing),
            fresh: BTreeSet::new(),
        }
    }
    /// `key`: a table as `table_key` names it. The database's tables are
    /// known by name only: a name there in any schema counts as existing.
    fn is_existing(&self, key: &str) -> bool {
        let name = key.rsplit_once('.').map_or(key, |(_, n)| n);
        !self.fresh.contains(key) && self.existing.as_ref().is_none_or(|e| e.contains(name))
    }
    /// `ALTER TABLE from RENAME TO to`: the table keeps its schema.
    fn rename(&mut self, from: &str, to: &str) {
        let to = match from.rsplit_once('.') {
            Some((schema, _)) => format!("{schema}.{to}"),
            None => to.to_string(),
        };
        if self.fresh.remove(from) {
            self.fresh.insert(to);
        } else if let Some(e) = &mut self.existing {
            if e.contains(from.rsplit_once('.').map_or(from, |(_, n)| n)) {
                let name = to
                    .rsplit_once('.')
                    .map_or(to.as_str(), |(_, n)| n)
                    .to_string();
                e.insert(name);
            }
        }
    }
}

/// A table reference from `i` (`t`, `"T"`, `s.t`) as the lint keys it: its
/// name, qualified by its schema unless that is `public` (the default), and
/// the index after it.
fn table_key(toks: &[Tok], mut i: usize) -> (Option<String>, usize) {
    let mut parts: Vec<String> = Vec::new();
    while let Some(Tok::Word(w) | Tok::Quoted(w)) = toks.get(i) {
        parts.push(w.clone());
        i += 1;
        if toks.get(i) != Some(&Tok::Punct('.')) {
            break;
        }
        i += 1;
    }
    let key = match parts.len() {
        0 => None,
        1 => parts.pop(),
        n => {
            let (schema, name) = (&parts[n - 2], &parts[n - 1]);
            Some(if schema == "public" {
                name.clone()
            } else {
                format!("{schema}.{name}")
            })
        }
    };
    (key, i)
}

/// The lint's verdict on one migration: findings, and what it could not read.
#[derive(Clone, Debug, Default)]
pub struct Lint {
    pub findings: Vec<Finding>,
    /// What was not linted, and why (SQL built at run time).
    pub notes: Vec<String>,
}

/// Lint one migration. `tables` holds what is known of the database and of
/// the migrations of the same batch before this one; this one's tables are
/// added to it. The SQL inside `DO` blocks is linted as the file's own.
pub fn lint(sql: &str, tables: &mut Tables) -> Lint {
    let mut stmts: Vec<Statement> = Vec::new();
    let mut notes = Vec::new();
    for s in split(sql) {
        if s.word(0) == Some("do") {
            let (inner, unread) = do_statements(&s, sql);
            stmts.extend(inner);
            notes.extend(unread);
        } else {
            stmts.push(s);
        }
    }
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
                        "materialized",
                    ],
                );
                match s.word(i) {
                    Some("table") | Some("view") => {
                        let j = skip_words(t, i + 1, &["if", "not", "exists"]);
                        // `IF NOT EXISTS` of a table that may be there already
                        // creates nothing new.
                        let if_absent = j > i + 1;
                        if let (Some(key), _) = table_key(t, j) {
                            if !(if_absent && tables.is_existing(&key)) {
                                tables.fresh.insert(key);
                            }
                        }
                    }
                    Some("unique") | Some("index") => {
                        let words = words_in(t);
                        if let Some(on) = t
                            .iter()
                            .position(|x| matches!(x, Tok::Word(w) if w == "on"))
                        {
                            let j = skip_words(t, on + 1, &["only"]);
                            let (table, _) = table_key(t, j);
                            let existing = table.is_some_and(|n| tables.is_existing(&n));
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
                let mut j = skip_words(t, 2, &["if", "exists"]);
                let mut any = false;
                loop {
                    let (table, after) = table_key(t, j);
                    match table {
                        Some(n) => {
                            any |= tables.is_existing(&n);
                            tables.fresh.remove(&n);
                        }
                        None => any = true,
                    }
                    if t.get(after) == Some(&Tok::Punct(',')) {
                        j = after + 1;
                    } else {
                        break;
                    }
                }
                if any {
                    hits.push("ban-drop-table");
                    locks_existing = true;
                }
            }
            "alter" if s.word(1) == Some("table") => {
                let j = skip_words(t, 2, &["if", "exists", "only"]);
                let (table, after) = table_key(t, j);
                let existing = table.as_deref().is_none_or(|n| tables.is_existing(n));
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
                                if let (Some(from), Some(to)) = (&table, table_key(action, 2).0) {
                                    tables.rename(from, &to);
                                }
                            } else if w.get(1) != Some(&"constraint") {
                                a.push("renaming-column");
                            }
                        }
                        _ => {}
                    }
                    if existing {
                        locks_existing = true;
                        hits.extend(a);
                    }
                }
            }
            _ => {}
        }
        if locks_existing && !lock_timeout && !lock_timeout_reported {
            lock_timeout_reported = true;
            hits.push("require-lock-timeout");
        }
        let text = one_line(sql.get(s.start..s.end).unwrap_or_default());
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
    Lint {
        findings: found,
        notes,
    }
}

fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 100 {
        format!("{}...", flat.chars().take(97).collect::<String>())
    } else {
        flat
    }
}
