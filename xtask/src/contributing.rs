//! Contributing: `cargo xtask test`, the README's test command and the one
//! CI runs. It finds what the test suite needs (Debian packages, a running
//! Docker engine, zizmor), installs or starts what is missing when allowed
//! to (`--yes`, as root), then runs `cargo test --workspace`.

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::adapters::process::Command;
use crate::core::prerequisites::{engine_answers, is_root, on_path, start_engine};
use crate::core::steps::Plan;

/// Run the test suite, after installing what it needs.
///
/// No runbook section: the contributor's entry point, shared with CI
/// (`.ci/run`). Checks for the Debian packages the tests use (Docker and
/// Compose, debootstrap, PostgreSQL 15, docker-registry, curl, promtool,
/// chromium, pipx, iproute2, procps, OpenSSH, openssl, python3), a running Docker engine and zizmor. Without
/// `--yes` it stops and names the commands that would install them; with
/// `--yes` (as root) it runs them: `apt-get install`, `service docker start`
/// (or dockerd), `pipx install zizmor`. Then `cargo test --workspace` with
/// the arguments after `--`.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Install the missing packages and start the engine (as root).
    #[arg(long)]
    pub yes: bool,
    /// Print the steps, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Passed to `cargo test --workspace`: `-- --test tidy` runs one test
    /// file, `-- -- --skip swarm` passes `--skip swarm` to the tests.
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

/// One thing the suite needs: how to see it is there, and its package.
struct Need {
    what: &'static str,
    present: fn() -> bool,
    packages: &'static [&'static str],
}

fn compose_present() -> bool {
    on_path("docker-compose")
        || std::process::Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
}

const NEEDS: &[Need] = &[
    Need {
        what: "the Docker engine and CLI",
        present: || on_path("docker") && on_path("dockerd"),
        packages: &["docker.io"],
    },
    Need {
        what: "Docker Compose (v1 or v2)",
        present: compose_present,
        packages: &["docker-compose"],
    },
    Need {
        what: "debootstrap (the demo's offline base image)",
        present: || on_path("debootstrap"),
        packages: &["debootstrap"],
    },
    Need {
        what: "PostgreSQL 15 (throwaway servers, pg_dump, pg_restore, psql)",
        present: || {
            std::path::Path::new("/usr/lib/postgresql/15/bin/initdb").exists()
                && std::path::Path::new("/usr/lib/postgresql/15/bin/pg_dump").exists()
        },
        packages: &["postgresql-15", "postgresql-client-15"],
    },
    Need {
        what: "Debian's docker-registry (release tests)",
        present: || std::path::Path::new("/usr/bin/docker-registry").exists(),
        packages: &["docker-registry"],
    },
    Need {
        what: "curl (load during deploys)",
        present: || on_path("curl"),
        packages: &["curl"],
    },
    Need {
        what: "promtool (the monitor's textfile)",
        present: || on_path("promtool"),
        packages: &["prometheus"],
    },
    Need {
        what: "chromium (smoke --browser)",
        present: || on_path("chromium"),
        packages: &["chromium"],
    },
    Need {
        what: "pgrep (the tests find a command's child processes)",
        present: || on_path("pgrep"),
        packages: &["procps"],
    },
    Need {
        what: "openssl and python3 (the tests' TLS registry: a CA, a bcrypt login)",
        present: || on_path("openssl") && std::path::Path::new("/usr/bin/python3").exists(),
        packages: &["openssl", "python3"],
    },
    Need {
        what: "ip and nsenter (namespaced test engines)",
        present: || on_path("ip") && on_path("nsenter"),
        packages: &["iproute2", "util-linux"],
    },
    Need {
        what: "iptables (the test swarm's FORWARD rules between namespaces)",
        present: || on_path("iptables"),
        packages: &["iptables"],
    },
    Need {
        what: "systemctl (the backup schedule test enables units under a temporary root)",
        present: || on_path("systemctl"),
        packages: &["systemd"],
    },
    Need {
        what: "tzdata (migration windows name a time zone)",
        present: || std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists(),
        packages: &["tzdata"],
    },
    Need {
        what: "age (the off-site copies' encryption)",
        present: || on_path("age") && on_path("age-keygen"),
        packages: &["age"],
    },
    Need {
        what: "OpenSSH server and client (the SSH-only test server, run in a namespace)",
        present: || {
            std::path::Path::new("/usr/sbin/sshd").exists()
                && on_path("ssh")
                && on_path("ssh-keygen")
        },
        packages: &["openssh-server", "openssh-client"],
    },
];

fn zizmor_present() -> bool {
    on_path("zizmor")
        || std::env::var("HOME")
            .is_ok_and(|h| std::path::Path::new(&h).join(".local/bin/zizmor").is_file())
}

pub fn test(out: &Output, args: &TestArgs) -> Result<()> {
    let missing: Vec<&Need> = NEEDS.iter().filter(|n| !(n.present)()).collect();
    let packages: Vec<&str> = missing
        .iter()
        .flat_map(|n| n.packages.iter().copied())
        .collect();
    let zizmor = !zizmor_present();
    let pipx = zizmor && !on_path("pipx") && !packages.contains(&"pipx");
    let packages: Vec<&str> = packages.into_iter().chain(pipx.then_some("pipx")).collect();
    // The engine is started only when it is installed (or about to be).
    let engine = !engine_answers();
    for n in &missing {
        out.line(&format!("missing: {} ({})", n.what, n.packages.join(" ")));
    }
    if zizmor {
        out.line("missing: zizmor (lints the GitHub Actions workflows; from PyPI)");
    }
    if engine {
        out.line("the Docker engine does not answer `docker info`");
    }

    let mut plan: Plan = Plan::new("Install what the test suite needs, then run it");
    if !packages.is_empty() {
        plan.command(
            "Refresh the package lists",
            Command::new("apt-get", ["update", "-qq"]),
            out,
        );
        let install = ["install", "-y", "-qq", "--no-install-recommends"]
            .into_iter()
            .chain(packages.iter().copied());
        plan.command(
            "Install the missing packages",
            Command::new("apt-get", install)
                .envs(&[("DEBIAN_FRONTEND".into(), "noninteractive".into())]),
            out,
        );
    }
    if engine {
        plan.action(
            "Start the Docker engine",
            "`service docker start` (else `dockerd` in the background, its log in /tmp/dockerd.log), then wait up to 60 s for `docker info`",
            move || start_engine(out),
        );
    }
    if zizmor {
        plan.command(
            "Install zizmor",
            Command::new("pipx", ["install", "zizmor"]),
            out,
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = ["test", "--workspace"]
        .into_iter()
        .map(String::from)
        .chain(args.cargo_args.iter().cloned());
    // ~/.local/bin: where pipx puts zizmor.
    let path = match std::env::var("HOME") {
        Ok(h) => format!(
            "{}:{h}/.local/bin",
            std::env::var("PATH").unwrap_or_default()
        ),
        Err(_) => std::env::var("PATH").unwrap_or_default(),
    };
    plan.command(
        "Run the test suite",
        Command::new(&cargo, test).envs(&[("PATH".into(), path)]),
        out,
    );

    let changes = !packages.is_empty() || engine || zizmor;
    if changes && !args.dry_run {
        if !args.yes {
            plan.print(out);
            bail!(
                "the test suite needs what is listed above: run `cargo xtask test --yes` as root to install it, \
                 or install it yourself (README.md, Prerequisites)"
            );
        }
        if !is_root() {
            bail!("installing packages and starting the Docker engine needs root: run `sudo cargo xtask test --yes`, or install them yourself (README.md, Prerequisites)");
        }
    }
    plan.execute(out, args.dry_run)
}
