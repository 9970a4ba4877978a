//! The offline tests: one binary, no service needed (SQLite files, the in-memory warehouse,
//! loopback HTTP fakes and the CLI binary). `cargo test` runs these.

#[path = "../support/mod.rs"]
mod support;

mod apply_fake;
mod cli;
mod cli_hardening;
mod cli_runs;
mod custom_sql;
mod ledger_fake;
mod manifest;
mod merge_protocol;
mod plan_many;
mod source_sqlite;
mod source_ssh;
mod warehouse_auth;
mod warehouse_metadata;
mod warehouse_protocol;
