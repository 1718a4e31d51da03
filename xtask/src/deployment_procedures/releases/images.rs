//! Staging and Production Deployment steps 1-2: "Build Docker images",
//! "Push images to container registry". Each image is built once per
//! release, tagged `<registry>/<image>:<version>`, pushed, and pulled by tag
//! on the target's engine. Registry credentials go to `docker login` on its
//! standard input, never on a command line.

use camino::{Utf8Path, Utf8PathBuf};

use crate::adapters::process::Command;
use crate::config::{Env, ReleaseSettings};

/// `<registry>/<image>:<version>`.
pub fn reference(rel: &ReleaseSettings, image: &str, version: &str) -> String {
    format!("{}/{image}:{version}", rel.registry.trim_end_matches('/'))
}

/// The commands of one release's images: build (on this machine's engine),
/// push, then pull on the target's engine. `root` is where contexts are
/// relative to (ops.toml's folder, or a checkout of an older commit).
pub fn commands(
    env: &Env,
    rel: &ReleaseSettings,
    root: &Utf8Path,
    version: &str,
) -> Vec<(String, Command)> {
    let mut steps = Vec::new();
    // A login when both variables are set (CI's secrets); a registry on
    // this machine needs none.
    let login = (rel.registry_user_env.as_ref().and_then(|u| env.var(u)))
        .zip(rel.registry_password_env.as_ref().and_then(|p| env.var(p)));
    if let Some((user, password)) = login {
        steps.push((
            format!("Log in to {}", rel.registry),
            Command::new(
                "docker",
                [
                    "login",
                    "--username",
                    &user,
                    "--password-stdin",
                    &rel.registry,
                ],
            )
            .stdin_bytes(password.into_bytes()),
        ));
    }
    for (name, img) in &rel.images {
        let reference = reference(rel, name, version);
        let context: Utf8PathBuf = root.join(&img.context);
        let mut args = vec![
            "build".to_string(),
            "--quiet".into(),
            "-t".into(),
            reference.clone(),
        ];
        if let Some(df) = &img.dockerfile {
            args.extend(["-f".to_string(), context.join(df).to_string()]);
        }
        args.push(context.to_string());
        steps.push((format!("Build {reference}"), Command::new("docker", args)));
        steps.push((
            format!("Push {reference}"),
            Command::new("docker", ["push", "--quiet", &reference]),
        ));
        steps.push((
            format!("Pull {reference} on the target"),
            Command::new("docker", ["pull", "--quiet", &reference]).envs(&env.docker_cli_env()),
        ));
    }
    steps
}
