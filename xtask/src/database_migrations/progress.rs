//! Database Migration Procedures: what a migration's row says while it
//! runs. mre-ops writes `logs` before the script (Prisma leaves it NULL
//! until a failure, and reads only `finished_at`/`rolled_back_at`), so that a
//! run killed half-way tells its story: a transaction the server rolled
//! back (safe to apply again), or how many statements of a file run
//! statement by statement are committed, and which one is next.
//!
//! Statement by statement, each statement that PostgreSQL accepts in a
//! transaction commits together with the row's count (`BEGIN; statement;
//! UPDATE …; COMMIT` in one round trip), so the count is exact however the
//! run ends. Only a statement that cannot run in a transaction (`CREATE
//! INDEX CONCURRENTLY`, ...) commits apart from it: `resume` reads the
//! catalog to tell whether it took effect.

use super::bookkeeping::Row;

pub(super) const IN_TRANSACTION: &str =
    "mre-ops: applying in a transaction. If this row stays unfinished, the run was interrupted and the server rolled the transaction back: `cargo xtask migrate deploy` applies it again.";
/// A transaction Ctrl-C or SIGTERM cancelled: rolled back (with `rolled_back_at`).
pub(super) const INTERRUPTED_TRANSACTION: &str =
    "mre-ops: interrupted (Ctrl-C or SIGTERM) while applying in a transaction: rolled back, nothing of it is in the database.";
/// Written by mre-ops before statement counts committed atomically (kept to
/// read old rows: their count can be one short).
const LEGACY_SCRIPT_CONTROLLED: &str =
    "mre-ops: applying as written (the script has its own BEGIN/COMMIT). If this row stays unfinished, check which of its parts were committed.";
const LEGACY_STATEMENTS: &str = "mre-ops: without a transaction: ";
pub(super) const STATEMENTS: &str = "mre-ops: statement by statement: ";

/// The `logs` of a file applied statement by statement, after `done` of
/// `total` statements committed.
pub(super) fn statements(done: usize, total: usize, next: Option<(usize, &str)>) -> String {
    let next = match next {
        Some((line, text)) => format!(
            "; the next is line {line}: {}",
            text.trim()
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(120)
                .collect::<String>()
        ),
        None => String::new(),
    };
    format!("{STATEMENTS}{done} of {total} statement(s) applied{next}.")
}

const ALONE: &str = "on its own (it commits apart from this count)";

/// The `logs` while statement `done` runs on its own (a `CREATE INDEX
/// CONCURRENTLY`, a `CALL` that commits): after a kill, whether it took
/// effect is for the catalog to say, not the count.
pub(super) fn running_alone(done: usize, total: usize, line: usize, text: &str) -> String {
    let first: String = text
        .trim()
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(120)
        .collect();
    format!(
        "{STATEMENTS}{done} of {total} statement(s) applied; running line {line} {ALONE}: {first}."
    )
}

/// Whether the row was left while a statement ran on its own.
pub(super) fn ran_alone(r: &Row) -> bool {
    r.logs
        .as_deref()
        .is_some_and(|l| l.starts_with(STATEMENTS) && l.contains(ALONE))
}

/// A row our transactional run left when it was killed: unfinished, no
/// error recorded, nothing counted. Only the server could have ended it, and
/// it rolls back what was not committed.
pub(super) fn killed_in_transaction(r: &Row) -> bool {
    r.failed() && r.applied_steps_count == 0 && r.logs.as_deref() == Some(IN_TRANSACTION)
}

/// A row our statement-by-statement run left when it was killed: its count
/// is exact, so `deploy` can finish the file (`resume`).
pub(super) fn killed_between_statements(r: &Row) -> bool {
    r.failed() && r.logs.as_deref().is_some_and(|l| l.starts_with(STATEMENTS))
}

/// What the row of an older mre-ops says about an interrupted run, in words
/// for `status` (rows of this one are read by `resume`).
pub(super) fn describe_legacy(r: &Row) -> Option<String> {
    let logs = r.logs.as_deref()?;
    if logs == IN_TRANSACTION {
        Some("It ran in a transaction and was interrupted: the server rolled it back, the schema is unchanged, and `migrate deploy` applies it again.".into())
    } else if let Some(rest) = logs.strip_prefix(LEGACY_STATEMENTS) {
        Some(format!(
            "It ran without a transaction and was interrupted: {rest} (recorded by an older mre-ops, whose count can miss the statement \
             that was running when its client died: check that statement in the database). Finish the rest by hand and \
             `migrate resolve --applied`, or reverse them and `migrate resolve --rolled-back`."
        ))
    } else if logs == LEGACY_SCRIPT_CONTROLLED {
        Some("It runs its own BEGIN/COMMIT and was interrupted: check which of its parts were committed.".into())
    } else {
        None
    }
}
