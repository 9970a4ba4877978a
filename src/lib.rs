//! datasync: declarative, plan/apply sync of MySQL/MariaDB, PostgreSQL and SQLite tables into
//! Google BigQuery.
//!
//! Module rules:
//! - [`manifest`], [`names`] are pure: no IO, no `std::env` (the environment is passed in).
//! - [`secret`] is a leaf every module may use.
//! - [`cli`] is the only module that prints, reads the process environment or picks exit codes.

pub mod apply;
pub mod cli;
pub mod encode;
pub mod manifest;
pub mod mapping;
pub mod names;
pub mod plan;
pub mod schema;
pub mod secret;
pub mod source;
pub mod warehouse;
