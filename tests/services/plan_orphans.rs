//! Targets that left the manifest, against the emulator and the binary: `plan` lists the ones
//! datasync created (label `managed-by: datasync`) as orphaned, in every format and in every
//! shard, and nothing ever drops them.

use std::process::Output;

use assert_cmd::Command;

use crate::support::{unique, url};

const BQ_URL: &str = "http://127.0.0.1:9050";

/// The test's dataset, deleted at the end (also when the test fails).
struct Dataset {
    endpoint: String,
    name: String,
}

impl Drop for Dataset {
    fn drop(&mut self) {
        let url = format!(
            "{}/bigquery/v2/projects/datasync-test/datasets/{}?deleteContents=true",
            self.endpoint, self.name
        );
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Runtime::new() {
                runtime.block_on(async {
                    let _ = reqwest::Client::new().delete(url).send().await;
                });
            }
        })
        .join();
    }
}

fn datasync(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::cargo_bin("datasync")
        .unwrap()
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .args(args)
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn manifest(dir: &std::path::Path, dataset: &Dataset, database: &str, tables: &[&str]) {
    let tables: String = tables
        .iter()
        .map(|name| format!("      {name}: {{}}\n"))
        .collect();
    std::fs::write(
        dir.join("sync.yaml"),
        format!(
            "bigquery:\n  project: datasync-test\n  dataset: {}\n  endpoint: {}\n  emulator: true\n  create_dataset: true\nsources:\n  shop:\n    type: sqlite\n    database: {database}\n    tables:\n{tables}",
            dataset.name, dataset.endpoint
        ),
    )
    .unwrap();
}

fn orphaned(plan_json: &str) -> Vec<String> {
    let plan: serde_json::Value = serde_json::from_str(plan_json).unwrap();
    plan["orphaned"]
        .as_array()
        .map(|orphans| {
            orphans
                .iter()
                .map(|orphan| orphan["target"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn targets_that_left_the_manifest_are_reported_orphaned_and_never_dropped() {
    let dataset = Dataset {
        endpoint: url("DATASYNC_TEST_BIGQUERY_URL", BQ_URL),
        name: unique("orphans"),
    };
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shop.db").display().to_string();
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&database)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let ddl: String = (0..4)
            .map(|i| format!("CREATE TABLE t{i} (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t{i} VALUES (1, 'x');"))
            .collect();
        sqlx::raw_sql(&ddl).execute(&pool).await.unwrap();
        pool.close().await;
    }
    manifest(dir.path(), &dataset, &database, &["t0", "t1", "t2", "t3"]);
    ok(&datasync(dir.path(), &["apply", "--auto-approve"]));
    // A table datasync did not create: never an orphan.
    let tables = format!(
        "{}/bigquery/v2/projects/datasync-test/datasets/{}/tables",
        dataset.endpoint, dataset.name
    );
    let made = reqwest::Client::new()
        .post(&tables)
        .json(&serde_json::json!({
            "tableReference": {"projectId": "datasync-test", "datasetId": dataset.name, "tableId": "hand_made"},
            "schema": {"fields": [{"name": "x", "type": "INT64"}]},
        }))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "{made:?}");

    // t1 and t3 leave the manifest.
    manifest(dir.path(), &dataset, &database, &["t0", "t2"]);
    let json = ok(&datasync(dir.path(), &["plan", "--format", "json"]));
    assert_eq!(orphaned(&json), ["t1", "t3"]);
    let text = ok(&datasync(dir.path(), &["plan"]));
    assert!(
        text.contains("? orphaned targets (created by datasync, written by no table of the manifest now; kept, never dropped):\n    t1\n    t3\n"),
        "{text}"
    );
    assert!(text.contains("2 orphaned target(s) kept"), "{text}");
    let markdown = ok(&datasync(dir.path(), &["plan", "--format", "markdown"]));
    assert!(markdown.contains("- `t1`\n- `t3`\n"), "{markdown}");
    // JSON log lines: one `warn` per orphan, with its code and hint, and the count.
    let lines = ok(&datasync(dir.path(), &["--log-format", "json", "plan"]));
    let lines: Vec<serde_json::Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let warned: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["code"] == "datasync::plan::orphaned_target")
        .collect();
    assert_eq!(warned.len(), 2, "{lines:?}");
    assert_eq!(warned[0]["level"], "warn");
    assert_eq!(warned[0]["target_table"], "t1");
    assert!(
        warned[0]["hint"]
            .as_str()
            .unwrap()
            .contains("bq rm -t datasync-test:"),
        "{:?}",
        warned[0]
    );
    let summary = lines.iter().find(|line| line["msg"] == "plan").unwrap();
    assert_eq!(summary["orphaned"], 2);
    // Each shard sees the same orphans: the other shard's tables are still the manifest's.
    for shard in ["0/2", "1/2"] {
        let json = ok(&datasync(
            dir.path(),
            &["plan", "--format", "json", "--shard", shard],
        ));
        assert_eq!(orphaned(&json), ["t1", "t3"], "shard {shard}");
    }
    // apply leaves them alone.
    ok(&datasync(dir.path(), &["apply", "--auto-approve"]));
    let listed: serde_json::Value = reqwest::get(&tables).await.unwrap().json().await.unwrap();
    let mut names: Vec<&str> = listed["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|table| table["tableReference"]["tableId"].as_str().unwrap())
        .filter(|name| !name.starts_with("_datasync_"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["hand_made", "t0", "t1", "t2", "t3"]);
}
