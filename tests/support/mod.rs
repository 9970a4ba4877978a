//! Helpers shared by the source integration tests.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datasync::manifest::raw::{SourceKind, TlsMode, WriteMode};
use datasync::manifest::resolve::{
    Connection, SourceSpec, TableSpec, Timeouts, TlsSpec, TypePolicies,
};
use datasync::mapping::{TableMapping, map_table};
use datasync::schema::ExtractStats;
use datasync::schema::SourceTable;
use datasync::secret::Secret;
use datasync::source::{CursorFilter, Source, SourceError};
use datasync::warehouse::NdjsonWriter;

/// The URL from `var`, or `default`.
#[expect(
    clippy::disallowed_methods,
    reason = "integration tests read service URLs from the environment"
)]
pub fn url(var: &str, default: &str) -> String {
    std::env::var_os(var)
        .and_then(|value| value.into_string().ok())
        .unwrap_or_else(|| default.to_string())
}

/// A unique lowercase name for a scratch schema/database.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{nanos}", std::process::id())
}

pub fn source_spec(kind: SourceKind, url: &str) -> SourceSpec {
    SourceSpec {
        name: "test".into(),
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
            connect: Some(Duration::from_secs(10)),
            read: None,
            write: None,
            statement: None,
        },
    }
}

pub fn table_spec(kind: SourceKind, qualifier: Option<&str>, name: &str) -> TableSpec {
    TableSpec {
        source: "test".into(),
        source_kind: kind,
        key: name.into(),
        qualifier: qualifier.map(str::to_string),
        name: name.into(),
        target: "target_table".into(),
        enabled: true,
        columns: None,
        exclude_columns: Vec::new(),
        primary_key: None,
        cursor: None,
        mode: WriteMode::Replace,
        batch_size: 10_000,
        format: datasync::schema::LoadFormat::Avro,
        chunk_bytes: 1 << 30,
        table_parallelism: 2,
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

/// Connects, failing with a hint to start the services.
pub async fn connect(kind: SourceKind, url: &str) -> Source {
    match Source::connect(&source_spec(kind, url)).await {
        Ok(source) => source,
        Err(error) => panic!(
            "cannot reach the {} test server ({error}); run `scripts/services.sh` or set DATASYNC_TEST_{}_URL",
            kind.as_str(),
            kind.as_str().to_uppercase()
        ),
    }
}

/// Everything one extraction produced.
pub struct Extracted {
    pub table: SourceTable,
    pub mapping: TableMapping,
    pub lines: Vec<String>,
    pub stats: ExtractStats,
    pub chunks: usize,
    pub progress: Vec<u64>,
}

/// describe + map + extract, lines parsed back as JSON.
pub async fn run(
    source: &Source,
    spec: &TableSpec,
    filter: Option<&CursorFilter>,
) -> Result<Extracted, SourceError> {
    let table = source
        .describe(spec.qualifier.as_deref(), &spec.name)
        .await?;
    let mapping = map_table(&table, spec).map_err(|errors| {
        SourceError::Invalid(datasync::diagnostic::messages(&errors).join("; "))
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let collector = tokio::spawn(async move {
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            chunks.push(chunk);
        }
        chunks
    });
    let progress = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&progress);
    let stats = source
        .extract(
            &table,
            &mapping.columns,
            filter,
            ndjson_writer(&table, &mapping),
            tx,
            &move |rows| seen.lock().unwrap().push(rows),
        )
        .await?;
    let chunks = collector.await.unwrap();
    let mut lines = Vec::new();
    for chunk in &chunks {
        assert!(chunk.ends_with(b"\n"), "chunks end on a line boundary");
        for line in chunk.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let _: serde_json::Value = serde_json::from_slice(line).expect("every line is JSON");
            lines.push(String::from_utf8(line.to_vec()).expect("every line is UTF-8"));
        }
    }
    let progress = progress.lock().unwrap().clone();
    Ok(Extracted {
        table,
        mapping,
        lines,
        stats,
        chunks: chunks.len(),
        progress,
    })
}

/// The NDJSON sink for `mapping`, as the executor builds it.
#[allow(dead_code)]
pub fn ndjson_writer(table: &SourceTable, mapping: &TableMapping) -> NdjsonWriter {
    NdjsonWriter::new(
        table.label(),
        &mapping.columns,
        mapping.policies,
        mapping.max_parse_failures,
        &mapping.key_columns,
        mapping.batch_size,
    )
}

pub mod bigquery_fake;
pub mod fakes;

/// Runs `datasync <args>` in `dir` on a pseudo-terminal (util-linux `script`), typing `answer`
/// on its terminal; the output is what the terminal showed.
pub fn on_terminal(dir: &std::path::Path, args: &str, answer: &str) -> std::process::Output {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let binary = assert_cmd::cargo::cargo_bin("datasync");
    let mut child = Command::new("script")
        .args(["-qec", &format!("{} {args}", binary.display()), "/dev/null"])
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("PATH", "/usr/bin:/bin")
        .env("TERM", "xterm")
        // Never reach a real metadata server from a test.
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) runs the command on a pseudo-terminal");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(answer.as_bytes())
        .expect("type the answer");
    child.wait_with_output().expect("datasync on a terminal")
}
