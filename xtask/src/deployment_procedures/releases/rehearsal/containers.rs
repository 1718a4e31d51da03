//! Rehearsal, the releases on the copy: each started beside the live one
//! with its database URL pointed at the migrated copy, on the same network,
//! no published port; its health endpoint and the smoke tests on its own
//! address; removed again.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use super::Candidate;
use crate::adapters::docker::RunSpec;
use crate::adapters::http;
use crate::adapters::output::Output;
use crate::config::{config_error, Env, ReleaseSettings, Strategy};
use crate::core::session;
use crate::core::wait::{self, Poll, Waited};
use crate::deployment_procedures::releases::cutover::{judge, Stage};

/// The label on every container a rehearsal starts; its value is
/// `label_value`.
const LABEL: &str = "mre-ops.rehearsal";

/// `ENV/PROJECT`: one environment's rehearsals, whoever else shares the engine.
fn label_value(env: &Env) -> Result<String> {
    Ok(format!("{}/{}", env.name, env.compose()?.project))
}

/// Start `c`'s blue-green services against the copy beside the live ones
/// (the live container's command and environment, its database URL
/// pointed at the copy, its network, no published port); wait for the
/// health endpoint on the container's own address; run the smoke tests
/// there. Removed again before returning.
pub(super) fn start_on_copy(
    env: &Env,
    rel: &ReleaseSettings,
    out: &Output,
    copy: &str,
    c: &Candidate,
) -> Result<()> {
    let stage = Stage::new(env, rel)?;
    let live = stage.live_colours()?;
    let mut smoke_url = None;
    for (svc, s) in rel
        .services
        .iter()
        .filter(|(_, s)| s.strategy == Strategy::BlueGreen)
    {
        let (Some(image), Some(colour)) = (c.images.get(svc), live.get(svc)) else {
            continue;
        };
        let unit = format!("{svc}-{colour}");
        let container = stage
            .container_of(&unit)?
            .ok_or_else(|| anyhow!("`{unit}` has no container to copy the settings of"))?;
        let mut spec = stage
            .docker
            .run_spec(&container)?
            .ok_or_else(|| anyhow!("`{container}` is gone"))?;
        point_at_copy(&mut spec, &rel.database_url_var, copy).map_err(|why| {
            config_error(format!(
                "{why} in `{container}`: set environments.{}.release.database_url_var to the variable holding the app's database URL",
                env.name
            ))
        })?;
        let name = format!(
            "{}-rehearsal-{svc}-{}-{}",
            env.compose()?.project,
            c.role,
            std::process::id()
        );
        out.detail(&format!(
            "starting {name} from {image} against the copy `{copy}`"
        ));
        stage
            .docker
            .run_detached(&name, image, &spec, &[(LABEL, &label_value(env)?)])?;
        if let (Some(port), Some(path)) = (s.port, s.health_path.as_deref()) {
            let base = wait_answering(env, &stage, out, &name, svc, port, path, rel)?;
            if svc == "mre-app" {
                smoke_url = Some(base);
            }
        }
    }
    if let Some(url) = smoke_url {
        crate::deployment_procedures::releases::plan::smoke_until_pass(
            &env.on_database(copy),
            out,
            Some(url),
            &format!(
                " of the {} release {} on the migrated copy",
                c.role, c.version
            ),
        )?;
    }
    remove_leftovers(env, out)
}

/// The variable `var` of `spec`, a database URL, pointed at database `copy`.
fn point_at_copy(spec: &mut RunSpec, var: &str, copy: &str) -> Result<(), String> {
    let prefix = format!("{var}=");
    let slot = spec
        .env
        .iter_mut()
        .find(|e| e.starts_with(&prefix))
        .ok_or_else(|| format!("no variable {var}"))?;
    let url = slot[prefix.len()..].to_string();
    *slot = format!("{prefix}{}", crate::config::with_database_name(&url, copy));
    Ok(())
}

/// Wait until container `name` answers `path` on its own address; that
/// address (`http://IP:PORT`, reachable from here).
#[allow(clippy::too_many_arguments)]
fn wait_answering(
    env: &Env,
    stage: &Stage,
    out: &Output,
    name: &str,
    svc: &str,
    port: u16,
    path: &str,
    rel: &ReleaseSettings,
) -> Result<String> {
    let limit = Duration::from_secs(rel.health_timeout_secs);
    let what = format!("{name} to answer {path} on the copy");
    let waited = wait::until(out, &what, limit, Duration::from_millis(200), || {
        let Some((_, ip, running)) = stage.docker.container_image_ip(name)? else {
            bail!("`{name}` disappeared");
        };
        if !running {
            bail!("`{name}` exited: it cannot start on the migrated copy (its logs: `docker logs {name}` while it runs)");
        }
        let Some(ip) = ip else {
            return Ok(Poll::Pending("no IP address yet".into()));
        };
        let base = session::reach(env, &format!("http://{ip}:{port}"))?;
        Ok(
            match http::get(&format!("{base}{path}"), Duration::from_secs(5)) {
                Err(e) => Poll::Pending(e.to_string()),
                Ok(r) => match judge(env, svc, r.status, &r.body) {
                    Ok(()) => Poll::Ready(base),
                    Err(why) => Poll::Pending(why),
                },
            },
        )
    })?;
    match waited {
        Waited::Ready(base) => Ok(base),
        Waited::TimedOut(last) => bail!(
            "`{name}` did not answer {path} within {} s on the migrated copy: {last}",
            limit.as_secs()
        ),
    }
}

/// Remove every container a rehearsal of `env` started (also one a killed
/// run left).
pub fn remove_leftovers(env: &Env, out: &Output) -> Result<()> {
    let docker = session::docker(env)?;
    for name in docker.labelled(LABEL, &label_value(env)?)? {
        docker.remove_container(&name)?;
        out.detail(&format!("removed {name}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_pointed_at_the_copy() {
        let mut spec = RunSpec {
            cmd: vec![],
            env: vec![
                "PORT=3001".into(),
                "DATABASE_URL=postgres://u:p@mre-postgres:5432/pacetracer?schema=public".into(),
            ],
            network: None,
            user: None,
            working_dir: None,
        };
        point_at_copy(&mut spec, "DATABASE_URL", "copy_1").unwrap();
        assert_eq!(
            spec.env[1],
            "DATABASE_URL=postgres://u:p@mre-postgres:5432/copy_1?schema=public"
        );
        assert!(point_at_copy(&mut spec, "DB", "x").is_err());
    }
}
