//! The tests that need real services: PostgreSQL and MariaDB on loopback and the BigQuery
//! emulator (`scripts/test.sh` starts them all). Built only with `--features services`:
//!
//!     cargo test --all-targets --features services
//!
//! A missing service fails its test with the command that starts it.

#[path = "../support/mod.rs"]
mod support;

mod apply_e2e;
mod chunks;
mod cli_init;
mod custom_sql;
mod geography;
mod ledger_e2e;
mod plan_orphans;
mod resume;
mod roundtrip;
mod shard;
mod source_mysql;
mod source_postgres;
mod source_session;
mod source_ssh;
mod terminal;
mod unique_keys;
mod warehouse_bigquery;
