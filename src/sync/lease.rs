//! A lease per target table, kept in BigQuery itself: a small lock table
//! `_datasync_lock_<target>` created with tables.insert, which is atomic and answers 409 when
//! the table exists — a compare-and-set that needs no other service. Its description holds the
//! holder's run id and the lease's end ([`LeaseRecord`]); its `expirationTime` is the same
//! instant, so BigQuery deletes the lock of a killed holder by itself (the emulator ignores
//! `expirationTime`, and readers never trust it: an expired record is taken over).
//!
//! Taking over an expired lease is a tables.patch with `If-Match: <etag>`: of two runs taking it
//! over at once one gets HTTP 412 and waits again. The holder renews the lease every third of
//! its duration while the table runs, and drops the lock table when done.
//!
//! The record also names the holder's host, process id and process start time: a lease held by
//! a process of this host that no longer runs (killed: SIGKILL, OOM, a crash) is taken over at
//! once instead of after its expiry, so a rerun of a killed `apply` resumes without waiting.
//! Elsewhere (another host, or no `/proc` to ask) only the expiry tells.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schema::{BqType, FieldMode, WarehouseField, WarehouseTable};
use crate::warehouse::{TableMeta, Warehouse, WarehouseError};

/// Prefix of lock tables (followed by the target's name).
pub const LOCK_PREFIX: &str = "_datasync_lock_";

/// The lock table of a target.
pub fn lock_table(target: &str) -> String {
    format!("{LOCK_PREFIX}{target}")
}

/// What a lock table's description holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The run holding the lease.
    pub holder: String,
    /// When the lease ends unless renewed, milliseconds since the epoch.
    pub expires_at_ms: i64,
    /// The holder's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The holder's process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the holder's process started (`/proc/<pid>/stat` start time, clock ticks since
    /// boot): a reused pid has another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
}

impl LeaseRecord {
    fn meta(&self) -> TableMeta {
        TableMeta {
            expires_at_ms: Some(self.expires_at_ms),
            description: serde_json::to_string(self).ok(),
        }
    }

    fn parse(description: Option<&str>) -> Option<Self> {
        serde_json::from_str(description?).ok()
    }
}

/// Why a lease was not obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    /// Another run holds it (after waiting `--lock-timeout`).
    #[error(
        "target `{target}` is locked by run {holder} until {until} (lock table `{table}`); waited {waited}; pass --lock-timeout to wait longer"
    )]
    Held {
        /// Target.
        target: String,
        /// Lock table.
        table: String,
        /// The holder's run id.
        holder: String,
        /// The lease's end, RFC 3339.
        until: String,
        /// How long this run waited.
        waited: String,
    },
    /// BigQuery failed.
    #[error("taking the lease on `{target}` failed: {error}")]
    Warehouse {
        /// Target.
        target: String,
        /// What failed.
        error: WarehouseError,
    },
}

/// Lease timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal (renewed every third of it).
    pub duration: Duration,
    /// How long to wait for another run's lease (`--lock-timeout`; zero = fail at once).
    pub wait: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(600),
            wait: Duration::ZERO,
        }
    }
}

/// A held lease; [`Lease::release`] drops the lock table (dropping the value only stops the
/// renewal: the lease then expires).
pub struct Lease {
    warehouse: Arc<dyn Warehouse>,
    table: String,
    run_id: String,
    renewer: tokio::task::JoinHandle<()>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn record(run_id: &str, settings: &LeaseSettings) -> LeaseRecord {
    let pid = std::process::id();
    LeaseRecord {
        holder: run_id.to_string(),
        expires_at_ms: now_ms() + i64::try_from(settings.duration.as_millis()).unwrap_or(i64::MAX),
        host: host_name(),
        pid: Some(pid),
        started: process_started(pid).flatten(),
    }
}

/// This host's name (Linux: `/proc/sys/kernel/hostname`), if known.
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// When process `pid` started: `Some(None)` when no such process runs, `None` when this
/// system can't tell (no `/proc`).
fn process_started(pid: u32) -> Option<Option<u64>> {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return None;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 22 (starttime); the command (field 2) may hold spaces, so count after its `)`.
        Ok(stat) => Some(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(19))
                .and_then(|field| field.parse().ok()),
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some(None),
        Err(_) => None,
    }
}

/// Whether the holder of `record` was a process of this host that no longer runs (its pid is
/// gone, or now belongs to a process that started at another time).
pub fn holder_is_dead(record: &LeaseRecord) -> bool {
    let (Some(host), Some(pid)) = (&record.host, record.pid) else {
        return false;
    };
    if host_name().as_deref() != Some(host.as_str()) {
        return false;
    }
    match process_started(pid) {
        None => false,
        Some(None) => true,
        Some(Some(started)) => record.started.is_some_and(|then| then != started),
    }
}

fn lock_schema(table: &str) -> WarehouseTable {
    WarehouseTable {
        name: table.to_string(),
        fields: vec![WarehouseField::new(
            "holder",
            BqType::String,
            FieldMode::Nullable,
        )],
        partitioning: None,
        clustering: Vec::new(),
        description: None,
    }
}

/// Takes the lease on `target` for `run_id`, waiting up to `settings.wait` for another holder.
pub async fn acquire(
    warehouse: Arc<dyn Warehouse>,
    target: &str,
    run_id: &str,
    settings: LeaseSettings,
) -> Result<Lease, LeaseError> {
    let table = lock_table(target);
    let started = tokio::time::Instant::now();
    let failed = |error| LeaseError::Warehouse {
        target: target.to_string(),
        error,
    };
    loop {
        let mine = record(run_id, &settings);
        match warehouse
            .create_table_with(&lock_schema(&table), &mine.meta())
            .await
        {
            Ok(()) => break,
            Err(error) if !error.is_duplicate() => return Err(failed(error)),
            Err(_) => {}
        }
        let Some(existing) = warehouse.get_table(&table).await.map_err(failed)? else {
            continue; // released meanwhile
        };
        let held = LeaseRecord::parse(existing.description.as_deref());
        match &held {
            Some(held) if held.holder == run_id => break,
            Some(held) if held.expires_at_ms > now_ms() && !holder_is_dead(held) => {
                let waited = started.elapsed();
                if waited >= settings.wait {
                    return Err(LeaseError::Held {
                        target: target.to_string(),
                        table,
                        holder: held.holder.clone(),
                        until: chrono::DateTime::from_timestamp_millis(held.expires_at_ms)
                            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .unwrap_or_default(),
                        waited: humantime::format_duration(Duration::from_secs(waited.as_secs()))
                            .to_string(),
                    });
                }
                let left = settings.wait.saturating_sub(waited);
                tokio::time::sleep(left.min(Duration::from_millis(500))).await;
            }
            // Expired, its holder dead, or unreadable: take it over, unless someone else did
            // first.
            _ => {
                tracing::info!(lock = %table, previous = ?held, "taking over an expired lease (or a dead process's)");
                match warehouse
                    .patch_table_meta(&table, &mine.meta(), existing.etag.as_deref())
                    .await
                {
                    Ok(()) => {}
                    Err(error) if error.status() == Some(412) || error.is_not_found() => continue,
                    Err(error) => return Err(failed(error)),
                }
                // Read back: where `If-Match` is not enforced (the emulator), the last writer
                // wins and the others wait.
                let now = warehouse.get_table(&table).await.map_err(failed)?;
                let holder = now
                    .and_then(|table| LeaseRecord::parse(table.description.as_deref()))
                    .map(|record| record.holder);
                if holder.as_deref() == Some(run_id) {
                    break;
                }
            }
        }
    }
    let renewer = tokio::spawn(renew(
        Arc::clone(&warehouse),
        table.clone(),
        run_id.to_string(),
        settings,
    ));
    Ok(Lease {
        warehouse,
        table,
        run_id: run_id.to_string(),
        renewer,
    })
}

/// Renews the lease every third of its duration while it is held.
async fn renew(
    warehouse: Arc<dyn Warehouse>,
    table: String,
    run_id: String,
    settings: LeaseSettings,
) {
    loop {
        tokio::time::sleep(settings.duration / 3).await;
        let current = match warehouse.get_table(&table).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(lock = %table, %error, "could not renew the lease");
                continue;
            }
        };
        let holder = current
            .as_ref()
            .and_then(|table| LeaseRecord::parse(table.description.as_deref()));
        if holder.as_ref().map(|record| record.holder.as_str()) != Some(run_id.as_str()) {
            tracing::error!(lock = %table, holder = ?holder, "the lease was lost");
            return;
        }
        let etag = current.and_then(|table| table.etag);
        if let Err(error) = warehouse
            .patch_table_meta(&table, &record(&run_id, &settings).meta(), etag.as_deref())
            .await
        {
            tracing::warn!(lock = %table, %error, "could not renew the lease");
        }
    }
}

impl Lease {
    /// Stops renewing and drops the lock table if this run still holds it.
    pub async fn release(self) {
        self.renewer.abort();
        release_lock(self.warehouse.as_ref(), &self.table, &self.run_id).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Drops `table` (a lock table) if `run_id` holds it.
pub async fn release_lock(warehouse: &dyn Warehouse, table: &str, run_id: &str) {
    match warehouse.get_table(table).await {
        Ok(Some(existing))
            if LeaseRecord::parse(existing.description.as_deref())
                .is_some_and(|record| record.holder == run_id) =>
        {
            if let Err(error) = warehouse.drop_table(table).await {
                tracing::warn!(lock = %table, %error, "could not release the lease");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(lock = %table, %error, "could not release the lease"),
    }
}

/// Whether a lock table's lease has expired or its holder is a dead process of this host: then
/// it may be dropped.
pub fn is_expired(description: Option<&str>) -> bool {
    LeaseRecord::parse(description)
        .is_none_or(|record| record.expires_at_ms <= now_ms() || holder_is_dead(&record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_of_a_dead_local_process_is_dead_and_a_live_one_is_not() {
        let settings = LeaseSettings::default();
        let mine = record("run", &settings);
        assert_eq!(mine.pid, Some(std::process::id()));
        if mine.host.is_none() || mine.started.is_none() {
            return; // no /proc: only expiry tells (nothing more to check here)
        }
        assert!(!holder_is_dead(&mine), "this process runs");
        assert!(!is_expired(serde_json::to_string(&mine).ok().as_deref()));
        // A pid that no process has (above the kernel's pid_max limit of 2^22).
        let gone = LeaseRecord {
            pid: Some(4_194_304 + 17),
            ..mine.clone()
        };
        assert!(holder_is_dead(&gone));
        assert!(is_expired(serde_json::to_string(&gone).ok().as_deref()));
        // This pid, but another start time: the pid was reused.
        let reused = LeaseRecord {
            started: mine.started.map(|started| started + 1),
            ..mine.clone()
        };
        assert!(holder_is_dead(&reused));
        // Another host: can't tell, wait for the expiry.
        let elsewhere = LeaseRecord {
            host: Some("some-other-host.invalid".into()),
            pid: gone.pid,
            ..mine.clone()
        };
        assert!(!holder_is_dead(&elsewhere));
        // Records written before these fields existed.
        let old: LeaseRecord = serde_json::from_str(r#"{"holder":"r","expires_at_ms":1}"#).unwrap();
        assert!(!holder_is_dead(&old));
    }
}
