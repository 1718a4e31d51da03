//! The demo stack's images, built offline (not a runbook section: the demo is
//! the stand-in for the MRE application that this repo deploys). The base
//! image comes from debootstrap and `docker import`, since no image can be
//! pulled; the app image holds the `mre-demo` binary built here.

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use xshell::{cmd, Shell};

use crate::adapters::output::Output;
use crate::adapters::process::Command;
use crate::config::workspace_root;
use crate::core::steps::Plan;

pub const BASE_IMAGE: &str = "mre-demo-base:bookworm-3";
pub const POSTGRES_IMAGE: &str = "mre-demo-postgres:15";
pub const PROXY_IMAGE: &str = "mre-demo-proxy:2";
/// What the base image holds: PostgreSQL (the database image), wget (the
/// runbook's container health check), nginx or HAProxy and socat (the
/// staging/production stand-ins' reverse proxy and its runtime API). A
/// change here bumps BASE_VERSION, which makes `demo prepare` build the base
/// image again; the version is in BASE_IMAGE's tag too, so that checkouts
/// with different bases on one engine never rebuild each other's.
const BASE_PACKAGES: &str = "postgresql-15,wget,nginx-light,haproxy,socat";
const BASE_VERSION: &str = "3";
const BASE_LABEL: &str = "org.mre-ops.demo-base";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub command: DemoCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DemoCommand {
    /// Build what the demo's Compose file needs (the development
    /// environment's pre-build step).
    ///
    /// The Debian base image (debootstrap of bookworm with postgresql-15 and
    /// wget, then `docker import`; about a minute, once), the PostgreSQL
    /// image, and the `mre-demo` binary staged for the app image.
    Prepare {
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
        /// Debian mirror for debootstrap.
        #[arg(
            long,
            env = "MRE_DEMO_MIRROR",
            hide_env_values = true,
            default_value = "http://deb.debian.org/debian"
        )]
        mirror: String,
    },
}

pub fn demo(out: &Output, args: &DemoArgs) -> Result<()> {
    match &args.command {
        DemoCommand::Prepare { dry_run, mirror } => prepare(out, *dry_run, mirror),
    }
}

fn prepare(out: &Output, dry_run: bool, mirror: &str) -> Result<()> {
    let root = workspace_root();
    let docker = crate::core::session::docker_at_default()?;
    let mut plan = Plan::new("demo prepare");

    if docker.image_label(BASE_IMAGE, BASE_LABEL)?.as_deref() == Some(BASE_VERSION) {
        out.detail(&format!("{BASE_IMAGE} (version {BASE_VERSION}) is present"));
    } else {
        let mirror = mirror.to_string();
        plan.action(
            format!("Build {BASE_IMAGE} (debootstrap, about a minute)"),
            format!(
                "$ debootstrap --variant=minbase --include={BASE_PACKAGES} bookworm ROOTFS {mirror}\n       \
                 $ tar -C ROOTFS -cf ROOTFS.tar . && docker import --change 'LABEL {BASE_LABEL}={BASE_VERSION}' ROOTFS.tar {BASE_IMAGE}"
            ),
            move || build_base(out, &mirror),
        );
    }
    let pg_dir = root.join("demo/docker/postgres");
    plan.command(
        format!("Build {POSTGRES_IMAGE}"),
        Command::new(
            "docker",
            ["build", "--quiet", "-t", POSTGRES_IMAGE, pg_dir.as_str()],
        ),
        out,
    );
    let proxy_dir = root.join("demo/docker/proxy");
    plan.command(
        format!("Build {PROXY_IMAGE}"),
        Command::new(
            "docker",
            ["build", "--quiet", "-t", PROXY_IMAGE, proxy_dir.as_str()],
        ),
        out,
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    plan.command(
        "Build the mre-demo binary",
        Command::new(&cargo, ["build", "-p", "mre-demo"]).dir(&root),
        out,
    );
    let built = target_dir(&root).join("debug/mre-demo");
    let staged = root.join("demo/docker/app/bin/mre-demo");
    plan.action(
        "Stage the binary for the app image",
        format!("copy {built} to {staged} when it changed"),
        move || stage(&built, &staged),
    );
    plan.execute(out, dry_run)
}

fn target_dir(root: &Utf8Path) -> Utf8PathBuf {
    match std::env::var("CARGO_TARGET_DIR") {
        Ok(dir) => root.join(dir),
        Err(_) => root.join("target"),
    }
}

fn build_base(out: &Output, mirror: &str) -> Result<()> {
    // Plain shell lines, written as xshell commands (interpolated arguments,
    // never a formatted string).
    let sh = Shell::new().context("starting a shell")?;
    use crate::core::prerequisites;
    if !prerequisites::on_path("debootstrap") {
        // Consent comes from `deploy --yes` (this is its pre-build step).
        prerequisites::require_consent(
            "debootstrap is not installed (it builds the demo's base image offline; `apt-get install debootstrap`)",
            false,
            "cargo xtask deploy development",
        )?;
        prerequisites::apt_install(out, &["debootstrap"])?;
    }
    let debootstrap = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Utf8PathBuf::from(d).join("debootstrap"))
        .find(|p| p.exists())
        .context("debootstrap is not installed: `apt-get install debootstrap` (it builds the demo's base image offline)")?;
    let scratch = crate::core::files::TempDir::new("mre-demo-rootfs")?;
    let tmp = scratch.path().join("root");
    let tar = scratch.path().join("root.tar");
    let packages = format!("--include={BASE_PACKAGES}");
    let result = (|| {
        out.detail(&format!(
            "$ {debootstrap} --variant=minbase {packages} bookworm {tmp} {mirror}"
        ));
        let mut run = cmd!(
            sh,
            "{debootstrap} --variant=minbase {packages} bookworm {tmp} {mirror}"
        );
        if out.quiet {
            run = run.quiet().ignore_stdout();
        }
        run.run().context(
            "debootstrap failed: is the Debian mirror reachable, and is this run as root?",
        )?;
        // Drop the package caches and the cluster the package created: the
        // image's entrypoint makes its own, like the official image.
        for dir in [
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "var/lib/postgresql/15",
            "etc/postgresql/15",
        ] {
            let p = tmp.join(dir);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("cleaning {p}"))?;
            }
        }
        cmd!(sh, "tar -C {tmp} -cf {tar} .")
            .quiet()
            .run()
            .with_context(|| format!("packing {tmp}"))?;
        let label = format!("LABEL {BASE_LABEL}={BASE_VERSION}");
        cmd!(sh, "docker import --change {label} {tar} {BASE_IMAGE}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("importing {tar} as {BASE_IMAGE}"))?;
        Ok(())
    })();
    drop(scratch);
    result
}

fn stage(built: &Utf8Path, staged: &Utf8Path) -> Result<()> {
    let new = std::fs::read(built)
        .with_context(|| format!("reading {built}: did `cargo build -p mre-demo` run?"))?;
    if std::fs::read(staged).ok().as_deref() == Some(new.as_slice()) {
        return Ok(());
    }
    let dir = staged.parent().expect("staged path has a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    let tmp = dir.join(".mre-demo.tmp");
    std::fs::write(&tmp, &new).with_context(|| format!("writing {tmp}"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {tmp}"))?;
    std::fs::rename(&tmp, staged).with_context(|| format!("renaming {tmp} to {staged}"))?;
    Ok(())
}
