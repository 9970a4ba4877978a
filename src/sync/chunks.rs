//! The [`Step::Stage`](crate::plan::Step::Stage) of a table in chunks (issue 10): the plan's
//! chunks go into a queue; up to `readers` readers (one snapshot of the table, see
//! [`Source::open_readers`]) take them one at a time; each chunk is its own row sink and its
//! own load job appending to the run's staging table, with a deterministic job id
//! ([`chunk_job_id`]). The bad-value budget is the table's, over every chunk (a shared count);
//! a chunk's rejects are recorded before its load job can finish, so a chunk that counts as
//! loaded never lost its rejects. A table that is not split is one chunk reading every row.
//!
//! Resume: a rerun of a killed `apply` of the same saved plan finds the killed run's staging
//! table by its description ([`StagingInfo`]), asks jobs.get about each chunk's job id (DONE →
//! skipped, RUNNING → waited for, missing or failed → read again under the next attempt's
//! id), and resumes only if the staging table holds exactly the rows of the chunks found
//! loaded; otherwise it drops that table and starts over. The chunks read again come from a
//! new snapshot: a resumed table is consistent per chunk (a row whose key changed between the
//! two runs may be read twice or not at all), so a table split by ctid pages (which an UPDATE
//! moves) always starts over.
//!
//! Memory per table: `readers` × (one upload chunk + [`CHANNEL_CHUNKS`] encoded chunks of about
//! 1 MiB + the sink's buffer).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::executor::{AbortOnDrop, Executor, TableFailure, row_sink};
use super::{STAGING_PREFIX, StagingInfo, chunk_job_id, is_run_id, staging_table};
use crate::plan::{Extract, TablePlan};
use crate::schema::{ChunkRange, ExtractStats, SourceTable};
use crate::source::{ChunkRead, CursorFilter, Reader, Source};
use crate::warehouse::labels;
use crate::warehouse::{
    Disposition, JobState, LoadOutcome, LoadRequest, SharedBadValues, WarehouseError,
};

/// Encoded chunks buffered between a reader and its upload.
pub const CHANNEL_CHUNKS: usize = 2;

/// How many failed load jobs of one chunk a resume looks past before it starts over.
const MAX_ATTEMPTS: u32 = 8;

/// How long a resume waits for a killed run's chunk whose load job still runs.
const RUNNING_WAIT: Duration = Duration::from_secs(3600);

/// The jobs a run started and the killed runs it resumed, so an interrupted run (Ctrl-C,
/// SIGTERM, timeout) can cancel them and drop their staging tables. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RunJobs(Arc<Mutex<RunJobsInner>>);

#[derive(Debug, Default)]
struct RunJobsInner {
    jobs: Vec<String>,
    runs: Vec<(String, String)>,
    /// The dataset's staging tables when the run (by id) first looked: one tables.list per
    /// run, not per table; `None` inside when the listing failed.
    staging: Option<(String, StagingList)>,
}

type StagingList = Arc<tokio::sync::OnceCell<Option<Vec<String>>>>;

impl RunJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunJobsInner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn job(&self, job_id: &str) {
        self.lock().jobs.push(job_id.to_string());
    }

    fn adopt(&self, target: &str, run_id: &str) {
        self.lock()
            .runs
            .push((target.to_string(), run_id.to_string()));
    }

    /// The dataset's staging tables, listed once per run.
    async fn staging_tables(
        &self,
        warehouse: &dyn crate::warehouse::Warehouse,
        run_id: &str,
    ) -> Vec<String> {
        let cell = {
            let mut inner = self.lock();
            match &inner.staging {
                Some((run, cell)) if run == run_id => Arc::clone(cell),
                _ => {
                    let cell = StagingList::default();
                    inner.staging = Some((run_id.to_string(), Arc::clone(&cell)));
                    cell
                }
            }
        };
        cell.get_or_init(|| async {
            match warehouse.list_tables(STAGING_PREFIX).await {
                Ok(names) => Some(names),
                Err(error) => {
                    tracing::warn!(%error, "cannot list staging tables: killed runs are not resumed");
                    None
                }
            }
        })
        .await
        .clone()
        .unwrap_or_default()
    }

    /// The chunk load jobs started so far.
    pub fn jobs(&self) -> Vec<String> {
        self.lock().jobs.clone()
    }

    /// `(target, run id)` of the killed runs whose staging tables this run resumed.
    pub fn resumed(&self) -> Vec<(String, String)> {
        self.lock().runs.clone()
    }
}

/// One chunk of a table in a run.
#[derive(Debug, Clone)]
struct ChunkTask {
    index: usize,
    range: Option<ChunkRange>,
    job_id: String,
    /// The id of the load job recording its rejects (the same for every attempt: a redone
    /// chunk does not record its rejects twice).
    rejects_job: String,
}

/// The staging table a table's chunks load into, and the chunks left to read.
#[derive(Debug, Clone)]
pub(super) struct StagingRun {
    /// The run whose staging table it is: this run's, or the killed run's it resumes.
    pub run_id: String,
    /// The staging table.
    pub staging: String,
    tasks: Vec<ChunkTask>,
    /// Rows of the chunks found loaded.
    skipped_rows: u64,
    /// Chunks found loaded.
    pub skipped: usize,
    /// Every chunk.
    pub chunks: usize,
}

/// What a staged (or drained) table produced.
pub(super) struct Staged {
    /// The statistics of the chunks this run read.
    pub stats: ExtractStats,
    /// Rows in the staging table (`None` in a dry run).
    pub loaded: Option<u64>,
    /// Every chunk.
    pub chunks: usize,
    /// Chunks a killed run had loaded.
    pub skipped: usize,
}

/// The plan's chunks of `extract`: its ranges, or one chunk reading every row.
fn planned_chunks(extract: &Extract) -> Vec<Option<ChunkRange>> {
    if extract.chunking.is_single() {
        vec![None]
    } else {
        extract.chunking.ranges.iter().copied().map(Some).collect()
    }
}

fn task(
    fingerprint: &str,
    target: &str,
    run_id: &str,
    index: usize,
    range: Option<ChunkRange>,
    attempt: u32,
) -> ChunkTask {
    let base = chunk_job_id(fingerprint, target, run_id, index, 0);
    ChunkTask {
        index,
        range,
        job_id: chunk_job_id(fingerprint, target, run_id, index, attempt),
        rejects_job: format!("{base}_rejects"),
    }
}

/// Adds one chunk's statistics to the table's (its rejects are recorded already; they are kept
/// for the write: a replace keeps the earlier rows of rejected keys).
fn merge_stats(total: &mut ExtractStats, chunk: ExtractStats) {
    total.rows += chunk.rows;
    total.rejects.extend(chunk.rejects);
    total.bytes += chunk.bytes;
    total.bad_values += chunk.bad_values;
    total.failed_rows += chunk.failed_rows;
    let room = crate::warehouse::ndjson::MAX_FAILURE_MESSAGES.saturating_sub(total.failures.len());
    total.failures.extend(chunk.failures.into_iter().take(room));
    for (kind, count) in chunk.by_kind {
        *total.by_kind.entry(kind).or_default() += count;
    }
}

/// What a resume learns about one chunk of a killed run.
enum ChunkProgress {
    /// Its load job is DONE: this many rows are in the staging table.
    Loaded(u64),
    /// Read it again under this attempt's job id.
    Redo(u32),
}

impl Executor {
    /// The staging table of `table` for this run: a killed run's of the same plan to resume
    /// when there is one whose loaded chunks add up, else this run's, created now.
    pub(super) async fn staging_run(
        &self,
        fingerprint: &str,
        table: &TablePlan,
        extract: &Extract,
    ) -> Result<StagingRun, TableFailure> {
        let chunks = planned_chunks(extract);
        if let Some(resumed) = self.resumable(fingerprint, table, &chunks).await {
            self.jobs.adopt(&table.target, &resumed.run_id);
            // It lives another staging lifetime from now (it was to expire a day after the
            // killed run created it).
            let expires = chrono::Utc::now()
                + chrono::Duration::from_std(self.settings.staging_ttl)
                    .unwrap_or(chrono::Duration::MAX);
            let meta = crate::warehouse::TableMeta {
                expires_at_ms: Some(expires.timestamp_millis()),
                description: None,
            };
            if let Err(error) = self
                .warehouse
                .patch_table_meta(&resumed.staging, &meta, None)
                .await
            {
                tracing::warn!(table = %table.label, %error, "could not extend the resumed staging table's expiration");
            }
            return Ok(resumed);
        }
        let staging = staging_table(&table.target, &self.run_id);
        let info = StagingInfo {
            run_id: self.run_id.clone(),
            plan: fingerprint.to_string(),
            chunks: chunks.len(),
        };
        self.create_staging(&staging, extract, &info).await?;
        let tasks = chunks
            .iter()
            .enumerate()
            .map(|(index, range)| task(fingerprint, &table.target, &self.run_id, index, *range, 0))
            .collect();
        Ok(StagingRun {
            run_id: self.run_id.clone(),
            staging,
            tasks,
            skipped_rows: 0,
            skipped: 0,
            chunks: chunks.len(),
        })
    }

    /// The newest staging table of `table` that a killed run of this plan left, with the
    /// chunks still to read; `None` (after dropping a table that can't be resumed) to start
    /// over.
    async fn resumable(
        &self,
        fingerprint: &str,
        table: &TablePlan,
        chunks: &[Option<ChunkRange>],
    ) -> Option<StagingRun> {
        let (run_id, staging) = self
            .killed_staging(fingerprint, &table.target, chunks.len())
            .await?;
        let pages = chunks
            .iter()
            .any(|range| matches!(range, Some(ChunkRange::Pages { .. })));
        let mut tasks = Vec::new();
        let (mut skipped, mut skipped_rows) = (0, 0);
        let mut refusal = pages.then(|| {
            "its chunks are ctid page ranges, which rows move between when they are updated"
                .to_string()
        });
        for (index, range) in chunks.iter().enumerate() {
            if refusal.is_some() {
                break;
            }
            match self
                .chunk_progress(fingerprint, &table.target, &run_id, index)
                .await
            {
                Ok(ChunkProgress::Loaded(rows)) => {
                    skipped += 1;
                    skipped_rows += rows;
                }
                Ok(ChunkProgress::Redo(attempt)) => tasks.push(task(
                    fingerprint,
                    &table.target,
                    &run_id,
                    index,
                    *range,
                    attempt,
                )),
                Err(reason) => refusal = Some(reason),
            }
        }
        if refusal.is_none() {
            let held = self
                .warehouse
                .get_table(&staging)
                .await
                .ok()
                .flatten()
                .and_then(|existing| existing.num_rows);
            if held != Some(skipped_rows) {
                refusal = Some(format!(
                    "it holds {} rows but its loaded chunks {skipped_rows}",
                    held.map_or_else(|| "an unknown number of".to_string(), |n| n.to_string())
                ));
            }
        }
        if let Some(reason) = refusal {
            tracing::warn!(table = %table.label, staging = %staging, %reason, "cannot resume the killed run's staging table; starting over");
            let _ = self.warehouse.drop_table(&staging).await;
            return None;
        }
        if skipped == 0 {
            // Nothing loaded to keep: start afresh (the empty table expires like any leftover).
            return None;
        }
        Some(StagingRun {
            run_id,
            staging,
            tasks,
            skipped_rows,
            skipped,
            chunks: chunks.len(),
        })
    }

    /// `(run id, staging table)` of the newest staging table of `target` made by another run
    /// of the plan `fingerprint` with `chunks` chunks.
    async fn killed_staging(
        &self,
        fingerprint: &str,
        target: &str,
        chunks: usize,
    ) -> Option<(String, String)> {
        let prefix = format!("{STAGING_PREFIX}{target}_");
        let names = self
            .jobs
            .staging_tables(self.warehouse.as_ref(), &self.run_id)
            .await;
        let mut found: Option<(u64, u32, String, String)> = None;
        for name in names {
            let Some(run_id) = name.strip_prefix(&prefix) else {
                continue;
            };
            if !is_run_id(run_id) || run_id == self.run_id {
                continue;
            }
            let Ok(Some(existing)) = self.warehouse.get_table(&name).await else {
                continue;
            };
            let info = existing.description.as_deref().and_then(StagingInfo::parse);
            if info.is_none_or(|info| {
                info.plan != fingerprint || info.chunks != chunks || info.run_id != run_id
            }) {
                continue;
            }
            let order = super::run_id_order(run_id)?;
            if found.as_ref().is_none_or(|(s, m, _, _)| order > (*s, *m)) {
                found = Some((order.0, order.1, run_id.to_string(), name.clone()));
            }
        }
        found.map(|(_, _, run_id, name)| (run_id, name))
    }

    /// What the jobs of chunk `index` of a killed run say: loaded, or the attempt to redo it
    /// with; a still-running job is waited for.
    async fn chunk_progress(
        &self,
        fingerprint: &str,
        target: &str,
        run_id: &str,
        index: usize,
    ) -> Result<ChunkProgress, String> {
        for attempt in 0..MAX_ATTEMPTS {
            let job_id = chunk_job_id(fingerprint, target, run_id, index, attempt);
            let started = tokio::time::Instant::now();
            let mut polls = 0;
            loop {
                match self.warehouse.job_state(&job_id).await {
                    Err(error) => return Err(format!("jobs.get {job_id} failed: {error}")),
                    Ok(None) => return Ok(ChunkProgress::Redo(attempt)),
                    Ok(Some(JobState::Done { output_rows })) => {
                        return Ok(ChunkProgress::Loaded(output_rows));
                    }
                    Ok(Some(JobState::Failed { .. })) => break,
                    Ok(Some(JobState::Running)) if started.elapsed() < RUNNING_WAIT => {
                        tokio::time::sleep(crate::warehouse::poll_delay(polls)).await;
                        polls += 1;
                    }
                    Ok(Some(JobState::Running)) => {
                        return Err(format!("its load job {job_id} still runs"));
                    }
                }
            }
        }
        Err(format!("chunk {index} failed {MAX_ATTEMPTS} times"))
    }

    /// Reads the chunks `run` has left into its staging table and checks that the table holds
    /// the rows of every chunk.
    pub(super) async fn stage_chunks(
        &self,
        table: &TablePlan,
        source: &Arc<Source>,
        filter: Option<CursorFilter>,
        run: &StagingRun,
    ) -> Result<Staged, TableFailure> {
        let stats = self
            .run_chunks(
                table,
                source,
                filter,
                run.tasks.clone(),
                Some(run.staging.clone()),
                run.skipped_rows,
            )
            .await?;
        let expected = stats.rows + run.skipped_rows;
        let held = match self.warehouse.get_table(&run.staging).await {
            Ok(existing) => existing.and_then(|existing| existing.num_rows),
            Err(error) => {
                return Err(TableFailure::with_stats(
                    format!("reading the staging table's row count failed: {error}"),
                    stats,
                ));
            }
        };
        if held != Some(expected) {
            return Err(TableFailure::with_stats(
                format!(
                    "row count mismatch: extracted {expected} rows but BigQuery loaded {}; the target was not changed",
                    held.map_or_else(|| "an unknown number".to_string(), |n| n.to_string())
                ),
                stats,
            ));
        }
        Ok(Staged {
            stats,
            loaded: Some(expected),
            chunks: run.chunks,
            skipped: run.skipped,
        })
    }

    /// A dry run's stage: every chunk read and encoded, the bytes dropped.
    pub(super) async fn drain_chunks(
        &self,
        fingerprint: &str,
        table: &TablePlan,
        source: &Arc<Source>,
        filter: Option<CursorFilter>,
        extract: &Extract,
    ) -> Result<Staged, TableFailure> {
        let chunks = planned_chunks(extract);
        let tasks = chunks
            .iter()
            .enumerate()
            .map(|(index, range)| task(fingerprint, &table.target, &self.run_id, index, *range, 0))
            .collect();
        let stats = self
            .run_chunks(table, source, filter, tasks, None, 0)
            .await?;
        Ok(Staged {
            stats,
            loaded: None,
            chunks: chunks.len(),
            skipped: 0,
        })
    }

    /// Opens the table's readers and runs `tasks` on them, each reader on its own task (the
    /// encoding is CPU-bound); into `staging`, or drained when `None`. The first failure stops
    /// the others (their unfinished uploads are dropped: nothing of them loads).
    async fn run_chunks(
        &self,
        table: &TablePlan,
        source: &Arc<Source>,
        filter: Option<CursorFilter>,
        tasks: Vec<ChunkTask>,
        staging: Option<String>,
        done_rows: u64,
    ) -> Result<ExtractStats, TableFailure> {
        let source_table = table
            .source_table
            .clone()
            .ok_or_else(|| TableFailure::new("the plan has no source table"))?;
        let extract = table
            .extract()
            .cloned()
            .ok_or_else(|| TableFailure::new("the plan has no stage step"))?;
        if tasks.is_empty() {
            (self.progress)(&table.label, done_rows);
            return Ok(ExtractStats::default());
        }
        let wanted = usize::try_from(extract.chunking.readers.max(1))
            .unwrap_or(1)
            .min(tasks.len());
        let readers = source
            .open_readers(
                &source_table,
                wanted,
                extract.chunking.count(),
                extract.chunking.consistency,
            )
            .await
            .map_err(|error| {
                TableFailure::new(format!("extraction failed (nothing was written): {error}"))
            })?;
        let context = Arc::new(ChunkContext {
            executor: self.clone(),
            label: table.label.clone(),
            target: table.target.clone(),
            chunks: extract.chunking.count(),
            key: extract.chunking.key.clone(),
            source_table,
            extract,
            filter,
            staging,
            budget: SharedBadValues::default(),
            rows: Mutex::new(done_rows),
            queue: Mutex::new(tasks.into()),
            failed: AtomicBool::new(false),
        });
        (self.progress)(&table.label, done_rows);
        let readers = readers.into_iter().map(|reader| {
            let context = Arc::clone(&context);
            // A new task: the table's job labels go with it.
            let reader_task = labels::scope(labels::current(), read_chunks(context, reader));
            let mut handle = AbortOnDrop(tokio::spawn(reader_task));
            async move {
                (&mut handle.0).await.unwrap_or_else(|error| {
                    Err(TableFailure::new(format!(
                        "internal error: a reader's task ended: {error}"
                    )))
                })
            }
        });
        let done = futures::future::try_join_all(readers).await?;
        let mut stats = ExtractStats::default();
        for reader in done {
            merge_stats(&mut stats, reader);
        }
        Ok(stats)
    }
}

/// What every reader of one table shares.
struct ChunkContext {
    executor: Executor,
    label: String,
    target: String,
    chunks: usize,
    key: Option<String>,
    source_table: SourceTable,
    extract: Extract,
    filter: Option<CursorFilter>,
    /// `None`: a dry run.
    staging: Option<String>,
    budget: SharedBadValues,
    /// Rows so far over every chunk (progress; reported under the lock, so in order).
    rows: Mutex<u64>,
    queue: Mutex<VecDeque<ChunkTask>>,
    /// Set by the first reader that fails: the others take no further chunk.
    failed: AtomicBool,
}

/// One reader's loop: take a chunk, read and load it, until the queue is empty.
async fn read_chunks(
    context: Arc<ChunkContext>,
    mut reader: Reader,
) -> Result<ExtractStats, TableFailure> {
    let mut stats = ExtractStats::default();
    loop {
        if context.failed.load(Ordering::Relaxed) {
            break;
        }
        let next = context
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front();
        let Some(task) = next else { break };
        match context.chunk(&mut reader, &task).await {
            Ok(chunk) => merge_stats(&mut stats, chunk),
            Err(failure) => {
                context.failed.store(true, Ordering::Relaxed);
                return Err(failure);
            }
        }
    }
    reader.close().await;
    Ok(stats)
}

impl ChunkContext {
    /// `chunk 3 of 8 (id in [10, 20)): ` for a split table, nothing for one chunk.
    fn prefix(&self, task: &ChunkTask) -> String {
        match &task.range {
            Some(range) if self.chunks > 1 => format!(
                "chunk {} of {} ({}): ",
                task.index + 1,
                self.chunks,
                range.describe(self.key.as_deref())
            ),
            _ => String::new(),
        }
    }

    /// Reads one chunk into its own sink: drained in a dry run, else loaded by its own job.
    async fn chunk(
        &self,
        reader: &mut Reader,
        task: &ChunkTask,
    ) -> Result<ExtractStats, TableFailure> {
        let mut sink = row_sink(&self.source_table, &self.extract, &self.executor.run_id);
        sink.share_budget(Arc::clone(&self.budget));
        // The sink also keeps this run's cursor maximum: the ledger's next watermark.
        let sink = self.executor.ledger.cursor_sink(
            &self.executor.run_id,
            &self.target,
            &self.extract,
            sink,
        );
        let (sender, receiver) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let last = AtomicU64::new(0);
        let report = |rows: u64| {
            let grown = rows.saturating_sub(last.swap(rows, Ordering::Relaxed));
            let mut total = self
                .rows
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *total += grown;
            (self.executor.progress)(&self.label, *total);
        };
        let read = ChunkRead {
            key: self.key.as_deref(),
            range: task.range.unwrap_or(ChunkRange::Key { lo: None, hi: None }),
        };
        let extraction = reader.extract(
            &self.source_table,
            &self.extract.columns,
            self.filter.as_ref(),
            task.range.map(|_| read),
            sink,
            sender,
            &report,
        );
        let Some(staging) = &self.staging else {
            let drain = tokio::spawn(async move {
                let mut receiver = receiver;
                while receiver.recv().await.is_some() {}
            });
            let stats = extraction.await.map_err(|error| {
                TableFailure::new(format!("{}extraction failed: {error}", self.prefix(task)))
            })?;
            let _ = drain.await;
            return Ok(stats);
        };
        let (stats, outcome) = self.load_chunk(staging, task, extraction, receiver).await?;
        if !outcome.output_rows_is_total && outcome.output_rows != stats.rows {
            return Err(TableFailure::with_stats(
                format!(
                    "{}row count mismatch: extracted {} rows but BigQuery loaded {}; the target was not changed",
                    self.prefix(task),
                    stats.rows,
                    outcome.output_rows
                ),
                stats,
            ));
        }
        tracing::info!(
            table = %self.label,
            chunk = task.index + 1,
            chunks = self.chunks,
            job_id = %task.job_id,
            rows = stats.rows,
            "chunk loaded"
        );
        Ok(stats)
    }

    /// The chunk's extraction feeds its load job through a bounded channel; when it has read
    /// every row, the chunk's rejects are recorded, and only then is the upload let finish
    /// (its last bytes are held back until the input ends). A failed extraction drops the
    /// upload unfinished: nothing of the chunk loads.
    async fn load_chunk(
        &self,
        staging: &str,
        task: &ChunkTask,
        extraction: impl std::future::Future<Output = Result<ExtractStats, crate::source::SourceError>>,
        mut receiver: mpsc::Receiver<Bytes>,
    ) -> Result<(ExtractStats, LoadOutcome), TableFailure> {
        let warehouse = &self.executor.warehouse;
        let request = LoadRequest {
            table: staging.to_string(),
            schema: crate::schema::WarehouseTable {
                name: staging.to_string(),
                ..self.extract.load_schema.clone()
            },
            disposition: Disposition::Append,
            job_id: task.job_id.clone(),
            allow_field_addition: false,
            format: self.extract.format,
        };
        self.executor.jobs.job(&task.job_id);
        let (open, opened) = oneshot::channel::<()>();
        let upload = async {
            let (forward_sender, forward_receiver) = mpsc::channel::<Bytes>(1);
            let forward = async move {
                while let Some(bytes) = receiver.recv().await {
                    if forward_sender.send(bytes).await.is_err() {
                        return;
                    }
                }
                // Every row is read: the upload may end once the rejects are recorded.
                if opened.await.is_ok() {
                    drop(forward_sender);
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::join!(warehouse.load(&request, forward_receiver), forward).0
        };
        tokio::pin!(extraction, upload);
        let mut open = Some(open);
        let mut extracted: Option<ExtractStats> = None;
        let mut loaded: Option<Result<LoadOutcome, WarehouseError>> = None;
        while extracted.is_none() || loaded.is_none() {
            tokio::select! {
                result = &mut extraction, if extracted.is_none() => {
                    let stats = match result {
                        Ok(stats) => stats,
                        Err(error) => return Err(self.failed_extraction(task, error, loaded.take(), &mut upload)),
                    };
                    if let Some(Err(error)) = loaded.take() {
                        return Err(TableFailure::with_stats(format!("{}load into staging failed: {error}", self.prefix(task)), stats));
                    }
                    if let Err(message) = self.executor.write_rejects(&self.label, &self.target, &stats.rejects, &task.rejects_job).await {
                        return Err(TableFailure::with_stats(format!("{}{message}", self.prefix(task)), stats));
                    }
                    if let Some(open) = open.take() {
                        let _ = open.send(());
                    }
                    let empty = self.queue.lock().map(|queue| queue.is_empty()).unwrap_or(true);
                    if empty {
                        (self.executor.phases)(&self.label, super::Phase::Load);
                    }
                    extracted = Some(stats);
                }
                result = &mut upload, if loaded.is_none() => loaded = Some(result),
            }
        }
        let (Some(stats), Some(loaded)) = (extracted, loaded) else {
            return Err(TableFailure::new(
                "internal error: extraction or upload did not finish",
            ));
        };
        match loaded {
            Ok(outcome) => Ok((stats, outcome)),
            Err(error) => Err(TableFailure::with_stats(
                format!("{}load into staging failed: {error}", self.prefix(task)),
                stats,
            )),
        }
    }

    /// A failed extraction: the load's own error when the load failed first (it closed the
    /// sink under the extraction), else the extraction's.
    fn failed_extraction(
        &self,
        task: &ChunkTask,
        error: crate::source::SourceError,
        loaded: Option<Result<LoadOutcome, WarehouseError>>,
        upload: &mut (impl std::future::Future<Output = Result<LoadOutcome, WarehouseError>> + Unpin),
    ) -> TableFailure {
        let load_error = match loaded {
            Some(Err(error)) => Some(error),
            _ => futures::FutureExt::now_or_never(upload).and_then(Result::err),
        };
        TableFailure::new(match load_error {
            Some(load_error) => format!(
                "{}load into staging failed: {load_error}",
                self.prefix(task)
            ),
            None => format!(
                "{}extraction failed (nothing was written): {error}",
                self.prefix(task)
            ),
        })
    }
}
