//! `plan --shard INDEX/COUNT` (and the Cloud Run / Kubernetes job variables) against the
//! emulator: the shards split the manifest's tables, each table in exactly one shard.

use std::collections::BTreeSet;
use std::process::Output;

use assert_cmd::Command;

use crate::support::{unique, url};

const BQ_URL: &str = "http://127.0.0.1:9050";

fn plan_labels(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let output: Output = Command::cargo_bin("datasync")
        .unwrap()
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .envs(env.iter().copied())
        .args(["plan", "--format", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "plan {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    plan["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|table| table["label"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn shards_split_the_tables_exactly_once() {
    let endpoint = url("DATASYNC_TEST_BIGQUERY_URL", BQ_URL);
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shop.db");
    let names: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    let ddl: String = names
        .iter()
        .map(|name| format!("CREATE TABLE {name} (id INTEGER PRIMARY KEY, v TEXT);"))
        .collect();
    let status = std::process::Command::new("sqlite3")
        .arg(&database)
        .arg(&ddl)
        .status();
    if !status.is_ok_and(|status| status.success()) {
        // No sqlite3 CLI: create the tables through sqlx.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            use sqlx::Executor as _;
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&database)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            pool.execute(sqlx::raw_sql(&ddl)).await.unwrap();
            pool.close().await;
        });
    }
    let tables: String = names
        .iter()
        .map(|name| format!("      {name}: {{}}\n"))
        .collect();
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "bigquery:\n  project: datasync-test\n  dataset: {}\n  endpoint: {endpoint}\n  emulator: true\n  create_dataset: true\nsources:\n  shop:\n    type: sqlite\n    database: {}\n    tables:\n{tables}",
            unique("shard"),
            database.display()
        ),
    )
    .unwrap();
    let all: BTreeSet<String> = plan_labels(dir.path(), &[], &[]).into_iter().collect();
    assert_eq!(all.len(), 12);
    let mut seen = BTreeSet::new();
    let mut sizes = Vec::new();
    for index in 0..3 {
        let shard = format!("{index}/3");
        let labels = plan_labels(dir.path(), &["--shard", &shard], &[]);
        sizes.push(labels.len());
        for label in labels {
            assert!(seen.insert(label.clone()), "{label} in two shards");
        }
    }
    assert_eq!(seen, all, "the shards cover every table");
    assert!(
        sizes.iter().all(|&n| n < 12),
        "{sizes:?}: one shard took everything"
    );
    // The same split from the job environments.
    let first = plan_labels(dir.path(), &["--shard", "1/3"], &[]);
    let cloud_run = plan_labels(
        dir.path(),
        &[],
        &[("CLOUD_RUN_TASK_INDEX", "1"), ("CLOUD_RUN_TASK_COUNT", "3")],
    );
    let k8s = plan_labels(
        dir.path(),
        &["--shard-count", "3"],
        &[("JOB_COMPLETION_INDEX", "1")],
    );
    assert_eq!(cloud_run, first);
    assert_eq!(k8s, first);
}
