//! Chunked extraction against real PostgreSQL and MariaDB (the in-memory warehouse stands in for
//! BigQuery): the planner splits a table by its size, every reader sees one snapshot while a
//! writer moves money between rows of the first and the last chunk (so the staged sum is the
//! invariant total), `consistency: per-chunk` shows what the snapshot prevents, and a MariaDB
//! user without the LOCK TABLES privilege gets a message naming `per-chunk`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use datasync::manifest::{self, Env, Format, ManifestInput};
use datasync::plan::Plan;
use datasync::sync::{DryRun, Executor, connect_sources, planner};
use datasync::warehouse::{FakeWarehouse, Warehouse};
use sqlx::Executor as _;

use crate::support::{unique, url};

/// Accounts 1..=ROWS, each with BALANCE, padded so the table is a few MiB.
const ROWS: i64 = 20_000;
const BALANCE: i64 = 1_000;

fn load_manifest(source: &str, consistency: &str) -> datasync::manifest::Manifest {
    let text = format!(
        "bigquery: {{project: fake-project, dataset: ds}}\nsources:\n  db:\n{source}    tables:\n      accounts: {{chunk_bytes: 256KiB, table_parallelism: 2, batch_size: 500, format: ndjson, consistency: {consistency}}}\n"
    );
    manifest::load(&ManifestInput {
        name: None,
        text: Some((text, Format::Yaml)),
        env: Env::new(),
    })
    .unwrap_or_else(|failure| panic!("{:?}", failure.problems))
    .manifest
}

/// Plans and applies `manifest` into a fresh in-memory warehouse, each progress step slowed so
/// the writer gets between the chunks' reads; the report and the warehouse.
async fn apply(
    manifest: &datasync::manifest::Manifest,
) -> (Plan, datasync::sync::ApplyReport, Arc<FakeWarehouse>) {
    let warehouse = Arc::new(FakeWarehouse::with_dataset());
    let session = connect_sources(manifest, Arc::clone(&warehouse) as Arc<dyn Warehouse>).await;
    assert!(
        session.source_errors.is_empty(),
        "{:?}",
        session.source_errors
    );
    let plan = planner::plan(manifest, &session).await.unwrap();
    let executor = Executor {
        sources: session.sources.clone(),
        warehouse: Arc::clone(&warehouse) as Arc<dyn Warehouse>,
        parallelism: 1,
        dry_run: DryRun::No,
        progress: Arc::new(|_: &str, _: u64| std::thread::sleep(Duration::from_millis(10))),
        phases: datasync::sync::no_phases(),
        run_id: "run1".into(),
        settings: Default::default(),
        jobs: Default::default(),
        ledger: Default::default(),
    };
    let report = executor.run(&plan).await;
    (plan, report, warehouse)
}

/// `(sum of balances, ids)` of the loaded target.
fn staged(warehouse: &FakeWarehouse) -> (i64, Vec<i64>) {
    let number = |value: &serde_json::Value| {
        value
            .as_i64()
            .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
            .unwrap()
    };
    let rows = warehouse.rows("accounts").unwrap_or_default();
    let sum = rows.iter().map(|row| number(&row["balance"])).sum();
    let ids = rows.iter().map(|row| number(&row["id"])).collect();
    (sum, ids)
}

fn assert_split(plan: &Plan) {
    let chunking = &plan.tables[0].extract().unwrap().chunking;
    assert!(chunking.count() >= 6, "{chunking:?}");
    assert_eq!(chunking.key.as_deref(), Some("id"));
    assert_eq!(chunking.readers, 2);
}

/// Runs `writer` (one money move per call) in a loop while `work` runs; how many moves it made.
async fn with_writer<W, F, T>(writer: W, work: F) -> (T, u64)
where
    W: Fn(i64, i64) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    F: std::future::Future<Output = T>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let moves = Arc::new(AtomicU64::new(0));
    let (stop_task, moves_task) = (Arc::clone(&stop), Arc::clone(&moves));
    let task = tokio::spawn(async move {
        let mut n: i64 = 0;
        while !stop_task.load(Ordering::Relaxed) {
            // From a row of the first chunk to one of the last: the total never changes.
            let from = 1 + n % 1_000;
            let to = ROWS - n % 1_000;
            writer(from, to).await;
            moves_task.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
    });
    while moves.load(Ordering::Relaxed) < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let result = work.await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    (result, moves.load(Ordering::Relaxed))
}

fn check_snapshot(report: &datasync::sync::ApplyReport, warehouse: &FakeWarehouse, moves: u64) {
    assert!(report.succeeded(), "{}", report.text());
    assert!(report.tables[0].chunks >= 6, "{}", report.text());
    let (sum, ids) = staged(warehouse);
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no row twice");
    assert_eq!(ids.len() as i64, ROWS);
    assert!(moves > 10, "the writer ran ({moves} moves)");
    assert_eq!(sum, ROWS * BALANCE, "one snapshot: the total is invariant");
}

async fn postgres_world() -> (sqlx::PgPool, String, String) {
    let base = url(
        "DATASYNC_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&base)
        .await
        .unwrap_or_else(|error| {
            panic!("PostgreSQL is unreachable ({error}); run scripts/services.sh")
        });
    let schema = unique("dschunks");
    pool.execute(
        format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, pad text NOT NULL);
             INSERT INTO {schema}.accounts SELECT i, {BALANCE}, repeat('x', 100) FROM generate_series(1, {ROWS}) i;"
        )
        .as_str(),
    )
    .await
    .unwrap();
    let source = format!("    type: postgres\n    url: {base}\n    schema: {schema}\n");
    (pool, schema, source)
}

fn postgres_writer(
    pool: &sqlx::PgPool,
    schema: &str,
) -> impl Fn(i64, i64) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static {
    let (pool, schema) = (pool.clone(), schema.to_string());
    move |from, to| {
        let (pool, schema) = (pool.clone(), schema.clone());
        Box::pin(async move {
            let mut transaction = pool.begin().await.unwrap();
            for (id, delta) in [(from, -1), (to, 1)] {
                sqlx::query(&format!(
                    "UPDATE {schema}.accounts SET balance = balance + $1 WHERE id = $2"
                ))
                .bind(delta)
                .bind(id)
                .execute(&mut *transaction)
                .await
                .unwrap();
            }
            transaction.commit().await.unwrap();
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_chunks_share_one_snapshot_while_a_writer_moves_money_between_them() {
    let (pool, schema, source) = postgres_world().await;
    let manifest = load_manifest(&source, "snapshot");
    let ((plan, report, warehouse), moves) =
        with_writer(postgres_writer(&pool, &schema), apply(&manifest)).await;
    assert_split(&plan);
    check_snapshot(&report, &warehouse, moves);

    // Each chunk on its own: the first chunk is read before the writer's later moves, the last
    // after them, so the total is off (what `snapshot` prevents).
    let manifest = load_manifest(&source, "per-chunk");
    let ((_, report, warehouse), moves) =
        with_writer(postgres_writer(&pool, &schema), apply(&manifest)).await;
    assert!(report.succeeded(), "{}", report.text());
    let (sum, _) = staged(&warehouse);
    assert_ne!(
        sum,
        ROWS * BALANCE,
        "per-chunk reads at different times ({moves} moves)"
    );
    pool.execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_splits_a_table_without_an_integer_key_by_pages() {
    let (pool, schema, source) = postgres_world().await;
    pool.execute(format!("ALTER TABLE {schema}.accounts DROP CONSTRAINT accounts_pkey").as_str())
        .await
        .unwrap();
    let manifest = load_manifest(&source, "snapshot");
    let (plan, report, warehouse) = apply(&manifest).await;
    let chunking = &plan.tables[0].extract().unwrap().chunking;
    assert_eq!(chunking.key, None, "{chunking:?}");
    assert!(chunking.count() >= 6, "{chunking:?}");
    assert!(report.succeeded(), "{}", report.text());
    let (sum, ids) = staged(&warehouse);
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!((ids.len() as i64, unique.len() as i64), (ROWS, ROWS));
    assert_eq!(sum, ROWS * BALANCE);
    pool.execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await
        .unwrap();
}

struct Mariadb {
    admin: sqlx::MySqlPool,
    database: String,
    base: String,
}

async fn mariadb_world() -> Mariadb {
    let base = url(
        "DATASYNC_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
    );
    let admin = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(3)
        .connect(&base)
        .await
        .unwrap_or_else(|error| {
            panic!("MariaDB is unreachable ({error}); run scripts/services.sh")
        });
    let database = unique("dschunks");
    admin
        .execute(
            format!(
                "SET SESSION max_recursive_iterations = 100000;
                 CREATE DATABASE {database};
                 CREATE TABLE {database}.accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, pad text NOT NULL) ENGINE=InnoDB;
                 INSERT INTO {database}.accounts
                   WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
                   SELECT i, {BALANCE}, REPEAT('x', 100) FROM n;
                 ANALYZE TABLE {database}.accounts;"
            )
            .as_str(),
        )
        .await
        .unwrap();
    Mariadb {
        admin,
        database,
        base,
    }
}

impl Mariadb {
    /// The source entry for `user` (`user:password`, or `root`) on this test's database.
    fn source(&self, user: &str) -> String {
        let address = self
            .base
            .rsplit_once('@')
            .map_or("127.0.0.1:3306", |(_, rest)| rest);
        let host = address.split('/').next().unwrap_or(address);
        format!(
            "    type: mysql\n    url: mysql://{user}@{host}/{}\n",
            self.database
        )
    }

    fn writer(
        &self,
    ) -> impl Fn(i64, i64) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static {
        let (pool, database) = (self.admin.clone(), self.database.clone());
        move |from, to| {
            let (pool, database) = (pool.clone(), database.clone());
            Box::pin(async move {
                let mut transaction = pool.begin().await.unwrap();
                for (id, delta) in [(from, -1), (to, 1)] {
                    sqlx::query(&format!(
                        "UPDATE {database}.accounts SET balance = balance + ? WHERE id = ?"
                    ))
                    .bind(delta)
                    .bind(id)
                    .execute(&mut *transaction)
                    .await
                    .unwrap();
                }
                transaction.commit().await.unwrap();
            })
        }
    }

    async fn drop(self) {
        let _ = self
            .admin
            .execute(format!("DROP DATABASE IF EXISTS {}", self.database).as_str())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_chunks_start_on_one_snapshot_inside_a_lock_window() {
    let world = mariadb_world().await;
    let manifest = load_manifest(&world.source("root"), "snapshot");
    let ((plan, report, warehouse), moves) = with_writer(world.writer(), apply(&manifest)).await;
    assert_split(&plan);
    check_snapshot(&report, &warehouse, moves);

    let manifest = load_manifest(&world.source("root"), "per-chunk");
    let ((_, report, warehouse), moves) = with_writer(world.writer(), apply(&manifest)).await;
    assert!(report.succeeded(), "{}", report.text());
    let (sum, _) = staged(&warehouse);
    assert_ne!(
        sum,
        ROWS * BALANCE,
        "per-chunk reads at different times ({moves} moves)"
    );
    world.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mariadb_user_without_lock_tables_is_told_about_per_chunk() {
    let world = mariadb_world().await;
    let user = unique("dsnolock");
    for host in ["%", "localhost"] {
        world
            .admin
            .execute(
                format!(
                    "CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pw';
                     GRANT SELECT ON {}.* TO '{user}'@'{host}';",
                    world.database
                )
                .as_str(),
            )
            .await
            .unwrap();
    }
    let limited = format!("{user}:pw");
    let manifest = load_manifest(&world.source(&limited), "snapshot");
    let (plan, report, warehouse) = apply(&manifest).await;
    assert_split(&plan);
    let text = report.text();
    assert!(!report.succeeded(), "{text}");
    assert!(text.contains("cannot take `LOCK TABLES"), "{text}");
    assert!(
        text.contains("Grant the LOCK TABLES privilege, or set `consistency: per-chunk`"),
        "{text}"
    );
    assert!(warehouse.rows("accounts").is_none());

    let manifest = load_manifest(&world.source(&limited), "per-chunk");
    let (_, report, warehouse) = apply(&manifest).await;
    assert!(report.succeeded(), "{}", report.text());
    assert_eq!(staged(&warehouse).1.len() as i64, ROWS);
    for host in ["%", "localhost"] {
        let _ = world
            .admin
            .execute(format!("DROP USER '{user}'@'{host}'").as_str())
            .await;
    }
    world.drop().await;
}

/// MariaDB → the emulator through the binary: the plan shows the split, every chunk is an Avro
/// load job appending to one staging table, and the target holds every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_chunks_load_into_the_emulator_as_avro_once_each() {
    use datasync::manifest::resolve::BigQuerySpec;
    use datasync::warehouse::BigQuery;
    let world = mariadb_world().await;
    let endpoint = url("DATASYNC_TEST_BIGQUERY_URL", "http://127.0.0.1:9050");
    let dataset = unique("dschunks");
    let warehouse = BigQuery::new(&BigQuerySpec {
        project: "datasync-test".into(),
        dataset: dataset.clone(),
        location: Some("US".into()),
        endpoint: Some(endpoint.clone()),
        emulator: true,
        create_dataset: true,
        ..BigQuerySpec::default()
    })
    .unwrap();
    if let Err(error) = warehouse.ensure_dataset(true).await {
        panic!(
            "the emulator at {endpoint} is unreachable ({error}); run scripts/emulator.sh start"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "bigquery: {{project: datasync-test, dataset: {dataset}, endpoint: \"{endpoint}\", emulator: true}}\nsources:\n  db:\n{}    tables:\n      accounts: {{chunk_bytes: 512KiB, format: avro}}\n",
            world.source("root")
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        assert_cmd::Command::cargo_bin("datasync")
            .unwrap()
            .current_dir(dir.path())
            .env_clear()
            .env("NO_COLOR", "1")
            .args(args)
            .output()
            .unwrap()
    };
    let plan = tokio::task::block_in_place(|| run(&["plan"]));
    let text =
        String::from_utf8_lossy(&plan.stderr).into_owned() + &String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{text}");
    assert!(
        regex::Regex::new(r"avro, \d+ chunks by id \(2 readers\)")
            .unwrap()
            .is_match(&text),
        "{text}"
    );
    let apply =
        tokio::task::block_in_place(|| run(&["apply", "--auto-approve", "--format", "json"]));
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&apply.stdout).unwrap();
    let chunks = report["tables"][0]["chunks"].as_u64().unwrap();
    assert!(chunks >= 2, "{report:#}");
    assert_eq!(report["tables"][0]["rows_loaded"], ROWS);
    let counted = warehouse
        .query(
            &format!(
                "SELECT COUNT(*), COUNT(DISTINCT id), SUM(balance) FROM `datasync-test.{dataset}.accounts`"
            ),
            &[],
        )
        .await
        .unwrap();
    let cell = |index: usize| {
        let value = &counted.rows[0][index];
        value
            .as_i64()
            .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
            .unwrap()
    };
    assert_eq!((cell(0), cell(1), cell(2)), (ROWS, ROWS, ROWS * BALANCE));
    let _ = warehouse.delete_dataset().await;
    world.drop().await;
}
