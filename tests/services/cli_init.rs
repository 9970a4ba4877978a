//! `datasync init` against PostgreSQL and MariaDB (`validate` accepts what it writes), and the
//! `yes` prompt of `apply` through a pseudo-terminal (`script`, util-linux).

use std::process::{Command, Output};

use sqlx::Executor as _;

#[expect(
    clippy::disallowed_methods,
    reason = "integration tests read service URLs from the environment"
)]
fn env_url(var: &str, default: &str) -> String {
    std::env::var_os(var)
        .and_then(|value| value.into_string().ok())
        .unwrap_or_else(|| default.to_string())
}

fn datasync(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("datasync"))
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `init`, checks the proposals, writes `sync.yaml` and validates it.
fn init_and_validate(url: &str, extra: &[&str], expect: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["init", "--source", url];
    args.extend_from_slice(extra);
    let output = datasync(dir.path(), &args);
    assert!(output.status.success(), "{}", text(&output));
    let manifest = String::from_utf8(output.stdout.clone()).unwrap();
    for line in expect {
        assert!(manifest.contains(line), "no {line:?} in\n{manifest}");
    }
    std::fs::write(dir.path().join("sync.yaml"), &manifest).unwrap();
    let output = datasync(dir.path(), &["validate"]);
    assert!(output.status.success(), "{}\n{manifest}", text(&output));
    manifest
}

const SEED: &str = "
CREATE TABLE orders (id bigint PRIMARY KEY, total numeric(10,2), updated_at timestamp NOT NULL);
CREATE TABLE click_events (id bigint PRIMARY KEY, url text);
CREATE TABLE countries (code char(2) PRIMARY KEY, name text);
CREATE VIEW recent_orders AS SELECT id, total FROM orders;
";

#[tokio::test(flavor = "multi_thread")]
async fn init_against_postgres_proposes_modes_and_validates() {
    let url = env_url(
        "DATASYNC_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let schema = format!("dsinit_{}", std::process::id());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let script = format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema};{SEED}"
    );
    sqlx::raw_sql(&script).execute(&pool).await.unwrap();
    let manifest = init_and_validate(
        &url,
        &["--schema", &schema, "--name", "pg"],
        &[
            &format!("    schema: {schema}\n"),
            "      orders:   # primary key [id] and `updated_at`: merge the changed rows\n        mode: merge\n        primary_key: [id]\n        cursor: updated_at\n",
            "      click_events:   # append-only, growing key `id`: only new rows",
            "        mode: incremental\n        cursor: id\n",
            "      countries:   # no `updated_at`-like column: copied in full",
            "      recent_orders:   # a view: re-read in full on every run",
            "# yaml-language-server: $schema=",
        ],
    );
    assert!(!manifest.contains("pg_catalog"), "{manifest}");
    let _ = pool
        .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn init_against_mariadb_proposes_modes_and_validates() {
    let server = env_url(
        "DATASYNC_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
    );
    let database = format!("dsinit_{}", std::process::id());
    let pool = sqlx::MySqlPool::connect(&server).await.unwrap();
    pool.execute(format!("DROP DATABASE IF EXISTS `{database}`").as_str())
        .await
        .unwrap();
    pool.execute(format!("CREATE DATABASE `{database}`").as_str())
        .await
        .unwrap();
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    let url = format!("{base}/{database}");
    let db = sqlx::MySqlPool::connect(&url).await.unwrap();
    sqlx::raw_sql(SEED).execute(&db).await.unwrap();
    db.close().await;
    init_and_validate(
        &url,
        &[],
        &[
            &format!("  {database}:\n    type: mysql\n"),
            "        mode: merge\n        primary_key: [id]\n        cursor: updated_at\n",
            "      click_events:   # append-only",
            "      recent_orders:   # a view",
        ],
    );
    let _ = pool
        .execute(format!("DROP DATABASE IF EXISTS `{database}`").as_str())
        .await;
}

/// `apply` on a terminal shows the plan and asks; anything but `yes` cancels and writes nothing;
/// `yes` applies; `--auto-approve` and a stdin that is not a terminal never ask.
#[tokio::test(flavor = "multi_thread")]
async fn apply_asks_for_yes_on_a_terminal_only() {
    let bigquery = env_url("DATASYNC_TEST_BIGQUERY_URL", "http://127.0.0.1:9050");
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shop.db");
    let url = format!("sqlite://{}?mode=rwc", database.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items VALUES (1, 'a'), (2, 'b');")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let dataset = format!("dsprompt_{}", std::process::id());
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "bigquery:\n  project: datasync-test\n  dataset: {dataset}\n  endpoint: {bigquery}\n  emulator: true\n  create_dataset: true\nsources:\n  shop:\n    type: sqlite\n    database: {}\n    tables:\n      items: {{}}\n",
            database.display()
        ),
    )
    .unwrap();
    let on_terminal = |answer: &str, flags: &str| {
        crate::support::on_terminal(dir.path(), &format!("apply {flags}"), answer)
    };
    let cancelled = on_terminal("no\n", "");
    let shown = text(&cancelled);
    assert_eq!(cancelled.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("+ shop.items"),
        "the plan comes first: {shown}"
    );
    assert!(
        shown.contains("Only 'yes' will be accepted to approve."),
        "{shown}"
    );
    assert!(shown.contains("Apply cancelled."), "{shown}");
    let tables = reqwest::get(format!(
        "{bigquery}/bigquery/v2/projects/datasync-test/datasets/{dataset}/tables"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        !tables.contains("\"items\""),
        "cancelled, yet written: {tables}"
    );

    let approved = on_terminal("yes\n", "");
    assert_eq!(approved.status.code(), Some(0), "{}", text(&approved));
    assert!(text(&approved).contains("Enter a value:"));

    let auto = on_terminal("", "--auto-approve");
    assert_eq!(auto.status.code(), Some(0), "{}", text(&auto));
    assert!(!text(&auto).contains("Enter a value:"), "{}", text(&auto));

    let piped = datasync(dir.path(), &["apply"]);
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped));
    assert!(!text(&piped).contains("Enter a value:"), "{}", text(&piped));
    let _ = reqwest::Client::new()
        .delete(format!(
            "{bigquery}/bigquery/v2/projects/datasync-test/datasets/{dataset}?deleteContents=true"
        ))
        .send()
        .await;
}
