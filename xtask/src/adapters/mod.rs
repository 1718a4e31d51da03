//! The edge: thin adapters for the things the runbook drives. Runbook files
//! call these; these know nothing about the runbook.

pub mod clock;
pub mod compose;
pub mod docker;
pub mod http;
pub mod output;
pub mod postgres;
pub mod process;
pub mod ssh;
