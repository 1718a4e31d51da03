//! Disaster Recovery Procedures: where the database is and how its tools
//! run: pg_dump and pg_restore inside the database container (the runbook's
//! `docker exec -it mre-postgres pg_restore ...`) or on this machine, scratch
//! databases, and the SQL shared by backup, verify and restore.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use std::time::Duration;

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;

use crate::adapters::docker::Docker;
use crate::adapters::output::Output;
use crate::adapters::postgres::{self, describe_url};
use crate::adapters::process::Command;
use crate::config::{config_error, BackupSettings, Env, Method};

pub(super) struct Target<'a> {
    pub(super) env: &'a Env,
    pub(super) settings: BackupSettings,
    pub(super) method: Method,
    /// From the host: for the snapshot, row counts and scratch databases.
    pub(super) config: postgres::Settings,
    pub(super) url: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) password: Option<String>,
    pub(super) database: String,
    pub(super) container: Option<String>,
    pub(super) pg_bin: Option<Utf8PathBuf>,
    pub(super) folder: Utf8PathBuf,
    /// `backup create --keep-on-server`: the dump stays in `server_dir`.
    pub(super) on_server: bool,
}

impl<'a> Target<'a> {
    pub(super) fn new(env: &'a Env, method: Option<Method>) -> Result<Target<'a>> {
        let settings = env.settings.backups.clone().unwrap_or_default();
        let Some(db) = &env.settings.database else {
            return Err(config_error(format!(
                "environment `{}` has no [database] section in ops.toml: there is nothing to back up",
                env.name
            )));
        };
        let url = env.database_url()?;
        let config = postgres::parse_url(&url).map_err(|e| {
            config_error(format!(
                "the database URL of `{}` ({}) is not a valid PostgreSQL URL: {e}",
                env.name,
                describe_url(&url)
            ))
        })?;
        let (host, port) = postgres::host_port(&config.config);
        let user = config.config.get_user().unwrap_or(&db.user).to_string();
        let password = config
            .config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let database = config.config.get_dbname().unwrap_or(&db.name).to_string();
        let method = method
            .or(settings.method)
            .unwrap_or(if db.container.is_some() {
                Method::Container
            } else {
                Method::Host
            });
        if method == Method::Container && db.container.is_none() {
            return Err(config_error(format!(
                "backups of `{}` use method = \"container\", but environments.{}.database.container is not set: \
                 set it, or use method = \"host\"",
                env.name, env.name
            )));
        }
        let pg_bin = match &settings.pg_bin {
            Some(p) => Some(env.dir.join(p)),
            None => {
                let default = Utf8PathBuf::from("/usr/lib/postgresql/15/bin");
                default.join("pg_dump").exists().then_some(default)
            }
        };
        if let Err(e) = settings.offsite_target() {
            return Err(config_error(format!(
                "environments.{}.backups: {e}",
                env.name
            )));
        }
        let folder = env.dir.join(&settings.dir).join(&env.name);
        Ok(Target {
            env,
            settings,
            method,
            config,
            url,
            host,
            port,
            user,
            password,
            database,
            container: db.container.clone(),
            pg_bin,
            folder,
            on_server: false,
        })
    }

    pub(super) fn docker(&self) -> Result<Docker> {
        crate::core::session::docker(self.env)
    }

    pub(super) fn connect(&self, db: &str) -> Result<postgres::Client> {
        postgres::connect_config(&self.config, db, "mre-ops", Duration::from_secs(10)).map_err(
            |e| {
                let why = if postgres::is_tls_refusal(&e) {
                    " over TLS".to_string()
                } else {
                    format!(
                        ": is the database running (`cargo xtask status {}`)?",
                        self.env.name
                    )
                };
                e.context(format!(
                    "cannot connect to database `{db}` at {}:{} as {}{why}",
                    self.host, self.port, self.user
                ))
            },
        )
    }

    pub(super) fn program(&self, tool: &str) -> String {
        match &self.pg_bin {
            Some(bin) => bin.join(tool).to_string(),
            None => tool.to_string(),
        }
    }

    /// A PostgreSQL client tool's command line against database `db`.
    /// `tail` comes after the connection options (e.g. a file to read).
    pub(super) fn tool(&self, tool: &str, opts: &[String], db: &str) -> Tool {
        match self.method {
            Method::Container => {
                let mut argv = vec![tool.to_string()];
                argv.extend(opts.iter().cloned());
                argv.extend(["-U".into(), self.user.clone(), "-d".into(), db.into()]);
                Tool::Container(argv)
            }
            Method::Host => {
                let mut args: Vec<String> = opts.to_vec();
                args.extend([
                    "-h".into(),
                    self.host.clone(),
                    "-p".into(),
                    self.port.to_string(),
                    "-U".into(),
                    self.user.clone(),
                    "-d".into(),
                    db.into(),
                ]);
                // The same TLS as this process's connections (PGSSLMODE,
                // PGSSLROOTCERT).
                let env: Vec<(String, String)> = self
                    .password
                    .iter()
                    .map(|p| ("PGPASSWORD".to_string(), p.clone()))
                    .chain(self.config.tls.libpq_env())
                    .collect();
                Tool::Host(Command::new(&self.program(tool), args).envs(&env))
            }
        }
    }

    pub(super) fn show(&self, tool: &Tool, stdin: Option<&str>, stdout: Option<&str>) -> String {
        let redirect = |s: &mut String| {
            if let Some(i) = stdin {
                s.push_str(&format!(" < {i}"));
            }
            if let Some(o) = stdout {
                s.push_str(&format!(" > {o}"));
            }
        };
        match tool {
            Tool::Container(argv) | Tool::Server(argv) => {
                let mut s = format!(
                    "$ docker exec {}{}{} {}",
                    if stdin.is_some() { "-i " } else { "" },
                    if matches!(tool, Tool::Server(_)) {
                        "--user 0 "
                    } else {
                        ""
                    },
                    self.container.as_deref().unwrap_or("?"),
                    argv.join(" ")
                );
                redirect(&mut s);
                s.push_str("   (through the Docker Engine API)");
                s
            }
            Tool::Host(cmd) => {
                let mut s = format!("$ {}", cmd.display());
                redirect(&mut s);
                s
            }
        }
    }

    /// Run a tool, streaming `stdin` in and its output into `stdout`.
    pub(super) fn run(
        &self,
        tool: &Tool,
        stdin: Option<std::fs::File>,
        stdout: &mut dyn Write,
    ) -> Result<()> {
        match tool {
            Tool::Container(argv) | Tool::Server(argv) => {
                let user = matches!(tool, Tool::Server(_)).then_some("0");
                let container = self.container.as_deref().expect("checked in Target::new");
                let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
                let env: Vec<String> = self
                    .password
                    .iter()
                    .map(|p| format!("PGPASSWORD={p}"))
                    .collect();
                let mut input = stdin;
                let reader = input.as_mut().map(|f| f as &mut (dyn Read + Send));
                let outcome = self
                    .docker()?
                    .exec_as(user, container, &argv_ref, &env, reader, stdout)?;
                if outcome.exit_code != 0 {
                    bail!(
                        "`{}` in container {container} failed (exit code {}): {}",
                        argv[0],
                        outcome.exit_code,
                        why_failed(outcome.exit_code, outcome.stderr.trim())
                    );
                }
                Ok(())
            }
            Tool::Host(cmd) => {
                let (code, stderr) = cmd.stream(stdin, stdout).with_context(|| {
                    format!(
                        "running {}: install the PostgreSQL 15 client tools (`apt-get install postgresql-client-15`) \
                         or set backups.pg_bin in ops.toml",
                        cmd.program
                    )
                })?;
                if code != 0 {
                    bail!(
                        "`{}` failed (exit code {code}): {}",
                        cmd.display(),
                        why_failed(code, &stderr)
                    );
                }
                Ok(())
            }
        }
    }

    /// Run a dump in the database container with its SHA-256 also taken
    /// there, as the bytes leave pg_dump (a FIFO and `tee`, POSIX sh and
    /// coreutils or busybox): what arrives here can be compared with what
    /// left the server. Returns the server's hash (None for `method =
    /// "host"`, where pg_dump writes into this process directly).
    pub(super) fn run_hashed(&self, tool: &Tool, stdout: &mut dyn Write) -> Result<Option<String>> {
        let Tool::Container(argv) = tool else {
            self.run(tool, None, stdout)?;
            return Ok(None);
        };
        const SCRIPT: &str = "d=$(mktemp -d) && mkfifo \"$d/p\" || exit 70; \
            sha256sum < \"$d/p\" > \"$d/sum\" & h=$!; \
            { \"$@\"; echo $? > \"$d/rc\"; } | tee \"$d/p\"; wait $h; \
            rc=$(cat \"$d/rc\"); echo \"mre-ops-sha256 $(cut -d' ' -f1 \"$d/sum\")\" >&2; rm -rf \"$d\"; exit \"$rc\"";
        let container = self.container.as_deref().expect("checked in Target::new");
        let mut wrapped = vec!["sh", "-c", SCRIPT, "sh"];
        wrapped.extend(argv.iter().map(String::as_str));
        let env: Vec<String> = self
            .password
            .iter()
            .map(|p| format!("PGPASSWORD={p}"))
            .collect();
        let outcome = self
            .docker()?
            .exec(container, &wrapped, &env, None, stdout)?;
        let mut hash = None;
        let mut rest = Vec::new();
        for line in outcome.stderr.lines() {
            match line.strip_prefix("mre-ops-sha256 ") {
                Some(h) if h.len() == 64 => hash = Some(h.to_string()),
                _ => rest.push(line),
            }
        }
        if outcome.exit_code != 0 {
            bail!(
                "`{}` in container {container} failed (exit code {}): {}",
                argv[0],
                outcome.exit_code,
                why_failed(outcome.exit_code, rest.join("\n").trim())
            );
        }
        Ok(hash)
    }

    pub(super) fn read_tool(&self, tool: &Tool) -> Result<String> {
        let mut buf = Vec::new();
        self.run(tool, None, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim().to_string())
    }

    pub(super) fn pg_dump_version(&self) -> Result<String> {
        let tool = match self.tool("pg_dump", &["--version".into()], &self.database) {
            Tool::Container(_) | Tool::Server(_) => {
                Tool::Container(vec!["pg_dump".into(), "--version".into()])
            }
            Tool::Host(_) => Tool::Host(Command::new(&self.program("pg_dump"), ["--version"])),
        };
        self.read_tool(&tool)
    }

    // -- listing
}

pub(super) enum Tool {
    /// argv run with `docker exec` in the database container.
    Container(Vec<String>),
    /// The same as root, on a file in `backups.server_dir` (which is
    /// root's on the server).
    Server(Vec<String>),
    Host(Command),
}

/// A database created by the tool, dropped when this goes out of scope,
/// even on failure, unless it was swapped in.
pub(super) fn drop_database(t: &Target, name: &str) -> Result<()> {
    let mut admin = t.connect(&t.settings.maintenance_db)?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(name)
        ))
        .with_context(|| format!("dropping database `{name}`"))
}

/// `CREATE DATABASE new` with the live database's owner, encoding and
/// locale (from template0), so that the swapped-in database is the same to
/// the application. Grants on the database and per-database settings are
/// not copied (docs/disaster-recovery.md).
pub(super) fn create_like(
    admin: &mut postgres::Client,
    new_db: &str,
    live: &str,
    out: &Output,
) -> Result<()> {
    let row = admin
        .query_opt(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype \
             FROM pg_database WHERE datname = $1",
            &[&live],
        )
        .with_context(|| format!("reading the settings of database `{live}`"))?;
    let lit = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let (owner, like) = match &row {
        Some(r) => {
            let (owner, enc, collate, ctype): (String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            (
                Some(owner),
                format!(
                    " TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
                    lit(&enc),
                    lit(&collate),
                    lit(&ctype)
                ),
            )
        }
        None => (None, String::new()),
    };
    let create = format!("CREATE DATABASE {}{like}", ident(new_db));
    let with_owner = owner
        .as_ref()
        .map(|o| format!("{create} OWNER {}", ident(o)));
    if let Some(sql) = &with_owner {
        match admin.batch_execute(sql) {
            Ok(()) => return Ok(()),
            Err(e) => out.line(&format!(
                "warning: could not give the new database the live one's owner `{}` ({e}); it will belong to the user mre-ops connects as",
                owner.as_deref().unwrap_or("?")
            )),
        }
    }
    admin
        .batch_execute(&create)
        .with_context(|| format!("creating database `{new_db}` (the user needs CREATEDB)"))
}

pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The user tables of the client's database, quoted (`format('%I.%I')`):
/// ordinary and partitioned tables outside the system, toast and temporary
/// schemas. One list for the backup's counts and the restore's check.
pub(super) fn list_tables(client: &mut postgres::Client) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1",
            &[],
        )
        .context("listing the tables")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Exact row counts, one `SELECT count(*)` per table, in the client's
/// current transaction.
pub(super) fn count_rows(
    client: &mut postgres::Client,
    tables: &[String],
) -> Result<BTreeMap<String, i64>> {
    let mut counts = BTreeMap::new();
    for t in tables {
        // Names come from format('%I.%I'): already quoted.
        let row = client.query_one(&format!("SELECT count(*) FROM {t}"), &[]);
        match row {
            Ok(row) => {
                counts.insert(t.clone(), row.get::<_, i64>(0));
            }
            Err(e) if e.code() == Some(&postgres::SqlState::UNDEFINED_TABLE) => {}
            Err(e) => return Err(e).with_context(|| format!("counting the rows of {t}")),
        }
    }
    Ok(counts)
}

/// What a PostgreSQL tool's failure means, when it said nothing itself.
pub(super) fn why_failed(code: i64, stderr: &str) -> String {
    if !stderr.is_empty() {
        return stderr.to_string();
    }
    match code {
        137 => "killed by SIGKILL without a word: out of memory (check `dmesg` or the container's memory limit) or stopped by someone; run it again".into(),
        143 => "stopped by SIGTERM (the container or this machine is shutting down?); run it again".into(),
        c if c > 128 => format!("killed by signal {}; run it again", c - 128),
        c => format!("it printed nothing (exit code {c}); run it by hand to see why"),
    }
}
