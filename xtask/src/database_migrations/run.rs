//! Database Migration Procedures: running one migration's SQL with Prisma's
//! bookkeeping around it. The row is inserted in a round trip of its own
//! first (as Prisma does), so a failure of any kind, a syntax error
//! included, leaves a record. Then either the whole file in one transaction
//! that also completes the row, or statement by statement (`progress`),
//! each statement committing with the row's count where PostgreSQL allows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::bookkeeping::Db;
use super::lint::{self, tx_control, Mode, Statement, TxControl};
use super::progress;
use super::resume::{in_script_transaction, text};
use crate::adapters::postgres;

/// SQLSTATEs of a transaction that PostgreSQL refused as a whole, leaving
/// nothing behind, which statement by statement would not have: 25001
/// (a command that cannot run inside a transaction block), 2D000 (a
/// procedure or `DO` block that commits) and 55P04 (an enum value used
/// before the transaction that adds it commits).
const RETRY_WITHOUT_TRANSACTION: &[&str] = &["25001", "2D000", "55P04"];
/// The same, for one statement in a transaction with its count.
const RETRY_ALONE: &[&str] = &["25001", "2D000"];

/// The row a migration is recorded in, and the SQL that writes it.
pub(super) struct RowRef<'a> {
    pub table: &'a str,
    pub id: &'a str,
}

impl RowRef<'_> {
    fn set(&self, what: &str) -> String {
        format!(
            "UPDATE {} SET {what} WHERE id = {}",
            self.table,
            lit(self.id)
        )
    }
    /// Before statement `k` runs on its own: say so in the row.
    fn running_alone(&self, k: usize, stmts: &[Statement], sql: &str) -> String {
        let s = &stmts[k];
        self.set(&format!(
            "logs = {}",
            lit(&progress::running_alone(
                k,
                stmts.len(),
                s.line,
                text(sql, s)
            ))
        ))
    }
    fn progress(&self, done: usize, stmts: &[Statement], sql: &str) -> String {
        let next = stmts.get(done).map(|s| (s.line, text(sql, s)));
        self.set(&format!(
            "applied_steps_count = {done}, logs = {}",
            lit(&progress::statements(done, stmts.len(), next))
        ))
    }
    /// Prisma's finished row: count 1, logs NULL, the real finish time
    /// (`clock_timestamp()`: `now()` is the transaction's start).
    pub fn finish(&self) -> String {
        self.set("applied_steps_count = 1, finished_at = clock_timestamp(), logs = NULL")
    }
    pub fn insert(&self, checksum: &str, name: &str, logs: &str) -> String {
        format!(
            "INSERT INTO {} (id, checksum, started_at, migration_name, logs) VALUES ({}, {}, now(), {}, {})",
            self.table,
            lit(self.id),
            lit(checksum),
            lit(name),
            lit(logs)
        )
    }
}

/// A string constant for a simple query (standard_conforming_strings is on
/// since PostgreSQL 9.1; E'' when a backslash needs care anyway).
pub(super) fn lit(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// How a run ended.
pub(super) struct Outcome {
    pub result: Result<(), postgres::Error>,
    /// How it ran in the end (a refused transaction goes statement by statement).
    pub mode: Mode,
    /// Statements committed and staying applied (statement by statement).
    pub committed: usize,
    /// The statement that failed (statement by statement), 0-based.
    pub failed_at: Option<usize>,
    /// Why the transaction was given up, when it was.
    pub retried: Option<String>,
}

/// Insert the row and run the whole script the way `mode` says.
pub(super) fn run_new(
    db: &mut Db,
    sql: &str,
    mode: &Mode,
    row: &RowRef,
    checksum: &str,
    name: &str,
) -> Outcome {
    let stmts = lint::split(sql);
    let first_logs = match mode {
        Mode::Transaction => progress::IN_TRANSACTION.to_string(),
        _ => progress::statements(
            0,
            stmts.len(),
            stmts.first().map(|s| (s.line, text(sql, s))),
        ),
    };
    let outcome = |result, mode: &Mode| Outcome {
        result,
        mode: mode.clone(),
        committed: 0,
        failed_at: None,
        retried: None,
    };
    if let Err(e) = db
        .client
        .batch_execute(&row.insert(checksum, name, &first_logs))
    {
        return outcome(Err(e), mode);
    }
    if *mode != Mode::Transaction {
        return run_statements(db, sql, &stmts, 0, row, mode);
    }
    // The script and the row's completion commit together: a crash can never
    // leave an applied migration looking failed. A failing statement skips
    // the rest of the query and leaves the transaction aborted: the caller
    // rolls it back. The newlines and the empty statement end a trailing
    // `--` comment.
    let batch = format!("BEGIN;\n{sql}\n;\n{}; COMMIT;", row.finish());
    match cancellable(db, &batch) {
        Err(e)
            if e.code()
                .is_some_and(|c| RETRY_WITHOUT_TRANSACTION.contains(&c.code())) =>
        {
            let _ = db.client.batch_execute("ROLLBACK");
            let why = db_error_text(&e)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let fallback =
                Mode::NoTransaction(format!("PostgreSQL refused it in a transaction: {why}"));
            if let Err(e) = db.client.batch_execute(&row.progress(0, &stmts, sql)) {
                return outcome(Err(e), &fallback);
            }
            let mut o = run_statements(db, sql, &stmts, 0, row, &fallback);
            o.retried = Some(why);
            o
        }
        r => outcome(r, mode),
    }
}

/// Run statements `from..` one round trip each, as psql sends them, then
/// complete the row. The count commits with each statement that can run in
/// a transaction (inside the script's own transaction, with it); a statement
/// that cannot commits alone, and the count after it.
pub(super) fn run_statements(
    db: &mut Db,
    sql: &str,
    stmts: &[Statement],
    from: usize,
    row: &RowRef,
    mode: &Mode,
) -> Outcome {
    let mut open = in_script_transaction(stmts, from);
    let mut committed = from;
    if open {
        // Resuming inside a chained transaction of the script's (after a
        // COMMIT AND CHAIN): the server rolled the open one back; open it
        // again.
        if let Err(e) = db.client.batch_execute("BEGIN") {
            return Outcome {
                result: Err(e),
                mode: mode.clone(),
                committed,
                failed_at: Some(from),
                retried: None,
            };
        }
    }
    for (k, s) in stmts.iter().enumerate().skip(from) {
        let stmt = text(sql, s);
        let count = row.progress(k + 1, stmts, sql);
        let mark = row.running_alone(k, stmts, sql);
        let control = tx_control(s);
        let r = match control {
            Some(TxControl::Begin) => cancellable(db, &format!("{stmt}\n;\n{count}")),
            Some(TxControl::Commit | TxControl::CommitChain) if open => {
                cancellable(db, &format!("{count};\n{stmt}"))
            }
            Some(TxControl::Rollback | TxControl::RollbackChain) if open => {
                cancellable(db, &format!("{stmt}\n;\n{count}"))
            }
            _ if open => cancellable(db, &format!("{stmt}\n;\n{count}")),
            Some(_) => alone(db, &mark, stmt, &count),
            None if lint::no_transaction(s).is_some() => alone(db, &mark, stmt, &count),
            None => match cancellable(db, &format!("BEGIN;\n{stmt}\n;\n{count}; COMMIT;")) {
                // Refused in a block only the catalog could foretell (REINDEX
                // of a partitioned table): nothing ran; run it alone.
                Err(e) if e.code().is_some_and(|c| RETRY_ALONE.contains(&c.code())) => {
                    let _ = db.client.batch_execute("ROLLBACK");
                    alone(db, &mark, stmt, &count)
                }
                r => r,
            },
        };
        if let Err(e) = r {
            return Outcome {
                result: Err(e),
                mode: mode.clone(),
                committed,
                failed_at: Some(k),
                retried: None,
            };
        }
        open = match control {
            Some(TxControl::Begin) => true,
            Some(TxControl::Commit) | Some(TxControl::Rollback) => false,
            Some(TxControl::CommitChain) | Some(TxControl::RollbackChain) => open,
            _ => open,
        };
        // A COMMIT (AND CHAIN) committed this count with the work before it.
        if !open || matches!(control, Some(TxControl::CommitChain)) {
            committed = k + 1;
        }
    }
    if open {
        // BEGIN without COMMIT: psql rolls it back when the file ends, and
        // so do we, rather than finish the row inside a transaction that
        // the end of the session would roll back. The error is the server's,
        // so that the row's logs record it as Prisma would.
        let e = db
            .client
            .batch_execute(
                "ROLLBACK; DO $$BEGIN RAISE EXCEPTION 'the script leaves its own transaction open (BEGIN without \
                 COMMIT): rolled back, as psql does at the end of a file; end it with COMMIT'; END$$",
            )
            .err();
        if let Some(e) = e {
            return Outcome {
                result: Err(e),
                mode: mode.clone(),
                committed,
                failed_at: None,
                retried: None,
            };
        }
    }
    Outcome {
        result: db.client.batch_execute(&row.finish()),
        mode: mode.clone(),
        committed,
        failed_at: None,
        retried: None,
    }
}

/// A statement that commits on its own, then the count; the row says so
/// while it runs (`mark`), for `resume` to ask the catalog after a kill.
fn alone(db: &mut Db, mark: &str, stmt: &str, count: &str) -> Result<(), postgres::Error> {
    db.client.batch_execute(mark)?;
    cancellable(db, stmt)?;
    db.client.batch_execute(count)
}

/// Run a migration's SQL so that Ctrl-C or SIGTERM stops it at once: a
/// watcher sends PostgreSQL's cancel request (what psql sends on Ctrl-C),
/// and the statement fails with 57014 (`conclude` says what that left).
pub(super) fn cancellable(db: &mut Db, sql: &str) -> Result<(), postgres::Error> {
    let (token, tls) = (db.client.cancel_token(), db.tls.clone());
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if crate::core::interrupt::pending().is_some() {
                    postgres::cancel(&token, &tls);
                    return;
                }
                std::thread::park_timeout(Duration::from_millis(50));
            }
        });
        let r = db.client.batch_execute(sql);
        done.store(true, Ordering::SeqCst);
        watcher.thread().unpark();
        r
    })
}

pub(super) fn db_error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("ERROR: {}", d.message());
            if let Some(detail) = d.detail() {
                s.push_str(&format!("\nDETAIL: {detail}"));
            }
            if let Some(hint) = d.hint() {
                s.push_str(&format!("\nHINT: {hint}"));
            }
            s
        }
        None => format!("{e:#}"),
    }
}

/// `logs` the way Prisma's schema engine writes them.
pub(super) fn prisma_style_logs(name: &str, e: &postgres::Error) -> String {
    let code = e
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| "N/A".into());
    format!(
        "Migration name: {name}\n\nDatabase error code: {code}\n\nDatabase error:\n{}\n",
        db_error_text(e)
    )
}
