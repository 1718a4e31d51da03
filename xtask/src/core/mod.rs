//! The shared core every runbook section builds on: one step runner with
//! undo (`steps`), signals (`interrupt`), the release journal on the
//! target (`journal`), one command's session with an
//! environment (`session`), the environment's secrets (`secrets`), and files
//! and randomness (`files`), and the one way to wait (`wait`). It imports
//! `config` and `adapters`, never a runbook section.

pub mod check;
pub mod confirm;
pub mod files;
pub mod incident;
pub mod intent;
pub mod interrupt;
pub mod journal;
pub mod lock;
pub mod maintenance;
pub mod prerequisites;
pub mod proxy;
pub mod proxy_stats;
pub mod report;
pub mod secrets;
pub mod session;
pub mod steps;
pub mod wait;
