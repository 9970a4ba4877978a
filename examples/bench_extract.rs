//! Extraction throughput benchmark (hidden; not part of the CLI).
//!
//! `cargo run --release --example bench_extract -- --engine postgres --rows 1000000 --columns 10`
//!
//! Creates a generated table in a scratch schema/database (server-side generation), extracts it
//! into a sink that only counts bytes, prints rows/s, MB/s and peak RSS, and drops the scratch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use datasync::manifest::raw::{SourceKind, TlsMode, WriteMode};
use datasync::manifest::resolve::{
    Connection, SourceSpec, TableSpec, Timeouts, TlsSpec, TypePolicies,
};
use datasync::mapping::map_table;
use datasync::schema::LoadFormat;
use datasync::secret::Secret;
use datasync::source::Source;
use datasync::warehouse::LoadSink;
use sqlx::Executor;

/// (PostgreSQL type, PostgreSQL expression over `g`), (MySQL type, expression over `seq`),
/// (SQLite type, expression over `x`).
const KINDS: &[[(&str, &str); 3]] = &[
    [
        ("int8", "g + {c}"),
        ("BIGINT", "seq + {c}"),
        ("INTEGER", "x + {c}"),
    ],
    [
        ("text", "md5((g + {c})::text)"),
        ("VARCHAR(32)", "md5(seq + {c})"),
        ("TEXT", "hex(randomblob(16))"),
    ],
    [
        ("int4", "((g + {c}) % 100000)::int4"),
        ("INT", "(seq + {c}) % 100000"),
        ("INTEGER", "(x + {c}) % 100000"),
    ],
    [
        ("numeric(14,4)", "((g + {c}) / 7.0)::numeric(14,4)"),
        ("DECIMAL(14,4)", "(seq + {c}) / 7"),
        ("NUMERIC(14,4)", "round((x + {c}) / 7.0, 4)"),
    ],
    [
        ("bool", "(g + {c}) % 2 = 0"),
        ("TINYINT(1)", "(seq + {c}) % 2"),
        ("BOOLEAN", "(x + {c}) % 2"),
    ],
    [
        (
            "timestamptz",
            "timestamptz '2020-01-01 00:00:00+00' + (g + {c}) * interval '1 second'",
        ),
        (
            "TIMESTAMP(6) NULL",
            "TIMESTAMP'2020-01-01 00:00:00' + INTERVAL (seq + {c}) SECOND",
        ),
        ("DATETIME", "datetime(1577836800 + x + {c}, 'unixepoch')"),
    ],
    [
        ("date", "date '2020-01-01' + ((g + {c}) % 1000)::int"),
        (
            "DATE",
            "DATE'2020-01-01' + INTERVAL ((seq + {c}) % 1000) DAY",
        ),
        ("DATE", "date(1577836800 + (x % 1000) * 86400, 'unixepoch')"),
    ],
    [
        ("float8", "(g + {c}) * 1.1::float8"),
        ("DOUBLE", "(seq + {c}) * 1.1e0"),
        ("REAL", "(x + {c}) * 1.1"),
    ],
    [
        (
            "jsonb",
            "jsonb_build_object('k', g + {c}, 'v', md5(g::text))",
        ),
        ("JSON", "JSON_OBJECT('k', seq + {c}, 'v', md5(seq))"),
        ("JSON", "json_object('k', x + {c}, 'v', hex(randomblob(8)))"),
    ],
    [
        ("uuid", "md5((g + {c})::text)::uuid"),
        ("UUID", "uuid()"),
        ("TEXT", "lower(hex(randomblob(16)))"),
    ],
];

#[expect(
    clippy::disallowed_methods,
    reason = "the benchmark reads its settings from the environment"
)]
fn env_or(name: &str, default: &str) -> String {
    std::env::var_os(name)
        .and_then(|value| value.into_string().ok())
        .unwrap_or_else(|| default.to_string())
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn source_spec(kind: SourceKind, url: &str) -> SourceSpec {
    SourceSpec {
        name: "bench".into(),
        kind,
        enabled: true,
        connection: Connection {
            url: Some(Secret::new(url)),
            host: "localhost".into(),
            port: None,
            user: None,
            password: None,
            database: None,
            schema: None,
        },
        tls: TlsSpec {
            mode: TlsMode::Prefer,
            ca: None,
            cert: None,
            key: None,
        },
        ssh: None,
        max_connections: 2,
        min_connections: 0,
        max_lifetime: None,
        timeouts: Timeouts {
            connect: None,
            read: None,
            write: None,
            statement: None,
        },
    }
}

fn table_spec(kind: SourceKind, qualifier: Option<String>) -> TableSpec {
    TableSpec {
        source: "bench".into(),
        source_kind: kind,
        key: "bench".into(),
        qualifier,
        name: "bench".into(),
        target: "bench".into(),
        enabled: true,
        columns: None,
        exclude_columns: Vec::new(),
        primary_key: None,
        cursor: None,
        mode: WriteMode::Replace,
        batch_size: 10_000,
        format: LoadFormat::Ndjson,
        chunk_bytes: datasync::manifest::resolve::DEFAULT_CHUNK_BYTES,
        table_parallelism: datasync::manifest::resolve::DEFAULT_TABLE_PARALLELISM,
        consistency: Default::default(),
        max_parse_failures: None,
        column_types: Default::default(),
        partition_by: None,
        cluster_by: Vec::new(),
        allow_recreate: false,
        deletes: datasync::schema::Deletes::Keep,
        auto_create: true,
        types: TypePolicies::default(),
        description: None,
        lineage: false,
        query: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut engine = "postgres".to_string();
    let mut rows: u64 = 1_000_000;
    let mut columns: usize = 10;
    let mut format = LoadFormat::Ndjson;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or("missing value")?;
        match arg.as_str() {
            "--engine" => engine = value,
            "--rows" => rows = value.parse()?,
            "--columns" => columns = value.parse()?,
            "--format" => {
                format = match value.as_str() {
                    "avro" => LoadFormat::Avro,
                    "ndjson" => LoadFormat::Ndjson,
                    other => return Err(format!("unknown format {other}").into()),
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let scratch = format!("ds_bench_{}", std::process::id());
    let kind_index = match engine.as_str() {
        "postgres" => 0,
        "mysql" => 1,
        "sqlite" => 2,
        other => return Err(format!("unknown engine {other}").into()),
    };
    let ddl: Vec<String> = (0..columns)
        .map(|c| format!("c{c} {}", KINDS[c % KINDS.len()][kind_index].0))
        .collect();
    let exprs: Vec<String> = (0..columns)
        .map(|c| {
            KINDS[c % KINDS.len()][kind_index]
                .1
                .replace("{c}", &c.to_string())
        })
        .collect();
    let tempdir = std::env::temp_dir().join(format!("{scratch}.db"));

    let setup = Instant::now();
    let (source, spec) = match engine.as_str() {
        "postgres" => {
            let url = env_or(
                "DATASYNC_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            );
            let source = Source::connect(&source_spec(SourceKind::Postgres, &url)).await?;
            if let Source::Postgres(pool) = &source {
                pool.execute(sqlx::raw_sql(&format!("CREATE SCHEMA {scratch}")))
                    .await?;
                pool.execute(sqlx::raw_sql(&format!(
                    "CREATE TABLE {scratch}.bench ({})",
                    ddl.join(", ")
                )))
                .await?;
                let sql = format!(
                    "INSERT INTO {scratch}.bench SELECT {} FROM generate_series(1, {rows}) g",
                    exprs.join(", ")
                );
                pool.execute(sqlx::raw_sql(&sql)).await?;
            }
            (
                source,
                table_spec(SourceKind::Postgres, Some(scratch.clone())),
            )
        }
        "mysql" => {
            let url = env_or(
                "DATASYNC_TEST_MYSQL_URL",
                "mysql://root@127.0.0.1:3306/test",
            );
            let source = Source::connect(&source_spec(SourceKind::Mysql, &url)).await?;
            if let Source::Mysql(pool) = &source {
                pool.execute(sqlx::raw_sql(&format!("CREATE DATABASE {scratch}")))
                    .await?;
                pool.execute(sqlx::raw_sql(&format!(
                    "CREATE TABLE {scratch}.bench ({})",
                    ddl.join(", ")
                )))
                .await?;
                let sql = format!(
                    "INSERT INTO {scratch}.bench SELECT {} FROM seq_1_to_{rows}",
                    exprs.join(", ")
                );
                pool.execute(sqlx::raw_sql(&sql)).await?;
            }
            (source, table_spec(SourceKind::Mysql, Some(scratch.clone())))
        }
        _ => {
            let url = format!("sqlite://{}?mode=rwc", tempdir.display());
            {
                let pool = sqlx::SqlitePool::connect(&url).await?;
                pool.execute(sqlx::raw_sql(&format!(
                    "CREATE TABLE bench ({})",
                    ddl.join(", ")
                )))
                .await?;
                let sql = format!(
                    "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {rows})
                     INSERT INTO bench SELECT {} FROM s",
                    exprs.join(", ")
                );
                pool.execute(sqlx::raw_sql(&sql)).await?;
                pool.close().await;
            }
            let url = format!("sqlite://{}", tempdir.display());
            let source = Source::connect(&source_spec(SourceKind::Sqlite, &url)).await?;
            (source, table_spec(SourceKind::Sqlite, None))
        }
    };
    let setup_secs = setup.elapsed().as_secs_f64();

    let result = async {
        let table = source
            .describe(spec.qualifier.as_deref(), &spec.name)
            .await?;
        let mapping = map_table(&table, &spec)
            .map_err(|errors| datasync::diagnostic::messages(&errors).join("; "))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let total = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&total);
        let sink = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        let start = Instant::now();
        let writer = LoadSink::new(
            format,
            table.label(),
            &mapping.columns,
            mapping.policies,
            mapping.max_parse_failures,
            &mapping.key_columns,
            mapping.batch_size,
        );
        let stats = source
            .extract(&table, &mapping.columns, None, writer, tx, &|_| {})
            .await?;
        sink.await?;
        let secs = start.elapsed().as_secs_f64();
        Ok::<_, Box<dyn std::error::Error>>((stats, secs, total.load(Ordering::Relaxed)))
    }
    .await;

    match &source {
        Source::Postgres(pool) => {
            pool.execute(sqlx::raw_sql(&format!("DROP SCHEMA {scratch} CASCADE")))
                .await?;
        }
        Source::Mysql(pool) => {
            pool.execute(sqlx::raw_sql(&format!("DROP DATABASE {scratch}")))
                .await?;
        }
        Source::Sqlite(pool) => {
            pool.close().await;
            std::fs::remove_file(&tempdir)?;
        }
    }
    let (stats, secs, bytes) = result?;
    println!(
        "engine={engine} format={} columns={columns} rows={} bad_values={} setup_s={setup_secs:.1} extract_s={secs:.2} rows_per_s={:.0} mb_per_s={:.1} out_mb={:.1} peak_rss_mb={:.1}",
        format.as_str(),
        stats.rows,
        stats.bad_values,
        stats.rows as f64 / secs,
        bytes as f64 / secs / 1e6,
        bytes as f64 / 1e6,
        peak_rss_mb()
    );
    Ok(())
}
