//! Custom SQL sources (`query:`) end to end: PostgreSQL and MariaDB → the BigQuery emulator
//! through the `datasync` binary. A join/aggregate query lands with the exact types of its
//! result columns and their values; an incremental query run twice loads only the new rows;
//! a query with a syntax error is a plan error naming its entry.

use datasync::warehouse::Warehouse;
use sqlx::Executor as _;

use crate::apply_e2e::{World, assert_code, text};
use crate::support::{unique, url};

/// The columns datasync plans for the target (`name TYPE MODE`, with precision and scale: what
/// it sends to BigQuery), read from `plan --format json`.
fn planned_fields(world: &World, manifest: &str) -> Vec<String> {
    let json = world.datasync(&["-c", manifest, "plan", "--format", "json"]);
    assert_code(&json, 0);
    let plan: datasync::plan::Plan = serde_json::from_slice(&json.stdout).unwrap();
    plan.tables[0]
        .desired
        .as_ref()
        .unwrap()
        .fields
        .iter()
        .map(|field| field.diff_line())
        .collect()
}

/// The target's columns as the emulator reports them (`name TYPE MODE`); it drops NUMERIC
/// precision and scale (scripts/EMULATOR.md), so these show `NUMERIC` alone.
async fn target_fields(world: &World, table: &str) -> Vec<String> {
    let existing = world.warehouse.get_table(table).await.unwrap();
    existing
        .unwrap_or_else(|| panic!("no table `{table}`"))
        .table
        .fields
        .iter()
        .map(|field| field.diff_line())
        .collect()
}

/// `world`'s manifest with `source` (a `sources:` entry, indented) instead of the PostgreSQL one.
fn manifest_with(world: &World, source: &str) -> String {
    let text = format!(
        "bigquery:\n  project: datasync-test\n  dataset: {name}\n  endpoint: {bq}\n  emulator: true\nsources:\n{source}",
        name = world.name,
        bq = url("DATASYNC_TEST_BIGQUERY_URL", "http://127.0.0.1:9050"),
    );
    let path = world.dir.path().join("sync.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const PG_SEED: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, balance numeric(12,2));
INSERT INTO customers VALUES (1, 'Ada', 10.50), (2, 'Bob', NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, total numeric(10,2) NOT NULL, placed timestamp NOT NULL, paid timestamptz);
INSERT INTO orders VALUES
  (1, 1, 12.25, '2024-06-01 10:00:00', '2024-06-01 10:05:00.123456+00'),
  (2, 1, 7.75, '2024-06-01 12:00:00', NULL),
  (3, 2, 100.01, '2024-06-02 09:00:00', '2024-06-02 09:30:00+02');
";

fn pg_query(schema: &str) -> String {
    format!(
        "      customer_totals:\n        query: |\n          SELECT c.id, c.name, c.balance, sum(o.total)::numeric(12,2) AS spent,\n                 count(*) AS orders, max(o.placed) AS last_placed, max(o.paid) AS last_paid\n          FROM {schema}.customers c JOIN {schema}.orders o ON o.customer_id = c.id\n          GROUP BY c.id, c.name, c.balance\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_join_aggregate_query_lands_with_exact_types_and_values() {
    let world = World::new("query_types").await;
    world.sql(PG_SEED).await;
    let manifest = world.manifest(&pg_query(&world.name));
    let plan = world.datasync(&["-c", &manifest, "plan"]);
    assert_code(&plan, 0);
    assert!(
        text(&plan).contains("pg.query:customer_totals"),
        "{}",
        text(&plan)
    );
    // numeric(12,2) as a table column and as a cast expression: NUMERIC(12,2) both; an
    // aggregate's bigint; timestamp → DATETIME, timestamptz → TIMESTAMP; all NULLABLE.
    let want = [
        "id INT64 NULLABLE",
        "name STRING NULLABLE",
        "balance NUMERIC(12, 2) NULLABLE",
        "spent NUMERIC(12, 2) NULLABLE",
        "orders INT64 NULLABLE",
        "last_placed DATETIME NULLABLE",
        "last_paid TIMESTAMP NULLABLE",
    ];
    assert_eq!(planned_fields(&world, &manifest), want);
    let apply = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&apply, 0);
    assert_eq!(
        target_fields(&world, "customer_totals").await,
        want.map(|line| line.replace("(12, 2)", ""))
    );
    let rows = world
        .select(
            "customer_totals",
            "id, name, CAST(balance AS STRING) AS balance, CAST(spent AS STRING) AS spent, orders, CAST(last_placed AS STRING) AS last_placed, CAST(last_paid AS STRING) AS last_paid",
            "id",
        )
        .await;
    insta::assert_yaml_snapshot!(rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_incremental_query_run_twice_loads_only_new_rows() {
    let world = World::new("query_incr").await;
    world.sql(PG_SEED).await;
    let tables = format!(
        "      paid_orders:\n        query: \"SELECT o.id, o.total, c.name AS customer, o.placed FROM {schema}.orders o JOIN {schema}.customers c ON c.id = o.customer_id\"\n        mode: incremental\n        cursor: placed\n",
        schema = world.name
    );
    let manifest = world.manifest(&tables);
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    assert_eq!(world.count("paid_orders").await, 3);

    world
        .sql(
            "INSERT INTO orders VALUES (4, 2, 1.00, '2024-06-03 08:00:00', NULL), (5, 1, 2.00, '2024-06-03 09:00:00', NULL);",
        )
        .await;
    let plan = world.datasync(&["-c", &manifest, "plan"]);
    assert!(
        text(&plan).contains("where placed > max(target.placed), avro, ~2 rows)"),
        "{}",
        text(&plan)
    );
    let second = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&second, 0);
    assert_eq!(world.count("paid_orders").await, 5, "{}", text(&second));
    insta::assert_yaml_snapshot!(world.select("paid_orders", "id, customer", "id").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_query_with_a_syntax_error_is_a_plan_error_naming_its_entry() {
    let world = World::new("query_broken").await;
    world.sql(PG_SEED).await;
    let manifest = world.manifest(&format!(
        "      broken:\n        query: SELECT id FORM {}.orders\n      customers: {{}}\n",
        world.name
    ));
    let plan = world.datasync(&["-c", &manifest, "plan"]);
    assert_code(&plan, 1);
    let shown = text(&plan);
    assert!(shown.contains("pg.query:broken"), "{shown}");
    assert!(
        shown.contains("describing query `broken`") && shown.contains("syntax error"),
        "{shown}"
    );
}

/// A MariaDB database of the test's own, dropped at the end.
struct MariaDb {
    url: String,
    database: String,
    pool: sqlx::MySqlPool,
}

impl MariaDb {
    async fn new(seed: &str) -> Self {
        let url = url(
            "DATASYNC_TEST_MYSQL_URL",
            "mysql://root@127.0.0.1:3306/test",
        );
        let database = unique("dsq");
        let pool = sqlx::MySqlPool::connect(&url)
            .await
            .unwrap_or_else(|error| {
                panic!("MariaDB at {url} is unreachable ({error}); run scripts/services.sh")
            });
        pool.execute(format!("CREATE DATABASE `{database}`").as_str())
            .await
            .unwrap();
        let seed = format!("USE `{database}`;\n{seed}");
        pool.execute(sqlx::raw_sql(&seed)).await.unwrap();
        Self {
            url,
            database,
            pool,
        }
    }

    async fn sql(&self, statements: &str) {
        let script = format!("USE `{}`;\n{statements}", self.database);
        self.pool.execute(sqlx::raw_sql(&script)).await.unwrap();
    }

    fn source(&self, tables: &str) -> String {
        let base = self
            .url
            .rsplit_once('/')
            .map_or(self.url.as_str(), |(base, _)| base);
        format!(
            "  shop:\n    type: mysql\n    url: {base}/{}\n    tables:\n{tables}",
            self.database
        )
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let (url, database) = (self.url.clone(), self.database.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    if let Ok(pool) = sqlx::MySqlPool::connect(&url).await {
                        let _ = pool
                            .execute(format!("DROP DATABASE IF EXISTS `{database}`").as_str())
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

const MARIADB_SEED: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name varchar(40) NOT NULL, code varbinary(4), vip tinyint(1) NOT NULL DEFAULT 0);
INSERT INTO customers VALUES (1, 'Ada', X'CAFE', 1), (2, 'Bob', NULL, 0);
CREATE TABLE orders (id bigint unsigned PRIMARY KEY, customer_id int NOT NULL, total decimal(10,2) NOT NULL, placed datetime(6) NOT NULL, paid timestamp NULL);
INSERT INTO orders VALUES
  (1, 1, 12.25, '2024-06-01 10:00:00.250000', '2024-06-01 10:05:00'),
  (2, 1, 7.75, '2024-06-01 12:00:00', NULL),
  (3, 2, 100.01, '2024-06-02 09:00:00', '2024-06-02 09:30:00');
";

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_join_aggregate_query_lands_with_exact_types_and_values() {
    let world = World::new("query_maria").await;
    let maria = MariaDb::new(MARIADB_SEED).await;
    let manifest = manifest_with(
        &world,
        &maria.source(
            "      customer_totals:\n        query: |\n          SELECT c.id, c.name, c.code, c.vip, CAST(sum(o.total) AS DECIMAL(12,2)) AS spent,\n                 count(*) AS orders, max(o.placed) AS last_placed, max(o.paid) AS last_paid\n          FROM customers c JOIN orders o ON o.customer_id = c.id\n          GROUP BY c.id, c.name, c.code, c.vip\n",
        ),
    );
    // Exact types through the temporary table: DECIMAL(12,2), varbinary (BYTES, not text),
    // tinyint(1) → BOOL as for a table column, datetime(6) → DATETIME, timestamp → TIMESTAMP.
    let want = [
        "id INT64 NULLABLE",
        "name STRING NULLABLE",
        "code BYTES NULLABLE",
        "vip BOOL NULLABLE",
        "spent NUMERIC(12, 2) NULLABLE",
        "orders INT64 NULLABLE",
        "last_placed DATETIME NULLABLE",
        "last_paid TIMESTAMP NULLABLE",
    ];
    assert_eq!(planned_fields(&world, &manifest), want);
    let apply = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&apply, 0);
    assert_eq!(
        target_fields(&world, "customer_totals").await,
        want.map(|line| line.replace("(12, 2)", ""))
    );
    let rows = world
        .select(
            "customer_totals",
            "id, name, TO_BASE64(code) AS code, vip, CAST(spent AS STRING) AS spent, orders, CAST(last_placed AS STRING) AS last_placed, CAST(last_paid AS STRING) AS last_paid",
            "id",
        )
        .await;
    insta::assert_yaml_snapshot!(rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_incremental_query_and_a_syntax_error() {
    let world = World::new("query_maria_incr").await;
    let maria = MariaDb::new(MARIADB_SEED).await;
    let manifest = manifest_with(
        &world,
        &maria.source(
            "      recent:\n        query: SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id\n        mode: incremental\n        cursor: id\n",
        ),
    );
    assert_code(&world.datasync(&["-c", &manifest, "apply"]), 0);
    assert_eq!(world.count("recent").await, 3);
    maria
        .sql("INSERT INTO orders VALUES (4, 2, 1.00, '2024-06-03 08:00:00', NULL), (5, 1, 2.00, '2024-06-03 09:00:00', NULL);")
        .await;
    let second = world.datasync(&["-c", &manifest, "apply"]);
    assert_code(&second, 0);
    assert!(text(&second).contains("2 rows"), "{}", text(&second));
    assert_eq!(world.count("recent").await, 5);

    let manifest = manifest_with(
        &world,
        &maria.source("      broken:\n        query: SELECT id FORM orders\n"),
    );
    let broken = world.datasync(&["-c", &manifest, "plan"]);
    assert_code(&broken, 1);
    let shown = text(&broken);
    assert!(
        shown.contains("shop.query:broken") && shown.contains("describing query `broken`"),
        "{shown}"
    );
    assert!(
        shown.contains("1064") || shown.contains("syntax"),
        "{shown}"
    );
}

/// A server that refuses the temporary view (here a read-only session, as on a standby): table
/// columns keep their precision from `pg_attribute`, an expression has none, and a note says
/// why. Nothing is guessed from rows.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_read_only_server_keeps_table_column_precision_and_says_why() {
    let world = World::new("query_ro").await;
    world.sql(PG_SEED).await;
    let base = url(
        "DATASYNC_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let separator = if base.contains('?') { '&' } else { '?' };
    let read_only = format!("{base}{separator}options=-c%20default_transaction_read_only%3Don");
    let source =
        crate::support::connect(datasync::manifest::raw::SourceKind::Postgres, &read_only).await;
    let query = format!(
        "SELECT c.balance, sum(o.total)::numeric(12,2) AS spent FROM {schema}.customers c JOIN {schema}.orders o ON o.customer_id = c.id GROUP BY c.balance",
        schema = world.name
    );
    let described = source.describe_query("totals", &query, &[]).await.unwrap();
    let types: Vec<(String, Option<u32>, Option<u32>)> = described
        .table
        .columns
        .iter()
        .map(|column| (column.column_type.clone(), column.precision, column.scale))
        .collect();
    assert_eq!(
        types,
        [
            ("numeric(12,2)".to_string(), Some(12), Some(2)),
            ("numeric".to_string(), None, None),
        ]
    );
    assert_eq!(described.notes.len(), 1, "{:?}", described.notes);
    assert!(
        described.notes[0].starts_with("PostgreSQL refused a temporary view of the query (")
            && described.notes[0].contains("read-only transaction")
            && described.notes[0].ends_with("table columns keep theirs)"),
        "{:?}",
        described.notes
    );
    // The plan shows the note as the table's warning, and the BIGNUMERIC it leads to.
    let manifest = manifest_with(
        &world,
        &format!(
            "  pg:\n    type: postgres\n    url: {read_only}\n    tables:\n      totals:\n        query: \"{query}\"\n"
        ),
    );
    let plan = world.datasync(&["-c", &manifest, "plan"]);
    let shown = text(&plan);
    assert!(
        shown.contains("PostgreSQL refused a temporary view of the query")
            && shown.contains("spent BIGNUMERIC"),
        "{shown}"
    );
    // On a writable session the same query keeps the cast's precision, and no note.
    let writable =
        crate::support::connect(datasync::manifest::raw::SourceKind::Postgres, &base).await;
    for _ in 0..3 {
        // Again and again on the pool's connections: each call sees its own view.
        let described = writable
            .describe_query("totals", &query, &[])
            .await
            .unwrap();
        assert_eq!(described.table.columns[1].column_type, "numeric(12,2)");
        assert!(described.notes.is_empty(), "{:?}", described.notes);
    }
}
