//! End to end: a real PostgreSQL source, the BigQuery emulator and the `datasync` binary.
//! Needs `scripts/services.sh` and `scripts/emulator.sh start` (run by `scripts/test.sh`).

use std::process::Output;

use assert_cmd::Command;
use datasync::manifest::resolve::BigQuerySpec;
use datasync::warehouse::{BigQuery, Warehouse};
use sqlx::Executor as _;

/// A service URL from the environment (set by `scripts/test.sh`), or the local default.
#[expect(
    clippy::disallowed_methods,
    reason = "integration tests read service URLs from the environment"
)]
fn env_url(var: &str, default: &str) -> String {
    std::env::var_os(var)
        .and_then(|value| value.into_string().ok())
        .unwrap_or_else(|| default.to_string())
}

fn postgres_url() -> String {
    env_url(
        "DATASYNC_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

fn bigquery_url() -> String {
    env_url("DATASYNC_TEST_BIGQUERY_URL", "http://127.0.0.1:9050")
}

/// One test's world: a PostgreSQL schema and a BigQuery dataset, both unique, both dropped.
pub(crate) struct World {
    pub(crate) name: String,
    pool: sqlx::PgPool,
    pub(crate) warehouse: BigQuery,
    pub(crate) dir: tempfile::TempDir,
}

impl World {
    pub(crate) async fn new(test: &str) -> Self {
        let name = format!("dse2e_{test}_{}", std::process::id());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&postgres_url())
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "PostgreSQL at {} is unreachable ({error}); run scripts/services.sh",
                    postgres_url()
                )
            });
        pool.execute(
            format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}").as_str(),
        )
        .await
        .unwrap();
        let spec = BigQuerySpec {
            project: "datasync-test".into(),
            dataset: name.clone(),
            location: Some("US".into()),
            endpoint: Some(bigquery_url()),
            emulator: true,
            create_dataset: true,
            ..BigQuerySpec::default()
        };
        let warehouse = BigQuery::new(&spec).unwrap();
        if let Err(error) = warehouse.ensure_dataset(true).await {
            panic!(
                "the BigQuery emulator at {} is unreachable ({error}); run scripts/emulator.sh start",
                bigquery_url()
            );
        }
        Self {
            name,
            pool,
            warehouse,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) async fn sql(&self, statements: &str) {
        let script = format!("SET search_path = {};\n{statements}", self.name);
        sqlx::raw_sql(&script).execute(&self.pool).await.unwrap();
    }

    pub(crate) fn manifest(&self, tables: &str) -> String {
        let text = format!(
            "bigquery:\n  project: datasync-test\n  dataset: {name}\n  endpoint: {bq}\n  emulator: true\nsources:\n  pg:\n    type: postgres\n    url: {pg}\n    schema: {name}\n    tables:\n{tables}",
            name = self.name,
            bq = bigquery_url(),
            pg = postgres_url(),
        );
        let path = self.dir.path().join("sync.yaml");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    pub(crate) fn datasync(&self, args: &[&str]) -> Output {
        Command::cargo_bin("datasync")
            .unwrap()
            .current_dir(self.dir.path())
            .env_clear()
            .env("NO_COLOR", "1")
            .args(args)
            .output()
            .unwrap()
    }

    /// Every row of a target table, sorted, as JSON text.
    pub(crate) async fn rows(&self, table: &str, order_by: &str) -> Vec<String> {
        self.select(table, "*", order_by).await
    }

    /// Some columns of every row, sorted, as JSON text.
    pub(crate) async fn select(&self, table: &str, columns: &str, order_by: &str) -> Vec<String> {
        let sql = format!(
            "SELECT {columns} FROM `datasync-test.{}.{table}` ORDER BY {order_by}",
            self.name
        );
        let result = self.warehouse.query(&sql, &[]).await.unwrap();
        result
            .rows
            .iter()
            .map(|row| serde_json::to_string(row).unwrap())
            .collect()
    }

    /// datasync's tables in the dataset but the run ledger (permanent by design): staging,
    /// backup and lock tables.
    pub(crate) async fn leftovers(&self) -> Vec<String> {
        let mut names = self.warehouse.list_tables("_datasync_").await.unwrap();
        names.retain(|name| name != datasync::sync::ledger::RUNS_TABLE);
        names
    }

    pub(crate) async fn count(&self, table: &str) -> u64 {
        let sql = format!("SELECT COUNT(*) FROM `datasync-test.{}.{table}`", self.name);
        let result = self.warehouse.query(&sql, &[]).await.unwrap();
        let cell = result.scalar().cloned().unwrap_or_default();
        cell.as_u64()
            .or_else(|| cell.as_str().and_then(|text| text.parse().ok()))
            .unwrap()
    }
}

async fn cleanup(name: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(&postgres_url()).await {
        let _ = pool
            .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
            .await;
        pool.close().await;
    }
    let url = format!(
        "{}/bigquery/v2/projects/datasync-test/datasets/{name}?deleteContents=true",
        bigquery_url()
    );
    let _ = reqwest::Client::new().delete(url).send().await;
}

impl Drop for World {
    /// Drops the schema and the dataset, also when a test panics: runs leave nothing behind.
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(cleanup(&name));
            }
        })
        .join();
    }
}

pub(crate) fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) fn assert_code(output: &Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "{}", text(output));
}

const SEED: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, balance numeric(12,2), seen timestamptz);
INSERT INTO customers SELECT g, 'c' || g, g * 1.25, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour' FROM generate_series(1, 300) g;
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, total numeric(10,2) NOT NULL, updated_at timestamp NOT NULL);
INSERT INTO orders SELECT g, 1 + g % 300, g * 2.5, timestamp '2024-06-01 00:00:00' + g * interval '1 minute' FROM generate_series(1, 1000) g;
CREATE TABLE events (id bigint PRIMARY KEY, kind text, at timestamptz NOT NULL);
INSERT INTO events SELECT g, 'k' || (g % 3), timestamptz '2024-06-01 00:00:00+00' + g * interval '1 second' FROM generate_series(1, 500) g;
";

const TABLES: &str = "      customers: {}\n      orders:\n        mode: merge\n        primary_key: [id]\n        cursor: updated_at\n      events:\n        mode: incremental\n        cursor: at\n";

#[tokio::test(flavor = "multi_thread")]
async fn sync_twice_is_idempotent_and_second_plan_has_no_changes() {
    let world = World::new("twice").await;
    world.sql(SEED).await;
    let manifest = world.manifest(TABLES);

    let plan = world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]);
    assert_code(&plan, 2);
    assert!(
        text(&plan).contains("Plan: 3 to create, 0 to update, 0 to recreate"),
        "{}",
        text(&plan)
    );

    let apply = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&apply, 0);
    assert_eq!(world.count("customers").await, 300);
    assert_eq!(world.count("orders").await, 1000);
    assert_eq!(world.count("events").await, 500);
    let first = (
        world.rows("customers", "id").await,
        world.rows("orders", "id").await,
        world.rows("events", "id").await,
    );

    let apply = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&apply, 0);
    let second = (
        world.rows("customers", "id").await,
        world.rows("orders", "id").await,
        world.rows("events", "id").await,
    );
    assert_eq!(first, second, "a second sync changed the targets");

    let plan = world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]);
    assert_code(&plan, 0);
    assert!(text(&plan).contains("No schema changes"), "{}", text(&plan));

    // Machine-readable and pull-request formats of the same plan.
    let json = world.datasync(&["-c", &manifest, "plan", "--format", "json"]);
    assert_code(&json, 0);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["format_version"], datasync::plan::FORMAT_VERSION);
    let actions: Vec<&str> = value["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["sync", "sync", "sync"]);
    assert_eq!(
        value["tables"][2]["estimated_rows"], 0,
        "no new events to move"
    );
    let markdown = world.datasync(&["-c", &manifest, "plan", "--format", "markdown"]);
    let markdown = String::from_utf8(markdown.stdout).unwrap();
    assert!(
        markdown.contains("| `=` | `pg.orders` | `orders` | no schema change | merge on [id] where updated_at >= max(target.updated_at), avro | ~1 rows |"),
        "{markdown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_incremental_and_schema_evolution() {
    let world = World::new("evolve").await;
    world.sql(SEED).await;
    let manifest = world.manifest(TABLES);
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);

    world
        .sql(
            "UPDATE orders SET total = 0, updated_at = timestamp '2025-02-01 00:00:00' WHERE id <= 10;
             INSERT INTO orders VALUES (5000, 1, 9.99, timestamp '2025-01-01 00:00:00');
             INSERT INTO events SELECT g, 'new', timestamptz '2025-01-01 00:00:00+00' + g * interval '1 second' FROM generate_series(501, 520) g;
             ALTER TABLE customers ADD COLUMN tier text;
             UPDATE customers SET tier = 'gold' WHERE id = 1;",
        )
        .await;
    let plan = world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]);
    assert_code(&plan, 2);
    assert!(
        text(&plan).contains("+ add column tier STRING NULLABLE"),
        "{}",
        text(&plan)
    );
    // Merge with a cursor: the 10 updated rows, the new one and the one at the old maximum.
    assert!(
        text(&plan)
            .contains("merge on [id] where updated_at >= max(target.updated_at), avro, ~12 rows)"),
        "{}",
        text(&plan)
    );
    // Incremental: only the rows past the target's cursor maximum are to move.
    assert!(
        text(&plan).contains("where at > max(target.at), avro, ~20 rows)"),
        "{}",
        text(&plan)
    );

    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    assert_eq!(
        world.count("orders").await,
        1001,
        "merge inserts the new order"
    );
    let zeroed = world
        .warehouse
        .query(
            &format!(
                "SELECT COUNT(*) FROM `datasync-test.{}.orders` WHERE total = 0",
                world.name
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        zeroed.scalar().unwrap().to_string().trim_matches('"'),
        "10",
        "merge updates matched rows"
    );
    assert_eq!(
        world.count("events").await,
        520,
        "incremental appends only newer rows"
    );
    let tier = world
        .warehouse
        .query(
            &format!(
                "SELECT tier FROM `datasync-test.{}.customers` WHERE id = 1",
                world.name
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tier.scalar().unwrap(), "gold");
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]),
        0,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_source_empties_a_replace_target_and_failures_keep_the_old_content() {
    let world = World::new("empty").await;
    world.sql(SEED).await;
    let manifest = world.manifest("      customers: {}\n");
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    let before = world.rows("customers", "id").await;
    assert_eq!(before.len(), 300);
    let schema_before = world
        .warehouse
        .get_table("customers")
        .await
        .unwrap()
        .unwrap()
        .table;

    // A failure in the middle of the stream (a NaN with policy `error` deep in a table large
    // enough for several upload chunks) leaves the target as it was.
    world
        .sql(
            "ALTER TABLE customers ADD COLUMN score float8;
             INSERT INTO customers SELECT g, repeat('n', 40), 1, now(), 1.5 FROM generate_series(1000, 60000) g;
             UPDATE customers SET score = 'NaN' WHERE id = 59000;",
        )
        .await;
    let failing = world.manifest(
        "      customers:\n        max_parse_failures: 0\n        types: {non_finite: error}\n",
    );
    let apply = world.datasync(&["-c", &failing, "apply"]);
    assert_code(&apply, 3);
    assert!(
        text(&apply).contains("59000"),
        "the failing row is named: {}",
        text(&apply)
    );
    // Neither the rows nor the schema changed (the new column waits for a verified load).
    let after = world.rows("customers", "id").await;
    assert!(
        after == before,
        "a failed load changed the target's rows ({} rows now)",
        after.len()
    );
    let schema_after = world
        .warehouse
        .get_table("customers")
        .await
        .unwrap()
        .unwrap()
        .table;
    assert_eq!(
        schema_after, schema_before,
        "a failed load changed the target's schema"
    );
    world.sql("ALTER TABLE customers DROP COLUMN score").await;

    world.sql("DELETE FROM customers").await;
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    assert_eq!(
        world.count("customers").await,
        0,
        "an empty source empties the target"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn saved_plans_are_applied_verbatim_or_refused_when_stale() {
    let world = World::new("saved").await;
    world.sql(SEED).await;
    let manifest = world.manifest(TABLES);
    let plan_path = world.dir.path().join("plan.json").display().to_string();
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--out", &plan_path]),
        0,
    );
    assert_code(&world.datasync(&["-c", &manifest, "apply", &plan_path]), 0);
    assert_eq!(world.count("orders").await, 1000);

    // Saved before a source change: refused.
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--out", &plan_path]),
        0,
    );
    world.sql("ALTER TABLE orders ADD COLUMN note text").await;
    let apply = world.datasync(&["-c", &manifest, "apply", &plan_path]);
    assert_code(&apply, 1);
    assert!(
        text(&apply).contains("the source table changed"),
        "{}",
        text(&apply)
    );

    // An edited plan is refused too.
    let edited = std::fs::read_to_string(&plan_path)
        .unwrap()
        .replace("\"orders\"", "\"orderz\"");
    std::fs::write(&plan_path, edited).unwrap();
    let apply = world.datasync(&["-c", &manifest, "apply", &plan_path]);
    assert_code(&apply, 1);
    assert!(text(&apply).contains("it was edited"), "{}", text(&apply));

    // A plan saved by another datasync version is refused, naming both versions.
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--out", &plan_path]),
        0,
    );
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    saved["datasync_version"] = "0.0.1".into();
    std::fs::write(&plan_path, saved.to_string()).unwrap();
    let apply = world.datasync(&["-c", &manifest, "apply", &plan_path]);
    assert_code(&apply, 1);
    let expected = format!(
        "it was saved by datasync 0.0.1 (plan format {}); this is datasync {}",
        datasync::plan::FORMAT_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    assert!(text(&apply).contains(&expected), "{}", text(&apply));
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_writes_nothing() {
    let world = World::new("dry").await;
    world.sql(SEED).await;
    let manifest = world.manifest(TABLES);
    let apply = world.datasync(&["-c", &manifest, "apply", "--dry-run"]);
    assert_code(&apply, 0);
    assert!(
        text(&apply).contains("dry run: 3 of 3 table(s) synced, 1,800 rows"),
        "{}",
        text(&apply)
    );
    assert!(
        world
            .warehouse
            .get_table("customers")
            .await
            .unwrap()
            .is_none()
    );

    // `--table` narrows the run; an unknown name lists the known ones.
    let apply = world.datasync(&[
        "-c",
        &manifest,
        "apply",
        "--dry-run",
        "--table",
        "pg.orders",
    ]);
    assert_code(&apply, 0);
    assert!(
        text(&apply).contains("dry run: 1 of 1 table(s) synced, 1,000 rows"),
        "{}",
        text(&apply)
    );
    let plan = world.datasync(&["-c", &manifest, "plan", "--table", "pg.nope"]);
    assert_code(&plan, 1);
    assert!(
        text(&plan).contains(
            "unknown table(s) `pg.nope`; the manifest has: pg.customers, pg.orders, pg.events"
        ),
        "{}",
        text(&plan)
    );
}

/// Starts `datasync apply` and returns once it reports extraction progress (mid-table).
fn apply_until_progress(world: &World, manifest: &str) -> std::process::Child {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("datasync"))
        .current_dir(world.dir.path())
        .env_clear()
        .env("NO_COLOR", "1")
        .args([
            "-c",
            manifest,
            "--log-level",
            "info",
            "--log-format",
            "json",
            "apply",
            // A killed earlier run's lease expires quickly and is taken over.
            "--lease-duration",
            "2s",
            "--lock-timeout",
            "30s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let progressed = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("\"extracting\""));
    assert!(progressed, "apply finished without reporting progress");
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_apply_leaves_every_target_old_or_new() {
    let world = World::new("kill").await;
    world.sql("CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL); INSERT INTO big SELECT g, repeat('x', 50) FROM generate_series(1, 1000) g;").await;
    let manifest = world.manifest("      big: {}\n");
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    let old = world.rows("big", "id").await;
    world.sql("TRUNCATE big; INSERT INTO big SELECT g, repeat('y', 50) FROM generate_series(1, 1000000) g;").await;

    // SIGKILL in the middle of the extraction: nothing reached the target.
    let mut child = apply_until_progress(&world, &manifest);
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(
        world.rows("big", "id").await,
        old,
        "a kill mid-extraction changed the target"
    );

    // The killed run's staging table stays until it expires (or a later run drops it then).
    let dead_staging = world
        .warehouse
        .list_tables("_datasync_staging_big_")
        .await
        .unwrap();
    assert!(dead_staging.len() <= 1, "{dead_staging:?}");

    // SIGTERM (what a scheduler sends): a clean stop with exit 3 and no staging table of its
    // own left.
    let mut child = apply_until_progress(&world, &manifest);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(world.count("big").await, 1000);
    assert!(
        world
            .warehouse
            .list_tables("_datasync_staging_big_")
            .await
            .unwrap()
            == dead_staging,
        "staging left behind"
    );
    assert!(
        world
            .warehouse
            .list_tables("_datasync_lock_")
            .await
            .unwrap()
            .is_empty(),
        "an interrupted run releases its lease"
    );
    // ... and records itself in the ledger: the table it did not finish is `interrupted`.
    let statuses = world
        .select("_datasync_runs", "`status`", "`finished_at`")
        .await;
    assert_eq!(
        statuses.last().map(String::as_str),
        Some(r#"["interrupted"]"#),
        "{statuses:?}"
    );

    // 30 kills at pseudo-random moments (extraction, upload, load, copy): old or new, never
    // in between. Short leases and staging expirations so each run takes over the dead one's
    // lease and drops its leftovers.
    let quick = [
        "-c",
        manifest.as_str(),
        "apply",
        "--lease-duration",
        "2s",
        "--lock-timeout",
        "30s",
        "--staging-expiration",
        "3s",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut new_seen = false;
    for kill in 0..30 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay_ms = 200 + seed % 4_000;
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("datasync"))
            .current_dir(world.dir.path())
            .env_clear()
            .args(quick)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        child.kill().unwrap();
        let _ = child.wait();
        let count = world.count("big").await;
        assert!(
            count == 1000 || count == 1_000_000,
            "after kill {kill} at {delay_ms} ms the target has {count} rows"
        );
        if count == 1000 {
            assert!(!new_seen, "the target went back to the old rows");
            assert_eq!(world.rows("big", "id").await, old, "old content altered");
        } else {
            new_seen = true;
        }
    }
    // The next run (after the dead runs' leases and staging tables expired) succeeds and
    // leaves no staging, backup or lock table behind.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_code(&world.datasync(&quick), 0);
    assert_eq!(world.count("big").await, 1_000_000);
    assert_eq!(
        world.leftovers().await,
        Vec::<String>::new(),
        "a dead run's staging or lock table remains past its expiry"
    );
}

fn mysql_url() -> String {
    env_url(
        "DATASYNC_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_source_replace_and_merge_twice() {
    // A database name with a hyphen and a reserved-word table name, both quoted.
    let world = World::new("maria").await;
    let database = format!("ds-e2e-{}", std::process::id());
    let server = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&mysql_url())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "MariaDB at {} is unreachable ({error}); run scripts/services.sh",
                mysql_url()
            )
        });
    sqlx::raw_sql(&format!(
        "DROP DATABASE IF EXISTS `{database}`; CREATE DATABASE `{database}`; USE `{database}`;
         CREATE TABLE `order` (id BIGINT UNSIGNED PRIMARY KEY, paid TINYINT(1) NOT NULL, total DECIMAL(12,2) NOT NULL, at DATETIME(6) NOT NULL, meta JSON);
         INSERT INTO `order` VALUES (1, 1, 10.50, '2024-01-02 03:04:05.123456', '{{\"a\": 1}}'), (18446744073709551615, 0, 99999999.99, '1999-12-31 23:59:59', NULL);"
    ))
    .execute(&server)
    .await
    .unwrap();
    let server_url = mysql_url()
        .rsplit_once('/')
        .map_or_else(mysql_url, |(server, _)| server.to_string());
    let text = format!(
        "bigquery:\n  project: datasync-test\n  dataset: {name}\n  endpoint: {bq}\n  emulator: true\nsources:\n  shop:\n    type: mysql\n    url: {server_url}/{database}\n    tables:\n      order:\n        mode: merge\n        primary_key: [id]\n",
        name = world.name,
        bq = bigquery_url(),
    );
    let path = world.dir.path().join("maria.yaml");
    std::fs::write(&path, text).unwrap();
    let manifest = path.display().to_string();

    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    let first = world.rows("order", "id").await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(
        first[1].contains("18446744073709551615"),
        "BIGINT UNSIGNED max survives: {first:?}"
    );
    assert!(
        first[0].contains("true") && first[0].contains("10.5"),
        "{first:?}"
    );
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    assert_eq!(
        world.rows("order", "id").await,
        first,
        "a second merge changed the target"
    );
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]),
        0,
    );

    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{database}`"))
        .execute(&server)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn partitioned_and_clustered_tables_plan_no_changes_after_apply() {
    let world = World::new("parts").await;
    world.sql(SEED).await;
    let manifest = world.manifest(
        "      customers:\n        partition_by: seen:MONTH\n        cluster_by: [name]\n",
    );
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    let table = world
        .warehouse
        .get_table("customers")
        .await
        .unwrap()
        .unwrap()
        .table;
    assert_eq!(
        table
            .partitioning
            .as_ref()
            .map(|p| (p.granularity.as_str(), p.field.as_str())),
        Some(("MONTH", "seen"))
    );
    assert_eq!(table.clustering, ["name"]);
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]),
        0,
    );
}

/// PostgreSQL column comments become the BigQuery columns' descriptions, and a created table
/// carries the `managed-by: datasync` label, as the emulator stores them (tables.get).
#[tokio::test(flavor = "multi_thread")]
async fn column_comments_and_the_managed_by_label_reach_the_table_metadata() {
    let world = World::new("descr").await;
    world
        .sql(
            "CREATE TABLE notes (id bigint PRIMARY KEY, body text);
              COMMENT ON COLUMN notes.body IS 'What the customer wrote';
              INSERT INTO notes VALUES (1, 'hi');",
        )
        .await;
    let manifest = world.manifest("      notes: {}\n");
    let apply = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&apply, 0);
    let url = format!(
        "{}/bigquery/v2/projects/datasync-test/datasets/{}/tables/notes",
        bigquery_url(),
        world.name
    );
    let table: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let fields = table["schema"]["fields"].as_array().unwrap();
    let body = fields.iter().find(|field| field["name"] == "body").unwrap();
    assert_eq!(body["description"], "What the customer wrote", "{table:#}");
    assert_eq!(table["labels"]["managed-by"], "datasync", "{table:#}");
    let id = fields.iter().find(|field| field["name"] == "id").unwrap();
    assert!(
        id.get("description").is_none_or(serde_json::Value::is_null),
        "{table:#}"
    );
}

/// Issue 11's done-when: the Go tool's deployment, unchanged — only the variables of its README
/// (plus `BIGQUERY_EMULATOR_HOST`), no arguments, no manifest. The tables land in the emulator,
/// and with `LOG_ENV=prod` every line of the run is a JSON object with the Go tool's keys.
#[tokio::test(flavor = "multi_thread")]
async fn bare_datasync_with_the_go_readme_variables_syncs_every_table() {
    let world = World::new("legacy").await;
    // The Go tool reads the `public` schema of `{ID}_DB_NAME`: a database of its own.
    let database = world.name.clone();
    world
        .pool
        .execute(format!("DROP DATABASE IF EXISTS {database}").as_str())
        .await
        .unwrap();
    world
        .pool
        .execute(format!("CREATE DATABASE {database}").as_str())
        .await
        .unwrap();
    let url = postgres_url();
    let (base, _) = url.rsplit_once('/').unwrap();
    let pool = sqlx::PgPool::connect(&format!("{base}/{database}"))
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE invoices (invoice_id bigint PRIMARY KEY, amount numeric(10,2), updated_at timestamp NOT NULL);
         INSERT INTO invoices SELECT g, g * 1.5, timestamp '2024-01-01' + g * interval '1 hour' FROM generate_series(1, 120) g;
         CREATE TABLE payments (id bigint PRIMARY KEY, note text);
         INSERT INTO payments SELECT g, 'p' || g FROM generate_series(1, 30) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let bq = bigquery_url();
    let emulator_host = bq.trim_start_matches("http://");
    let env = [
        ("GCP_PROJECT_ID", "datasync-test"),
        ("BQ_DATASET_ID", world.name.as_str()),
        ("BIGQUERY_EMULATOR_HOST", emulator_host),
        ("SYNC_DATABASES", "finance"),
        ("FINANCE_DB_TYPE", "postgres"),
        ("FINANCE_DB_HOST", "127.0.0.1"),
        ("FINANCE_DB_PORT", "5432"),
        ("FINANCE_DB_NAME", database.as_str()),
        ("FINANCE_DB_USER", "postgres"),
        ("FINANCE_DB_PASSWORD", ""),
        // The local server has no TLS; the Go tool's default (`require`) would refuse it.
        ("FINANCE_DB_SSLMODE", "disable"),
        ("FINANCE_TABLES", "invoices,payments"),
        ("FINANCE_INVOICES_PRIMARY_KEY", "invoice_id"),
        ("LOG_ENV", "prod"),
    ];
    let output = Command::cargo_bin("datasync")
        .unwrap()
        .current_dir(world.dir.path())
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    let result = text(&output);
    assert_code(&output, 0);
    for line in result.lines().filter(|line| !line.is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        for key in ["level", "ts", "msg"] {
            assert!(value.get(key).is_some(), "{line}");
        }
        let msg = value["msg"].as_str().unwrap_or_default();
        if msg == "table synced" || msg.starts_with("table report") {
            for key in ["database", "table", "rows", "duration", "run_id", "job_id"] {
                assert!(value.get(key).is_some(), "{key} in {line}");
            }
        }
    }
    assert!(result.contains("\"git_commit\""), "{result}");
    assert!(result.contains("\"msg\":\"table synced\""), "{result}");
    assert!(
        result.contains("Data sync completed successfully"),
        "{result}"
    );
    assert_eq!(world.count("invoices").await, 120);
    assert_eq!(world.count("payments").await, 30);
    // A failing run (a closed port) is JSON too, says why within a second (host:port and the
    // OS error, not "pool timed out" after 30 s), and exits 1: its tables cannot run.
    let started = std::time::Instant::now();
    let output = Command::cargo_bin("datasync")
        .unwrap()
        .current_dir(world.dir.path())
        .env_clear()
        .envs(env)
        .env("FINANCE_DB_PORT", "9")
        .output()
        .unwrap();
    assert_code(&output, 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let failure = text(&output);
    assert!(failure.contains("(at 127.0.0.1:9)"), "{failure}");
    assert!(failure.contains("os error"), "{failure}");
    assert!(
        !failure.contains("cannot connect to source `finance`: cannot connect"),
        "{failure}"
    );
    for line in text(&output).lines().filter(|line| !line.is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        assert!(
            value.get("level").is_some() && value.get("ts").is_some(),
            "{line}"
        );
    }
    let _ = world
        .pool
        .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
        .await;
}

/// The README's default demo: the SQLite shop shipped in `demo/shop.db`, into the emulator,
/// validate → plan → apply → plan (no changes); no database server involved.
#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_sqlite_demo_runs_end_to_end() {
    let world = World::new("demo").await;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let database = world.dir.path().join("shop.db");
    std::fs::copy(repo.join("demo/shop.db"), &database).unwrap();
    let manifest = std::fs::read_to_string(repo.join("demo/sqlite.yaml"))
        .unwrap()
        .replace("dataset: shop_sqlite", &format!("dataset: {}", world.name))
        .replace("project: datasync-demo", "project: datasync-test");
    std::fs::write(world.dir.path().join("sync.yaml"), manifest).unwrap();
    let datasync = |args: &[&str]| {
        Command::cargo_bin("datasync")
            .unwrap()
            .current_dir(world.dir.path())
            .env_clear()
            .env("NO_COLOR", "1")
            .env("DATASYNC_DEMO_BIGQUERY_URL", bigquery_url())
            .env("DATASYNC_DEMO_SQLITE", &database)
            .args(args)
            .output()
            .unwrap()
    };
    assert_code(&datasync(&["validate"]), 0);
    assert_code(&datasync(&["plan", "--detailed-exitcode"]), 2);
    assert_code(&datasync(&["apply"]), 0);
    assert_code(&datasync(&["plan", "--detailed-exitcode"]), 0);
    assert_eq!(world.count("customers").await, 500);
    assert_eq!(world.count("orders").await, 2000);
    assert_eq!(world.count("order_events").await, 3000);
}

/// Every job of the emulator's project whose configuration mentions `dataset` (jobs.list).
pub(crate) async fn dataset_jobs(dataset: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "{}/bigquery/v2/projects/datasync-test/jobs?allUsers=true&maxResults=100000",
        bigquery_url()
    );
    let list: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    list["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|job| job["configuration"].to_string().contains(dataset))
        .collect()
}

/// replace, append and incremental write the target with copy jobs only: no query job writes
/// a target (the jobs list the emulator returns), so the writes bill no bytes.
#[tokio::test(flavor = "multi_thread")]
async fn replace_append_and_incremental_write_with_copy_jobs_and_no_query() {
    let world = World::new("copyonly").await;
    world.sql("CREATE TABLE r (id bigint PRIMARY KEY, v text); INSERT INTO r SELECT g, 'v' || g FROM generate_series(1, 20) g;
               CREATE TABLE a (id bigint PRIMARY KEY, v text); INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 5) g;
               CREATE TABLE i (id bigint PRIMARY KEY, at timestamptz NOT NULL); INSERT INTO i SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, 10) g;").await;
    let manifest = world.manifest(
        "      r: {}\n      a: {mode: append}\n      i:\n        mode: incremental\n        cursor: at\n",
    );
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    world
        .sql("INSERT INTO i VALUES (11, timestamptz '2025-01-01 00:00:00+00');")
        .await;
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    assert_eq!(world.count("r").await, 20);
    assert_eq!(world.count("a").await, 10);
    assert_eq!(world.count("i").await, 11);

    let jobs = dataset_jobs(&world.name).await;
    for target in ["r", "a", "i"] {
        let qualified = format!("datasync-test.{}.{target}`", world.name);
        let copies = jobs
            .iter()
            .filter(|job| job["configuration"]["copy"]["destinationTable"]["tableId"] == target)
            .count();
        assert_eq!(copies, 2, "one copy job per run into {target}");
        for job in &jobs {
            let Some(sql) = job["configuration"]["query"]["query"].as_str() else {
                continue;
            };
            let upper = sql.to_uppercase();
            let writes = ["INSERT", "TRUNCATE", "MERGE", "UPDATE", "DELETE"]
                .iter()
                .any(|keyword| upper.contains(keyword));
            assert!(
                !(sql.contains(&qualified) && writes),
                "a query job writes {target}: {sql}"
            );
        }
    }
    assert!(
        world.leftovers().await.is_empty(),
        "no staging or lock table is left"
    );
}

/// Pairs of overlapping applies per mode (each pair starts together): neither loses nor
/// duplicates a row, each run's report is true, and nothing of theirs is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_applies_lose_and_duplicate_nothing() {
    const PAIRS: usize = 20;
    let world = World::new("overlap").await;
    world.sql("CREATE TABLE r (id bigint PRIMARY KEY, v text); INSERT INTO r SELECT g, 'v' || g FROM generate_series(1, 5) g;
               CREATE TABLE a (id bigint PRIMARY KEY, v text); INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 3) g;
               CREATE TABLE i (id bigint PRIMARY KEY, at bigint NOT NULL); INSERT INTO i SELECT g, g FROM generate_series(1, 3) g;
               CREATE TABLE m (id bigint PRIMARY KEY, v bigint NOT NULL); INSERT INTO m SELECT g, 0 FROM generate_series(1, 3) g;").await;
    let manifest = world.manifest(
        "      r: {}\n      a: {mode: append}\n      i:\n        mode: incremental\n        cursor: at\n      m:\n        mode: merge\n        primary_key: [id]\n",
    );
    let apply = |world: &World| {
        let output = world.datasync(&[
            "-c",
            &manifest,
            "apply",
            "--format",
            "json",
            "--lock-timeout",
            "120s",
        ]);
        assert_code(&output, 0);
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let mut appended = 0;
    for pair in 1..=PAIRS {
        let next = 3 + pair as i64;
        world
            .sql(&format!(
                "INSERT INTO i VALUES ({next}, {next}); UPDATE m SET v = {pair};"
            ))
            .await;
        let (first, second) = std::thread::scope(|scope| {
            let first = scope.spawn(|| apply(&world));
            let second = scope.spawn(|| apply(&world));
            (first.join().unwrap(), second.join().unwrap())
        });
        for report in [&first, &second] {
            for table in report["tables"].as_array().unwrap() {
                assert_eq!(table["status"], "done", "{report}");
                assert_eq!(table["rows_loaded"], table["rows_extracted"], "{report}");
                if table["target"] == "a" {
                    appended += table["rows_loaded"].as_u64().unwrap();
                }
            }
        }
        assert_eq!(world.count("r").await, 5, "pair {pair}: replace");
        assert_eq!(world.count("a").await, appended, "pair {pair}: append");
        assert_eq!(
            world.select("i", "id", "id").await.len() as i64,
            next,
            "pair {pair}: incremental loads each row once"
        );
        assert_eq!(
            world.select("m", "v", "id").await,
            vec![format!("[{pair}]"); 3],
            "pair {pair}: merge"
        );
    }
    assert_eq!(appended, (2 * PAIRS * 3) as u64);
    assert!(world.leftovers().await.is_empty());
}

/// A merge source with duplicate and NULL keys and a row BigQuery can't hold (an `int[]` with a
/// NULL element): one row per non-NULL key (the greatest cursor wins), the NULL-key row and
/// the bad row are in `_datasync_rejects`, the run says so, and rows loaded earlier stay.
#[tokio::test(flavor = "multi_thread")]
async fn merge_dedups_keys_and_rejected_rows_land_in_the_rejects_table() {
    let world = World::new("rejects").await;
    world
        .sql(
            "CREATE TABLE m (id bigint, v text NOT NULL, c bigint NOT NULL, tags int[]);
              INSERT INTO m VALUES (1, 'a', 1, '{1}'), (5, 'early', 1, '{5}');",
        )
        .await;
    let manifest = world
        .manifest("      m:\n        mode: merge\n        primary_key: [id]\n        cursor: c\n");
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    world
        .sql("INSERT INTO m VALUES (1, 'b', 2, '{2}'), (1, 'stale', 1, '{0}'), (NULL, 'n', 3, '{}'), (2, 'x', 3, '{3,NULL}'), (3, 'y', 3, '{4}');")
        .await;
    let output = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&output, 0);
    let said = text(&output);
    assert!(said.contains("2 row(s) left out by bad values"), "{said}");
    assert!(said.contains("_datasync_rejects"), "{said}");
    assert_eq!(
        world.select("m", "id, v", "id").await,
        [r#"[1,"b"]"#, r#"[3,"y"]"#, r#"[5,"early"]"#],
        "one row per non-NULL key; earlier rows stay"
    );
    let rejects = world
        .select("_datasync_rejects", "`key`, `column`, `row`", "`key`")
        .await;
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert!(
        rejects[0].contains("id=2") && rejects[0].contains("tags"),
        "{rejects:?}"
    );
    assert!(
        rejects[0].contains(r#"[3,null]"#),
        "the raw row: {rejects:?}"
    );
    assert!(
        rejects[1].contains("id=NULL") && rejects[1].contains(r#"\"id\""#),
        "{rejects:?}"
    );
    // The MERGE ran as a query job with our own id (so an interrupted run can cancel it).
    let merges = dataset_jobs(&world.name)
        .await
        .into_iter()
        .filter(|job| {
            job["jobReference"]["jobId"]
                .as_str()
                .is_some_and(|id| id.starts_with("datasync_") && id.ends_with("_m_write"))
                && job["configuration"]["query"]["query"]
                    .as_str()
                    .is_some_and(|sql| sql.starts_with("MERGE"))
        })
        .count();
    assert_eq!(merges, 2, "one MERGE job per run, with a client job id");
}

/// `deletes` on PostgreSQL → emulator: `hard` on a key bounded by a cursor (the key set is
/// read whole anyway), `soft` on a composite key. A deleted source row is gone from the hard
/// target and marked in the soft one; re-inserted, it is un-marked. The MERGE and its delete
/// ran as one transaction script; no key-set table is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn merge_deletes_follow_the_source_keys_hard_and_soft() {
    let world = World::new("deletes").await;
    world
        .sql(
            "CREATE TABLE h (id bigint PRIMARY KEY, v text NOT NULL, c bigint NOT NULL);
             INSERT INTO h VALUES (1, 'a', 1), (2, 'b', 1), (3, 'c', 1);
             CREATE TABLE s (shop text NOT NULL, sku bigint NOT NULL, qty bigint, PRIMARY KEY (shop, sku));
             INSERT INTO s VALUES ('a', 1, 10), ('a', 2, 20), ('b', 1, 30);",
        )
        .await;
    let manifest = world.manifest(
        "      h:\n        mode: merge\n        cursor: c\n        deletes: hard\n      s:\n        mode: merge\n        deletes: soft\n",
    );
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    // Existing merge targets: priced by dry runs (the emulator says 0 bytes: the minimums).
    let plan = world.datasync(&["-c", &manifest, "plan"]);
    assert_code(&plan, 0);
    let said = text(&plan);
    assert!(
        said.contains("merge on [id] where c >= max(target.c), deletes hard (the whole key set is read every run)"),
        "{said}"
    );
    assert!(
        said.contains(
            "    write: MERGE + DELETE bills ~40.0 MiB (~$0.0002): the target side from a dry run"
        ),
        "{said}"
    );
    assert!(
        said.contains("    write: MERGE + UPDATE bills ~40.0 MiB"),
        "{said}"
    );

    world
        .sql("DELETE FROM h WHERE id = 2; DELETE FROM s WHERE shop = 'a' AND sku = 2;")
        .await;
    let output = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&output, 0);
    let said = text(&output);
    assert!(
        said.contains(
            "pg.h: rows whose key left the source were deleted (BigQuery did not report how many)"
        ),
        "{said}"
    );
    assert!(
        said.contains("pg.s: rows whose key left the source were soft-deleted"),
        "{said}"
    );
    assert_eq!(
        world.select("h", "id, v", "id").await,
        [r#"[1,"a"]"#, r#"[3,"c"]"#]
    );
    let marks = || {
        world.select(
            "s",
            "shop, sku, qty, _datasync_deleted_at IS NOT NULL",
            "shop, sku",
        )
    };
    assert_eq!(
        marks().await,
        [
            r#"["a",1,10,false]"#,
            r#"["a",2,20,true]"#,
            r#"["b",1,30,false]"#
        ]
    );

    world.sql("INSERT INTO s VALUES ('a', 2, 21);").await;
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    assert_eq!(
        marks().await,
        [
            r#"["a",1,10,false]"#,
            r#"["a",2,21,false]"#,
            r#"["b",1,30,false]"#
        ],
        "the key came back"
    );
    let scripts = dataset_jobs(&world.name)
        .await
        .into_iter()
        .filter_map(|job| {
            job["configuration"]["query"]["query"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|sql| sql.starts_with("BEGIN TRANSACTION;\nMERGE"))
        .count();
    assert_eq!(scripts, 6, "one transaction per table and run");
    assert!(
        world
            .warehouse
            .list_tables("_datasync_keys_")
            .await
            .unwrap()
            .is_empty()
    );
}

/// A replace run whose PostgreSQL row now holds an `int[]` with a NULL element: the row is in
/// `_datasync_rejects`, the run says so, and the row the earlier run loaded is still in the
/// target (its current version was carried into staging before the copy job).
#[tokio::test(flavor = "multi_thread")]
async fn a_replace_keeps_the_earlier_row_of_a_rejected_one() {
    let world = World::new("keepreject").await;
    world
        .sql(
            "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL, tags int[]);
             INSERT INTO t VALUES (1, 'a', '{1}'), (2, 'b', '{2}'), (3, 'c', '{3}');",
        )
        .await;
    let manifest = world.manifest("      t: {}\n");
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    world
        .sql("UPDATE t SET tags = '{2,NULL}', v = 'B' WHERE id = 2; UPDATE t SET v = 'C' WHERE id = 3;")
        .await;
    let output = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&output, 0);
    let said = text(&output);
    assert!(said.contains("1 row(s) left out by bad values"), "{said}");
    assert!(said.contains("_datasync_rejects"), "{said}");
    assert!(
        said.contains("pg.t: 1 earlier row(s) kept for rejected rows (a replace drops no row an earlier run loaded)"),
        "{said}"
    );
    assert_eq!(
        world.select("t", "id, v", "id").await,
        [r#"[1,"a"]"#, r#"[2,"b"]"#, r#"[3,"C"]"#],
        "row 2 keeps the version an earlier run loaded"
    );
    let rejects = world
        .select("_datasync_rejects", "`key`, `column`", "`key`")
        .await;
    assert_eq!(rejects, [r#"["(id=2)","tags"]"#]);
}

/// MariaDB → emulator: `deletes: hard` on a composite primary key.
#[tokio::test(flavor = "multi_thread")]
async fn mariadb_merge_hard_deletes_on_a_composite_key() {
    let world = World::new("mariadel").await;
    let database = format!("ds-del-{}", std::process::id());
    let server = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&mysql_url())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "MariaDB at {} is unreachable ({error}); run scripts/services.sh",
                mysql_url()
            )
        });
    let run = |sql: String| {
        let server = server.clone();
        async move { sqlx::raw_sql(&sql).execute(&server).await.unwrap() }
    };
    run(format!(
        "DROP DATABASE IF EXISTS `{database}`; CREATE DATABASE `{database}`; USE `{database}`;
         CREATE TABLE stock (shop VARCHAR(8) NOT NULL, sku INT NOT NULL, qty INT, PRIMARY KEY (shop, sku));
         INSERT INTO stock VALUES ('a', 1, 10), ('a', 2, 20), ('b', 1, 30);"
    ))
    .await;
    let server_url = mysql_url()
        .rsplit_once('/')
        .map_or_else(mysql_url, |(server, _)| server.to_string());
    let manifest_text = format!(
        "bigquery:\n  project: datasync-test\n  dataset: {name}\n  endpoint: {bq}\n  emulator: true\nsources:\n  shop:\n    type: mysql\n    url: {server_url}/{database}\n    tables:\n      stock:\n        mode: merge\n        deletes: hard\n",
        name = world.name,
        bq = bigquery_url(),
    );
    let path = world.dir.path().join("maria.yaml");
    std::fs::write(&path, manifest_text).unwrap();
    let manifest = path.display().to_string();
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    run(format!(
        "DELETE FROM `{database}`.stock WHERE shop = 'a' AND sku = 2;"
    ))
    .await;
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    assert_eq!(
        world.select("stock", "shop, sku", "shop, sku").await,
        [r#"["a",1]"#, r#"["b",1]"#]
    );
    run(format!("DROP DATABASE IF EXISTS `{database}`")).await;
}

/// The emulator's table resource (tables.get), as JSON.
async fn table_resource(world: &World, table: &str) -> serde_json::Value {
    let url = format!(
        "{}/bigquery/v2/projects/datasync-test/datasets/{}/tables/{table}",
        bigquery_url(),
        world.name
    );
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

fn field_description<'a>(table: &'a serde_json::Value, column: &str) -> Option<&'a str> {
    table["schema"]["fields"]
        .as_array()?
        .iter()
        .find(|field| field["name"] == column)?
        .get("description")?
        .as_str()
}

/// A PostgreSQL table comment becomes the table's description; `bigquery.labels` are on the
/// created table; a changed comment, a new column comment and a clustering change are one
/// in-place update (tables.patch after the write, which the emulator honours), and the plan
/// after it has nothing to change.
#[tokio::test(flavor = "multi_thread")]
async fn table_comments_and_clustering_changes_are_applied_in_place() {
    let world = World::new("tdescr").await;
    world
        .sql(
            "CREATE TABLE notes (id bigint PRIMARY KEY, kind text, body text);
             COMMENT ON TABLE notes IS 'Notes customers left';
             INSERT INTO notes SELECT g, 'k' || (g % 3), 'b' || g FROM generate_series(1, 30) g;",
        )
        .await;
    let manifest = world.manifest("      notes:\n        mode: append\n        cluster_by: [id]\n");
    let with_labels = |path: &str| {
        let text = std::fs::read_to_string(path).unwrap().replace(
            "  emulator: true\n",
            "  emulator: true\n  labels: {team: data}\n",
        );
        std::fs::write(path, text).unwrap();
    };
    with_labels(&manifest);
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    let table = table_resource(&world, "notes").await;
    assert_eq!(table["description"], "Notes customers left", "{table:#}");
    assert_eq!(table["labels"]["managed-by"], "datasync", "{table:#}");
    assert_eq!(table["labels"]["team"], "data", "{table:#}");
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]),
        0,
    );

    world
        .sql(
            "COMMENT ON TABLE notes IS 'Notes customers left at checkout';
             COMMENT ON COLUMN notes.body IS 'What they wrote';",
        )
        .await;
    let manifest =
        world.manifest("      notes:\n        mode: append\n        cluster_by: [kind, id]\n");
    with_labels(&manifest);
    let plan = world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]);
    assert_code(&plan, 2);
    let shown = text(&plan);
    for line in [
        "~ pg.notes -> notes (update schema, append",
        "    ~ description \"Notes customers left\" -> \"Notes customers left at checkout\"",
        "    ~ column body description (none) -> \"What they wrote\"",
        "    ~ clustering [id] -> [kind, id] (in place; data written from now on is clustered by the new columns, stored rows are not re-clustered)",
        "Plan: 0 to create, 1 to update, 0 to recreate",
    ] {
        assert!(shown.contains(line), "{line}\n{shown}");
    }
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    let table = table_resource(&world, "notes").await;
    assert_eq!(table["description"], "Notes customers left at checkout");
    assert_eq!(field_description(&table, "body"), Some("What they wrote"));
    assert_eq!(
        table["clustering"]["fields"],
        serde_json::json!(["kind", "id"])
    );
    assert_eq!(table["labels"]["managed-by"], "datasync", "{table:#}");
    // The append ran before the patch (staging and target clustered alike): 30 + 30 rows.
    assert_eq!(world.count("notes").await, 60);
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]),
        0,
    );
}

/// `_datasync_run_id` and `_datasync_synced_at` of every row of a run: the run's id and its
/// start (the run id is `<seconds>_<micros>` of the start), one value for the whole run.
fn lineage_of(rows: &[String]) -> Vec<(String, i64)> {
    rows.iter()
        .map(|row| {
            let cells: Vec<serde_json::Value> = serde_json::from_str(row).unwrap();
            let run = cells[0].as_str().unwrap_or_default().to_string();
            let at = cells[1]
                .as_i64()
                .or_else(|| cells[1].as_str().and_then(|text| text.parse().ok()))
                .unwrap_or(-1);
            (run, at)
        })
        .collect()
}

/// `<seconds>_<micros><nonce>` → the run's start in microseconds.
fn started_micros(run_id: &str) -> i64 {
    let (secs, sub) = run_id.split_once('_').unwrap();
    secs.parse::<i64>().unwrap() * 1_000_000 + sub[..6].parse::<i64>().unwrap()
}

/// A MariaDB table comment becomes the description; `lineage: true` fills both lineage columns
/// (Avro and NDJSON loads alike), `merge` refreshes them, and they are added to an existing
/// PostgreSQL target as NULLABLE columns (old rows NULL, new rows filled).
#[tokio::test(flavor = "multi_thread")]
async fn lineage_columns_and_a_mariadb_table_comment_reach_the_emulator() {
    let world = World::new("lineage").await;
    let database = format!("ds-lineage-{}", std::process::id());
    let server = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&mysql_url())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "MariaDB at {} is unreachable ({error}); run scripts/services.sh",
                mysql_url()
            )
        });
    sqlx::raw_sql(&format!(
        "DROP DATABASE IF EXISTS `{database}`; CREATE DATABASE `{database}`; USE `{database}`;
         CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20) NOT NULL) COMMENT='Things we sell';
         INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c');
         CREATE TABLE docs (id INT PRIMARY KEY, doc JSON);
         INSERT INTO docs VALUES (1, '{{\"a\": 1}}');
         CREATE VIEW item_names AS SELECT id, name FROM items;"
    ))
    .execute(&server)
    .await
    .unwrap();
    let server_url = mysql_url()
        .rsplit_once('/')
        .map_or_else(mysql_url, |(server, _)| server.to_string());
    let text_of = |tables: &str| {
        format!(
            "bigquery:\n  project: datasync-test\n  dataset: {name}\n  endpoint: {bq}\n  emulator: true\ndefaults:\n  lineage: true\nsources:\n  shop:\n    type: mysql\n    url: {server_url}/{database}\n    tables:\n{tables}",
            name = world.name,
            bq = bigquery_url(),
        )
    };
    let path = world.dir.path().join("maria.yaml");
    // `docs` has a JSON column: loaded as NDJSON; `items` as Avro.
    std::fs::write(
        &path,
        text_of("      items: {mode: merge}\n      docs: {}\n      item_names: {}\n"),
    )
    .unwrap();
    let manifest = path.display().to_string();
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    let table = table_resource(&world, "items").await;
    assert_eq!(table["description"], "Things we sell", "{table:#}");
    assert_eq!(
        field_description(&table, "_datasync_run_id"),
        Some("The id of the datasync run that last wrote this row")
    );
    let items = lineage_of(
        &world
            .select("items", "_datasync_run_id, _datasync_synced_at", "id")
            .await,
    );
    let docs = lineage_of(
        &world
            .select("docs", "_datasync_run_id, _datasync_synced_at", "id")
            .await,
    );
    assert_eq!(items.len(), 3);
    let run = items[0].0.clone();
    assert!(
        items
            .iter()
            .chain(&docs)
            .all(|row| *row == (run.clone(), started_micros(&run))),
        "one run id and start for every row of the run: {items:?} {docs:?}"
    );
    // A view's catalog comment (the word `VIEW`) is no description.
    let view = table_resource(&world, "item_names").await;
    assert!(
        view.get("description")
            .is_none_or(serde_json::Value::is_null),
        "{view:#}"
    );
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]),
        0,
    );

    // A merge rewrites the rows it matches: their lineage is the new run's.
    sqlx::raw_sql(&format!(
        "UPDATE `{database}`.items SET name = 'z' WHERE id = 2"
    ))
    .execute(&server)
    .await
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    let merged = lineage_of(
        &world
            .select("items", "_datasync_run_id, _datasync_synced_at", "id")
            .await,
    );
    assert_ne!(merged[1].0, run, "{merged:?}");
    assert_eq!(merged[1].1, started_micros(&merged[1].0));
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{database}`"))
        .execute(&server)
        .await
        .unwrap();

    // PostgreSQL, an existing incremental target: lineage turned on later adds the columns.
    world
        .sql(
            "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL);
             INSERT INTO events SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, 5) g;",
        )
        .await;
    let events = "      events:\n        mode: incremental\n        cursor: at\n";
    let manifest = world.manifest(events);
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    world
        .sql("INSERT INTO events VALUES (6, timestamptz '2025-01-01 00:00:00+00');")
        .await;
    let manifest = world.manifest(&format!("{events}        lineage: true\n"));
    let plan = world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]);
    assert_code(&plan, 2);
    let shown = text(&plan);
    assert!(
        shown.contains("    + add column _datasync_synced_at TIMESTAMP NULLABLE")
            && shown.contains("    + add column _datasync_run_id STRING NULLABLE"),
        "{shown}"
    );
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    let rows = lineage_of(
        &world
            .select("events", "_datasync_run_id, _datasync_synced_at", "id")
            .await,
    );
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(rows[..5].iter().all(|(run, _)| run.is_empty()), "{rows:?}");
    assert_eq!(rows[5].1, started_micros(&rows[5].0), "{rows:?}");
    assert_code(
        &world.datasync(&["-c", &manifest, "plan", "--detailed-exitcode"]),
        0,
    );
}
