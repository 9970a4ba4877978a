//! The `datasync` binary, run with a cleared environment in a temporary directory.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::PredicateBooleanExt;

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

/// A run's whole transcript (exit code, stdout, stderr), as a person sees it, with the run's
/// scratch directory shown as `[DIR]` and log timestamps as `[TS]`.
fn transcript(command: &mut Command, dir: &Path) -> String {
    let output = command.output().unwrap();
    let text = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        output
            .status
            .code()
            .map_or("signal".into(), |code| code.to_string()),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = text.replace(&dir.display().to_string(), "[DIR]");
    regex::Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
        .unwrap()
        .replace_all(&text, "[TS]")
        .into_owned()
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
    insta::assert_snapshot!(transcript(
        datasync(dir.path()).env("SHOP_PW", "x").arg("validate"),
        dir.path()
    ));
}

#[test]
fn validate_reports_three_mistakes_with_lines_and_exits_1() {
    let dir = temp();
    let text = GOOD
        .replace("dataset: analytics", "dataset: ana-lytics")
        .replace(
            "        mode: merge\n        primary_key: [id]\n",
            "        mode: incremental\n",
        )
        .replace("    database: shop\n", "    database: shop\n    bogus: 1\n");
    std::fs::write(dir.path().join("bad.yaml"), text).unwrap();
    // The three problems with their lines and columns (3:12, 11:5, 13:7), each with its snippet
    // and hint, then the count; exit 1.
    insta::assert_snapshot!(transcript(
        datasync(dir.path())
            .env("SHOP_PW", "x")
            .args(["-c", "bad.yaml", "validate"]),
        dir.path()
    ));
}

#[test]
fn validate_json_lists_every_problem_with_its_line_and_column() {
    let dir = temp();
    let text = GOOD
        .replace("dataset: analytics", "dataset: ana-lytics")
        .replace(
            "        mode: merge\n        primary_key: [id]\n",
            "        mode: incremental\n",
        )
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
            (
                "datasync::manifest::incremental_without_cursor".to_string(),
                13,
                7
            ),
        ]
    );
    let output = datasync(dir.path())
        .env("SHOP_PW", "x")
        .args(["validate", "--format", "json", "--show-effective"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    // Even a failure before there is a manifest answers in JSON on stdout.
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["valid"], false);
    assert!(
        document["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no manifest"),
        "{document}"
    );
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
    insta::assert_snapshot!(transcript(datasync(dir.path()).arg("validate"), dir.path()));
}

#[test]
fn dot_env_is_loaded_without_overriding_the_environment() {
    let dir = temp();
    let env_file = "GCP_PROJECT_ID=file-project\nBQ_DATASET_ID=ds\nSYNC_DATABASES=main\nMAIN_DB_USER=u\nMAIN_DB_NAME=db\nMAIN_DB_PASSWORD=\"p w\"\nMAIN_TABLES=a,b\n";
    std::fs::write(dir.path().join(".env"), env_file).unwrap();
    // `bigquery.project` is the shell's, not the file's; the password is redacted.
    insta::assert_snapshot!(transcript(
        datasync(dir.path())
            .env("GCP_PROJECT_ID", "shell-project")
            .args(["validate", "--show-effective"]),
        dir.path()
    ));
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

fn sqlite_fixture(path: &Path, statements: &str) {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let statements = statements.to_string();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::raw_sql(&statements).execute(&pool).await.unwrap();
            pool.close().await;
        });
}

/// `init` lists every table and view with a proposed mode; `validate` accepts what it wrote.
#[test]
fn init_writes_a_commented_manifest_that_validates_for_sqlite() {
    let dir = temp();
    let database = dir.path().join("app.db");
    sqlite_fixture(
        &database,
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL, updated_at TIMESTAMP);
         CREATE TABLE page_events (id INTEGER PRIMARY KEY, kind TEXT);
         CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE tags (name TEXT);
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;",
    );
    let output = datasync(dir.path())
        .args([
            "init",
            "--source",
            "sqlite://app.db",
            "--dataset",
            "shop_raw",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let manifest = String::from_utf8(output.stdout).unwrap();
    insta::assert_snapshot!(manifest);
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("wrote 5 table(s)")
    );
    std::fs::write(dir.path().join("sync.yaml"), &manifest).unwrap();
    datasync(dir.path())
        .args(["validate", "--deny-warnings"])
        .assert()
        .success()
        .stderr(predicates::str::contains("1 source(s), 5 table(s) enabled"));
}

#[test]
fn init_rejects_an_unknown_scheme_without_printing_the_password() {
    let dir = temp();
    datasync(dir.path())
        .args(["init", "--source", "oracle://me:hunter22@db/x"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("must start with postgres://"))
        .stderr(predicates::str::contains("hunter22").not());
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    let dir = temp();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let output = datasync(dir.path())
            .args(["completions", shell])
            .assert()
            .success()
            .get_output()
            .clone();
        let script = String::from_utf8(output.stdout).unwrap();
        for word in ["validate", "apply", "auto-approve", "parallelism"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let output = datasync(dir.path())
        .arg("man")
        .assert()
        .success()
        .get_output()
        .clone();
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH datasync"),
        "{page}"
    );
    for word in ["init", "completions", "Examples:"] {
        assert!(page.contains(word), "the man page lacks {word}");
    }
}

/// Terraform's `-out FILE` and `-auto-approve` parse (the error is the missing manifest, not an
/// unknown argument); `--table` cannot narrow a saved plan.
#[test]
fn terraform_spellings_are_accepted() {
    let dir = temp();
    for args in [
        &["plan", "-out", "plan.json", "-lock-timeout=5s"][..],
        &["apply", "-auto-approve", "-parallelism", "2"][..],
    ] {
        datasync(dir.path())
            .args(args)
            .assert()
            .code(1)
            .stderr(predicates::str::contains("no manifest"));
    }
    datasync(dir.path())
        .args(["apply", "--table", "x", "plan.json"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("cannot narrow a saved plan"));
}

#[test]
fn apply_help_shows_examples_and_groups_global_options() {
    let dir = temp();
    let output = datasync(dir.path())
        .args(["apply", "--help"])
        .assert()
        .success()
        .get_output()
        .clone();
    insta::assert_snapshot!(String::from_utf8(output.stdout).unwrap());
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
