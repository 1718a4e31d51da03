//! Disaster Recovery Procedures: verified database backups (runbook: Backup
//! Strategy, "Daily, 30 days, secure off-site location"; pre-deployment
//! "Backup of production database created"), restoring one (runbook:
//! Database Rollback, "Backup restoration"; Migration Rollback, "If
//! migration fails": stop the application, restore, retry), and a recovery
//! drill that rehearses the Recovery Procedures without touching anything
//! live.
//!
//! A backup is `<dir>/<env>/<database>-<UTC timestamp>.dump` (`pg_dump -Fc`)
//! and a manifest beside it, `<same name>.json`: SHA-256, size, versions,
//! times, and each table's row count taken in the dump's own snapshot. A
//! file without a manifest is never treated as a backup.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::adapters::clock::{self, Utc};
use crate::adapters::docker::Docker;
use crate::adapters::output::{Output, Tone};
use crate::adapters::postgres::describe_url;
use crate::adapters::process::Command;
use crate::config::{config_error, BackupSettings, Env, Method, Ops};
use crate::core::files::{random_hex, write_private};
use crate::core::session;
use crate::core::steps::Plan;
use crate::health_checks;

/// Create, list, verify and prune database backups (runbook: Disaster
/// Recovery Procedures, Backup Strategy; pre-deployment "Backup of
/// production database created").
#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub cmd: BackupCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum BackupCmd {
    /// `pg_dump -Fc` of the environment's database into the backup folder,
    /// with a manifest (SHA-256, sizes, versions, per-table row counts from
    /// the dump's own snapshot); copied off-site when configured. Prints
    /// the path written.
    Create {
        #[arg(default_value = "development")]
        env: String,
        /// Where pg_dump runs (default: `backups.method` in ops.toml).
        #[arg(long, value_enum)]
        method: Option<Method>,
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// The environment's backups, newest first: age, size, verified or not.
    List {
        #[arg(default_value = "development")]
        env: String,
    },
    /// Check a backup: SHA-256 against its manifest, a full restore into a
    /// scratch database (created and dropped here), and per-table row counts
    /// against the manifest. The result is recorded in the manifest.
    Verify {
        #[arg(default_value = "development")]
        env: String,
        /// A path, a name from `backup list`, or `latest`.
        #[arg(default_value = "latest")]
        backup: String,
    },
    /// Delete backups the retention policy (`keep_days`, `keep_min`) lets
    /// go; never the newest verified one.
    Prune {
        #[arg(default_value = "development")]
        env: String,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Restore an environment's database from a backup (runbook: Database
/// Rollback, "Backup restoration"; Migration Rollback, "If migration
/// fails").
///
/// Steps: refuse a backup whose checksum does not match; on a protected
/// environment ask for confirmation; stop the application containers; take
/// a safety backup; restore into a new database and check its row counts;
/// swap it in for the live one in one transaction; start the application;
/// run the health checks. A failure before the swap leaves the database as
/// it was.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Environment from ops.toml.
    pub env: String,
    /// A path, a name from `backup list`, or `latest`.
    pub backup: String,
    /// Confirm replacing a protected environment's database (for CI).
    #[arg(long)]
    pub yes: bool,
    /// Accept a backup taken of another environment or database.
    #[arg(long)]
    pub from_other_environment: bool,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for health afterwards (default: deploy.wait_secs).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
}

/// Rehearse the Recovery Procedures without touching anything live (runbook:
/// Disaster Recovery, Recovery Procedures): restore the latest backup into a
/// scratch database, verify it, time each step, and write a markdown report
/// beside the backups.
#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    #[arg(default_value = "development")]
    pub env: String,
    /// The backup to rehearse with: a path, a name from `backup list`, or
    /// `latest` (the newest that has not failed verification).
    #[arg(long, default_value = "latest")]
    pub backup: String,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
}

// ---------------------------------------------------------------------------
// The manifest.

const FORMAT: &str = "mre-ops-backup/1";

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Manifest {
    pub format: String,
    /// The dump's file name, beside this manifest.
    pub file: String,
    pub sha256: String,
    pub size: u64,
    pub environment: String,
    pub database: String,
    pub server_version: String,
    pub pg_dump_version: String,
    pub method: Method,
    /// Why it was taken: `manual`, `before migrate deploy`, `safety before restore`...
    pub reason: String,
    /// When the dump's snapshot was taken: the point in time it reflects.
    pub started_at: String,
    pub started_unix: i64,
    pub finished_at: String,
    /// The commit deployed, when known (MRE_DEPLOYED_COMMIT, GITHUB_SHA, or
    /// the git HEAD of ops.toml's folder).
    pub git_commit: Option<String>,
    /// `schema.table` -> rows, counted in the dump's snapshot.
    pub tables: BTreeMap<String, i64>,
    #[serde(default)]
    pub verifications: Vec<Verification>,
    #[serde(default)]
    pub offsite: Option<Offsite>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Verification {
    pub at: String,
    pub ok: bool,
    pub seconds: f64,
    pub detail: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Offsite {
    pub path: String,
    pub sha256_ok: bool,
    pub at: String,
}

impl Manifest {
    pub fn verified(&self) -> Option<bool> {
        self.verifications.last().map(|v| v.ok)
    }
}

/// One backup on disk.
#[derive(Clone, Debug)]
pub struct Backup {
    pub path: Utf8PathBuf,
    pub name: String,
    pub manifest: Option<Manifest>,
}

impl Backup {
    fn manifest_path(&self) -> Utf8PathBuf {
        manifest_path(&self.path)
    }
    fn manifest(&self) -> Result<&Manifest> {
        self.manifest.as_ref().ok_or_else(|| {
            anyhow!(
                "{} has no manifest ({}): it is incomplete or was not made by mre-ops, and is not trusted as a backup",
                self.path,
                self.manifest_path()
            )
        })
    }
    fn save_manifest(&self, m: &Manifest) -> Result<()> {
        let text = serde_json::to_string_pretty(m).expect("manifest serialises") + "\n";
        write_private(&self.manifest_path(), &text)
    }
}

fn manifest_path(dump: &Utf8Path) -> Utf8PathBuf {
    dump.with_extension("json")
}

fn load(path: &Utf8Path) -> Result<Backup> {
    let name = path.file_stem().unwrap_or_default().to_string();
    let mpath = manifest_path(path);
    let manifest = if mpath.exists() {
        let text = std::fs::read_to_string(&mpath).with_context(|| format!("reading {mpath}"))?;
        Some(
            serde_json::from_str::<Manifest>(&text)
                .with_context(|| format!("{mpath} is not a valid backup manifest"))?,
        )
    } else {
        None
    };
    Ok(Backup {
        path: path.to_owned(),
        name,
        manifest,
    })
}

// ---------------------------------------------------------------------------
// Where the database is and how its tools run.

struct Target<'a> {
    env: &'a Env,
    settings: BackupSettings,
    method: Method,
    /// From the host: for the snapshot, row counts and scratch databases.
    config: postgres::Config,
    url: String,
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
    container: Option<String>,
    pg_bin: Option<Utf8PathBuf>,
    folder: Utf8PathBuf,
    docker: std::cell::OnceCell<Docker>,
}

impl<'a> Target<'a> {
    fn new(env: &'a Env, method: Option<Method>) -> Result<Target<'a>> {
        let settings = env.settings.backups.clone().unwrap_or_default();
        let Some(db) = &env.settings.database else {
            return Err(config_error(format!(
                "environment `{}` has no [database] section in ops.toml: there is nothing to back up",
                env.name
            )));
        };
        let url = env.database_url()?;
        let config = postgres::Config::from_str(&url).map_err(|e| {
            config_error(format!(
                "the database URL of `{}` ({}) is not a valid PostgreSQL URL: {e}",
                env.name,
                describe_url(&url)
            ))
        })?;
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or(&db.user).to_string();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let database = config.get_dbname().unwrap_or(&db.name).to_string();
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
            docker: std::cell::OnceCell::new(),
        })
    }

    fn docker(&self) -> Result<&Docker> {
        if let Some(d) = self.docker.get() {
            return Ok(d);
        }
        let d = Docker::connect(&self.env.docker_host())?;
        Ok(self.docker.get_or_init(|| d))
    }

    fn connect(&self, db: &str) -> Result<postgres::Client> {
        let mut config = self.config.clone();
        config.dbname(db);
        config.connect_timeout(Duration::from_secs(10));
        config.application_name("mre-ops");
        config.connect(postgres::NoTls).with_context(|| {
            format!(
                "cannot connect to database `{db}` at {}:{} as {}: is the database running (`cargo xtask status {}`)?",
                self.host, self.port, self.user, self.env.name
            )
        })
    }

    fn program(&self, tool: &str) -> String {
        match &self.pg_bin {
            Some(bin) => bin.join(tool).to_string(),
            None => tool.to_string(),
        }
    }

    /// A PostgreSQL client tool's command line against database `db`.
    /// `tail` comes after the connection options (e.g. a file to read).
    fn tool(&self, tool: &str, opts: &[String], db: &str) -> Tool {
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
                let env: Vec<(String, String)> = self
                    .password
                    .iter()
                    .map(|p| ("PGPASSWORD".to_string(), p.clone()))
                    .collect();
                Tool::Host(Command::new(&self.program(tool), args).envs(&env))
            }
        }
    }

    fn show(&self, tool: &Tool, stdin: Option<&str>, stdout: Option<&str>) -> String {
        let redirect = |s: &mut String| {
            if let Some(i) = stdin {
                s.push_str(&format!(" < {i}"));
            }
            if let Some(o) = stdout {
                s.push_str(&format!(" > {o}"));
            }
        };
        match tool {
            Tool::Container(argv) => {
                let mut s = format!(
                    "$ docker exec {}{} {}",
                    if stdin.is_some() { "-i " } else { "" },
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
    fn run(&self, tool: &Tool, stdin: Option<std::fs::File>, stdout: &mut dyn Write) -> Result<()> {
        match tool {
            Tool::Container(argv) => {
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
                    .exec(container, &argv_ref, &env, reader, stdout)?;
                if outcome.exit_code != 0 {
                    bail!(
                        "`{}` in container {container} failed (exit code {}): {}",
                        argv[0],
                        outcome.exit_code,
                        outcome.stderr
                    );
                }
                Ok(())
            }
            Tool::Host(cmd) => {
                let mut child = std::process::Command::new(&cmd.program);
                child.args(&cmd.args);
                for (k, v) in &cmd.env {
                    child.env(k, v);
                }
                child
                    .stdin(match stdin {
                        Some(f) => std::process::Stdio::from(f),
                        None => std::process::Stdio::null(),
                    })
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                let mut child = child.spawn().with_context(|| {
                    format!(
                        "could not start `{}`: install the PostgreSQL 15 client tools (`apt-get install postgresql-client-15`) \
                         or set backups.pg_bin in ops.toml",
                        cmd.program
                    )
                })?;
                let mut err = child.stderr.take().expect("piped");
                let errors = std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = err.read_to_end(&mut buf);
                    buf
                });
                let mut o = child.stdout.take().expect("piped");
                let copied = std::io::copy(&mut o, stdout);
                drop(o);
                let status = child.wait().context("waiting for a PostgreSQL tool")?;
                let stderr = errors.join().unwrap_or_default();
                let stderr =
                    crate::adapters::output::redact(String::from_utf8_lossy(&stderr).trim());
                copied.with_context(|| format!("copying the output of `{}`", cmd.program))?;
                if !status.success() {
                    bail!("`{}` failed ({status}): {stderr}", cmd.display());
                }
                Ok(())
            }
        }
    }

    fn read_tool(&self, tool: &Tool) -> Result<String> {
        let mut buf = Vec::new();
        self.run(tool, None, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim().to_string())
    }

    fn pg_dump_version(&self) -> Result<String> {
        let tool = match self.tool("pg_dump", &["--version".into()], &self.database) {
            Tool::Container(_) => Tool::Container(vec!["pg_dump".into(), "--version".into()]),
            Tool::Host(_) => Tool::Host(Command::new(&self.program("pg_dump"), ["--version"])),
        };
        self.read_tool(&tool)
    }

    // -- listing

    fn backups(&self) -> Result<Vec<Backup>> {
        let mut list = Vec::new();
        let entries = match std::fs::read_dir(&self.folder) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(list),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.folder)),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", self.folder))?;
            let Ok(path) = Utf8PathBuf::from_path_buf(entry.path()) else {
                continue;
            };
            if path.extension() == Some("dump") && !path.file_name().unwrap_or("").starts_with('.')
            {
                list.push(load(&path)?);
            }
        }
        // A file without a manifest is dated by its name.
        let when = |b: &Backup| {
            b.manifest
                .as_ref()
                .map(|m| m.started_unix)
                .unwrap_or_else(|| {
                    b.name
                        .rsplit('-')
                        .find_map(Utc::parse_compact)
                        .map(|u| u.unix())
                        .unwrap_or(0)
                })
        };
        list.sort_by(|a, b| {
            let (ta, tb) = (when(a), when(b));
            tb.cmp(&ta).then(b.name.cmp(&a.name))
        });
        Ok(list)
    }

    /// `latest`, a name from `backup list`, or a path.
    fn resolve(&self, arg: &str) -> Result<Backup> {
        if arg == "latest" {
            // The newest backup worth going back to: not one whose last
            // verification failed, and not the safety copy an earlier
            // restore took of the state it was escaping.
            return self
                .backups()?
                .into_iter()
                .find(|b| {
                    b.manifest.as_ref().is_some_and(|m| {
                        m.verified() != Some(false) && !m.reason.starts_with("safety before restoring")
                    })
                })
                .ok_or_else(|| {
                    config_error(format!(
                        "there is no usable backup of `{}` in {} (failed ones and restore safety copies are \
                         skipped by `latest`; `cargo xtask backup list {}` shows them all, and takes a name): \
                         create one with `cargo xtask backup create {}`",
                        self.env.name, self.folder, self.env.name, self.env.name
                    ))
                });
        }
        let path = if arg.contains('/') {
            Utf8PathBuf::from(arg)
        } else {
            self.folder
                .join(format!("{}.dump", arg.trim_end_matches(".dump")))
        };
        if !path.is_file() {
            return Err(config_error(format!(
                "no backup `{arg}` ({path}): `cargo xtask backup list {}` shows the backups, or pass `latest` or a path",
                self.env.name
            )));
        }
        load(&path)
    }

    // -- creating

    fn create(&self, out: &Output, reason: &str) -> Result<Backup> {
        create_dir_private(&self.folder)?;
        let pg_dump_version = self
            .pg_dump_version()
            .context("asking pg_dump for its version")?;
        let mut client = self.connect(&self.database)?;
        let start = Utc::now();
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .context("starting the snapshot transaction")?;
        let row = client
            .query_one(
                "SELECT pg_export_snapshot(), current_setting('server_version')",
                &[],
            )
            .context("exporting a snapshot (pg_export_snapshot)")?;
        let snapshot: String = row.get(0);
        let server_version: String = row.get(1);
        let tables: Vec<String> = client
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
            .collect();

        let mut name = format!("{}-{}", self.database, start.compact());
        let mut n = 1;
        while self.folder.join(format!("{name}.dump")).exists() {
            n += 1;
            name = format!("{}-{}-{n}", self.database, start.compact());
        }
        let path = self.folder.join(format!("{name}.dump"));
        // Never ends in .dump: an interrupted dump cannot pass for a backup.
        let tmp = self
            .folder
            .join(format!(".{name}.dump.partial-{}", std::process::id()));
        let tool = self.tool(
            "pg_dump",
            &["-Fc".into(), format!("--snapshot={snapshot}")],
            &self.database,
        );
        out.detail(&self.show(&tool, None, Some(tmp.as_str())));

        let written = (|| -> Result<(String, u64, BTreeMap<String, i64>)> {
            let file = open_private(&tmp)?;
            let mut sink = HashingWriter::new(file);
            // Count rows in the snapshot while pg_dump reads it.
            let (dumped, counts) = std::thread::scope(|s| {
                let counter = s.spawn(|| count_rows(&mut client, &tables));
                let dumped = self.run(&tool, None, &mut sink);
                (dumped, counter.join().expect("row count thread"))
            });
            dumped.with_context(|| format!("dumping database `{}`", self.database))?;
            let counts = counts.context("counting rows in the dump's snapshot")?;
            let (file, sha, size) = sink.finish();
            if size < 5 {
                bail!("pg_dump wrote {size} bytes: not an archive");
            }
            file.sync_all().with_context(|| format!("fsync {tmp}"))?;
            Ok((sha, size, counts))
        })();
        let _ = client.batch_execute("COMMIT");
        let (sha256, size, tables) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!(
                    "the backup of `{}` failed; nothing was kept (the partial file was removed)",
                    self.env.name
                )));
            }
        };
        if !starts_with_magic(&tmp)? {
            let _ = std::fs::remove_file(&tmp);
            bail!("pg_dump's output does not start with PGDMP: not a custom-format archive; nothing was kept");
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {tmp} to {path}"))?;
        sync_dir(&self.folder)?;
        let finished = Utc::now();
        let manifest = Manifest {
            format: FORMAT.into(),
            file: format!("{name}.dump"),
            sha256,
            size,
            environment: self.env.name.clone(),
            database: self.database.clone(),
            server_version,
            pg_dump_version,
            method: self.method,
            reason: reason.into(),
            started_at: start.rfc3339(),
            started_unix: start.unix(),
            finished_at: finished.rfc3339(),
            git_commit: git_commit(&self.env.dir),
            tables,
            verifications: Vec::new(),
            offsite: None,
        };
        let mut backup = Backup {
            path,
            name,
            manifest: None,
        };
        backup.save_manifest(&manifest)?;
        backup.manifest = Some(manifest);
        if let Some(dest) = &self.settings.offsite {
            self.copy_offsite(&mut backup, &self.env.dir.join(dest), out)?;
        }
        Ok(backup)
    }

    fn copy_offsite(&self, backup: &mut Backup, root: &Utf8Path, out: &Output) -> Result<()> {
        let dest_dir = root.join(&self.env.name);
        create_dir_private(&dest_dir)
            .with_context(|| format!("the off-site location {root} (backups.offsite)"))?;
        let dest = dest_dir.join(backup.path.file_name().expect("a file"));
        let tmp = dest_dir.join(format!(".{}.partial-{}", backup.name, std::process::id()));
        let copied = (|| -> Result<String> {
            let mut from = std::fs::File::open(&backup.path)
                .with_context(|| format!("opening {}", backup.path))?;
            let mut to = open_private(&tmp)?;
            std::io::copy(&mut from, &mut to).with_context(|| format!("copying to {tmp}"))?;
            to.sync_all().with_context(|| format!("fsync {tmp}"))?;
            drop(to);
            sha256_file(&tmp)
        })();
        let m = backup.manifest.clone().expect("just written");
        match copied {
            Ok(sha) if sha == m.sha256 => {}
            Ok(sha) => {
                let _ = std::fs::remove_file(&tmp);
                bail!(
                    "the off-site copy at {dest} has SHA-256 {sha}, expected {}: the copy was not kept; \
                     the local backup {} is fine",
                    m.sha256,
                    backup.path
                );
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!(
                    "copying the backup off-site to {dest}; the local backup {} is fine",
                    backup.path
                )));
            }
        }
        std::fs::rename(&tmp, &dest).with_context(|| format!("renaming {tmp} to {dest}"))?;
        sync_dir(&dest_dir)?;
        let mut m = m;
        m.offsite = Some(Offsite {
            path: dest.to_string(),
            sha256_ok: true,
            at: Utc::now().rfc3339(),
        });
        backup.save_manifest(&m)?;
        let text = serde_json::to_string_pretty(&m).expect("manifest serialises") + "\n";
        write_private(&manifest_path(&dest), &text)?;
        backup.manifest = Some(m);
        out.detail(&format!("copied off-site to {dest} (SHA-256 checked)"));
        Ok(())
    }

    // -- checking

    /// SHA-256 and size against the manifest.
    fn check_checksum(&self, backup: &Backup) -> Result<()> {
        let m = backup.manifest()?;
        let size = std::fs::metadata(&backup.path)
            .with_context(|| format!("reading {}", backup.path))?
            .len();
        if size < m.size {
            bail!(
                "{} is truncated: {size} bytes, the manifest says {}. Do not restore it; pick another (`cargo xtask backup list {}`)",
                backup.path,
                m.size,
                self.env.name
            );
        }
        let sha = sha256_file(&backup.path)?;
        if size != m.size || sha != m.sha256 {
            bail!(
                "{} was altered: its SHA-256 is {sha} ({size} bytes), the manifest says {} ({} bytes). \
                 Do not restore it; pick another (`cargo xtask backup list {}`)",
                backup.path,
                m.sha256,
                m.size,
                self.env.name
            );
        }
        Ok(())
    }

    /// Restore `backup` into the (empty) database `db`, stopping at the first error.
    fn restore_into(&self, backup: &Backup, db: &str) -> Result<()> {
        let (tool, stdin) = self.restore_tool(backup, db)?;
        self.run(&tool, stdin, &mut std::io::sink())
            .with_context(|| format!("restoring {} into database `{db}`", backup.name))
    }

    fn restore_tool(&self, backup: &Backup, db: &str) -> Result<(Tool, Option<std::fs::File>)> {
        let opts = vec!["--exit-on-error".to_string(), "--no-password".to_string()];
        Ok(match self.method {
            // The archive streams in through the Engine API: nothing is copied into the container.
            Method::Container => (
                self.tool("pg_restore", &opts, db),
                Some(
                    std::fs::File::open(&backup.path)
                        .with_context(|| format!("opening {}", backup.path))?,
                ),
            ),
            Method::Host => {
                let Tool::Host(cmd) = self.tool("pg_restore", &opts, db) else {
                    unreachable!()
                };
                let mut cmd = cmd;
                cmd.args.push(backup.path.to_string());
                (Tool::Host(cmd), None)
            }
        })
    }

    fn show_restore(&self, backup: &Backup, db: &str) -> String {
        match self.restore_tool(backup, db) {
            Ok((tool, Some(_))) => self.show(&tool, Some(backup.path.as_str()), None),
            Ok((tool, None)) => self.show(&tool, None, None),
            Err(e) => format!("(cannot open the backup: {e})"),
        }
    }

    /// Row counts of database `db` against the manifest; Err names the differences.
    fn check_counts(&self, backup: &Backup, db: &str) -> Result<usize> {
        let m = backup.manifest()?;
        let mut client = self.connect(db)?;
        // Only names the restored database itself reports are put into SQL:
        // the manifest is a file anyone could have edited.
        let existing: std::collections::BTreeSet<String> = client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg_toast%'",
                &[],
            )
            .with_context(|| format!("listing the tables of `{db}`"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let tables: Vec<String> = m
            .tables
            .keys()
            .filter(|t| existing.contains(*t))
            .cloned()
            .collect();
        let got = count_rows(&mut client, &tables)?;
        let mut wrong = Vec::new();
        for (t, want) in &m.tables {
            match got.get(t) {
                Some(n) if n == want => {}
                Some(n) => wrong.push(format!("{t}: {n} rows, expected {want}")),
                None => wrong.push(format!("{t}: missing")),
            }
        }
        if !wrong.is_empty() {
            bail!(
                "the restored data differs from the manifest: {}",
                wrong.join("; ")
            );
        }
        Ok(m.tables.len())
    }

    fn record(&self, backup: &Backup, ok: bool, seconds: f64, detail: &str) -> Result<()> {
        let Some(mut m) = backup.manifest.clone() else {
            return Ok(());
        };
        // Re-read: another step may have updated it.
        if let Ok(b) = load(&backup.path) {
            if let Some(fresh) = b.manifest {
                m = fresh;
            }
        }
        m.verifications.push(Verification {
            at: Utc::now().rfc3339(),
            ok,
            seconds: (seconds * 1000.0).round() / 1000.0,
            detail: detail.to_string(),
        });
        backup.save_manifest(&m)
    }

    fn scratch(&self, tag: &str) -> Result<Scratch<'_>> {
        let name = format!("mre_ops_{tag}_{}_{}", std::process::id(), random_hex(4)?);
        let mut admin = self.connect(&self.settings.maintenance_db)?;
        admin
            .batch_execute(&format!("CREATE DATABASE {} TEMPLATE template0", ident(&name)))
            .with_context(|| {
                format!(
                    "creating the scratch database `{name}`: the user {} needs the CREATEDB privilege",
                    self.user
                )
            })?;
        Ok(Scratch {
            target: self,
            name,
            keep: Cell::new(false),
        })
    }

    /// Checksum, restore into a scratch database, row counts; each step timed.
    fn rehearse(&self, backup: &Backup, out: &Output) -> Rehearsal {
        let mut r = Rehearsal::default();
        let step = |r: &mut Rehearsal, title: &str, f: &mut dyn FnMut() -> Result<String>| {
            if r.failed.is_some() {
                return;
            }
            let _s = out.section(title);
            let t = Instant::now();
            let result = f();
            let secs = t.elapsed().as_secs_f64();
            match result {
                Ok(detail) => r.steps.push((title.to_string(), secs, true, detail)),
                Err(e) => {
                    let text = format!("{e:#}");
                    r.steps.push((title.to_string(), secs, false, text.clone()));
                    r.failed = Some(text);
                }
            }
        };
        step(
            &mut r,
            "Check the SHA-256 against the manifest",
            &mut || {
                self.check_checksum(backup)?;
                Ok(format!(
                    "{} bytes, SHA-256 {}",
                    backup.manifest()?.size,
                    backup.manifest()?.sha256
                ))
            },
        );
        let scratch: RefCell<Option<Scratch>> = RefCell::new(None);
        step(&mut r, "Create a scratch database", &mut || {
            let s = self.scratch("verify")?;
            let name = s.name.clone();
            *scratch.borrow_mut() = Some(s);
            Ok(format!("`{name}` on {}", describe_url(&self.url)))
        });
        r.inconclusive = r.failed.is_some() && r.steps.len() == 2;
        step(
            &mut r,
            "Restore into it (pg_restore --exit-on-error)",
            &mut || {
                let db = scratch.borrow().as_ref().expect("created").name.clone();
                self.restore_into(backup, &db)?;
                Ok(format!("restored into `{db}` without an error"))
            },
        );
        step(
            &mut r,
            "Compare per-table row counts with the manifest",
            &mut || {
                let db = scratch.borrow().as_ref().expect("created").name.clone();
                let n = self.check_counts(backup, &db)?;
                let rows: i64 = backup.manifest()?.tables.values().sum();
                Ok(format!("{n} tables, {rows} rows, all as in the manifest"))
            },
        );
        step(
            &mut r,
            "Drop the scratch database",
            &mut || match scratch.borrow_mut().take() {
                Some(s) => {
                    let name = s.name.clone();
                    s.drop_now()?;
                    Ok(format!("`{name}` dropped"))
                }
                None => Ok("nothing to drop".into()),
            },
        );
        // A failed step leaves it: the guard drops it now.
        drop(scratch);
        r
    }
}

enum Tool {
    /// argv run with `docker exec` in the database container.
    Container(Vec<String>),
    Host(Command),
}

#[derive(Default)]
struct Rehearsal {
    /// (title, seconds, ok, detail)
    steps: Vec<(String, f64, bool, String)>,
    failed: Option<String>,
    /// The failure was the server's (no scratch database could be made),
    /// not the backup's: nothing was learnt about the backup.
    inconclusive: bool,
}

impl Rehearsal {
    fn seconds(&self) -> f64 {
        self.steps.iter().map(|s| s.1).sum()
    }

    fn steps_json(&self) -> Vec<serde_json::Value> {
        self.steps
            .iter()
            .map(
                |(t, s, ok, d)| serde_json::json!({"step": t, "seconds": s, "ok": ok, "detail": d}),
            )
            .collect()
    }

    /// One line a step: a mark, its title, how long it took, what it found.
    fn print_steps(&self, out: &Output) {
        for (title, secs, ok, d) in &self.steps {
            let mark = if *ok {
                out.paint(Tone::Good, "✓")
            } else {
                out.paint(Tone::Bad, "✗")
            };
            out.line(&format!("  {mark} {title} ({secs:.1}s): {d}"));
        }
    }
}

/// A database created by the tool, dropped when this goes out of scope,
/// even on failure, unless it was swapped in.
struct Scratch<'a> {
    target: &'a Target<'a>,
    name: String,
    keep: Cell<bool>,
}

impl Scratch<'_> {
    fn drop_now(self) -> Result<()> {
        self.keep.set(true);
        drop_database(self.target, &self.name)
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if !self.keep.get() {
            if let Err(e) = drop_database(self.target, &self.name) {
                eprintln!(
                    "warning: could not drop the scratch database `{}`: {e:#}. Drop it by hand: DROP DATABASE \"{}\"",
                    self.name, self.name
                );
            }
        }
    }
}

fn drop_database(t: &Target, name: &str) -> Result<()> {
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
fn create_like(admin: &mut postgres::Client, new_db: &str, live: &str, out: &Output) -> Result<()> {
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

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Exact row counts, one `SELECT count(*)` per table, in the client's
/// current transaction.
fn count_rows(client: &mut postgres::Client, tables: &[String]) -> Result<BTreeMap<String, i64>> {
    let mut counts = BTreeMap::new();
    for t in tables {
        // Names come from format('%I.%I'): already quoted.
        let row = client.query_one(&format!("SELECT count(*) FROM {t}"), &[]);
        match row {
            Ok(row) => {
                counts.insert(t.clone(), row.get::<_, i64>(0));
            }
            Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {}
            Err(e) => return Err(e).with_context(|| format!("counting the rows of {t}")),
        }
    }
    Ok(counts)
}

struct HashingWriter {
    file: std::fs::File,
    hasher: Sha256,
    bytes: u64,
}

impl HashingWriter {
    fn new(file: std::fs::File) -> Self {
        HashingWriter {
            file,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    fn finish(self) -> (std::fs::File, String, u64) {
        (self.file, hex(&self.hasher.finalize()), self.bytes)
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Utf8Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {path}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn starts_with_magic(path: &Utf8Path) -> Result<bool> {
    let mut head = [0u8; 5];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    Ok(f.read_exact(&mut head).is_ok() && &head == b"PGDMP")
}

fn open_private(path: &Utf8Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {path}"))
}

fn create_dir_private(dir: &Utf8Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the backup folder {dir}"))
}

fn sync_dir(dir: &Utf8Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {dir}"))
}

fn git_commit(dir: &Utf8Path) -> Option<String> {
    for key in ["MRE_DEPLOYED_COMMIT", "GITHUB_SHA"] {
        if let Some(v) = std::env::var(key).ok().filter(|v| !v.is_empty()) {
            return Some(v);
        }
    }
    Command::new("git", ["-C", dir.as_str(), "rev-parse", "HEAD"])
        .read()
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    if secs < 120 {
        format!("{secs}s")
    } else if secs < 7200 {
        format!("{}m", secs / 60)
    } else if secs < 172800 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86400)
    }
}

fn now_unix() -> i64 {
    clock::unix_secs(std::time::SystemTime::now())
}

// ---------------------------------------------------------------------------
// `cargo xtask backup ...`

pub fn backup(ops: &Ops, out: &Output, args: &BackupArgs) -> Result<()> {
    match &args.cmd {
        BackupCmd::Create {
            env,
            method,
            dry_run,
        } => {
            let env = session::env(ops, out, env)?;
            let t = Target::new(&env, *method)?;
            if *dry_run {
                let tool = t.tool(
                    "pg_dump",
                    &["-Fc".into(), "--snapshot=SNAPSHOT".into()],
                    &t.database,
                );
                let mut plan = Plan::new(format!("backup create {}", env.name));
                plan.action(
                    "Export a snapshot and count rows in it",
                    format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT pg_export_snapshot(); SELECT count(*) per table   (on {})",
                        describe_url(&t.url)
                    ),
                    || Ok(()),
                );
                plan.action(
                    "Dump through a temporary file, fsync, rename (mode 0600)",
                    t.show(
                        &tool,
                        None,
                        Some(&format!("{}/{}-TIMESTAMP.dump", t.folder, t.database)),
                    ),
                    || Ok(()),
                );
                plan.action(
                    "Write the manifest",
                    format!(
                        "{}/{}-TIMESTAMP.json (SHA-256, size, versions, row counts)",
                        t.folder, t.database
                    ),
                    || Ok(()),
                );
                if let Some(o) = &t.settings.offsite {
                    plan.action(
                        "Copy off-site and re-check the SHA-256 there",
                        format!("{}/{}/", env.dir.join(o), env.name),
                        || Ok(()),
                    );
                }
                return plan.execute(out, true);
            }
            let b = {
                let _s = out.section(&format!(
                    "Back up `{}` ({})",
                    env.name,
                    describe_url(&t.url)
                ));
                t.create(out, "manual")?
            };
            let m = b.manifest.as_ref().expect("written");
            if out.json {
                out.json_doc(&serde_json::json!({
                    "environment": env.name, "path": b.path.as_str(), "name": b.name, "manifest": m,
                }));
            } else {
                let rows: i64 = m.tables.values().sum();
                out.line(&format!(
                    "Backed up `{}`: {} tables, {rows} rows, {}, SHA-256 {}{}",
                    env.name,
                    m.tables.len(),
                    human_size(m.size),
                    &m.sha256[..16],
                    m.offsite
                        .as_ref()
                        .map(|o| format!(", copied to {}", o.path))
                        .unwrap_or_default()
                ));
                // The path alone on the last line, for scripts.
                println!("{}", b.path);
            }
            out.step_summary(&format!("Backup of `{}`: `{}`", env.name, b.path));
            Ok(())
        }
        BackupCmd::List { env } => {
            let env = session::env(ops, out, env)?;
            let t = Target::new(&env, None)?;
            list(&t, out)
        }
        BackupCmd::Verify { env, backup } => {
            if !ops.names().contains(&env.as_str())
                && (env == "latest" || env.contains('/') || env.ends_with(".dump"))
            {
                return Err(config_error(format!(
                    "`{env}` is a backup, not an environment: the environment comes first, \
                     e.g. `cargo xtask backup verify development {env}`"
                )));
            }
            let env = session::env(ops, out, env)?;
            let t = Target::new(&env, None)?;
            let b = t.resolve(backup)?;
            b.manifest()?;
            let r = t.rehearse(&b, out);
            let detail = r
                .failed
                .clone()
                .unwrap_or_else(|| "checksum, full restore and row counts ok".into());
            if r.inconclusive {
                r.print_steps(out);
                bail!(
                    "could not verify {}: {}. The backup was not judged and its manifest is unchanged; \
                     start the database (`cargo xtask status {}`) and run `cargo xtask backup verify {} {}` again",
                    b.path,
                    r.failed.as_deref().unwrap_or("?"),
                    env.name,
                    env.name,
                    b.name
                );
            }
            t.record(&b, r.failed.is_none(), r.seconds(), &detail)?;
            if out.json {
                out.json_doc(&serde_json::json!({
                    "environment": env.name, "backup": b.name, "path": b.path.as_str(),
                    "ok": r.failed.is_none(), "seconds": r.seconds(),
                    "steps": r.steps_json(),
                }));
            } else {
                r.print_steps(out);
            }
            match r.failed {
                None => {
                    out.line(&format!("Verified {} ({:.1}s)", b.path, r.seconds()));
                    Ok(())
                }
                Some(why) => bail!("backup {} FAILED verification: {why}", b.path),
            }
        }
        BackupCmd::Prune { env, dry_run } => {
            let env = session::env(ops, out, env)?;
            let t = Target::new(&env, None)?;
            prune(&t, out, *dry_run)
        }
    }
}

fn list(t: &Target, out: &Output) -> Result<()> {
    let backups = t.backups()?;
    let now = now_unix();
    let rows: Vec<serde_json::Value> = backups
        .iter()
        .map(|b| {
            let m = b.manifest.as_ref();
            serde_json::json!({
                "name": b.name,
                "path": b.path.as_str(),
                "started_at": m.map(|m| m.started_at.clone()),
                "age_secs": m.map(|m| now - m.started_unix),
                "size": m.map(|m| m.size),
                "verified": m.and_then(|m| m.verified()),
                "reason": m.map(|m| m.reason.clone()),
                "manifest": m.is_some(),
            })
        })
        .collect();
    if out.json {
        out.json_doc(&serde_json::json!({"environment": t.env.name, "folder": t.folder.as_str(), "backups": rows}));
        return Ok(());
    }
    if backups.is_empty() {
        out.line(&format!(
            "No backups of `{}` in {}. Create one: cargo xtask backup create {}",
            t.env.name, t.folder, t.env.name
        ));
        return Ok(());
    }
    out.line(&format!(
        "Backups of `{}` in {} (newest first):",
        t.env.name, t.folder
    ));
    out.line(&format!(
        "  {:<34} {:>6} {:>10}  {:<10} reason",
        "name", "age", "size", "verified"
    ));
    for b in &backups {
        match &b.manifest {
            Some(m) => {
                let verified = match m.verified() {
                    Some(true) => out.paint(Tone::Good, "yes"),
                    Some(false) => out.paint(Tone::Bad, "FAILED"),
                    None => out.paint(Tone::Warn, "no"),
                };
                out.line(&format!(
                    "  {:<34} {:>6} {:>10}  {:<10} {}",
                    b.name,
                    human_age(now - m.started_unix),
                    human_size(m.size),
                    verified,
                    m.reason
                ));
            }
            None => out.line(&format!(
                "  {:<34} {:>6} {:>10}  {:<10} no manifest: not a usable backup",
                b.name, "?", "?", "-"
            )),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Retention.

/// What retention decides for one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub name: String,
    pub keep: bool,
    pub why: String,
}

/// The policy, on backups given newest first as (name, age in seconds,
/// verified): keep the `keep_min` newest, keep those younger than
/// `keep_days`, always keep the newest verified one; the rest go.
pub fn retention(
    backups: &[(String, i64, bool)],
    keep_days: u64,
    keep_min: usize,
) -> Vec<Decision> {
    let newest_verified = backups.iter().position(|b| b.2);
    backups
        .iter()
        .enumerate()
        .map(|(i, (name, age, _))| {
            let (keep, why) = if Some(i) == newest_verified {
                (true, "the newest verified backup".to_string())
            } else if i < keep_min {
                (true, format!("one of the {keep_min} newest"))
            } else if *age < keep_days as i64 * 86400 {
                (true, format!("younger than {keep_days} days"))
            } else {
                (
                    false,
                    format!("older than {keep_days} days ({})", human_age(*age)),
                )
            };
            Decision {
                name: name.clone(),
                keep,
                why,
            }
        })
        .collect()
}

fn prune(t: &Target, out: &Output, dry_run: bool) -> Result<()> {
    let backups: Vec<Backup> = t
        .backups()?
        .into_iter()
        .filter(|b| b.manifest.is_some())
        .collect();
    let now = now_unix();
    let input: Vec<(String, i64, bool)> = backups
        .iter()
        .map(|b| {
            let m = b.manifest.as_ref().expect("filtered");
            (
                b.name.clone(),
                now - m.started_unix,
                m.verified() == Some(true),
            )
        })
        .collect();
    let decisions = retention(&input, t.settings.keep_days, t.settings.keep_min);
    // Leftovers of interrupted dumps (never valid backups), a day old or more.
    if let Ok(entries) = std::fs::read_dir(&t.folder) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(86400));
            if name.starts_with('.') && name.contains(".partial-") && old {
                if dry_run {
                    out.line(&format!("would delete {name} (an interrupted dump)"));
                } else {
                    std::fs::remove_file(e.path())
                        .with_context(|| format!("deleting {}/{name}", t.folder))?;
                    out.line(&format!("deleted {name} (an interrupted dump)"));
                }
            }
        }
    }
    let mut deleted = Vec::new();
    for (b, d) in backups.iter().zip(&decisions) {
        if d.keep {
            out.detail(&format!("keep {}: {}", b.name, d.why));
            continue;
        }
        if dry_run {
            out.line(&format!("would delete {} ({})", b.path, d.why));
        } else {
            std::fs::remove_file(&b.path).with_context(|| format!("deleting {}", b.path))?;
            std::fs::remove_file(b.manifest_path())
                .with_context(|| format!("deleting {}", b.manifest_path()))?;
            out.line(&format!("deleted {} ({})", b.path, d.why));
        }
        deleted.push(b.name.clone());
    }
    if out.json {
        out.json_doc(&serde_json::json!({
            "environment": t.env.name, "dry_run": dry_run,
            "keep_days": t.settings.keep_days, "keep_min": t.settings.keep_min,
            "decisions": decisions,
        }));
    } else {
        out.line(&format!(
            "{} {} of {} backups of `{}` (policy: keep {} days, at least {}, and the newest verified one)",
            if dry_run { "Would delete" } else { "Deleted" },
            deleted.len(),
            backups.len(),
            t.env.name,
            t.settings.keep_days,
            t.settings.keep_min
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// `cargo xtask restore ENV BACKUP`

/// Take a verified-checksum backup of `env`'s database now (used by
/// `migrate deploy` and `deploy` on staging and production: "Backup database
/// before migration"). Returns the path of the backup written.
pub fn create_backup(env: &Env, out: &Output, reason: &str) -> Result<Utf8PathBuf> {
    let t = Target::new(env, None)?;
    let b = t.create(out, reason)?;
    t.check_checksum(&b)
        .context("re-reading the backup just written")?;
    out.line(&format!("Backup of `{}` written: {}", env.name, b.path));
    Ok(b.path)
}

pub fn restore(ops: &Ops, out: &Output, args: &RestoreArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let t = Target::new(&env, None)?;
    let backup = t.resolve(&args.backup)?;
    // Refuse a damaged backup before anything else happens.
    t.check_checksum(&backup).context(
        "refusing to restore: the backup does not match its manifest; nothing was changed",
    )?;
    let m = backup.manifest()?.clone();
    if (m.environment != env.name || m.database != t.database) && !args.from_other_environment {
        return Err(config_error(format!(
            "refusing to restore: {} is a backup of database `{}` of environment `{}`, not of `{}` of `{}`. \
             If that is really what you want (e.g. seeding staging from production), pass --from-other-environment. \
             Nothing was changed",
            backup.name, m.database, m.environment, t.database, env.name
        )));
    }
    out.line(&format!(
        "Backup chosen: {} ({} of `{}`, taken {}, reason: {}, verified: {})",
        backup.name,
        m.database,
        m.environment,
        m.started_at,
        m.reason,
        match m.verified() {
            Some(true) => "yes",
            Some(false) => "FAILED",
            None => "not yet",
        }
    ));
    if !args.dry_run {
        confirm(&t, &backup, args.yes)?;
    }
    let wait = Duration::from_secs(args.wait.unwrap_or(env.settings.deploy.wait_secs));
    let app: Vec<String> = env
        .settings
        .services
        .values()
        .filter_map(|s| s.container.clone())
        .collect();
    let live = t.database.clone();
    let new_db = format!("{live}__mre_restore_{}", random_hex(4)?);
    let replaced = format!("{live}__mre_replaced_{}", Utc::now().compact());

    let stopped: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let safety: RefCell<Option<Backup>> = RefCell::new(None);
    let staged: RefCell<Option<Scratch>> = RefCell::new(None);
    let swapped = Cell::new(false);

    let mut plan = Plan::new(format!("restore {} from {}", env.name, backup.name));
    plan.action(
        "Stop the application",
        if app.is_empty() {
            "no application containers in ops.toml".to_string()
        } else {
            format!(
                "$ docker stop {}   (those running; through the Engine API)",
                app.join(" ")
            )
        },
        || {
            if app.is_empty() {
                return Ok(());
            }
            let docker = t.docker()?;
            for c in &app {
                let running = docker.container(c)?.is_some_and(|c| c.state == "running");
                if running {
                    docker.stop_container(c, 10)?;
                    stopped.borrow_mut().push(c.clone());
                    out.detail(&format!("stopped {c}"));
                }
            }
            Ok(())
        },
    );
    plan.action(
        "Take a safety backup",
        format!(
            "cargo xtask backup create {}   (into {}; with the application stopped, it holds every write)",
            env.name, t.folder
        ),
        || {
            let b = t.create(out, &format!("safety before restoring {}", backup.name))?;
            out.line(&format!("Safety backup: {}", b.path));
            *safety.borrow_mut() = Some(b);
            Ok(())
        },
    );
    plan.action(
        "Restore into a new database",
        format!(
            "CREATE DATABASE {new_db}; {}",
            t.show_restore(&backup, &new_db)
        ),
        || {
            let mut admin = t.connect(&t.settings.maintenance_db)?;
            create_like(&mut admin, &new_db, &live, out)?;
            *staged.borrow_mut() = Some(Scratch {
                target: &t,
                name: new_db.clone(),
                keep: Cell::new(false),
            });
            t.restore_into(&backup, &new_db)
        },
    );
    plan.action(
        "Verify data integrity",
        format!("per-table row counts of {new_db} against the manifest"),
        || t.check_counts(&backup, &new_db).map(drop),
    );
    plan.action(
        "Swap it in",
        format!(
            "terminate connections to {live}; BEGIN; ALTER DATABASE {live} RENAME TO {replaced}; \
             ALTER DATABASE {new_db} RENAME TO {live}; COMMIT (the replaced one is kept as {replaced})"
        ),
        || {
            swap(&t, &live, &new_db, &replaced)?;
            if let Some(s) = staged.borrow().as_ref() {
                s.keep.set(true);
            }
            swapped.set(true);
            // Kept, not dropped: a client that wrote after the safety backup
            // (anything not stopped above) has its writes only there.
            Ok(())
        },
    );
    plan.action(
        "Start the application",
        if app.is_empty() {
            "no application containers in ops.toml".to_string()
        } else {
            format!("$ docker start {}   (those stopped above)", app.join(" "))
        },
        || start_again(&t, &stopped),
    );
    plan.action(
        "Verify functionality (health checks)",
        format!(
            "every health check of `{}`, at most {} s",
            env.name,
            wait.as_secs()
        ),
        || {
            let checks = health_checks::wait_until_healthy(&env, out, wait);
            let failed: Vec<String> = checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            if !failed.is_empty() {
                bail!(
                    "health checks fail after the restore: {}",
                    failed.join("; ")
                );
            }
            Ok(())
        },
    );

    let result = plan.execute(out, args.dry_run);
    if args.dry_run {
        return result;
    }
    let safety_name = safety.borrow().as_ref().map(|b| b.name.clone());
    if let Err(e) = result {
        // Nothing half-done: drop the staged copy, start what was stopped.
        drop(staged.borrow_mut().take());
        let restarted = start_again(&t, &stopped);
        let state = if swapped.get() {
            format!(
                "The database `{live}` now holds backup {} but a later step failed. To undo: cargo xtask restore {} {} --yes",
                backup.name,
                env.name,
                safety_name.as_deref().unwrap_or("(no safety backup)")
            )
        } else {
            format!("The database `{live}` was not changed: it holds what it held before.")
        };
        let app_state = match restarted {
            Ok(()) if stopped.borrow().is_empty() => String::new(),
            Ok(()) => " The application was started again.".to_string(),
            Err(e) => format!(
                " Starting the application again failed too ({e:#}): `cargo xtask deploy {}`.",
                env.name
            ),
        };
        return Err(e.context(format!(
            "restore of `{}` failed. {state}{app_state}",
            env.name
        )));
    }
    let safety_name = safety_name.unwrap_or_default();
    if out.json {
        out.json_doc(&serde_json::json!({
            "environment": env.name, "restored": backup.name, "path": backup.path.as_str(),
            "point_in_time": m.started_at, "safety_backup": safety_name,
            "undo": format!("cargo xtask restore {} {} --yes", env.name, safety_name),
            "replaced_database": replaced,
        }));
    } else {
        out.line(&format!("Restored `{}` from {}.", env.name, backup.path));
        out.line(&format!(
            "The data now reflects {} (when that backup's snapshot was taken).",
            m.started_at
        ));
        out.line(&format!(
            "Safety backup of what was there before: {safety_name}. To undo: cargo xtask restore {} {safety_name}",
            env.name
        ));
        out.line(&format!(
            "The replaced database is kept as `{replaced}` (with any write made after the safety backup by a \
             client mre-ops did not stop). Drop it when satisfied: DROP DATABASE \"{replaced}\";"
        ));
    }
    out.step_summary(&format!(
        "Restored `{}` from `{}` (data as of {}); safety backup `{safety_name}`",
        env.name, backup.name, m.started_at
    ));
    Ok(())
}

fn start_again(t: &Target, stopped: &RefCell<Vec<String>>) -> Result<()> {
    let list = stopped.borrow().clone();
    if list.is_empty() {
        return Ok(());
    }
    let docker = t.docker()?;
    for c in &list {
        docker.start_container(c)?;
    }
    stopped.borrow_mut().clear();
    Ok(())
}

/// Rename the live database away and the restored one in, in one
/// transaction: it either happens whole or not at all.
fn swap(t: &Target, live: &str, new_db: &str, replaced: &str) -> Result<()> {
    let mut admin = t.connect(&t.settings.maintenance_db)?;
    let mut last = None;
    for _ in 0..5 {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&live],
            )
            .context("closing the connections to the live database")?;
        let sql = format!(
            "BEGIN; ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT;",
            ident(live),
            ident(replaced),
            ident(new_db),
            ident(live)
        );
        match admin.batch_execute(&sql) {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = admin.batch_execute("ROLLBACK");
                last = Some(e);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    Err(last.expect("tried")).context(format!(
        "swapping the restored database in for `{live}` (something keeps connecting to it?)"
    ))
}

/// A protected environment's database is replaced only when asked: `--yes`,
/// or its name typed on a terminal.
fn confirm(t: &Target, backup: &Backup, yes: bool) -> Result<()> {
    if !t.env.settings.protected || yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(config_error(format!(
            "`{}` is protected: restoring replaces its database `{}` with {}. \
             Pass --yes to confirm (in CI), or run this on a terminal to confirm by typing the database name. Nothing was changed",
            t.env.name, t.database, backup.name
        )));
    }
    eprint!(
        "`{}` is protected. This replaces database `{}` with backup {} (a safety backup is taken first).\n\
         Type the database name to go on: ",
        t.env.name, t.database, backup.name
    );
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the confirmation")?;
    if line.trim() != t.database {
        return Err(config_error(format!(
            "the confirmation `{}` is not the database name `{}`: nothing was changed",
            line.trim(),
            t.database
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// `cargo xtask drill [ENV]`

pub fn drill(ops: &Ops, out: &Output, args: &DrillArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let t = Target::new(&env, None)?;
    if args.dry_run {
        let mut plan = Plan::new(format!("drill {} (nothing live is touched)", env.name));
        plan.action(
            "Find the backup",
            format!("`{}` in {}", args.backup, t.folder),
            || Ok(()),
        );
        plan.action(
            "Check the SHA-256 against the manifest",
            "SHA-256 and size of the file, against its manifest",
            || Ok(()),
        );
        plan.action(
            "Restore into a scratch database",
            format!("CREATE DATABASE mre_ops_verify_PID_RAND; pg_restore --exit-on-error ...   (method {})", if t.method == Method::Container { "container" } else { "host" }),
            || Ok(()),
        );
        plan.action(
            "Compare per-table row counts with the manifest",
            "SELECT count(*) per table in the scratch database",
            || Ok(()),
        );
        plan.action(
            "Drop the scratch database",
            "DROP DATABASE mre_ops_verify_PID_RAND WITH (FORCE)   (also when a step fails)",
            || Ok(()),
        );
        plan.action(
            "Write the report",
            format!("{}/drill-TIMESTAMP.md", t.folder),
            || Ok(()),
        );
        return plan.execute(out, true);
    }
    let started = Utc::now();
    let clock = Instant::now();
    let find = Instant::now();
    let backup = t.resolve(&args.backup)?;
    let find_secs = find.elapsed().as_secs_f64();
    let m = backup.manifest()?.clone();
    let mut r = t.rehearse(&backup, out);
    r.steps.insert(
        0,
        (
            "Find the backup".into(),
            find_secs,
            true,
            backup.path.to_string(),
        ),
    );
    let total = clock.elapsed().as_secs_f64();
    let ok = r.failed.is_none();
    // A server that could not be reached says nothing about the backup.
    if !r.inconclusive {
        t.record(
            &backup,
            ok,
            r.seconds(),
            &format!("drill: {}", r.failed.as_deref().unwrap_or("ok")),
        )?;
    }

    let rows: i64 = m.tables.values().sum();
    let mut md = format!(
        "# Recovery drill: `{}`\n\n\
         - Started: {}\n- Result: **{}**\n- Total time: {:.1} s\n\
         - Backup: `{}` ({}, taken {} for \"{}\")\n\
         - Data as of: {}\n- Server: PostgreSQL {}; {}\n- Method: {:?}\n\
         - Live database: not touched (restored into a scratch database on {}, then dropped)\n\n\
         ## Steps\n\n| step | seconds | result | detail |\n|---|---:|---|---|\n",
        env.name,
        started.rfc3339(),
        if ok { "passed" } else { "FAILED" },
        total,
        backup.name,
        human_size(m.size),
        m.started_at,
        m.reason,
        m.started_at,
        m.server_version,
        m.pg_dump_version,
        t.method,
        describe_url(&t.url),
    );
    for (title, secs, ok, detail) in &r.steps {
        md.push_str(&format!(
            "| {title} | {secs:.2} | {} | {} |\n",
            if *ok { "ok" } else { "FAILED" },
            detail.replace('|', "\\|").replace('\n', " ")
        ));
    }
    md.push_str(&format!(
        "\n## What was checked\n\n\
         - The archive's SHA-256 and size against its manifest.\n\
         - A full `pg_restore --exit-on-error` into an empty scratch database.\n\
         - Row counts of all {} tables ({rows} rows) against the counts taken in the dump's own snapshot.\n\n\
         ## Tables\n\n| table | rows |\n|---|---:|\n",
        m.tables.len()
    ));
    for (t, n) in &m.tables {
        md.push_str(&format!("| {t} | {n} |\n"));
    }
    md.push_str(&format!(
        "\nTo restore this backup for real: `cargo xtask restore {} {}`\n",
        env.name, backup.name
    ));
    let report = t.folder.join(format!("drill-{}.md", started.compact()));
    write_private(&report, &md)?;
    if out.json {
        out.json_doc(&serde_json::json!({
            "environment": env.name, "ok": ok, "backup": backup.name, "report": report.as_str(),
            "seconds": total,
            "steps": r.steps_json(),
        }));
    } else {
        r.print_steps(out);
        out.line(&format!("Drill report: {report}"));
    }
    out.step_summary(&md);
    match r.failed {
        None => Ok(()),
        Some(why) => bail!(
            "the recovery drill of `{}` FAILED: {why} (report: {report})",
            env.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str, days: i64, verified: bool) -> (String, i64, bool) {
        (name.to_string(), days * 86400 + 60, verified)
    }

    #[test]
    fn retention_keeps_recent_min_and_newest_verified() {
        // Newest first.
        let backups = vec![
            b("d0", 0, false),
            b("d10", 10, false),
            b("d31", 31, false),
            b("d40", 40, true),
            b("d45", 45, false),
            b("d50", 50, true),
        ];
        let d = retention(&backups, 30, 1);
        let kept: Vec<&str> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(kept, ["d0", "d10", "d40"]);
        assert!(d[3].why.contains("newest verified"));
        // keep_min wins over age.
        let d = retention(&backups, 30, 4);
        let kept: Vec<&str> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(kept, ["d0", "d10", "d31", "d40"]);
        // All old, none verified: only keep_min.
        let old = vec![b("a", 100, false), b("b", 200, false), b("c", 300, false)];
        let d = retention(&old, 30, 2);
        assert_eq!(d.iter().filter(|d| d.keep).count(), 2);
        // keep_min 0 still keeps the newest verified.
        let old = vec![b("a", 100, false), b("b", 200, true)];
        let d = retention(&old, 30, 0);
        assert_eq!((d[0].keep, d[1].keep), (false, true));
    }
}
