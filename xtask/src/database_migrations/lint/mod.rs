//! Database Migration Procedures: "Review migration SQL before production",
//! the migration safety lint, and how each migration must run (in a
//! transaction or not). `lexer` splits scripts into statements of tokens;
//! `rules` looks at tokens, never at raw text. docs/migrations.md explains
//! why this is not a full SQL parser (figures in docs/benchmarks.md).

mod lexer;
mod rules;

use lexer::Tok;
pub use lexer::{split, Statement};
pub use rules::lint;

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
        } else {
            None
        };
        if let Some(why) = why {
            return Mode::NoTransaction(why);
        }
    }
    // `ALTER TYPE ... ADD VALUE` runs in a transaction since PostgreSQL 12;
    // only a use of the new value in the same transaction fails (55P04). A
    // file that uses a value it adds runs statement by statement.
    let mut added: Vec<(String, usize)> = Vec::new();
    for s in stmts {
        if let Some((value, line)) = added
            .iter()
            .find(|(v, _)| s.toks.iter().any(|t| matches!(t, Tok::Str(x) if x == v)))
        {
            return Mode::NoTransaction(format!(
                "line {}: uses the enum value '{value}' added at line {line}, which a transaction cannot",
                s.line
            ));
        }
        if let Some(v) = added_enum_value(s) {
            added.push((v, s.line));
        }
    }
    Mode::Transaction
}

/// The value an `ALTER TYPE name ADD VALUE [IF NOT EXISTS] 'v'` adds.
fn added_enum_value(s: &Statement) -> Option<String> {
    if s.word(0) != Some("alter") || s.word(1) != Some("type") {
        return None;
    }
    let at = s.toks.windows(2).position(
        |w| matches!((&w[0], &w[1]), (Tok::Word(a), Tok::Word(b)) if a == "add" && b == "value"),
    )?;
    s.toks[at + 2..].iter().find_map(|t| match t {
        Tok::Str(v) => Some(v.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
        assert!(matches!(s[1].toks[1], Tok::Str(_)));
    }

    #[test]
    fn enum_values_run_in_a_transaction_unless_used() {
        assert_eq!(
            mode(&split(
                "ALTER TYPE \"Role\" ADD VALUE 'admin'; CREATE TABLE t (x int);"
            )),
            Mode::Transaction
        );
        assert!(matches!(
            mode(&split("ALTER TYPE r ADD VALUE IF NOT EXISTS 'it''s' BEFORE 'b';\nUPDATE u SET role = 'it''s';")),
            Mode::NoTransaction(why) if why.contains("line 2") && why.contains("'it's'")
        ));
        // Another value, or the one it is placed before, is no use of the new one.
        assert_eq!(
            mode(&split(
                "ALTER TYPE r ADD VALUE 'a' BEFORE 'b'; UPDATE u SET role = 'b';"
            )),
            Mode::Transaction
        );
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
