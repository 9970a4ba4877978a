//! The `datasync` binary, run with a cleared environment in a temporary directory.

use std::path::Path;

use assert_cmd::Command;

fn datasync(dir: &Path) -> Command {
    let mut command = Command::cargo_bin("datasync").unwrap();
    command
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        // Never the real metadata server (169.254.169.254): a closed loopback port.
        .env("GCE_METADATA_HOST", "127.0.0.1:9");
    command
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

const GOOD: &str = "\
bigquery:
  project: my-project
  dataset: analytics
sources:
  shop:
    type: postgres
    host: 127.0.0.1
    user: postgres
    password: ${SHOP_PW}
    database: shop
    tables:
      orders:
        mode: merge
        primary_key: [id]
";

#[test]
fn validate_accepts_a_good_manifest() {
    let dir = temp();
    std::fs::write(dir.path().join("sync.yaml"), GOOD).unwrap();
    let output = datasync(dir.path())
        .env("SHOP_PW", "x")
        .arg("validate")
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("valid manifest: 1 source(s), 1 table(s) enabled of 1"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_three_mistakes_with_lines_and_exits_1() {
    let dir = temp();
    let text = GOOD
        .replace("dataset: analytics", "dataset: ana-lytics")
        .replace("        primary_key: [id]\n", "")
        .replace("    database: shop\n", "    database: shop\n    bogus: 1\n");
    std::fs::write(dir.path().join("bad.yaml"), text).unwrap();
    let output = datasync(dir.path())
        .env("SHOP_PW", "x")
        .args(["-c", "bad.yaml", "validate"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("bad.yaml:3:12"),
        "dataset at line 3: {stderr}"
    );
    assert!(
        stderr.contains("bad.yaml:11:5"),
        "unknown key at line 11: {stderr}"
    );
    assert!(
        stderr.contains("bad.yaml:13:7"),
        "merge without key at line 13: {stderr}"
    );
    assert!(stderr.contains("3 errors"), "{stderr}");
}

#[test]
fn validate_json_lists_every_problem_with_its_line_and_column() {
    let dir = temp();
    let text = GOOD
        .replace("dataset: analytics", "dataset: ana-lytics")
        .replace("        primary_key: [id]\n", "")
        .replace("    database: shop\n", "    database: shop\n    bogus: 1\n");
    std::fs::write(dir.path().join("bad.yaml"), text).unwrap();
    let output = datasync(dir.path())
        .env("SHOP_PW", "x")
        .args(["-c", "bad.yaml", "validate", "--format", "json"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["valid"], false);
    let located: Vec<(String, u64, u64)> = document["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["code"].as_str().unwrap().to_string(),
                p["line"].as_u64().unwrap(),
                p["column"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        located,
        [
            ("datasync::manifest::bigquery_name".to_string(), 3, 12),
            ("datasync::manifest::unknown_field".to_string(), 11, 5),
            ("datasync::manifest::merge_without_key".to_string(), 13, 7),
        ]
    );
    let output = datasync(dir.path())
        .env("SHOP_PW", "x")
        .args(["validate", "--format", "json", "--show-effective"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&output.stderr).contains("no manifest"));
}

#[test]
fn validate_show_effective_lists_origins_and_redacts_secrets() {
    let dir = temp();
    std::fs::write(dir.path().join("sync.yaml"), GOOD).unwrap();
    let output = datasync(dir.path())
        .env("SHOP_PW", "super-secret")
        .env("GCP_PROJECT_ID", "env-project")
        .args(["validate", "--show-effective"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!stdout.contains("super-secret"), "{stdout}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {stdout}"))
            .to_string()
    };
    assert!(
        line("bigquery.project = ").ends_with("# env GCP_PROJECT_ID"),
        "{stdout}"
    );
    assert!(line("bigquery.dataset = ").ends_with("# file"));
    assert!(line("sources.shop.port = 5432").ends_with("# default"));
    assert!(line("sources.shop.password = \"********\"").contains("# "));
    assert!(line("sources.shop.tables.orders.batch_size = 10000").ends_with("# default"));

    let output = datasync(dir.path())
        .env("SHOP_PW", "super-secret")
        .env("GCP_PROJECT_ID", "env-project")
        .args(["validate", "--show-effective", "--format", "json"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("super-secret"));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["valid"], true);
    let project = document["effective"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["path"] == "bigquery.project")
        .unwrap();
    assert_eq!(project["value"], "env-project");
    assert_eq!(
        project["origin"],
        serde_json::json!({"kind": "env", "name": "GCP_PROJECT_ID"})
    );
}

#[test]
fn missing_manifest_and_no_legacy_env_is_a_clear_error() {
    let dir = temp();
    let output = datasync(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("no manifest"), "{stderr}");
}

#[test]
fn dot_env_is_loaded_without_overriding_the_environment() {
    let dir = temp();
    let env_file = "GCP_PROJECT_ID=file-project\nBQ_DATASET_ID=ds\nSYNC_DATABASES=main\nMAIN_DB_USER=u\nMAIN_DB_NAME=db\nMAIN_DB_PASSWORD=\"p w\"\nMAIN_TABLES=a,b\n";
    std::fs::write(dir.path().join(".env"), env_file).unwrap();
    let output = datasync(dir.path())
        .env("GCP_PROJECT_ID", "shell-project")
        .args(["validate", "--show-effective"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("bigquery.project = \"shell-project\""),
        "{stdout}"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("valid legacy environment: 1 source(s), 2 table(s)"),
        "{stderr}"
    );
}

#[test]
fn env_to_manifest_round_trips_and_keeps_secrets_as_references() {
    let dir = temp();
    let vars = [
        ("GCP_PROJECT_ID", "my-project"),
        ("BQ_DATASET_ID", "ds"),
        ("SYNC_DATABASES", "main,pg"),
        ("MAIN_DB_USER", "u"),
        ("MAIN_DB_NAME", "db"),
        ("MAIN_DB_PASSWORD", "hunter2"),
        ("MAIN_TABLES", "a,b"),
        ("MAIN_B_TARGET_TABLE", "bee"),
        ("PG_DB_TYPE", "postgres"),
        ("PG_DB_USER", "u"),
        ("PG_DB_NAME", "inv"),
        ("PG_TABLES", "public.items"),
    ];
    for format in ["yaml", "toml"] {
        let output = datasync(dir.path())
            .envs(vars)
            .args(["env-to-manifest", "--format", format])
            .assert()
            .success()
            .get_output()
            .clone();
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("${MAIN_DB_PASSWORD}"), "{text}");
        let file = format!("sync.{format}");
        std::fs::write(dir.path().join(&file), &text).unwrap();
        // The generated manifest validates on its own (the secret still comes from the env).
        let output = datasync(dir.path())
            .env("MAIN_DB_PASSWORD", "hunter2")
            .args(["-c", &file, "validate", "--show-effective"])
            .assert()
            .success()
            .get_output()
            .clone();
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(
            stdout.contains("sources.main.tables.b.target = \"bee\""),
            "{stdout}"
        );
        assert!(stdout.contains("sources.pg.port = 5432"), "{stdout}");
        assert!(
            stdout.contains("sources.pg.tables.\"public.items\".target = \"public__items\""),
            "{stdout}"
        );
    }
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let dir = temp();
    let output = datasync(dir.path())
        .arg("schema")
        .assert()
        .success()
        .get_output()
        .clone();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/sync.schema.json"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), committed);
}

#[test]
fn help_lists_every_command() {
    let dir = temp();
    let output = datasync(dir.path())
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .clone();
    insta::assert_snapshot!(String::from_utf8(output.stdout).unwrap());
}

/// A BigQuery that accepts connections and never answers: `plan` and `apply` end within the
/// manifest's `timeout` (connecting and planning included), not after the HTTP retries (~1 h).
#[test]
fn a_stalled_bigquery_ends_plan_and_apply_within_the_manifest_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(64) {
            open.push(stream);
        }
    });
    let dir = temp();
    let database = dir.path().join("shop.db");
    std::fs::write(&database, b"").unwrap();
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "bigquery:\n  project: stalled-project\n  dataset: d\n  endpoint: {endpoint}\n  emulator: true\ndefaults:\n  timeout: 2s\nsources:\n  shop:\n    type: sqlite\n    database: {}\n    tables:\n      orders: {{}}\n",
            database.display()
        ),
    )
    .unwrap();
    for command in ["plan", "apply"] {
        let started = std::time::Instant::now();
        let output = datasync(dir.path())
            .arg(command)
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .failure()
            .get_output()
            .clone();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{command} took {:?}: {stderr}",
            started.elapsed()
        );
        assert!(stderr.contains("timed out after 2s"), "{command}: {stderr}");
    }
    drop(accepted);
}

/// A bad shard is a usage error naming the problem, before anything is connected.
#[test]
fn an_invalid_shard_is_a_usage_error() {
    let dir = temp();
    for (args, env, expected) in [
        (
            vec!["plan", "--shard", "3/3"],
            vec![],
            "invalid shard: `3/3`: the index must be below the count (0 <= INDEX < COUNT)",
        ),
        (
            vec!["apply", "--shard", "x"],
            vec![],
            "invalid shard: `x` is not INDEX/COUNT (e.g. 0/4)",
        ),
        (
            vec!["plan"],
            vec![("JOB_COMPLETION_INDEX", "2")],
            "invalid shard: JOB_COMPLETION_INDEX=2 is set: pass --shard-count with the Job's `completions`",
        ),
    ] {
        let output = datasync(dir.path())
            .args(&args)
            .envs(env)
            .assert()
            .code(1)
            .get_output()
            .clone();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
