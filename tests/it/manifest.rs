//! Manifest loading: parsing, interpolation, legacy env-only mode, overlay precedence, and the
//! diagnostics users see (snapshot-tested).

use datasync::manifest::raw::{SourceKind, TlsMode, WriteMode};
use datasync::manifest::{self, Env, Format, LoadFailure, Loaded, ManifestInput, Origin, Severity};

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn load_yaml(text: &str, env: Env) -> Result<Loaded, LoadFailure> {
    manifest::load(&ManifestInput {
        name: Some("sync.yaml".into()),
        text: Some((text.to_string(), Format::Yaml)),
        env,
    })
}

fn load_env(env: Env) -> Result<Loaded, LoadFailure> {
    manifest::load(&ManifestInput {
        name: None,
        text: None,
        env,
    })
}

fn render(failure: &LoadFailure) -> String {
    manifest::diagnostics::render(&failure.problems, failure.source.as_ref(), false, 100)
}

fn errors(failure: &LoadFailure) -> Vec<String> {
    failure
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.message.clone())
        .collect()
}

/// The Go tool's README-style legacy configuration (MySQL + PostgreSQL).
fn go_readme_env() -> Env {
    env(&[
        ("GCP_PROJECT_ID", "my-gcp-project"),
        ("BQ_DATASET_ID", "analytics"),
        ("SYNC_DATABASES", "finance, inventory"),
        ("DB_TYPE", "mysql"),
        ("DB_PORT", "3306"),
        ("DB_MAX_OPEN_CONNECTIONS", "15"),
        ("DB_MAX_IDLE_CONNECTIONS", "5"),
        ("DB_CONN_MAX_LIFETIME", "1m"),
        ("DB_CONN_TIMEOUT", "30s"),
        ("DB_READ_TIMEOUT", "60s"),
        ("DB_WRITE_TIMEOUT", "60s"),
        ("SYNC_TIMEOUT", "15m"),
        ("DATE_FORMAT", "2006-01-02"),
        ("DEFAULT_BATCH_SIZE", "1000"),
        ("DRY_RUN", "false"),
        ("AUTO_CREATE_TABLES", "true"),
        ("TRUNCATE_ON_SYNC", "true"),
        ("MAX_ROW_PARSE_FAILURES", "100"),
        ("LOG_ENV", "prod"),
        ("LOG_LEVEL", "info"),
        ("FINANCE_DB_HOST", "mysql.internal"),
        ("FINANCE_DB_NAME", "finance"),
        ("FINANCE_DB_USER", "sync"),
        ("FINANCE_DB_PASSWORD", "s3cr3t with spaces"),
        (
            "FINANCE_TABLES",
            "cache_financial_acc_income,cache_financial_acc_expense",
        ),
        ("FINANCE_CACHE_FINANCIAL_ACC_INCOME_TARGET_TABLE", "income"),
        ("FINANCE_CACHE_FINANCIAL_ACC_INCOME_BATCH_SIZE", "500"),
        ("FINANCE_CACHE_FINANCIAL_ACC_EXPENSE_ENABLED", "no"),
        ("INVENTORY_DB_TYPE", "postgres"),
        ("INVENTORY_DB_HOST", "pg.internal"),
        ("INVENTORY_DB_NAME", "inventory"),
        ("INVENTORY_DB_USER", "reader"),
        ("INVENTORY_DB_PASSWORD", "pw"),
        ("INVENTORY_DB_SSLMODE", "verify-full"),
        ("INVENTORY_DB_STATEMENT_TIMEOUT", "0"),
        ("INVENTORY_TABLES", "public.products,stock"),
        ("INVENTORY_PUBLIC.PRODUCTS_COLUMNS", "id, name,price"),
        ("INVENTORY_PUBLIC_PRODUCTS_PRIMARY_KEY", "id"),
    ])
}

#[test]
fn legacy_env_from_the_go_readme_validates_unchanged() {
    let loaded = load_env(go_readme_env()).unwrap_or_else(|f| panic!("{}", render(&f)));
    let warnings: Vec<&str> = loaded.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("DATE_FORMAT: ignored")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("DB_MAX_IDLE_CONNECTIONS: ignored")),
        "{warnings:?}"
    );
    let m = &loaded.manifest;
    assert_eq!(m.bigquery.project, "my-gcp-project");
    assert_eq!(m.bigquery.dataset, "analytics");
    assert_eq!(m.timeout, Some(std::time::Duration::from_secs(15 * 60)));
    assert_eq!(m.sources.len(), 2);

    let finance = &m.sources[0];
    assert_eq!(finance.name, "finance");
    assert_eq!(finance.kind, SourceKind::Mysql);
    assert_eq!(finance.connection.host, "mysql.internal");
    assert_eq!(finance.connection.port, Some(3306));
    assert_eq!(
        finance.connection.password.as_ref().unwrap().expose(),
        "s3cr3t with spaces"
    );
    assert_eq!(finance.max_connections, 15);
    // The Go tool ignored the global timeouts and their `30s` form; both work here.
    assert_eq!(
        finance.timeouts.connect,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(
        finance.timeouts.read,
        Some(std::time::Duration::from_secs(60))
    );

    let inventory = &m.sources[1];
    assert_eq!(inventory.kind, SourceKind::Postgres);
    // PostgreSQL gets 5432, not the MySQL DB_PORT.
    assert_eq!(inventory.connection.port, Some(5432));
    assert_eq!(inventory.connection.database.as_deref(), Some("inventory"));
    assert_eq!(inventory.tls.mode, TlsMode::VerifyFull);
    assert_eq!(
        inventory.timeouts.statement, None,
        "0 disables the statement timeout"
    );

    let tables: Vec<_> = m
        .tables
        .iter()
        .map(|t| (t.label(), t.target.clone(), t.enabled))
        .collect();
    assert_eq!(
        tables,
        vec![
            (
                "finance.cache_financial_acc_income".into(),
                "income".into(),
                true
            ),
            (
                "finance.cache_financial_acc_expense".into(),
                "cache_financial_acc_expense".into(),
                false
            ),
            (
                "inventory.public.products".into(),
                "public__products".into(),
                true
            ),
            ("inventory.stock".into(), "stock".into(), true),
        ]
    );
    let income = &m.tables[0];
    assert_eq!(income.batch_size, 500);
    assert_eq!(income.mode, WriteMode::Replace);
    assert_eq!(income.max_parse_failures, Some(100));
    let products = &m.tables[2];
    // PostgreSQL schema is separate from the database name.
    assert_eq!(products.qualifier.as_deref(), Some("public"));
    assert_eq!(products.name, "products");
    assert_eq!(
        products.columns.as_deref(),
        Some(&["id".to_string(), "name".into(), "price".into()][..])
    );
    assert_eq!(
        products.primary_key.as_deref(),
        Some(&["id".to_string()][..])
    );
    // Unqualified PostgreSQL tables live in `public`, not in a schema named like the database.
    assert_eq!(m.tables[3].qualifier.as_deref(), Some("public"));
    assert_eq!(m.tables[2].batch_size, 1000);
}

/// One row per legacy variable: the variable, its value, and where it lands.
#[test]
fn every_legacy_variable_lands_in_the_manifest() {
    let base = [
        ("GCP_PROJECT_ID", "proj-123"),
        ("BQ_DATASET_ID", "ds"),
        ("SYNC_DATABASES", "main"),
        ("MAIN_DB_USER", "u"),
        ("MAIN_DB_NAME", "db"),
        ("MAIN_TABLES", "t1"),
    ];
    let cases: &[(&str, &str, &str, serde_json::Value)] = &[
        ("DB_HOST", "h1", "/sources/main/host", "h1".into()),
        ("MAIN_DB_HOST", "h2", "/sources/main/host", "h2".into()),
        ("DB_PORT", "3307", "/sources/main/port", 3307.into()),
        ("MAIN_DB_PORT", "3308", "/sources/main/port", 3308.into()),
        (
            "MAIN_DB_TYPE",
            "postgres",
            "/sources/main/type",
            "postgres".into(),
        ),
        (
            "DB_TYPE",
            "postgresql",
            "/sources/main/type",
            "postgres".into(),
        ),
        (
            "MAIN_DB_SCHEMA",
            "sales",
            "/sources/main/schema",
            "sales".into(),
        ),
        (
            "MAIN_DB_PASSWORD",
            "pw",
            "/sources/main/password",
            "pw".into(),
        ),
        (
            "MAIN_ENABLED",
            "false",
            "/sources/main/enabled",
            false.into(),
        ),
        (
            "DB_MAX_OPEN_CONNECTIONS",
            "7",
            "/sources/main/pool/max_connections",
            7.into(),
        ),
        (
            "DB_CONN_MAX_LIFETIME",
            "90",
            "/sources/main/pool/max_lifetime",
            90.into(),
        ),
        (
            "DB_SSLMODE",
            "require",
            "/sources/main/tls/mode",
            "require".into(),
        ),
        (
            "MAIN_DB_SSLMODE",
            "verify-ca",
            "/sources/main/tls/mode",
            "verify-ca".into(),
        ),
        (
            "DB_TLS_MODE",
            "disable",
            "/sources/main/tls/mode",
            "disable".into(),
        ),
        (
            "MAIN_DB_TLS_CA_PATH",
            "/ca.pem",
            "/sources/main/tls/ca",
            "/ca.pem".into(),
        ),
        (
            "DB_CONN_TIMEOUT",
            "5",
            "/sources/main/timeouts/connect",
            5.into(),
        ),
        (
            "MAIN_DB_CONN_TIMEOUT",
            "10s",
            "/sources/main/timeouts/connect",
            "10s".into(),
        ),
        (
            "MAIN_DB_READ_TIMEOUT",
            "61",
            "/sources/main/timeouts/read",
            61.into(),
        ),
        (
            "MAIN_DB_WRITE_TIMEOUT",
            "62",
            "/sources/main/timeouts/write",
            62.into(),
        ),
        (
            "MAIN_DB_STATEMENT_TIMEOUT",
            "2m",
            "/sources/main/timeouts/statement",
            "2m".into(),
        ),
        ("SYNC_TIMEOUT", "10m", "/defaults/timeout", "10m".into()),
        (
            "DEFAULT_BATCH_SIZE",
            "250",
            "/defaults/batch_size",
            250.into(),
        ),
        (
            "AUTO_CREATE_TABLES",
            "0",
            "/defaults/auto_create",
            false.into(),
        ),
        (
            "TRUNCATE_ON_SYNC",
            "yes",
            "/defaults/mode",
            "replace".into(),
        ),
        (
            "TRUNCATE_ON_SYNC",
            "false",
            "/defaults/mode",
            "append".into(),
        ),
        (
            "MAX_ROW_PARSE_FAILURES",
            "-5",
            "/defaults/max_parse_failures",
            (-1).into(),
        ),
        (
            "ALLOW_TABLE_RECREATION",
            "TRUE",
            "/defaults/allow_recreate",
            true.into(),
        ),
        (
            "BIGQUERY_EMULATOR_HOST",
            "localhost:9050",
            "/bigquery/endpoint",
            "http://localhost:9050".into(),
        ),
        (
            "BIGQUERY_EMULATOR_HOST",
            "localhost:9050",
            "/bigquery/emulator",
            true.into(),
        ),
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            "/secrets/sa.json",
            "/bigquery/credentials",
            "/secrets/sa.json".into(),
        ),
        (
            "MAIN_T1_ENABLED",
            "0",
            "/sources/main/tables/t1/enabled",
            false.into(),
        ),
        (
            "MAIN_T1_TARGET_TABLE",
            "x.y",
            "/sources/main/tables/t1/target",
            "x__y".into(),
        ),
        (
            "MAIN_T1_COLUMNS",
            "a,b,a",
            "/sources/main/tables/t1/columns",
            serde_json::json!(["a", "b"]),
        ),
        (
            "MAIN_T1_BATCH_SIZE",
            "9",
            "/sources/main/tables/t1/batch_size",
            9.into(),
        ),
        (
            "MAIN_T1_PRIMARY_KEY",
            "a",
            "/sources/main/tables/t1/primary_key",
            serde_json::json!(["a"]),
        ),
        (
            "MAIN_T1_TIMESTAMP_COLUMN",
            "a",
            "/sources/main/tables/t1/cursor",
            "a".into(),
        ),
    ];
    for (var, value, pointer, expected) in cases {
        let mut vars = env(&base);
        vars.insert((*var).to_string(), (*value).to_string());
        if *var == "MAIN_T1_TIMESTAMP_COLUMN" {
            vars.insert("MAIN_T1_MODE".into(), "incremental".into());
        }
        let input = ManifestInput {
            name: None,
            text: None,
            env: vars.clone(),
        };
        let overlaid = manifest::overlay(&input).unwrap();
        let loaded = load_env(vars).unwrap_or_else(|f| panic!("{var}={value}: {}", render(&f)));
        assert_eq!(
            overlaid.document.pointer(pointer),
            Some(expected),
            "{var}={value}"
        );
        let origin = loaded
            .origins
            .get(*pointer)
            .or_else(|| loaded.origins.get(&format!("{pointer}/0")));
        assert_eq!(
            origin,
            Some(&Origin::Env((*var).to_string())),
            "{var} origin"
        );
    }
}

#[test]
fn invalid_legacy_values_are_errors_not_silent_defaults() {
    let mut vars = go_readme_env();
    vars.insert("DEFAULT_BATCH_SIZE".into(), "lots".into());
    vars.insert("AUTO_CREATE_TABLES".into(), "ture".into());
    vars.insert("FINANCE_DB_CONN_TIMEOUT".into(), "30 parsecs".into());
    vars.insert("INVENTORY_DB_SSLMODE".into(), "allow-ish".into());
    vars.insert("DB_TYPE".into(), "oracle".into());
    let failure = load_env(vars).unwrap_err();
    let messages = errors(&failure);
    for needle in [
        "DEFAULT_BATCH_SIZE",
        "AUTO_CREATE_TABLES",
        "FINANCE_DB_CONN_TIMEOUT",
        "INVENTORY_DB_SSLMODE",
        "DB_TYPE",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(needle)),
            "{needle} missing from {messages:#?}"
        );
    }
}

#[test]
fn the_global_port_follows_the_engine_whatever_db_type_spells_it() {
    for (db_type, finance_port, inventory_port) in [
        ("mariadb", 3307, 5432),
        ("MySQL", 3307, 5432),
        ("postgresql", 3306, 3307),
        ("pg", 3306, 3307),
    ] {
        let mut vars = go_readme_env();
        vars.insert("DB_TYPE".into(), db_type.into());
        vars.insert("DB_PORT".into(), "3307".into());
        vars.insert("FINANCE_DB_TYPE".into(), "mysql".into());
        let loaded = load_env(vars).unwrap_or_else(|failure| panic!("{}", render(&failure)));
        let ports: Vec<Option<u16>> = loaded
            .manifest
            .sources
            .iter()
            .map(|source| source.connection.port)
            .collect();
        assert_eq!(
            ports,
            [Some(finance_port), Some(inventory_port)],
            "DB_TYPE={db_type}"
        );
    }
}

#[test]
fn an_unknown_db_type_lists_the_engines() {
    let mut vars = go_readme_env();
    vars.insert("DB_TYPE".into(), " Oracle ".into());
    let messages = errors(&load_env(vars).unwrap_err());
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`oracle` is not a database type (use mysql, postgres or sqlite)")),
        "{messages:#?}"
    );
}

#[test]
fn legacy_missing_required_values_are_reported_together() {
    let failure = load_env(env(&[("SYNC_DATABASES", "a")])).unwrap_err();
    let text = render(&failure);
    assert!(text.contains("missing `bigquery.project`"), "{text}");
    assert!(text.contains("missing `bigquery.dataset`"), "{text}");
    assert!(text.contains("A_TABLES"), "{text}");
}

#[test]
fn shell_safe_variable_names_work_for_dotted_tables_and_dashed_ids() {
    let loaded = load_env(env(&[
        ("GCP_PROJECT_ID", "proj-123"),
        ("BQ_DATASET_ID", "ds"),
        ("SYNC_DATABASES", "sales-db"),
        ("SALES_DB_DB_USER", "u"),
        ("SALES_DB_DB_TYPE", "postgres"),
        ("SALES_DB_DB_NAME", "sales"),
        ("SALES_DB_TABLES", "crm.accounts"),
        ("SALES_DB_CRM_ACCOUNTS_TARGET_TABLE", "accounts"),
    ]))
    .unwrap_or_else(|f| panic!("{}", render(&f)));
    assert_eq!(loaded.manifest.tables[0].target, "accounts");
    assert_eq!(loaded.manifest.tables[0].qualifier.as_deref(), Some("crm"));
}

const FILE: &str = "\
bigquery:
  project: file-project
  dataset: file_ds
defaults:
  batch_size: 100
sources:
  main:
    type: mysql
    host: file-host
    user: app
    password: ${MAIN_SECRET}
    database: shop
    tables:
      orders:
        batch_size: 7
      customers:
";

#[test]
fn sync_databases_with_a_manifest_file_is_reported_as_ignored() {
    let loaded = load_yaml(
        FILE,
        env(&[("MAIN_SECRET", "pw"), ("SYNC_DATABASES", "other")]),
    )
    .unwrap_or_else(|f| panic!("{}", render(&f)));
    assert_eq!(loaded.manifest.sources.len(), 1);
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.message.starts_with("SYNC_DATABASES: ignored"))
    );
}

#[test]
fn overlay_precedence_env_over_file_over_default() {
    let loaded = load_yaml(
        FILE,
        env(&[
            ("MAIN_SECRET", "pw"),
            ("GCP_PROJECT_ID", "env-project"),
            ("DB_HOST", "global-host"),
            ("MAIN_DB_PORT", "3310"),
            ("MAIN_ORDERS_BATCH_SIZE", "9"),
        ]),
    )
    .unwrap_or_else(|f| panic!("{}", render(&f)));
    let m = &loaded.manifest;
    // env > file
    assert_eq!(m.bigquery.project, "env-project");
    assert_eq!(
        loaded.origins["/bigquery/project"],
        Origin::Env("GCP_PROJECT_ID".into())
    );
    // file > global fallback
    assert_eq!(m.sources[0].connection.host, "file-host");
    assert_eq!(loaded.origins["/sources/main/host"], Origin::File);
    // specific env > file (and > default)
    assert_eq!(m.sources[0].connection.port, Some(3310));
    assert_eq!(m.tables[0].batch_size, 9);
    // file default > built-in default
    assert_eq!(m.tables[1].batch_size, 100);
    assert_eq!(
        m.sources[0].connection.password.as_ref().unwrap().expose(),
        "pw"
    );
    assert!(
        !format!("{m:?}").contains("pw\""),
        "password leaked in Debug"
    );
}

#[test]
fn missing_interpolated_variables_are_all_reported_with_their_lines() {
    let text = "bigquery:\n  project: ${PROJECT}\n  dataset: ds\nsources:\n  main:\n    type: postgres\n    url: postgres://u:${PW}@h/db\n    tables:\n      t:\n";
    let failure = load_yaml(text, Env::new()).unwrap_err();
    insta::assert_snapshot!(render(&failure));
}

#[test]
fn interpolation_types_whole_references_and_escapes_dollars() {
    let text = "bigquery: {project: proj-123, dataset: ds}\nsources:\n  main:\n    type: postgres\n    user: u\n    password: a$$b${X}\n    database: db\n    port: ${PORT}\n    tables: {t: {}}\n";
    let loaded = load_yaml(text, env(&[("PORT", "6543"), ("X", "!")]))
        .unwrap_or_else(|f| panic!("{}", render(&f)));
    assert_eq!(loaded.manifest.sources[0].connection.port, Some(6543));
    assert_eq!(
        loaded.manifest.sources[0]
            .connection
            .password
            .as_ref()
            .unwrap()
            .expose(),
        "a$b!"
    );
}

const THREE_MISTAKES: &str = "\
# A manifest with three different mistakes.
bigquery:
  project: my-project
  dataset: analytics
sources:
  shop:
    type: postgres
    url: postgres://postgres@127.0.0.1/shop
    timeouts:
      connect: 30 parsecs
    tables:
      orders:
        mode: incremental
      customers:
        target: orders
";

#[test]
fn three_mistakes_are_reported_at_once_with_lines_yaml() {
    let failure = load_yaml(THREE_MISTAKES, Env::new()).unwrap_err();
    assert_eq!(errors(&failure).len(), 3, "{}", render(&failure));
    insta::assert_snapshot!(render(&failure));
}

#[test]
fn three_mistakes_are_reported_at_once_with_lines_toml() {
    let text = "\
[bigquery]
project = \"my-project\"
dataset = \"analytics\"

[sources.shop]
type = \"postgres\"
url = \"postgres://postgres@127.0.0.1/shop\"
timeouts = { connect = \"30 parsecs\" }

[sources.shop.tables.orders]
mode = \"incremental\"

[sources.shop.tables.customers]
target = \"orders\"
";
    let failure = manifest::load(&ManifestInput {
        name: Some("sync.toml".into()),
        text: Some((text.into(), Format::Toml)),
        env: Env::new(),
    })
    .unwrap_err();
    assert_eq!(errors(&failure).len(), 3, "{}", render(&failure));
    insta::assert_snapshot!(render(&failure));
}

#[test]
fn schema_and_semantic_errors_are_reported_together() {
    let text = "\
bigquery:
  project: Bad_Project
  dataset: analytics
defaults:
  batch_size: 0
sources:
  shop:
    type: postgres
    url: postgres://postgres@127.0.0.1/shop
    tables:
      orders:
        mode: upsert
      customers:
        colums: [id]
      public.items:
        mode: incremental
        columns: [id, name]
        cluster_by: [price]
        column_types:
          id: NUMERIC(40,2)
";
    let failure = load_yaml(text, Env::new()).unwrap_err();
    insta::assert_snapshot!(render(&failure));
}

/// `deletes` needs `merge`: on another mode it is an error at its line; a default no merge
/// table inherits is a warning; a merge table inherits the default, other tables keep rows.
#[test]
fn deletes_is_valid_only_with_merge_and_reported_at_its_line() {
    let text = "\
bigquery:
  project: my-project
  dataset: analytics
defaults:
  deletes: hard
sources:
  shop:
    type: postgres
    url: postgres://postgres@127.0.0.1/shop
    tables:
      orders:
        mode: replace
        deletes: soft
      items:
        mode: incremental
        cursor: id
";
    let failure = load_yaml(text, Env::new()).unwrap_err();
    assert_eq!(errors(&failure).len(), 1, "{}", render(&failure));
    insta::assert_snapshot!(render(&failure));

    let fine = "\
bigquery:
  project: my-project
  dataset: analytics
defaults:
  deletes: hard
sources:
  shop:
    type: postgres
    url: postgres://postgres@127.0.0.1/shop
    tables:
      orders:
        mode: merge
        primary_key: [id]
      notes:
        mode: merge
        primary_key: [id]
        deletes: keep
      items: {}
";
    let loaded = load_yaml(fine, Env::new()).unwrap();
    let deletes: Vec<&str> = loaded
        .manifest
        .tables
        .iter()
        .map(|table| table.deletes.as_str())
        .collect();
    assert_eq!(deletes, ["hard", "keep", "keep"]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn custom_sql_mistakes_are_reported_at_their_lines() {
    let text = "\
bigquery:
  project: my-project
  dataset: analytics
sources:
  shop:
    type: mysql
    url: mysql://reader@127.0.0.1/shop
    tables:
      two_statements:
        query: |
          SELECT id FROM orders;
          DELETE FROM orders
      with_parameter:
        query: SELECT id FROM orders WHERE id > ?
      nothing:
        query: \"  -- just a comment\"
      \"order_*\":
        query: SELECT id FROM orders
      shop.daily:
        query: SELECT id FROM orders
      merged:
        query: SELECT id, total FROM orders
        mode: merge
        cursor: id
";
    let failure = load_yaml(text, Env::new()).unwrap_err();
    assert_eq!(errors(&failure).len(), 6, "{}", render(&failure));
    assert!(
        failure
            .problems
            .iter()
            .all(|problem| problem.code == "datasync::manifest::query"
                || problem.code == "datasync::manifest::merge_without_key"),
        "{:?}",
        failure.problems
    );
    insta::assert_snapshot!(render(&failure));
}

#[test]
fn a_custom_sql_entry_resolves_named_by_its_target_and_sent_as_written() {
    let text = "\
bigquery:
  project: my-project
  dataset: analytics
sources:
  pg:
    type: postgres
    url: postgres://reader@127.0.0.1/shop
    tables:
      daily_orders:
        query: \"SELECT day, sum(total)::numeric(12,2) AS total, $$a;b$$ AS tag, '${NOT_A_VAR}' AS raw FROM orders GROUP BY day;\"
        mode: merge
        primary_key: [day]
        cursor: day
      renamed:
        query: SELECT 1 AS x
        target: other_name
";
    let loaded =
        load_yaml(text, Env::new()).unwrap_or_else(|failure| panic!("{}", render(&failure)));
    let table = &loaded.manifest.tables[0];
    assert_eq!(table.label(), "pg.query:daily_orders");
    assert_eq!(
        (table.target.as_str(), table.qualifier.as_deref()),
        ("daily_orders", None)
    );
    // No `${VAR}` expansion, `$$` kept, the trailing `;` cut.
    assert_eq!(
        table.query.as_deref(),
        Some(
            "SELECT day, sum(total)::numeric(12,2) AS total, $$a;b$$ AS tag, '${NOT_A_VAR}' AS raw FROM orders GROUP BY day"
        )
    );
    assert_eq!(loaded.manifest.tables[1].target, "other_name");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    // The effective manifest keeps the query.
    let raw = loaded.manifest.to_raw();
    let entry = raw.sources["pg"].tables["daily_orders"].as_ref().unwrap();
    assert_eq!(entry.query, table.query);
}

#[test]
fn syntax_errors_point_at_the_text() {
    let failure = load_yaml(
        "bigquery:\n  project: [unclosed\n  dataset: x\n",
        Env::new(),
    )
    .unwrap_err();
    let text = render(&failure);
    assert!(text.contains("sync.yaml:"), "{text}");
    assert_eq!(failure.problems[0].code, "datasync::manifest::syntax");
}

#[test]
fn the_example_manifest_validates_and_uses_every_option() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sync.example.yaml")).unwrap();
    let loaded = load_yaml(
        &text,
        env(&[("SHOP_DB_PASSWORD", "x"), ("WAREHOUSE_PG_PASSWORD", "y")]),
    )
    .unwrap_or_else(|f| panic!("{}", render(&f)));
    // Every property the schema knows appears somewhere in the example.
    let schema = manifest::json_schema();
    let mut missing = Vec::new();
    let defs = schema["$defs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v));
    for (name, definition) in defs.chain([("RawManifest", &schema)]) {
        for key in definition
            .get("properties")
            .and_then(|p| p.as_object())
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if !text.contains(&format!("{key}:")) && !text.contains(&format!("{key} =")) {
                missing.push(format!("{name}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "sync.example.yaml does not show: {missing:?}"
    );
    assert!(
        loaded
            .warnings
            .iter()
            .all(|w| w.severity == Severity::Warning)
    );
}

#[test]
fn committed_json_schema_is_up_to_date() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/sync.schema.json"
    ))
    .unwrap();
    let fresh = format!(
        "{}\n",
        serde_json::to_string_pretty(&manifest::json_schema()).unwrap()
    );
    assert!(
        committed == fresh,
        "schemas/sync.schema.json is stale: run `cargo run -- schema > schemas/sync.schema.json`"
    );
}

#[test]
fn env_example_lists_every_legacy_variable() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    for var in manifest::env::vars::GLOBALS {
        assert!(
            text.contains(&format!("{var}=")),
            ".env.example lacks {var}"
        );
    }
    for suffix in manifest::env::vars::SOURCE_SUFFIXES
        .iter()
        .chain(manifest::env::vars::TABLE_SUFFIXES)
    {
        assert!(
            text.contains(&format!("_{suffix}=")),
            ".env.example lacks a {{ID}}_..._{suffix} example"
        );
    }
}

#[test]
fn serializing_a_manifest_never_shows_its_secrets() {
    let text = "bigquery: {project: my-project, dataset: d1}\nsources:\n  a:\n    type: postgres\n    url: postgres://app:url-secret@db/x\n    tables: {t: }\n  b:\n    type: mysql\n    host: db\n    user: app\n    password: ${B_PASSWORD}\n    tables: {u: }\n";
    let loaded = load_yaml(text, env(&[("B_PASSWORD", "part-secret")])).unwrap();
    let json = serde_json::to_string(&loaded.manifest).unwrap();
    assert!(!json.contains("url-secret"), "{json}");
    assert!(!json.contains("part-secret"), "{json}");
    assert!(json.contains("\"********\""), "{json}");
    // The driver still gets the real values.
    let b = &loaded.manifest.sources[1];
    assert_eq!(
        b.connection.password.as_ref().map(|p| p.expose()),
        Some("part-secret")
    );
}

#[test]
fn an_endpoint_is_not_an_emulator_unless_it_says_so() {
    let base = "bigquery:\n  project: my-project\n  dataset: d\n  endpoint: https://bigquery.europe-west3.rep.googleapis.com\nsources:\n  s:\n    type: sqlite\n    database: x.db\n    tables:\n      t:\n";
    let loaded = load_yaml(base, Env::new()).unwrap_or_else(|f| panic!("{}", render(&f)));
    assert!(!loaded.manifest.bigquery.emulator);
    let loaded = load_yaml(base, env(&[("BIGQUERY_EMULATOR_HOST", "127.0.0.1:9050")]))
        .unwrap_or_else(|f| panic!("{}", render(&f)));
    assert!(loaded.manifest.bigquery.emulator);
    assert_eq!(
        loaded.manifest.bigquery.endpoint.as_deref(),
        Some("http://127.0.0.1:9050")
    );
    let failure = load_yaml(
        &base.replace(
            "  endpoint: https://bigquery.europe-west3.rep.googleapis.com\n",
            "  emulator: true\n",
        ),
        Env::new(),
    )
    .unwrap_err();
    let text = render(&failure);
    assert!(
        text.contains("`emulator: true` needs `bigquery.endpoint`"),
        "{text}"
    );
}

#[test]
fn the_bigquery_client_gets_its_variables_from_the_snapshot() {
    let text = "bigquery:\n  project: my-project\n  dataset: d\n  impersonate_service_account: sa@p.iam.gserviceaccount.com\n  ca_file: /etc/corp-ca.pem\nsources:\n  s:\n    type: sqlite\n    database: x.db\n    tables:\n      t:\n";
    let loaded = load_yaml(
        text,
        env(&[
            ("https_proxy", "http://proxy:3128"),
            ("HTTP_PROXY", "http://proxy:3129"),
            ("NO_PROXY", "localhost"),
            ("HOME", "/home/u"),
            ("CLOUDSDK_CONFIG", "/cfg"),
            ("GCE_METADATA_HOST", "127.0.0.1:1"),
            ("SSL_CERT_FILE", "/ca.pem"),
        ]),
    )
    .unwrap_or_else(|f| panic!("{}", render(&f)));
    let spec = &loaded.manifest.bigquery;
    assert_eq!(
        spec.impersonate_service_account.as_deref(),
        Some("sa@p.iam.gserviceaccount.com")
    );
    assert_eq!(spec.ca_file.as_deref(), Some("/etc/corp-ca.pem"));
    assert_eq!(spec.env.https_proxy.as_deref(), Some("http://proxy:3128"));
    assert_eq!(spec.env.http_proxy.as_deref(), Some("http://proxy:3129"));
    assert_eq!(spec.env.no_proxy.as_deref(), Some("localhost"));
    assert_eq!(spec.env.home.as_deref(), Some("/home/u"));
    assert_eq!(spec.env.cloudsdk_config.as_deref(), Some("/cfg"));
    assert_eq!(spec.env.gce_metadata_host.as_deref(), Some("127.0.0.1:1"));
    assert_eq!(spec.env.ssl_cert_file.as_deref(), Some("/ca.pem"));
    // Proxy URLs may hold passwords: never in Debug output.
    assert!(!format!("{spec:?}").contains("proxy:3128"));
}

/// What an editor does with the `# yaml-language-server: $schema=` line: the file as written
/// (nulls included, `orders:` with no value) checked against the committed JSON Schema.
#[test]
fn editors_accept_the_example_manifest_against_the_committed_schema() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sync.example.yaml")).unwrap();
    let document: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert!(document["sources"]["shop"]["tables"]["orders"].is_null());
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/sync.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn bad_labels_and_lineage_columns_are_reported_with_their_lines() {
    let text = "\
bigquery:
  project: my-project
  dataset: analytics
  labels:
    team: data
    Cost-Center: x1
    env: Prod
    managed-by: me
defaults:
  lineage: true
sources:
  shop:
    type: postgres
    url: postgres://postgres@127.0.0.1/shop
    tables:
      orders:
        columns: [id, _datasync_synced_at]
      items:
        lineage: false
        columns: [id, _datasync_run_id]
      notes:
        column_types:
          _DataSync_Run_Id: STRING
";
    let failure = load_yaml(text, Env::new()).unwrap_err();
    assert_eq!(errors(&failure).len(), 5, "{}", render(&failure));
    insta::assert_snapshot!(render(&failure));
}

#[test]
fn descriptions_lineage_and_labels_resolve_with_their_defaults() {
    let text = "\
bigquery:
  project: my-project
  dataset: analytics
  labels: {team: data, cost-center: \"1234\", empty: \"\"}
defaults:
  lineage: true
sources:
  shop:
    type: postgres
    url: postgres://postgres@127.0.0.1/shop
    tables:
      orders:
        description: Orders placed in the shop
      items:
        lineage: false
        exclude_columns: [_datasync_run_id]
";
    let loaded =
        load_yaml(text, Env::new()).unwrap_or_else(|failure| panic!("{}", render(&failure)));
    let manifest = loaded.manifest;
    let labels: Vec<(&str, &str)> = manifest
        .bigquery
        .labels
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    assert_eq!(
        labels,
        [("cost-center", "1234"), ("empty", ""), ("team", "data")]
    );
    let orders = &manifest.tables[0];
    assert_eq!(
        orders.description.as_deref(),
        Some("Orders placed in the shop")
    );
    assert!(orders.lineage);
    assert!(!manifest.tables[1].lineage);
    assert_eq!(manifest.tables[1].description, None);
    // An empty description is a schema error, not a silent "clear".
    let failure = load_yaml(
        &text.replace(
            "description: Orders placed in the shop",
            "description: \"\"",
        ),
        Env::new(),
    )
    .unwrap_err();
    assert!(
        render(&failure).contains("description"),
        "{}",
        render(&failure)
    );
}

#[test]
fn chunk_settings_resolve_with_units_defaults_and_overrides() {
    let text = "\
bigquery: {project: my-project, dataset: analytics}
defaults:
  chunk_bytes: 256MiB
  table_parallelism: 3
sources:
  shop:
    type: postgres
    url: postgres://postgres@127.0.0.1/shop
    tables:
      orders: {}
      events: {chunk_bytes: 500MB, table_parallelism: 1, consistency: per-chunk}
      items: {chunk_bytes: 1048576}
";
    let loaded = load_yaml(text, Env::new()).unwrap();
    let tables = &loaded.manifest.tables;
    let settings = |index: usize| {
        (
            tables[index].chunk_bytes,
            tables[index].table_parallelism,
            tables[index].consistency.as_str(),
        )
    };
    assert_eq!(settings(0), (256 << 20, 3, "snapshot"));
    assert_eq!(settings(1), (500_000_000, 1, "per-chunk"));
    assert_eq!(settings(2), (1 << 20, 3, "snapshot"));
    // The pool defaults to every reader of every table at once: parallelism × 3.
    assert_eq!(loaded.manifest.sources[0].max_connections, 4 * 3);
    // Without settings: 1 GiB, 2 readers.
    let plain = load_yaml(
        "bigquery: {project: my-project, dataset: analytics}\nsources:\n  shop:\n    type: postgres\n    url: postgres://u@h/db\n    tables:\n      orders: {}\n",
        Env::new(),
    )
    .unwrap();
    assert_eq!(
        (
            plain.manifest.tables[0].chunk_bytes,
            plain.manifest.tables[0].table_parallelism
        ),
        (1 << 30, 2)
    );
}

#[test]
fn a_bad_chunk_size_is_reported_at_its_line() {
    let text = "\
bigquery: {project: my-project, dataset: analytics}
sources:
  shop:
    type: postgres
    url: postgres://postgres@127.0.0.1/shop
    tables:
      orders: {chunk_bytes: 12 parsecs}
      items: {consistency: sometimes}
";
    let failure = load_yaml(text, Env::new()).unwrap_err();
    let rendered = render(&failure);
    assert_eq!(errors(&failure).len(), 2, "{rendered}");
    insta::assert_snapshot!(rendered);
}
