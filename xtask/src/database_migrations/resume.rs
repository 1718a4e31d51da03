//! Database Migration Procedures: finishing a file that ran statement by
//! statement and was interrupted (kill -9, a lost runner). Its row's count
//! is exact for every statement that ran in a transaction with it; for the
//! one statement that cannot (`CREATE INDEX CONCURRENTLY`, ...), the catalog
//! says whether it took effect, after the session that ran it is gone (it
//! held the migration lock, which `deploy` waits for). `status` tells the
//! same story read-only; `deploy` acts on it.

use anyhow::{Context, Result};

use super::bookkeeping::{Db, Row};
use super::files::{checksum_matches, Local};
use super::lint::{self, after_words, qualified_at, tx_control, Statement, TxControl};

/// Where an interrupted file goes on.
pub(super) enum Resume {
    /// Run `before` (each alone, outside a transaction), then the file's
    /// statements from `next` (0-based).
    At {
        next: usize,
        before: Vec<String>,
        /// What is true of the database, in words.
        story: String,
    },
    /// Only a person can tell: why.
    Manual(String),
}

/// The statement's text in the script.
pub(super) fn text<'a>(sql: &'a str, s: &Statement) -> &'a str {
    &sql[s.start..s.end]
}

/// Whether the script is inside a transaction of its own before statement `k`.
pub(super) fn in_script_transaction(stmts: &[Statement], k: usize) -> bool {
    let mut open = false;
    for s in &stmts[..k] {
        match tx_control(s) {
            Some(TxControl::Begin) => open = true,
            Some(TxControl::Commit) | Some(TxControl::Rollback) => open = false,
            _ => {}
        }
    }
    open
}

pub(super) fn resume_point(db: &mut Db, l: &Local, r: &Row) -> Result<Resume> {
    let Some(bytes) = l.sql.as_deref() else {
        return Ok(Resume::Manual(format!(
            "{}/migration.sql is gone: check the schema by hand.",
            l.dir
        )));
    };
    if !checksum_matches(bytes, &r.checksum) {
        return Ok(Resume::Manual(format!(
            "{}/migration.sql changed since this run started, so its count ({}) no longer says which statements ran: \
             put the file back as it was (`git checkout`), or check the schema by hand.",
            l.dir, r.applied_steps_count
        )));
    }
    let sql = l.text();
    let stmts = lint::split(&sql);
    let done = usize::try_from(r.applied_steps_count).unwrap_or(0);
    let total = stmts.len();
    let Some(s) = stmts.get(done) else {
        return Ok(Resume::At {
            next: total,
            before: Vec::new(),
            story: format!(
                "all {total} statement(s) are applied; only the row's completion is missing."
            ),
        });
    };
    let head = format!("{done} of {total} statement(s) are applied");
    let line = s.line;
    // Every statement commits with its count but one the row says ran on
    // its own: only for that one is the catalog asked.
    if !super::progress::ran_alone(r) {
        return Ok(Resume::At {
            next: done,
            before: Vec::new(),
            story: format!("{head} (each committed with this count); the next is line {line}."),
        });
    }
    // The catalog as the interrupted session saw it (its search_path), then
    // the session as it was.
    replay_settings(db, &sql, &stmts, done)?;
    let found = catalog_says(db, s, &head, line, done);
    let _ = db.client.batch_execute("RESET ALL");
    db.session_settings()?;
    found
}

/// Replay the script's session settings (`SET`, `RESET`) before statement
/// `upto`, outside its own transactions: what the interrupted session had
/// when it ran the rest (a `SET search_path` decides where `CREATE TABLE t`
/// goes and which index a name means).
pub(super) fn replay_settings(
    db: &mut Db,
    sql: &str,
    stmts: &[Statement],
    upto: usize,
) -> Result<()> {
    for (k, s) in stmts.iter().enumerate().take(upto) {
        let w1 = s.word(1).unwrap_or("");
        let setting = match s.word(0) {
            Some("set") => !matches!(w1, "local" | "transaction" | "constraints"),
            Some("reset") => true,
            _ => false,
        };
        if setting && !in_script_transaction(stmts, k) {
            db.client.batch_execute(text(sql, s)).with_context(|| {
                format!(
                    "replaying line {} (`{}`) before going on",
                    s.line,
                    text(sql, s).trim()
                )
            })?;
        }
    }
    Ok(())
}

/// Whether the statement that ran on its own took effect, from the catalog.
fn catalog_says(
    db: &mut Db,
    s: &Statement,
    head: &str,
    line: usize,
    done: usize,
) -> Result<Resume> {
    let head = head.to_string();
    let w = |k: usize| s.word(k).unwrap_or("");
    let redo = |why: &str| Resume::At {
        next: done,
        before: Vec::new(),
        story: format!("{head}; line {line} {why}, so it runs again."),
    };
    let found = match (w(0), w(1)) {
        ("create", _) if s.has_word("index") => {
            let Some(name) = lint::concurrent_index(s) else {
                return Ok(Resume::Manual(format!(
                    "{head}; line {line} creates an index without a name, so whether it was built cannot be read: \
                     look for it (`\\d TABLE` in psql), then finish by hand and `migrate resolve --applied`, or name the index in the file."
                )));
            };
            match index_valid(db, &name)? {
                Some(true) => Resume::At {
                    next: done + 1,
                    before: Vec::new(),
                    story: format!("{head}, and line {line} too: index {name} was built (it finished after the client was gone)."),
                },
                Some(false) => Resume::At {
                    next: done,
                    before: vec![format!("DROP INDEX CONCURRENTLY IF EXISTS {name}")],
                    story: format!(
                        "{head}; line {line} was interrupted and left index {name} INVALID (it exists, but is neither used nor enforced): \
                         it is dropped (`DROP INDEX CONCURRENTLY IF EXISTS {name};`) and built again."
                    ),
                },
                None => redo("did not build its index"),
            }
        }
        ("drop", "index") => {
            let i = after_words(&s.toks, &["concurrently"]).unwrap_or(2);
            let i = if after_words(&s.toks[i..], &["if", "exists"]) == Some(2) {
                i + 2
            } else {
                i
            };
            match qualified_at(&s.toks, i) {
                Some(name) if index_valid(db, &name)?.is_none() => Resume::At {
                    next: done + 1,
                    before: Vec::new(),
                    story: format!("{head}, and line {line} too: index {name} is gone."),
                },
                _ => redo("did not finish"),
            }
        }
        ("alter", "table") if s.has_word("detach") => detach(db, s, &head, line, done)?,
        ("create" | "drop", "database" | "tablespace") => {
            let name = qualified_at(
                &s.toks,
                after_words(&s.toks, &["if", "exists"]).unwrap_or(2),
            )
            .unwrap_or_default();
            let bare = name.trim_matches('"').replace("\"\"", "\"");
            let q = if w(1) == "database" {
                "SELECT count(*) FROM pg_database WHERE datname = $1"
            } else {
                "SELECT count(*) FROM pg_tablespace WHERE spcname = $1"
            };
            let n: i64 = db
                .client
                .query_one(q, &[&bare])
                .context("reading the catalog")?
                .get(0);
            if (n > 0) == (w(0) == "create") {
                Resume::At {
                    next: done + 1,
                    before: Vec::new(),
                    story: format!("{head}, and line {line} too ({} {name} is done).", w(1)),
                }
            } else {
                redo("did not take effect")
            }
        }
        // Safe to repeat: the same end state however far the first run got.
        ("vacuum" | "cluster" | "discard", _) | ("alter", "system") => redo("is safe to repeat"),
        _ if tx_control(s).is_some() => redo("is safe to repeat"),
        ("reindex", _) => {
            let left = leftover_reindex_indexes(db)?;
            Resume::At {
                next: done,
                before: left
                    .iter()
                    .map(|i| format!("DROP INDEX CONCURRENTLY IF EXISTS {i}"))
                    .collect(),
                story: if left.is_empty() {
                    format!("{head}; line {line} is safe to repeat, so it runs again.")
                } else {
                    format!(
                        "{head}; line {line} was interrupted and left INVALID copies ({}): they are dropped and it runs again.",
                        left.join(", ")
                    )
                },
            }
        }
        _ => manual(&head, line),
    };
    Ok(found)
}

fn manual(head: &str, line: usize) -> Resume {
    Resume::Manual(format!(
        "{head}; whether line {line} (a statement that commits on its own) took effect cannot be read from the catalog: \
         check it by hand, then finish the rest and `migrate resolve --applied`, or reverse them and `migrate resolve --rolled-back`."
    ))
}

/// Some(valid) when the index exists.
fn index_valid(db: &mut Db, name: &str) -> Result<Option<bool>> {
    let row = db
        .client
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
            &[&name],
        )
        .with_context(|| format!("looking up index {name} in the catalog"))?;
    Ok(row.map(|r| r.get(0)))
}

/// `ALTER TABLE parent DETACH PARTITION child CONCURRENTLY`: attached, pending
/// (an interrupted detach: FINALIZE completes it), or detached.
fn detach(db: &mut Db, s: &Statement, head: &str, line: usize, done: usize) -> Result<Resume> {
    let parent = lint::altered_table(s);
    let child = after_words(&s.toks, &["partition"]).and_then(|i| qualified_at(&s.toks, i));
    let (Some(parent), Some(child)) = (parent, child) else {
        return Ok(manual(head, line));
    };
    let row = db
        .client
        .query_opt(
            "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass($1) AND inhparent = to_regclass($2)",
            &[&child, &parent],
        )
        .context("reading pg_inherits")?;
    Ok(match row.map(|r| r.get::<_, bool>(0)) {
        None => Resume::At {
            next: done + 1,
            before: Vec::new(),
            story: format!("{head}, and line {line} too: {child} is detached."),
        },
        Some(true) => Resume::At {
            next: done + 1,
            before: vec![format!("ALTER TABLE {parent} DETACH PARTITION {child} FINALIZE")],
            story: format!(
                "{head}; line {line} was interrupted with {child} pending detach: `ALTER TABLE {parent} DETACH PARTITION {child} FINALIZE;` completes it."
            ),
        },
        Some(false) => Resume::At {
            next: done,
            before: Vec::new(),
            story: format!("{head}; line {line} did not start detaching {child}, so it runs again."),
        },
    })
}

/// INVALID indexes an interrupted `REINDEX CONCURRENTLY` leaves (`*_ccnew*`, `*_ccold*`).
fn leftover_reindex_indexes(db: &mut Db) -> Result<Vec<String>> {
    let rows = db
        .client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT i.indisvalid AND (c.relname ~ '_ccnew[0-9]*$' OR c.relname ~ '_ccold[0-9]*$') ORDER BY 1",
            &[],
        )
        .context("looking for indexes an interrupted REINDEX CONCURRENTLY left")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The indexes this script builds concurrently that are INVALID now (a
/// failed or interrupted build), quoted, to drop before a retry. Only this
/// migration's: another INVALID index is none of its business.
pub(super) fn invalid_indexes_of(db: &mut Db, sql: &str) -> Vec<String> {
    let mut found = Vec::new();
    for name in lint::concurrent_indexes(&lint::split(sql)) {
        let row = db.client.query_opt(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.indexrelid = to_regclass($1) AND NOT i.indisvalid",
            &[&name],
        );
        if let Ok(Some(r)) = row {
            found.push(r.get(0));
        }
    }
    found
}
