//! Database Migration Procedures settings: `[environments.NAME.migrations]`
//! in ops.toml. Pure data.

use serde::{Deserialize, Serialize};

/// `[environments.NAME.migrations]` in ops.toml.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct MigrationSettings {
    /// The Prisma migrations folder, relative to ops.toml.
    #[serde(default = "default_dir")]
    pub dir: String,
    /// `native` (mre-ops applies them) or `prisma` (`npx prisma migrate
    /// deploy` inside the app container, as the runbook does).
    #[serde(default)]
    pub runner: Runner,
    /// The container the `prisma` runner executes in (default: the
    /// container of service `mre-app`).
    pub container: Option<String>,
    /// How long to wait for another migrator (ours or Prisma's) to finish.
    #[serde(default = "default_lock_wait")]
    pub lock_wait_secs: u64,
    /// Whether an unaccepted lint finding blocks `deploy`. Default: `block`,
    /// except in the environment named `development` (`warn`).
    pub lint: Option<LintMode>,
    /// Integrity checks a release rehearsal runs on the copy before and
    /// after the migrations: each a `SELECT` returning one boolean, which
    /// must be true (`SELECT count(*) = 0 FROM laps WHERE driver = ''`).
    #[serde(default)]
    pub checks: Vec<String>,
    /// "Run migrations during low-traffic periods": `"02:00-05:00
    /// Europe/Berlin"` (or `UTC`, `+01:00`). A release whose rehearsal shows
    /// a migration holding a table exclusively for longer than
    /// `max_lock_secs` is refused outside it (unless `--now`).
    pub window: Option<String>,
    #[serde(default = "default_max_lock")]
    pub max_lock_secs: f64,
}

fn default_max_lock() -> f64 {
    5.0
}

/// A migration window: minutes since midnight, start and end (the end may
/// be past midnight: `22:00-02:00`), and its time zone.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub start: u32,
    pub end: u32,
    pub zone: String,
}

impl Window {
    /// `HH:MM-HH:MM ZONE`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || format!("`{text}` is not a window like \"02:00-05:00 Europe/Berlin\"");
        let (range, zone) = text.trim().split_once(' ').ok_or_else(bad)?;
        let (a, b) = range.split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.len() == 5).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end || zone.trim().is_empty() {
            return Err(bad());
        }
        Ok(Window {
            start,
            end,
            zone: zone.trim().to_string(),
        })
    }

    /// Whether `minute` (since midnight, in the window's zone) is inside.
    pub fn contains(&self, minute: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Window;

    #[test]
    fn windows() {
        let w = Window::parse("02:00-05:00 Europe/Berlin").unwrap();
        assert_eq!(
            (w.start, w.end, w.zone.as_str()),
            (120, 300, "Europe/Berlin")
        );
        assert!(w.contains(120) && w.contains(299) && !w.contains(300) && !w.contains(60));
        let night = Window::parse("22:00-02:00 UTC").unwrap();
        assert!(night.contains(23 * 60) && night.contains(30) && !night.contains(12 * 60));
        for bad in [
            "02:00-05:00",
            "2:00-05:00 UTC",
            "02:00-25:00 UTC",
            "03:00-03:00 UTC",
            "x",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            dir: default_dir(),
            runner: Runner::Native,
            container: None,
            lock_wait_secs: default_lock_wait(),
            lint: None,
            checks: Vec::new(),
            window: None,
            max_lock_secs: default_max_lock(),
        }
    }
}

fn default_dir() -> String {
    "prisma/migrations".into()
}
fn default_lock_wait() -> u64 {
    60
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Runner {
    #[default]
    Native,
    Prisma,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LintMode {
    Block,
    Warn,
}
