//! datasync: declarative, plan/apply sync of MySQL/MariaDB, PostgreSQL and SQLite tables into
//! Google BigQuery.
//!
//! The flow is four values and four verbs: a [`manifest::Manifest`] (what the user wants) →
//! introspected [`schema::SourceTable`]s mapped to desired [`schema::WarehouseTable`]s
//! ([`mapping`]) → a [`plan::Plan`] (what will change, diffed against BigQuery) → an
//! [`apply::ApplyReport`] (what happened).
//!
//! Module rules:
//! - Pure (no IO, no `std::env`; the environment is passed in): [`manifest`], [`names`],
//!   [`schema`], [`mapping`], [`plan`], and [`warehouse::ndjson`] (the row encoding).
//! - IO adapters: [`source`] (sqlx) and [`warehouse`] (BigQuery REST); they never import each
//!   other, [`plan`] or [`apply`].
//! - [`apply`] executes a plan with a source and a warehouse; it makes no decisions.
//! - [`secret`] is a leaf every module may use.
//! - [`cli`] is the only module that prints, reads the process environment or picks exit codes.

pub mod cli;
pub mod diagnostic;
pub mod error;
pub mod manifest;
pub mod mapping;
pub mod names;
pub mod plan;
pub mod schema;
pub mod secret;
pub mod source;
pub mod sync;
pub mod warehouse;
