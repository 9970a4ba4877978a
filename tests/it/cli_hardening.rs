//! Issue 11: the Go tool's entry point and exit codes, JSON logs, secrets, hostile inputs.

use std::path::Path;

use assert_cmd::Command;

fn datasync(dir: &Path) -> Command {
    let mut command = Command::cargo_bin("datasync").unwrap();
    command
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .timeout(std::time::Duration::from_secs(60));
    command
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Every non-empty line of `text` is a JSON object with `level`, `ts` and `msg`.
fn assert_json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}\n--- all:\n{text}"));
            for key in ["level", "ts", "msg"] {
                assert!(value.get(key).is_some(), "no `{key}` in {line}");
            }
            value
        })
        .collect()
}

const LEGACY_PG: &[(&str, &str)] = &[
    ("GCP_PROJECT_ID", "my-project"),
    ("BQ_DATASET_ID", "d"),
    ("SYNC_DATABASES", "finance"),
    ("FINANCE_DB_TYPE", "postgres"),
    ("FINANCE_DB_HOST", "db.example.com"),
    ("FINANCE_DB_NAME", "finance"),
    ("FINANCE_DB_USER", "u"),
    ("FINANCE_DB_PASSWORD", "pw"),
    ("FINANCE_TABLES", "invoices"),
];

#[test]
fn bare_datasync_without_configuration_prints_help_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&mut datasync(dir.path()));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("Usage: datasync"), "{}", out.stderr);
}

#[test]
fn usage_errors_exit_1_not_2_and_version_names_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(datasync(dir.path()).args(["plan", "--detailed-exitcode", "--tabel", "x"]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("--table"), "{}", out.stderr);
    let out = run(datasync(dir.path()).arg("--version"));
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("commit "), "{}", out.stdout);
    assert!(out.stdout.contains("built "), "{}", out.stdout);
}

#[test]
fn apply_of_a_missing_plan_fails_before_connecting_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    // The source and BigQuery hosts do not resolve: reading the plan must come first.
    std::fs::write(
        dir.path().join("sync.yaml"),
        "bigquery:\n  project: my-project\n  dataset: d\n  endpoint: http://127.0.0.1:9\n  emulator: true\nsources:\n  s:\n    type: postgres\n    host: 127.0.0.1\n    port: 9\n    database: x\n    user: u\n    tables:\n      t: {}\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = run(datasync(dir.path()).args(["apply", "missing.json"]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot read plan `missing.json`"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn log_env_prod_makes_every_line_json_on_success_and_failure() {
    let dir = tempfile::tempdir().unwrap();
    // Success: validate of the legacy environment.
    let out = run(datasync(dir.path())
        .envs(LEGACY_PG.iter().copied())
        .env("LOG_ENV", "prod")
        .arg("validate"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines = assert_json_lines(&out.stderr);
    assert!(
        lines
            .iter()
            .any(|line| line["msg"].as_str().unwrap().starts_with("valid legacy"))
    );
    assert_json_lines(&out.stdout);
    // Failures: a usage error, a broken manifest, a run that cannot reach its source.
    let out = run(datasync(dir.path())
        .env("LOG_ENV", "prod")
        .args(["plan", "--tabel"]));
    assert_eq!(out.code, 1);
    assert_json_lines(&out.stderr);
    std::fs::write(dir.path().join("sync.yaml"), "bigquery:\n  projct: p\n").unwrap();
    let out = run(datasync(dir.path()).env("LOG_ENV", "prod").arg("plan"));
    assert_eq!(out.code, 1);
    let lines = assert_json_lines(&out.stderr);
    assert!(
        lines
            .iter()
            .any(|line| line["level"] == "error" && line["line"].is_number())
    );
    assert_json_lines(&out.stdout);
    let out = run(datasync(dir.path()).args(["--log-format", "json", "apply", "nope.json"]));
    let lines = assert_json_lines(&out.stderr);
    let start = &lines[0];
    for key in ["version", "build_time", "git_commit"] {
        assert!(start.get(key).is_some(), "{start}");
    }
    assert_eq!(lines.last().unwrap()["level"], "error");
}

#[test]
fn a_literal_password_in_a_broken_manifest_is_never_printed() {
    let secret = "hunter2-very-secret";
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "bigquery:\n  project: my-project\n  dataset: d\nsources:\n  s:\n    type: postgres\n    host: h\n    user: u\n    password: {secret}\n    bogus: 1\n    url: postgres://u:{secret}@h/db\n    tables:\n      t: {{mode: upsert}}\n"
    );
    let toml = format!(
        "[bigquery]\nproject = \"my-project\"\ndataset = \"d\"\n[sources.s]\ntype = \"postgres\"\nhost = \"h\"\nuser = \"u\"\npassword = \"{secret}\"\nbogus = 1\n[sources.s.tables.t]\nmode = \"upsert\"\n"
    );
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    std::fs::write(dir.path().join("m.toml"), toml).unwrap();
    for file in ["m.yaml", "m.toml"] {
        for args in [
            vec!["validate"],
            vec!["validate", "--format", "json"],
            vec!["--log-format", "json", "validate"],
            vec!["plan"],
        ] {
            let out = run(datasync(dir.path()).args(["-c", file]).args(&args));
            assert_eq!(out.code, 1, "{file} {args:?}: {}", out.stderr);
            assert!(
                out.stderr.contains("bogus"),
                "{file} {args:?}: {}",
                out.stderr
            );
            for text in [&out.stdout, &out.stderr] {
                assert!(!text.contains(secret), "{file} {args:?} leaked:\n{text}");
            }
        }
    }
}

#[test]
fn hostile_manifests_are_refused_with_a_clear_error_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    // A problem past column 65,536 (miette used to panic).
    let long = format!(
        "bigquery: {{project: my-project, dataset: d, note: \"{}\", projct: x}}\n",
        "x".repeat(70_000)
    );
    std::fs::write(dir.path().join("long.yaml"), long).unwrap();
    // 100,000 levels of nesting, refused in linear time.
    std::fs::write(
        dir.path().join("deep.yaml"),
        "a: ".to_string() + &"[".repeat(100_000),
    )
    .unwrap();
    // 2 MiB.
    std::fs::write(
        dir.path().join("big.yaml"),
        format!("# {}\n", "x".repeat(2 << 20)),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("latin1.yaml"),
        b"bigquery:\n  project: caf\xe9\n",
    )
    .unwrap();
    for (file, expected) in [
        ("long.yaml", "unknown field"),
        ("deep.yaml", "nests deeper than 64 levels"),
        ("big.yaml", "the limit is 1048576 bytes"),
        ("latin1.yaml", "not UTF-8"),
    ] {
        let started = std::time::Instant::now();
        let out = run(datasync(dir.path()).args(["-c", file, "validate"]));
        assert_eq!(out.code, 1, "{file}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{file}: {}", out.stderr);
        assert!(out.stderr.contains(expected), "{file}: {}", out.stderr);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{file}"
        );
        let out = run(datasync(dir.path()).args(["-c", file, "validate", "--format", "json"]));
        assert_eq!(out.code, 1, "{file}");
        let document: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|error| panic!("{file}: {error}: {}", out.stdout));
        assert_eq!(document["valid"], false, "{file}");
        assert!(
            document["problems"].to_string().contains(expected),
            "{file}: {document}"
        );
    }
}

#[test]
fn legacy_tls_is_as_strict_as_the_go_tool_and_env_to_manifest_escapes_dollars() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(datasync(dir.path())
        .envs(LEGACY_PG.iter().copied())
        .env("SYNC_DATABASES", "finance,shop")
        .env("SHOP_DB_TYPE", "mysql")
        .env("SHOP_DB_HOST", "h")
        .env("SHOP_DB_NAME", "shop")
        .env("SHOP_DB_USER", "us${X}er")
        .env("SHOP_TABLES", "orders")
        .arg("env-to-manifest"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let manifest: serde_json::Value = serde_yaml_ng::from_str(&out.stdout).unwrap();
    assert_eq!(
        manifest["sources"]["finance"]["tls"]["mode"], "require",
        "{}",
        out.stdout
    );
    assert_eq!(
        manifest["sources"]["shop"]["tls"]["mode"], "verify-full",
        "{}",
        out.stdout
    );
    assert_eq!(
        manifest["sources"]["shop"]["user"], "us$${X}er",
        "{}",
        out.stdout
    );
    // Read back, the user is literal (no X variable needed) and the TLS modes stay.
    std::fs::write(dir.path().join("sync.yaml"), &out.stdout).unwrap();
    let out = run(datasync(dir.path())
        .env("FINANCE_DB_PASSWORD", "pw")
        .args(["validate", "--show-effective"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("sources.shop.user = \"us${X}er\""),
        "{}",
        out.stdout
    );
    // A legacy variable still overrides the default.
    let out = run(datasync(dir.path())
        .envs(LEGACY_PG.iter().copied())
        .env("DB_SSLMODE", "disable")
        .args(["--env-file", "none", "-c", "none.yaml", "validate"]));
    assert_eq!(out.code, 1, "no such manifest: {}", out.stderr);
    std::fs::remove_file(dir.path().join("sync.yaml")).unwrap();
    let out = run(datasync(dir.path())
        .envs(LEGACY_PG.iter().copied())
        .env("DB_SSLMODE", "disable")
        .args(["validate", "--show-effective"]));
    assert!(
        out.stdout.lines().any(
            |line| line.starts_with("sources.finance.tls.mode = \"disable\"")
                && line.ends_with("# env DB_SSLMODE")
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn env_file_none_ignores_dot_env() {
    let dir = tempfile::tempdir().unwrap();
    let dot_env: String = LEGACY_PG
        .iter()
        .map(|(key, value)| format!("{key}={value}\n"))
        .collect();
    std::fs::write(dir.path().join(".env"), dot_env).unwrap();
    let out = run(datasync(dir.path()).arg("validate"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(datasync(dir.path()).args(["--env-file", "none", "validate"]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("no manifest"), "{}", out.stderr);
}

#[test]
fn values_a_dot_env_overrides_are_listed_before_planning() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shop.db");
    std::fs::write(&database, b"").unwrap();
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "bigquery:\n  project: my-project\n  dataset: analytics\n  endpoint: http://127.0.0.1:9\n  emulator: true\nsources:\n  shop:\n    type: sqlite\n    database: {}\n    tables:\n      orders: {{}}\n",
            database.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join(".env"), "BQ_DATASET_ID=elsewhere\n").unwrap();
    let out = run(datasync(dir.path()).arg("plan"));
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("bigquery.dataset = \"elsewhere\"  # env file (BQ_DATASET_ID)"),
        "{}",
        out.stderr
    );
    let out = run(datasync(dir.path()).args(["--env-file", "none", "plan"]));
    assert!(!out.stderr.contains("elsewhere"), "{}", out.stderr);
    // `validate` lists them too.
    let out = run(datasync(dir.path()).arg("validate"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("bigquery.dataset = \"elsewhere\"  # env file (BQ_DATASET_ID)"),
        "{}",
        out.stderr
    );
}

/// Random manifests and legacy environments (mutations of valid ones, fixed seed and case
/// count, a few seconds): `validate` never panics and always answers in JSON.
#[test]
fn fuzzed_manifests_and_legacy_variables_never_panic() {
    use datasync::manifest::{self, Env, Format, ManifestInput};
    let seeds = [
        "bigquery:\n  project: my-project\n  dataset: d\nsources:\n  s:\n    type: postgres\n    host: h\n    password: ${PW}\n    tables:\n      t: {mode: merge, primary_key: [id], columns: [a, b]}\n",
        "[bigquery]\nproject = \"my-project\"\ndataset = \"d\"\n[sources.s]\ntype = \"mysql\"\nurl = \"mysql://u:p@h/db\"\n[sources.s.tables.t]\nbatch_size = 5\n",
    ];
    let alphabet: Vec<char> = "{}[]:,-#'\"$\\\n\t =*&!|>%@`\u{0}\u{feff}é0123456789abcxyz"
        .chars()
        .collect();
    let names = [
        "SYNC_DATABASES",
        "A_DB_TYPE",
        "A_TABLES",
        "A_T_BATCH_SIZE",
        "A_T_COLUMNS",
        "DRY_RUN",
        "DB_PORT",
        "A_DB_SSLMODE",
        "BQ_DATASET_ID",
        "GCP_PROJECT_ID",
        "A_DB_HOST",
        "A_T_PRIMARY_KEY",
    ];
    let mut rng = fastrand::Rng::with_seed(11);
    for case in 0..1500 {
        let seed = seeds[case % 2];
        let mut text: Vec<char> = seed.chars().collect();
        for _ in 0..rng.usize(1..8) {
            let at = rng.usize(0..=text.len());
            match rng.u8(0..3) {
                0 => text.insert(at, alphabet[rng.usize(0..alphabet.len())]),
                1 if at < text.len() => {
                    text.remove(at);
                }
                _ => {
                    let piece: Vec<char> = seed
                        .chars()
                        .skip(rng.usize(0..seed.len()))
                        .take(rng.usize(0..40))
                        .collect();
                    for (offset, ch) in piece.into_iter().enumerate() {
                        text.insert((at + offset).min(text.len()), ch);
                    }
                }
            }
        }
        let text: String = text.into_iter().collect();
        let mut env = Env::new();
        for _ in 0..rng.usize(0..6) {
            let value: String = (0..rng.usize(0..12))
                .map(|_| alphabet[rng.usize(0..alphabet.len())])
                .collect();
            env.insert(names[rng.usize(0..names.len())].to_string(), value);
        }
        let format = if case % 2 == 0 {
            Format::Yaml
        } else {
            Format::Toml
        };
        for input in [
            ManifestInput {
                name: Some("m".into()),
                text: Some((text.clone(), format)),
                env: env.clone(),
            },
            ManifestInput {
                name: None,
                text: None,
                env: env.clone(),
            },
        ] {
            let (problems, source) = match manifest::load(&input) {
                Ok(loaded) => (loaded.warnings, loaded.source),
                Err(failure) => (failure.problems, failure.source),
            };
            let rendered = manifest::diagnostics::render(&problems, source.as_ref(), false, 80);
            let json = manifest::diagnostics::to_json(&problems, source.as_ref());
            assert!(rendered.len() < 1 << 24 && json.is_array(), "case {case}");
        }
    }
}

/// `--dry-run` needs no BigQuery: with nothing listening at the endpoint, the run plans against
/// unknown targets, says so, and still extracts and encodes every row.
#[test]
fn a_dry_run_without_bigquery_extracts_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shop.db");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(repo.join("demo/shop.db"), &database).unwrap();
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "bigquery:\n  project: my-project\n  dataset: d\n  endpoint: http://127.0.0.1:9\n  emulator: true\nsources:\n  shop:\n    type: sqlite\n    database: {}\n    tables:\n      customers: {{}}\n      orders: {{mode: merge, primary_key: [id]}}\n",
            database.display()
        ),
    )
    .unwrap();
    let out = run(datasync(dir.path()).args(["apply", "--dry-run"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the dry run plans against unknown targets"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout
            .contains("dry run: 2 of 2 table(s) synced, 2,500 rows"),
        "{}",
        out.stdout
    );
    // Without --dry-run the same outage is an error.
    let out = run(datasync(dir.path()).arg("apply"));
    assert_eq!(out.code, 3, "{}", out.stderr);
}

/// A signal while connecting and planning (here: BigQuery accepts and never answers) stops the
/// run at once and says what was interrupted.
#[test]
fn a_signal_during_planning_says_what_was_interrupted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let _held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(16) {
            open.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shop.db");
    std::fs::write(&database, b"").unwrap();
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "bigquery:\n  project: my-project\n  dataset: analytics\n  endpoint: {endpoint}\n  emulator: true\nsources:\n  shop:\n    type: sqlite\n    database: {}\n    tables:\n      orders: {{}}\n",
            database.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("datasync"))
        .current_dir(dir.path())
        .env_clear()
        .env("NO_COLOR", "1")
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .arg("plan")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "interrupted by SIGTERM while connecting to the sources and BigQuery and planning; nothing was written"
        ),
        "{stderr}"
    );
}

/// In JSON-log mode a table that cannot run is one line with its error's stable code.
#[test]
fn a_table_that_cannot_run_logs_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shop.db");
    std::fs::write(&database, b"").unwrap();
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "bigquery:\n  project: my-project\n  dataset: analytics\n  endpoint: http://127.0.0.1:9\n  emulator: true\nsources:\n  shop:\n    type: sqlite\n    database: {}\n    tables:\n      orders: {{}}\n",
            database.display()
        ),
    )
    .unwrap();
    // A dry run plans without BigQuery; the table is missing from the source.
    let out = run(datasync(dir.path()).args(["--log-format", "json", "apply", "--dry-run"]));
    assert_eq!(out.code, 1, "{}", out.stderr);
    let lines = assert_json_lines(&out.stderr);
    let line = lines
        .iter()
        .find(|line| line["msg"] == "table cannot run")
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert_eq!(line["table"], "shop.orders");
    assert_eq!(line["code"], "datasync::plan::source_error");
    assert_eq!(line["error"], "table `orders` not found in SQLite source");
}
