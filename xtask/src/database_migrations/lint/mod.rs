//! Database Migration Procedures: "Review migration SQL before production",
//! the migration safety lint, and how each migration must run (in a
//! transaction or not). `lexer` splits scripts into statements of tokens as
//! psql does; `body` reads inside statements (casts, `DO` blocks); `mode`
//! says how a file runs; `rules` looks at tokens, never at raw text. docs/migrations.md explains
//! why this is not a full SQL parser (figures in docs/benchmarks.md).

mod body;
mod lexer;
mod mode;
mod rules;

pub use body::{after_words, altered_table, concurrent_index, concurrent_indexes, qualified_at};
pub use lexer::{split, Statement, BOM};
pub use mode::{mode, no_transaction, tx_control, Mode, TxControl};
pub use rules::{lint, Tables};

#[cfg(test)]
mod tests {
    use super::lexer::Tok;
    use super::*;

    fn rules(sql: &str) -> Vec<&'static str> {
        lint(sql, &mut Tables::default())
            .findings
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
        let f = lint(sql, &mut Tables::default()).findings;
        assert_eq!(f.len(), 2);
        assert!(f[0].allowed && !f[1].allowed);
        assert_eq!(f[1].line, 4);
    }

    /// The splitter, case by case: how many statements psql would send.
    #[test]
    fn splits_as_psql_does() {
        let cases: &[(&str, usize)] = &[
            ("CREATE TABLE a (x int); CREATE TABLE b (x int);", 2),
            // BEGIN ATOMIC bodies (SQL-standard routine bodies) are one statement.
            (
                "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT a + 1; SELECT a; END;\nCREATE TABLE t (x int);",
                2,
            ),
            (
                "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); \
                 SELECT CASE WHEN true THEN 1 ELSE 2 END; END; SELECT 1;",
                2,
            ),
            // A function in dollar quotes: its BEGIN/END are in a string.
            ("CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN NEW.x := 1; RETURN NEW; END $$ LANGUAGE plpgsql; SELECT 1;", 2),
            // Nested dollar quotes with tags.
            ("DO $outer$ BEGIN EXECUTE $q$ SELECT ';' $q$; END $outer$; SELECT 2;", 2),
            // A BEGIN that is the script's own transaction.
            ("BEGIN; CREATE TABLE a (x int); COMMIT;", 3),
            // A byte order mark is no part of the first statement.
            ("\u{feff}CREATE TABLE a (x int);", 1),
        ];
        for (sql, n) in cases {
            assert_eq!(split(sql).len(), *n, "{sql}");
        }
        assert_eq!(
            split("\u{feff}CREATE TABLE a (x int);")[0].word(0),
            Some("create")
        );
    }

    /// Every statement PostgreSQL 15 refuses inside a transaction block, and
    /// look-alikes it accepts.
    #[test]
    fn no_transaction_statements() {
        let refused = [
            "CREATE INDEX CONCURRENTLY i ON t (x)",
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x)",
            "DROP INDEX CONCURRENTLY IF EXISTS i",
            "REINDEX INDEX CONCURRENTLY i",
            "REINDEX (VERBOSE) TABLE CONCURRENTLY t",
            "REINDEX SCHEMA public",
            "REINDEX DATABASE d",
            "REINDEX SYSTEM d",
            "VACUUM",
            "VACUUM (ANALYZE) t",
            "CREATE DATABASE d",
            "DROP DATABASE IF EXISTS d",
            "CREATE TABLESPACE s LOCATION '/x'",
            "DROP TABLESPACE s",
            "ALTER DATABASE d SET TABLESPACE s",
            "ALTER SYSTEM SET work_mem = '64MB'",
            "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY",
            "CLUSTER",
            "CLUSTER VERBOSE",
            "DISCARD ALL",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p",
            "DROP SUBSCRIPTION s",
            "ALTER SUBSCRIPTION s REFRESH PUBLICATION",
        ];
        for sql in refused {
            assert!(no_transaction(&split(sql)[0]).is_some(), "{sql}");
            assert!(
                matches!(
                    mode(&split(sql)),
                    Mode::NoTransaction(_) | Mode::ScriptControlled
                ),
                "{sql}"
            );
        }
        let accepted = [
            "CREATE INDEX i ON t (x)",
            "REINDEX TABLE t",
            "ANALYZE t",
            "CLUSTER t USING i",
            "ALTER DATABASE d SET work_mem = '1MB'",
            "ALTER TABLE p DETACH PARTITION p1",
            "ALTER TABLE p DETACH PARTITION p1 FINALIZE",
            "REFRESH MATERIALIZED VIEW CONCURRENTLY v",
            "DISCARD PLANS",
            "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p WITH (connect = false)",
            "SELECT 'create index concurrently'",
        ];
        for sql in accepted {
            assert!(no_transaction(&split(sql)[0]).is_none(), "{sql}");
        }
    }

    /// A use of an enum value added in the same file is of that type's value,
    /// also inside a DO block or a routine body.
    #[test]
    fn enum_uses_by_type() {
        let tx = |sql: &str| mode(&split(sql)) == Mode::Transaction;
        // The same label added to two types: no use.
        assert!(tx(
            "ALTER TYPE a ADD VALUE 'Z'; ALTER TYPE b ADD VALUE 'Z';"
        ));
        // A neighbour of its own type (PostgreSQL accepts it in one transaction).
        assert!(tx(
            "ALTER TYPE a ADD VALUE 'Z'; ALTER TYPE a ADD VALUE 'W' AFTER 'Z';"
        ));
        // Cast to another type: no use.
        assert!(tx("ALTER TYPE a ADD VALUE 'Z'; SELECT 'Z'::b;"));
        // Uses.
        for sql in [
            "ALTER TYPE \"T\" ADD VALUE 'x'; DO $$BEGIN PERFORM 'x'::\"T\"; END$$;",
            "ALTER TYPE t ADD VALUE 'x'; DO $$ BEGIN UPDATE u SET r = 'x'; END $$;",
            "ALTER TYPE t ADD VALUE 'x'; CREATE FUNCTION f() RETURNS t AS $$ SELECT 'x'::t $$ LANGUAGE sql;",
            "ALTER TYPE t ADD VALUE 'x'; SELECT CAST('x' AS t);",
            "ALTER TYPE public.t ADD VALUE 'x'; SELECT 'x'::public.t;",
            "ALTER TYPE t ADD VALUE 'x'; ALTER TABLE u ALTER COLUMN r SET DEFAULT 'x';",
        ] {
            assert!(matches!(mode(&split(sql)), Mode::NoTransaction(w) if w.contains("'x'")), "{sql}");
        }
    }

    /// A file with its own transaction, and one with a `BEGIN ATOMIC` body.
    #[test]
    fn script_controlled_and_begin_atomic() {
        assert_eq!(
            mode(&split(
                "BEGIN; CREATE TABLE a (x int); COMMIT; CREATE INDEX CONCURRENTLY i ON a (x);"
            )),
            Mode::ScriptControlled
        );
        assert_eq!(
            mode(&split("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; CREATE TABLE t (x int);")),
            Mode::Transaction
        );
    }

    /// Tables created or renamed earlier in the batch are new; tables the
    /// database does not have are no risk.
    #[test]
    fn lint_tracks_tables_across_the_batch() {
        let mut t = Tables::default();
        let f = lint("CREATE TABLE \"A\"(id int); ALTER TABLE \"A\" RENAME TO \"B\"; CREATE INDEX i ON \"B\"(id);", &mut t);
        assert!(f.findings.is_empty(), "{:?}", f.findings);
        let f = lint("CREATE INDEX j ON \"B\"(id);", &mut t);
        assert!(
            f.findings.is_empty(),
            "an earlier migration of the batch: {:?}",
            f.findings
        );
        // Known database: a table it does not have is no risk.
        let mut t = Tables::known(["laps".to_string()].into());
        let f = lint(
            "DROP TABLE IF EXISTS \"Old\"; ALTER TABLE gone DROP COLUMN x;",
            &mut t,
        );
        assert!(f.findings.is_empty(), "{:?}", f.findings);
        let f = lint("DROP TABLE IF EXISTS laps;", &mut t);
        let rules: Vec<&str> = f.findings.iter().map(|f| f.rule).collect();
        assert_eq!(rules, ["ban-drop-table", "require-lock-timeout"]);
        // A renamed existing table stays existing under its new name.
        let mut t = Tables::known(["laps".to_string()].into());
        let f = lint(
            "SET lock_timeout = '1s'; ALTER TABLE laps RENAME TO lap; CREATE INDEX i ON lap (x);",
            &mut t,
        );
        let rules: Vec<&str> = f.findings.iter().map(|f| f.rule).collect();
        assert_eq!(
            rules,
            ["renaming-table", "require-concurrent-index-creation"]
        );
    }

    /// The SQL inside a DO block is linted, on the file's lines; SQL built at
    /// run time is named as not linted.
    #[test]
    fn lint_reads_do_blocks() {
        let sql = "SET lock_timeout = '1s';\nDO $$\nBEGIN\n  ALTER TABLE users ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES b(id);\n  \
                   ALTER TABLE users DROP COLUMN x;\n  IF true THEN\n    CREATE UNIQUE INDEX i ON users (y);\n  END IF;\n\
                   EXCEPTION WHEN duplicate_object THEN null;\nEND $$;\n";
        let f = lint(sql, &mut Tables::default());
        let got: Vec<(&str, usize)> = f.findings.iter().map(|f| (f.rule, f.line)).collect();
        assert_eq!(
            got,
            [
                ("adding-foreign-key-constraint", 4),
                ("ban-drop-column", 5),
                ("require-concurrent-index-creation", 7)
            ]
        );
        let f = lint("DO $$ BEGIN EXECUTE 'ALTER TABLE users DROP COLUMN x'; EXECUTE format('DROP TABLE %I', 'y'); END $$;", &mut Tables::default());
        let rules: Vec<&str> = f.findings.iter().map(|f| f.rule).collect();
        assert_eq!(rules, ["ban-drop-column", "require-lock-timeout"]);
        assert_eq!(f.notes.len(), 1, "{:?}", f.notes);
        // -- mre-ops:allow above the DO applies inside it.
        let f = lint("SET lock_timeout = '1s';\n-- mre-ops:allow ban-drop-column\nDO $$ BEGIN ALTER TABLE users DROP COLUMN x; END $$;", &mut Tables::default());
        assert!(f.findings.iter().all(|f| f.allowed), "{:?}", f.findings);
    }

    /// Valid or not, no input makes the splitter or the lint panic: tags
    /// and strings with non-ASCII characters, unterminated strings, a DO
    /// block whose body is a plain string with doubled quotes.
    #[test]
    fn no_input_panics() {
        let s = split("SELECT $€$hello$€$;");
        assert_eq!(s.len(), 1);
        assert!(matches!(&s[0].toks[1], Tok::Str(v) if v == "hello"));
        assert_eq!(split("SELECT 'é").len(), 1);
        assert_eq!(split("SELECT E'\\é").len(), 1);
        let f = lint(
            "SET lock_timeout = '1s';\nDO $$ BEGIN EXECUTE 'UPDATE t SET a = ''new''; -- café\nALTER TABLE t DROP COLUMN old'; END $$;",
            &mut Tables::default(),
        );
        assert!(
            f.findings.iter().any(|f| f.rule == "ban-drop-column"),
            "{:?}",
            f.findings
        );
        let _ = lint(
            "DO 'BEGIN EXECUTE ''ALTER TABLE t DROP COLUMN é''; END';",
            &mut Tables::default(),
        );
    }

    /// COMMIT AND CHAIN keeps the script in a transaction of its own.
    #[test]
    fn chained_transactions() {
        let s = split("COMMIT AND CHAIN; ROLLBACK AND CHAIN; COMMIT AND NO CHAIN; END");
        let c: Vec<_> = s.iter().map(tx_control).collect();
        assert_eq!(
            c,
            [
                Some(TxControl::CommitChain),
                Some(TxControl::RollbackChain),
                Some(TxControl::Commit),
                Some(TxControl::Commit)
            ]
        );
    }

    /// `IF NOT EXISTS` of a table the database has creates nothing new; a
    /// table of another schema is another table.
    #[test]
    fn lint_keys_tables_by_schema() {
        let rules = |sql: &str| -> Vec<&'static str> {
            let mut t = Tables::known(["users".to_string()].into());
            lint(sql, &mut t)
                .findings
                .into_iter()
                .map(|f| f.rule)
                .collect()
        };
        let t = "SET lock_timeout = '1s'; ";
        assert_eq!(
            rules(&format!(
                "{t}CREATE TABLE IF NOT EXISTS users (id int); ALTER TABLE users DROP COLUMN name;"
            )),
            ["ban-drop-column"]
        );
        assert_eq!(
            rules(&format!(
                "{t}CREATE TABLE other.users (id int); ALTER TABLE public.users DROP COLUMN name;"
            )),
            ["ban-drop-column"]
        );
        assert!(rules(&format!(
            "{t}CREATE TABLE \"public\".\"New\" (id int); CREATE INDEX i ON \"New\" (id);"
        ))
        .is_empty());
    }

    /// The index a concurrent build makes lives in its table's schema.
    #[test]
    fn concurrent_index_names() {
        let name = |sql: &str| concurrent_index(&split(sql)[0]);
        assert_eq!(
            name("CREATE INDEX CONCURRENTLY ti ON other.t (a)").as_deref(),
            Some("\"other\".\"ti\"")
        );
        assert_eq!(
            name("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"T_x\" ON ONLY t (a)").as_deref(),
            Some("\"T_x\"")
        );
        assert_eq!(
            name("CREATE INDEX CONCURRENTLY s.i ON t (a)").as_deref(),
            Some("\"s\".\"i\"")
        );
        assert_eq!(name("CREATE INDEX CONCURRENTLY ON t (a)"), None);
    }
}
