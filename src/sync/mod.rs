//! Orchestration, as a library: connect to the sources and BigQuery ([`connect`]), plan
//! ([`planner::plan`]), execute the plan ([`executor::Executor`]) and report what happened
//! ([`report::ApplyReport`]). The CLI only parses arguments, prints and picks exit codes.
//!
//! The planner makes every decision and records it in the [`crate::plan::Plan`]; the executor
//! imports neither `manifest` nor `mapping` and only runs the plan's steps, reading at apply
//! time nothing but run-time values (a bound's watermark, from the run ledger or the target).

mod chunks;
pub mod executor;
pub mod lease;
pub mod ledger;
pub mod patterns;
pub mod planner;
pub mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::manifest::Manifest;
use crate::source::Source;
use crate::warehouse::{BigQuery, Warehouse};
pub use chunks::RunJobs;
pub use executor::{Executor, RunSettings};
pub use ledger::RunLedger;
pub use report::{ApplyReport, LedgerOutcome, TableOutcome, TableStatus};

/// Connected sources and warehouse.
pub struct Session {
    /// Sources by manifest name.
    pub sources: HashMap<String, Arc<Source>>,
    /// Why a source could not be connected, by manifest name.
    pub source_errors: HashMap<String, String>,
    /// The warehouse.
    pub warehouse: Arc<dyn Warehouse>,
}

/// Connects to every source that has an enabled table, and to BigQuery.
pub async fn connect(manifest: &Manifest) -> Result<Session, Error> {
    let warehouse: Arc<dyn Warehouse> = Arc::new(BigQuery::new(&manifest.bigquery).map_err(
        |source| Error::Planning {
            context: "BigQuery".into(),
            source: Box::new(source),
        },
    )?);
    Ok(connect_sources(manifest, warehouse).await)
}

/// Connects to every source that has an enabled table; `warehouse` is the BigQuery to use (a
/// [`crate::warehouse::FakeWarehouse`] when a dry run plans without BigQuery).
pub async fn connect_sources(manifest: &Manifest, warehouse: Arc<dyn Warehouse>) -> Session {
    let mut sources = HashMap::new();
    let mut source_errors = HashMap::new();
    for source in &manifest.sources {
        if !manifest
            .tables
            .iter()
            .any(|table| table.enabled && table.source == source.name)
        {
            continue;
        }
        match Source::connect(source).await {
            Ok(connected) => {
                sources.insert(source.name.clone(), Arc::new(connected));
            }
            Err(error) => {
                // The error already names the source (and its address).
                source_errors.insert(source.name.clone(), error.to_string());
            }
        }
    }
    Session {
        sources,
        source_errors,
        warehouse,
    }
}

/// Whether rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    /// Extract and encode only; nothing is written to BigQuery.
    Yes,
    /// Write.
    No,
}

/// Receives progress: `(table label, rows so far)`.
pub type Progress = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// What a table is doing during apply, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the source and uploading the rows (they stream together).
    Extract,
    /// The rows are uploaded; BigQuery's load job into staging runs.
    Load,
    /// The DDL and the atomic write into the target.
    Write,
    /// Synced.
    Done,
    /// Failed (the report says why).
    Failed,
}

/// Receives phase changes: `(table label, phase)`.
pub type PhaseProgress = Arc<dyn Fn(&str, Phase) + Send + Sync>;

/// A phase callback that ignores everything.
pub fn no_phases() -> PhaseProgress {
    Arc::new(|_: &str, _: Phase| {})
}

/// Prefix of staging tables (followed by the target's name and the run id).
pub const STAGING_PREFIX: &str = "_datasync_staging_";

/// Prefix of the backups a recreate with a partitioning change keeps while it runs.
pub const BACKUP_PREFIX: &str = "_datasync_backup_";

/// Prefix of a merge's key-set tables (`deletes: soft|hard`; followed by the target's name and
/// the run id).
pub const KEYS_PREFIX: &str = "_datasync_keys_";

/// The staging table of a target in a run: per run, so overlapping runs never share one.
pub fn staging_table(target: &str, run_id: &str) -> String {
    format!("{STAGING_PREFIX}{target}_{run_id}")
}

/// The table of the source's whole key set a merge with `deletes` stages in a run.
pub fn keys_table(target: &str, run_id: &str) -> String {
    format!("{KEYS_PREFIX}{target}_{run_id}")
}

/// The backup of a target in a run (recreate with a partitioning change).
pub fn backup_table(target: &str, run_id: &str) -> String {
    format!("{BACKUP_PREFIX}{target}_{run_id}")
}

/// When the run that made a staging or backup table started (seconds since the epoch), read
/// from the run id at the end of its name ([`new_run_id`]); `None` for names that carry no
/// such run id.
pub fn run_started_secs(table: &str) -> Option<u64> {
    let mut parts = table.rsplitn(3, '_');
    let sub = parts.next()?;
    let secs = parts.next()?;
    run_id_parts(secs, sub).map(|(secs, _)| secs)
}

/// The seconds and microseconds of the run id `<secs>_<sub>` ([`new_run_id`]: `sub` is
/// `<micros><nonce>`, or `<micros>` as earlier versions made them), given as its two parts;
/// `None` for another form. Also the order of run ids by start.
pub(crate) fn run_id_parts(secs: &str, sub: &str) -> Option<(u64, u32)> {
    let (micros, nonce) = sub.split_at_checked(6)?;
    let valid = !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && micros.bytes().all(|b| b.is_ascii_digit())
        && (nonce.is_empty()
            || (nonce.len() == 6
                && nonce
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))));
    if !valid {
        return None;
    }
    Some((secs.parse().ok()?, micros.parse().ok()?))
}

/// [`run_id_parts`] of a whole run id.
pub(crate) fn run_id_order(run_id: &str) -> Option<(u64, u32)> {
    let (secs, sub) = run_id.split_once('_')?;
    run_id_parts(secs, sub)
}

/// When the run with this id started ([`new_run_id`]), or `None` for an id of another form.
pub fn run_started_at(run_id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let (secs, micros) = run_id_order(run_id)?;
    let micros = i64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(i64::from(micros))?;
    chrono::DateTime::from_timestamp_micros(micros)
}

pub(crate) fn sanitize_job_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The client-chosen id of a table's load job in a run: retries within the run reuse it (so
/// BigQuery runs the load at most once), and an interrupted run can cancel it.
pub fn load_job_id(run_id: &str, target: &str) -> String {
    format!("datasync_{run_id}_{}", sanitize_job_part(target))
}

/// The client-chosen id of the load job of chunk `index` of `target`, into the staging table
/// of the run `staging_run`, for the plan with fingerprint `fingerprint`; `attempt` counts the
/// redos of a chunk whose job failed (BigQuery keeps a failed job: its id can't load again).
/// Deterministic, so a rerun of a killed apply of the same plan finds the chunks already
/// loaded (jobs.get) and overlapping runs (each with its own staging table) never share one.
pub fn chunk_job_id(
    fingerprint: &str,
    target: &str,
    staging_run: &str,
    index: usize,
    attempt: u32,
) -> String {
    let plan: String = fingerprint.chars().take(8).collect();
    let base = format!(
        "datasync_{}_{}_{staging_run}_c{index}",
        sanitize_job_part(&plan),
        sanitize_job_part(target)
    );
    if attempt == 0 {
        base
    } else {
        format!("{base}_a{attempt}")
    }
}

/// What a staging table's description says: which run made it, for which plan, in how many
/// chunks. A rerun of a killed apply of the same plan finds its staging table by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingInfo {
    /// The run that created the table.
    pub run_id: String,
    /// The plan's fingerprint.
    pub plan: String,
    /// The table's chunks.
    pub chunks: usize,
}

impl StagingInfo {
    /// The description text.
    pub fn description(&self) -> String {
        format!(
            "datasync staging of run {} for plan {} ({} chunks)",
            self.run_id, self.plan, self.chunks
        )
    }

    /// Reads a description written by [`StagingInfo::description`].
    pub fn parse(description: &str) -> Option<Self> {
        let rest = description.strip_prefix("datasync staging of run ")?;
        let (run_id, rest) = rest.split_once(" for plan ")?;
        let (plan, rest) = rest.split_once(" (")?;
        let chunks = rest.strip_suffix(" chunks)")?.parse().ok()?;
        Some(Self {
            run_id: run_id.to_string(),
            plan: plan.to_string(),
            chunks,
        })
    }
}

/// Whether `text` is a run id ([`new_run_id`]).
pub fn is_run_id(text: &str) -> bool {
    run_id_order(text).is_some()
}

/// A run id: `<seconds>_<micros><nonce>`, e.g. `1796139922_525421a3f90c`: when the run started
/// (to the microsecond: lineage and the sweep of old staging tables read it back) and 24
/// random bits. Everything a run owns is named by its id (staging and key-set tables, job ids,
/// its hold on a target's lease), so two runs must never share one; time alone does not
/// ensure it: two applies started together, by one scheduler or as shards on several machines,
/// can read the same microsecond (seen in the overlapping-applies test).
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let mut nonce = [0u8; 3];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
        // No system randomness: the process id and the clock's nanoseconds still separate
        // two runs on one machine.
        let mixed = std::process::id().rotate_left(8) ^ now.subsec_nanos();
        nonce = [(mixed >> 16) as u8, (mixed >> 8) as u8, mixed as u8];
    }
    format!(
        "{}_{:06}{:02x}{:02x}{:02x}",
        now.as_secs(),
        now.subsec_micros(),
        nonce[0],
        nonce[1],
        nonce[2]
    )
}

/// Adds to `manifest.tables` what its patterns match in the connected sources' catalogs (see
/// [`patterns::expand`]); a source that failed to connect adds nothing (its error is in the
/// session already).
pub async fn expand_patterns(
    manifest: &mut crate::manifest::Manifest,
    session: &Session,
) -> Result<(), crate::error::Error> {
    let mut catalogs: HashMap<String, Vec<crate::source::CatalogEntry>> = HashMap::new();
    let mut listed = std::collections::HashSet::new();
    for pattern in &manifest.patterns {
        let Some(source) = session.sources.get(&pattern.source) else {
            continue;
        };
        let qualifier = pattern
            .qualifier
            .as_deref()
            .filter(|qualifier| !crate::manifest::resolve::is_pattern(qualifier));
        if !listed.insert((pattern.source.clone(), qualifier.map(str::to_string))) {
            continue;
        }
        let entries = source
            .list_tables(qualifier)
            .await
            .map_err(crate::error::Error::Source)?;
        let known = catalogs.entry(pattern.source.clone()).or_default();
        for entry in entries {
            if !known.contains(&entry) {
                known.push(entry);
            }
        }
    }
    let added = patterns::expand(manifest, &catalogs);
    manifest.tables.extend(added);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_job_ids_name_the_plan_the_target_the_staging_run_and_the_attempt() {
        assert_eq!(
            chunk_job_id("0123456789abcdef", "orders", "1700000000_000042", 3, 0),
            "datasync_01234567_orders_1700000000_000042_c3"
        );
        assert_eq!(
            chunk_job_id("0123456789abcdef", "my.orders", "1_000001", 0, 2),
            "datasync_01234567_my_orders_1_000001_c0_a2"
        );
    }

    #[test]
    fn run_ids_are_unique_and_carry_their_start() {
        let before = chrono::Utc::now();
        let ids: Vec<String> = (0..500).map(|_| new_run_id()).collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "two runs got one id");
        for id in &ids {
            assert!(is_run_id(id), "{id}");
            let started = run_started_at(id).unwrap();
            assert!(
                started >= before - chrono::Duration::milliseconds(1),
                "{id}"
            );
            assert!(started <= chrono::Utc::now(), "{id}");
            let staging = staging_table("orders", id);
            assert_eq!(
                run_started_secs(&staging),
                Some(started.timestamp() as u64),
                "{staging}"
            );
        }
        assert_eq!(
            run_started_at("1700000000_000042a3f90c")
                .unwrap()
                .timestamp_micros(),
            1_700_000_000_000_042
        );
    }

    #[test]
    fn staging_descriptions_round_trip() {
        let info = StagingInfo {
            run_id: "1700000000_000042".into(),
            plan: "0123456789abcdef".into(),
            chunks: 8,
        };
        assert_eq!(
            info.description(),
            "datasync staging of run 1700000000_000042 for plan 0123456789abcdef (8 chunks)"
        );
        assert_eq!(StagingInfo::parse(&info.description()), Some(info));
        assert_eq!(StagingInfo::parse("datasync staging of run 1_000001"), None);
        assert!(is_run_id("1700000000_000042"));
        assert!(is_run_id("1700000000_000042a3f90c"));
        assert!(!is_run_id("archive_1700000000_000042"));
        assert!(!is_run_id("1700000000_42"));
        assert!(!is_run_id("1700000000_000042A3F90C"));
        assert!(!is_run_id("1700000000_000042a3f9"));
    }
}
