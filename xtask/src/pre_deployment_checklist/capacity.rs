//! Pre-Deployment Checklist, Infrastructure Checks, on a swarm: room for
//! the update. A start-first rolling update runs one extra task of a
//! service beside the old ones; some ready, active node must have the
//! memory and CPU it takes (its reservations, else its limits) left over
//! after what the tasks placed there take.

use std::time::Instant;

use super::{Ctx, INFRASTRUCTURE};
use crate::adapters::docker::Room;
use crate::core::check::Check;
use crate::core::session;

const ROOM: &str = "Room on the nodes for the update";

/// What one extra task of the stack's largest service needs: (nano CPUs,
/// memory bytes); zero where no service declares it.
fn need(specs: &[crate::adapters::docker::Spec]) -> (i64, i64) {
    let cpu = specs.iter().map(|s| s.nano_cpus).max().unwrap_or(0);
    let mem = specs.iter().map(|s| s.memory_bytes).max().unwrap_or(0);
    (cpu, mem)
}

fn mib(b: i64) -> String {
    format!("{} MiB", b / (1 << 20))
}

fn cpus(n: i64) -> String {
    format!("{:.2} CPU", n as f64 / 1e9)
}

/// The nodes that can take one more task of `(cpu, mem)`.
pub(super) fn fitting(rooms: &[Room], (cpu, mem): (i64, i64)) -> Vec<&Room> {
    rooms
        .iter()
        .filter(|r| r.schedulable)
        .filter(|r| {
            r.nano_cpus - r.used_nano_cpus >= cpu && r.memory_bytes - r.used_memory_bytes >= mem
        })
        .collect()
}

pub(super) fn room_check(ctx: &Ctx) -> Option<Check> {
    let env = ctx.env;
    let s = env.settings.swarm.as_ref()?;
    let start = Instant::now();
    let host = env.docker_host();
    let fail = |expected: &str, got: String, next: String| {
        Check::fail(
            ROOM.into(),
            INFRASTRUCTURE,
            host.clone(),
            expected,
            got,
            next,
            start.elapsed(),
        )
    };
    let measured = session::docker(env).and_then(|d| Ok((d.room()?, d.stack_specs(&s.stack)?)));
    let (rooms, specs) = match measured {
        Ok(v) => v,
        Err(e) => {
            return Some(fail(
                "the nodes' resources and the stack's limits",
                format!("{e:#}"),
                "check `docker node ls` and `docker stack services` on the manager".into(),
            ))
        }
    };
    let (cpu, mem) = need(&specs);
    let free = |r: &Room| {
        format!(
            "{} {} and {} free",
            r.hostname,
            mib(r.memory_bytes - r.used_memory_bytes),
            cpus(r.nano_cpus - r.used_nano_cpus)
        )
    };
    if specs.is_empty() {
        return Some(Check::skip(
            ROOM.into(),
            INFRASTRUCTURE,
            host,
            format!(
                "stack `{}` has no services yet: the first deploy places them",
                s.stack
            ),
        ));
    }
    let fit = fitting(&rooms, (cpu, mem));
    Some(if fit.is_empty() {
        fail(
            &format!("a ready, active node with {} and {} free for the update's extra task", mib(mem), cpus(cpu)),
            rooms
                .iter()
                .map(|r| if r.schedulable { free(r) } else { format!("{} (not schedulable)", r.hostname) })
                .collect::<Vec<_>>()
                .join("; "),
            "add a node or free one (`docker node ps NODE`), lower the services' limits, or update stop-first".into(),
        )
    } else {
        Check::pass(
            ROOM.into(),
            INFRASTRUCTURE,
            host,
            format!(
                "one more task ({}, {}) fits on {} of {} node(s): {}",
                mib(mem),
                cpus(cpu),
                fit.len(),
                rooms.len(),
                fit.iter().map(|r| free(r)).collect::<Vec<_>>().join("; ")
            ),
            start.elapsed(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str, schedulable: bool, cpu: i64, mem: i64, ucpu: i64, umem: i64) -> Room {
        Room {
            hostname: name.into(),
            schedulable,
            nano_cpus: cpu,
            memory_bytes: mem,
            used_nano_cpus: ucpu,
            used_memory_bytes: umem,
        }
    }

    #[test]
    fn a_task_fits_only_where_both_cpu_and_memory_are_left() {
        const G: i64 = 1 << 30;
        let rooms = [
            room("full-memory", true, 4_000_000_000, 2 * G, 0, 2 * G),
            room("full-cpu", true, 1_000_000_000, 8 * G, 1_000_000_000, 0),
            room("drained", false, 8_000_000_000, 8 * G, 0, 0),
            room("ok", true, 2_000_000_000, 4 * G, 1_000_000_000, 3 * G),
        ];
        let fit: Vec<&str> = fitting(&rooms, (500_000_000, G / 2))
            .iter()
            .map(|r| r.hostname.as_str())
            .collect();
        assert_eq!(fit, ["ok"]);
        assert!(fitting(&rooms, (500_000_000, 2 * G)).is_empty());
    }
}
