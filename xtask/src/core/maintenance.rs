//! Maintenance mode around an operation (Rollback Procedures, Disaster
//! Recovery): `restore`, `rollback --with-db` and `down` put two steps in
//! their plans, one that turns it on (undone on failure and Ctrl-C) and one
//! that turns it off, so users get a 503 page with `Retry-After` instead of
//! connection errors while they run. A mode an operator turned on before
//! stays on.

use std::cell::Cell;
use std::rc::Rc;

use anyhow::Result;

use super::proxy::{maintenance_applies, maintenance_state, proxy_container_of, set_maintenance};
use crate::adapters::output::Output;
use crate::config::Env;
use crate::core::steps::Plan;

/// Whether this run turned maintenance mode on (and must turn it off).
#[derive(Clone, Default)]
pub struct Maintenance(Rc<Cell<bool>>);

/// The step that turns maintenance mode on with `message`, undone on
/// failure; None when `env` has no proxy it applies to.
pub fn on_step<'a, S>(
    plan: &mut Plan<'a, S>,
    env: &'a Env,
    out: &'a Output,
    message: String,
) -> Option<Maintenance> {
    if !maintenance_applies(env) {
        return None;
    }
    let m = Maintenance::default();
    let (set, unset) = (m.clone(), m.clone());
    plan.step(
        "Turn maintenance mode on",
        format!(
            "the proxy answers every request 503 with a page (\"{message}\") and Retry-After, health endpoints too \
             (left as it is when already on)"
        ),
        move |_| {
            set.0.set(turn_on(env, out, &message)?);
            Ok(())
        },
    )
    .undo("turn maintenance mode off (when this run turned it on)", move |_| {
        off(env, out, &unset)
    });
    Some(m)
}

/// The step that turns it off again (when `on_step` turned it on).
pub fn off_step<'a, S>(plan: &mut Plan<'a, S>, env: &'a Env, out: &'a Output, m: &Maintenance) {
    let m = m.clone();
    plan.step(
        "Turn maintenance mode off",
        "the proxy serves the application again (unless maintenance mode was on before this run)",
        move |_| off(env, out, &m),
    );
}

/// On, unless it is already (false then) or the proxy does not run.
fn turn_on(env: &Env, out: &Output, message: &str) -> Result<bool> {
    if proxy_container_of(env).is_none() {
        out.detail("the proxy has no container: nothing to put in maintenance");
        return Ok(false);
    }
    if let Some(m) = maintenance_state(env)? {
        out.detail(&format!(
            "maintenance mode is already on (\"{m}\"): it stays on after this run"
        ));
        return Ok(false);
    }
    set_maintenance(env, Some(message))?;
    out.line(&format!("Maintenance mode on: {message}"));
    Ok(true)
}

fn off(env: &Env, out: &Output, m: &Maintenance) -> Result<()> {
    if !m.0.get() {
        return Ok(());
    }
    m.0.set(false);
    if proxy_container_of(env).is_none() {
        // `down` removed it, and its state with it.
        return Ok(());
    }
    set_maintenance(env, None)?;
    out.line("Maintenance mode off.");
    Ok(())
}
