//! A killed `apply plan.json` and its rerun, with the real binary and a PostgreSQL table split
//! into about 8 chunks read by one reader: SIGKILL once a chunk is loaded, then apply the same plan
//! again. The killed run's lease is taken over at once (its process is gone), and the target
//! holds exactly the source's rows once.
//!
//! - Against a loopback fake of BigQuery that keeps client job ids as BigQuery does, the rerun
//!   skips the chunks the killed run loaded ("resumed: skipped K of 8 chunks").
//! - The emulator does not keep client job ids of uploads (`scripts/EMULATOR.md`), so no chunk
//!   can be proven loaded: the rerun drops the killed run's staging table and starts over.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datasync::manifest::resolve::BigQuerySpec;
use datasync::warehouse::{BigQuery, Warehouse};
use sqlx::Executor as _;

use crate::support::bigquery_fake::FakeBigQuery;
use crate::support::{unique, url};

const ROWS: i64 = 8_000;

struct World {
    pool: sqlx::PgPool,
    schema: String,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let base = url(
            "DATASYNC_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&base)
            .await
            .unwrap_or_else(|error| {
                panic!("PostgreSQL is unreachable ({error}); run scripts/services.sh")
            });
        let schema = unique("dsresume");
        pool.execute(
            format!(
                "CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.items (id bigint PRIMARY KEY, v text NOT NULL);
                 INSERT INTO {schema}.items SELECT i, repeat('v', 200) FROM generate_series(1, {ROWS}) i;"
            )
            .as_str(),
        )
        .await
        .unwrap();
        Self {
            pool,
            schema,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A manifest writing `dataset` at `endpoint`; the table is ~1.9 MB on disk, ~8 chunks.
    fn manifest(&self, endpoint: &str, dataset: &str) {
        let postgres = url(
            "DATASYNC_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let text = format!(
            "bigquery:\n  project: datasync-test\n  dataset: {dataset}\n  endpoint: {endpoint}\n  emulator: true\nsources:\n  pg:\n    type: postgres\n    url: {postgres}\n    schema: {}\n    tables:\n      items: {{format: ndjson, chunk_bytes: 240KiB, table_parallelism: 1, batch_size: 200}}\n",
            self.schema
        );
        std::fs::write(self.dir.path().join("sync.yaml"), text).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(assert_cmd::cargo::cargo_bin("datasync"));
        command
            .current_dir(self.dir.path())
            .env_clear()
            .env("NO_COLOR", "1")
            .args(args);
        command
    }

    /// `plan --out plan.json`: the plan splits the table into chunks; how many.
    fn plan(&self) -> usize {
        let output = self
            .command(&["plan", "--out", "plan.json"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let plan: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("plan.json")).unwrap(),
        )
        .unwrap();
        let ranges = plan["tables"][0]["steps"][0]["chunking"]["ranges"]
            .as_array()
            .map_or(0, Vec::len);
        assert!((4..=12).contains(&ranges), "{plan:#}");
        ranges
    }

    /// `apply plan.json`, SIGKILLed once its log says a chunk is loaded; its log so far.
    fn apply_killed(&self) -> String {
        let mut child = self
            .command(&["apply", "plan.json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut log = String::new();
        let started = Instant::now();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            log.push_str(&line);
            log.push('\n');
            if line.contains("chunk loaded") {
                child.kill().unwrap();
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "{log}");
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed: {log}");
        assert!(log.contains("chunk loaded"), "{log}");
        log
    }

    /// `apply plan.json`: its exit status, stdout and stderr.
    fn apply(&self) -> (bool, String, String) {
        let output = self.command(&["apply", "plan.json"]).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    async fn drop(self) {
        let _ = self
            .pool
            .execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema).as_str())
            .await;
    }
}

/// A client of `dataset` at `endpoint`, the dataset created.
async fn dataset_at(endpoint: &str, dataset: &str) -> BigQuery {
    let warehouse = BigQuery::new(&BigQuerySpec {
        project: "datasync-test".into(),
        dataset: dataset.to_string(),
        location: Some("US".into()),
        endpoint: Some(endpoint.to_string()),
        emulator: true,
        create_dataset: true,
        ..BigQuerySpec::default()
    })
    .unwrap();
    if let Err(error) = warehouse.ensure_dataset(true).await {
        panic!("BigQuery at {endpoint} is unreachable ({error}); run scripts/emulator.sh start");
    }
    warehouse
}

/// The ids in `rows` (NDJSON `id` values), sorted.
fn ids(rows: &[serde_json::Value]) -> Vec<i64> {
    let mut ids: Vec<i64> = rows
        .iter()
        .map(|row| {
            row["id"]
                .as_i64()
                .or_else(|| row["id"].as_str().and_then(|text| text.parse().ok()))
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_apply_resumes_against_bigquerys_job_ids_and_skips_loaded_chunks() {
    let world = World::new().await;
    let bigquery = FakeBigQuery::start().await;
    // The dataset exists before planning (a plan that creates it is stale once a run did).
    dataset_at(&bigquery.server.base, "resume").await;
    world.manifest(&bigquery.server.base, "resume");
    let chunks = world.plan();
    let killed_log = tokio::task::block_in_place(|| world.apply_killed());
    let staging: Vec<String> = bigquery
        .tables()
        .into_iter()
        .filter(|name| name.starts_with("_datasync_staging_items_"))
        .collect();
    assert_eq!(
        staging.len(),
        1,
        "the killed run left its staging table: {killed_log}"
    );
    assert!(
        bigquery.rows("items").is_none(),
        "the target was not written"
    );

    let (success, stdout, stderr) = tokio::task::block_in_place(|| world.apply());
    assert!(success, "{stdout}\n{stderr}");
    let suffix = format!(" of {chunks} chunks already loaded");
    let skipped = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("pg.items: resumed: skipped ")
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
        })
        .unwrap_or_else(|| panic!("no resume line: {stdout}\n{stderr}"));
    let skipped: usize = skipped.parse().unwrap();
    assert!((1..chunks).contains(&skipped), "{stdout}");
    assert!(stderr.contains("resumed: skipped"), "{stderr}");
    // Exactly the source's rows, once.
    let rows = bigquery.rows("items").unwrap();
    assert_eq!(ids(&rows), (1..=ROWS).collect::<Vec<_>>());
    // The skipped chunks were loaded once: 8 chunk jobs in all, every one into the killed
    // run's staging table, which is gone now with the lock.
    let chunk_jobs = bigquery
        .jobs()
        .into_iter()
        .filter(|id| id.contains("_items_") && id.contains("_c"))
        .filter(|id| !id.ends_with("_rejects") && !id.ends_with("_write"))
        .count();
    assert_eq!(chunk_jobs, chunks, "{:?}", bigquery.jobs());
    assert_eq!(
        bigquery
            .tables()
            .into_iter()
            .filter(|name| name.starts_with("_datasync_"))
            .collect::<Vec<_>>(),
        // Only the run ledger stays (permanent by design).
        vec![datasync::sync::ledger::RUNS_TABLE.to_string()]
    );
    world.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_apply_against_the_emulator_starts_over_and_loads_every_row_once() {
    let world = World::new().await;
    let endpoint = url("DATASYNC_TEST_BIGQUERY_URL", "http://127.0.0.1:9050");
    let dataset = unique("dsresume");
    let warehouse = dataset_at(&endpoint, &dataset).await;
    world.manifest(&endpoint, &dataset);
    world.plan();
    let killed_log = tokio::task::block_in_place(|| world.apply_killed());
    let staging = warehouse
        .list_tables("_datasync_staging_items_")
        .await
        .unwrap();
    assert_eq!(staging.len(), 1, "{killed_log}");
    // The killed run's lease is still recorded, valid for minutes: its process is gone, so the
    // rerun takes it over at once (no --lock-timeout).
    assert_eq!(
        warehouse
            .list_tables("_datasync_lock_")
            .await
            .unwrap()
            .len(),
        1
    );

    let (success, stdout, stderr) = tokio::task::block_in_place(|| world.apply());
    assert!(success, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("cannot resume the killed run's staging table; starting over"),
        "{stderr}"
    );
    assert!(!stdout.contains("resumed:"), "{stdout}");
    let count = warehouse
        .query(
            &format!(
                "SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS d FROM `datasync-test.{dataset}.items`"
            ),
            &[],
        )
        .await
        .unwrap();
    let cell = |index: usize| {
        let value = &count.rows[0][index];
        value
            .as_i64()
            .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
            .unwrap()
    };
    assert_eq!((cell(0), cell(1)), (ROWS, ROWS));
    assert!(
        warehouse
            .list_tables("_datasync_staging_")
            .await
            .unwrap()
            .is_empty()
    );
    let _ = warehouse.delete_dataset().await;
    world.drop().await;
}
