//! mre-ops as a library: the runbook's sections, the shared core, the
//! adapters to the outside world and the command line's types, so that
//! config, plans, parsers and validators are unit-tested in the crate.
//! `main.rs` is the one match from a command to its section.

pub mod adapters;
pub mod cli;
pub mod config;
pub mod contributing;
pub mod core;
pub mod database_migrations;
pub mod demo;
pub mod deployment_architecture;
pub mod deployment_procedures;
pub mod disaster_recovery;
pub mod health_checks;
pub mod monitoring_and_alerting;
pub mod post_deployment_verification;
pub mod pre_deployment_checklist;
pub mod rollback_procedures;
pub mod runbook;
