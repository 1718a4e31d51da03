//! Database Migration Procedures, how a migration must run: in one
//! transaction (the default: a failure leaves the schema as it was),
//! statement by statement when PostgreSQL refuses one of its statements
//! inside a transaction block or a statement uses an enum value the file
//! adds, or as written when the script has its own `BEGIN`/`COMMIT`.

use super::body;
use super::lexer::{Statement, Tok};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// BEGIN; script; COMMIT: a failure leaves the schema as it was.
    Transaction,
    /// Statement by statement, autocommit: something in it cannot run in a
    /// transaction block (the reason is given).
    NoTransaction(String),
    /// The script has its own BEGIN/COMMIT: its statements are sent one by
    /// one, as psql sends them, so its transactions are its own.
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

/// A statement that controls the transaction (`BEGIN`, `COMMIT`, ...), and
/// which way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxControl {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO: inside the script's transaction.
    Inner,
    /// COMMIT AND CHAIN: commits, and a new transaction is open.
    CommitChain,
    /// ROLLBACK AND CHAIN: rolls back, and a new transaction is open.
    RollbackChain,
}

pub fn tx_control(s: &Statement) -> Option<TxControl> {
    let w = |k| s.word(k).unwrap_or("");
    // `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN` end a transaction and open
    // the next one at once: the script stays in a transaction of its own.
    let chain = s.toks.windows(2).any(
        |p| matches!((&p[0], &p[1]), (Tok::Word(a), Tok::Word(b)) if a == "and" && b == "chain"),
    );
    match w(0) {
        "commit" | "end" if chain => Some(TxControl::CommitChain),
        "rollback" | "abort" if chain => Some(TxControl::RollbackChain),
        "begin" => Some(TxControl::Begin),
        "start" if w(1) == "transaction" => Some(TxControl::Begin),
        "commit" | "end" if w(1) != "prepared" => Some(TxControl::Commit),
        "rollback" | "abort" if w(1) == "to" || w(2) == "to" => Some(TxControl::Inner),
        "rollback" | "abort" if w(1) != "prepared" => Some(TxControl::Rollback),
        "savepoint" | "release" => Some(TxControl::Inner),
        _ => None,
    }
}

/// Why PostgreSQL refuses `s` inside a transaction block, if it does: every
/// command whose reference page says "cannot be executed inside a
/// transaction block" (PostgreSQL 15), as far as the words show it. What
/// only the catalog knows (REINDEX or CLUSTER of a partitioned table) is
/// caught when it happens: `apply` runs the file statement by statement
/// after a transaction that PostgreSQL refused (SQLSTATE 25001).
pub fn no_transaction(s: &Statement) -> Option<String> {
    let words: Vec<&str> = s
        .toks
        .iter()
        .filter_map(|t| match t {
            Tok::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .collect();
    let w = |k: usize| words.get(k).copied().unwrap_or("");
    let has = |x: &str| words.contains(&x);
    let upper = |n: usize| words[..n.min(words.len())].join(" ").to_uppercase();
    let concurrently = has("concurrently");
    let why: Option<String> = match (w(0), w(1)) {
        ("create", _) if concurrently && (w(1) == "index" || w(2) == "index") => {
            Some("CREATE INDEX CONCURRENTLY".into())
        }
        ("drop", "index") if concurrently => Some("DROP INDEX CONCURRENTLY".into()),
        ("reindex", _) if concurrently => Some("REINDEX CONCURRENTLY".into()),
        ("reindex", _) => {
            // REINDEX [ ( options ) ] { SCHEMA | DATABASE | SYSTEM } ...
            ["schema", "database", "system"]
                .into_iter()
                .find(|k| has(k))
                .map(|k| format!("REINDEX {}", k.to_uppercase()))
        }
        ("vacuum", _) => Some("VACUUM".into()),
        ("create" | "drop", "database" | "tablespace") => Some(upper(2)),
        ("alter", "database") if has("tablespace") && has("set") => {
            Some("ALTER DATABASE ... SET TABLESPACE".into())
        }
        ("alter", "system") => Some("ALTER SYSTEM".into()),
        ("alter", "table") if concurrently && has("detach") => {
            Some("ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY".into())
        }
        // CLUSTER without a table: every clustered table, each in its own transaction.
        ("cluster", _)
            if !s.toks.iter().skip(1).any(|t| {
                matches!(t, Tok::Word(w) if w != "verbose") || matches!(t, Tok::Quoted(_))
            }) =>
        {
            Some("CLUSTER of the whole database".into())
        }
        ("discard", "all") => Some("DISCARD ALL".into()),
        ("commit" | "rollback", "prepared") => Some(upper(2)),
        ("create", "subscription")
            if !option_false(s, "create_slot") && !option_false(s, "connect") =>
        {
            Some("CREATE SUBSCRIPTION (it creates a replication slot)".into())
        }
        ("drop", "subscription") => Some("DROP SUBSCRIPTION".into()),
        ("alter", "subscription")
            if has("refresh") && !option_false(s, "refresh")
                || (has("publication")
                    && matches!(w(3), "set" | "add" | "drop")
                    && !option_false(s, "refresh")) =>
        {
            Some("ALTER SUBSCRIPTION ... REFRESH".into())
        }
        _ => None,
    };
    why.map(|w| format!("line {}: {w}", s.line))
}

/// `WITH (name = false)` (or off, 0) among a statement's options.
fn option_false(s: &Statement, name: &str) -> bool {
    s.toks.windows(3).any(|w| {
        matches!(&w[0], Tok::Word(n) if n == name)
            && w[1] == Tok::Punct('=')
            && matches!(&w[2], Tok::Word(v) | Tok::Str(v) if matches!(v.to_ascii_lowercase().as_str(), "false" | "off"))
    })
}

pub fn mode(stmts: &[Statement]) -> Mode {
    if stmts.iter().any(|s| tx_control(s).is_some()) {
        return Mode::ScriptControlled;
    }
    if let Some(why) = stmts.iter().find_map(no_transaction) {
        return Mode::NoTransaction(why);
    }
    if let Some(why) = uses_added_enum_value(stmts) {
        return Mode::NoTransaction(why);
    }
    Mode::Transaction
}

/// `ALTER TYPE … ADD VALUE` runs in a transaction since PostgreSQL 12, but
/// the new value cannot be used before that transaction commits (55P04). A
/// use is the same label where it may be of that type: a string constant
/// cast to that type, or not cast at all, in any later statement or in a
/// `DO` block or routine body there. Adding the same label to another type,
/// or naming it as the neighbour of another new value of its own type
/// (`ADD VALUE 'b' AFTER 'a'`), is no use (PostgreSQL accepts both).
fn uses_added_enum_value(stmts: &[Statement]) -> Option<String> {
    // (type, label, line)
    let mut added: Vec<(String, String, usize)> = Vec::new();
    for s in stmts {
        let own = added_enum_value(s);
        for (value, ty) in body::typed_strings(s) {
            if own
                .as_ref()
                .is_some_and(|(t, _, _)| ty.as_deref().unwrap_or(t) == t)
            {
                // This statement's own label, its neighbour: of its own type.
                continue;
            }
            if let Some((t, v, line)) = added
                .iter()
                .find(|(t, v, _)| *v == value && ty.as_deref().is_none_or(|ty| ty == t))
            {
                return Some(format!(
                    "line {}: uses the enum value '{v}' of `{t}` added at line {line}, which a transaction cannot",
                    s.line
                ));
            }
        }
        if let Some((t, v, _)) = own {
            added.push((t, v, s.line));
        }
    }
    None
}

/// The type and value an `ALTER TYPE name ADD VALUE [IF NOT EXISTS] 'v'` adds.
pub fn added_enum_value(s: &Statement) -> Option<(String, String, usize)> {
    if s.word(0) != Some("alter") || s.word(1) != Some("type") {
        return None;
    }
    let ty = body::name_at(&s.toks, 2).0?;
    let at = s.toks.windows(2).position(
        |w| matches!((&w[0], &w[1]), (Tok::Word(a), Tok::Word(b)) if a == "add" && b == "value"),
    )?;
    let v = s.toks[at + 2..].iter().find_map(|t| match t {
        Tok::Str(v) => Some(v.clone()),
        _ => None,
    })?;
    Some((ty, v, s.line))
}
