//! `datasync init --source URL`: connects, lists the tables and views and prints a commented
//! manifest with a mode proposed for each table. What it writes passes `validate` as it is.

use clap::Args;

use crate::error::{Error, ExitStatus};
use crate::manifest::{self, Env, Format, ManifestInput};
use crate::schema::{SourceKind, SourceTable};
use crate::source::{CatalogEntry, Source};

/// `datasync init` options.
#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// The database to describe: `postgres://…`, `mysql://…` (also MariaDB) or `sqlite://file`.
    /// A password in it is written as `${NAME_PASSWORD}`, never in clear.
    #[arg(long, value_name = "URL")]
    source: String,
    /// Only this PostgreSQL schema or MySQL database (default: every user schema; the URL's
    /// database for MySQL).
    #[arg(long, value_name = "NAME")]
    schema: Option<String>,
    /// The source's name in the manifest (default: from the database name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// BigQuery project written in the manifest.
    #[arg(long, default_value = "my-gcp-project")]
    project: String,
    /// BigQuery dataset written in the manifest.
    #[arg(long, default_value = "analytics")]
    dataset: String,
}

/// The mode proposed for one table, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Proposal {
    /// `replace`, `merge` or `incremental`.
    pub mode: &'static str,
    /// The cursor column (merge, incremental).
    pub cursor: Option<String>,
    /// The comment written beside the entry.
    pub reason: String,
}

/// Column names that say "last changed at".
const UPDATED: &[&str] = &[
    "updated_at",
    "updated",
    "modified_at",
    "modified",
    "last_modified",
    "last_modified_at",
    "changed_at",
    "update_time",
    "updatedat",
    "modifiedat",
];

/// Words in a table name that say "rows are only ever added".
const APPEND_ONLY: &[&str] = &[
    "event", "log", "audit", "history", "ledger", "click", "visit", "message", "metric",
];

fn is_temporal(data_type: &str) -> bool {
    let data_type = data_type.to_ascii_lowercase();
    data_type.contains("time") || data_type.contains("date")
}

fn is_integer(data_type: &str) -> bool {
    let data_type = data_type.to_ascii_lowercase();
    data_type.contains("int") || data_type == "serial" || data_type == "bigserial"
}

/// Proposes a mode: `merge` with a primary key and an `updated_at`-like timestamp, `incremental`
/// on a growing integer key for an append-only table (its name says events, logs, …), `replace`
/// otherwise (always correct, only slower). Pure.
pub(super) fn propose(table: &SourceTable, view: bool) -> Proposal {
    let updated = table.columns.iter().find(|column| {
        UPDATED.contains(&column.name.to_ascii_lowercase().as_str())
            && is_temporal(&column.data_type)
    });
    if view {
        return Proposal {
            mode: "replace",
            cursor: None,
            reason: "a view: re-read in full on every run".into(),
        };
    }
    if let (false, Some(updated)) = (table.primary_key.is_empty(), updated) {
        return Proposal {
            mode: "merge",
            cursor: Some(updated.name.clone()),
            reason: format!(
                "primary key [{}] and `{}`: merge the changed rows",
                table.primary_key.join(", "),
                updated.name
            ),
        };
    }
    let growing = match table.primary_key.as_slice() {
        [key] => table
            .columns
            .iter()
            .find(|column| &column.name == key && is_integer(&column.data_type)),
        _ => None,
    };
    let name = table.name.to_ascii_lowercase();
    if let Some(key) = growing
        && updated.is_none()
        && APPEND_ONLY.iter().any(|word| name.contains(word))
    {
        return Proposal {
            mode: "incremental",
            cursor: Some(key.name.clone()),
            reason: format!("append-only, growing key `{}`: only new rows", key.name),
        };
    }
    let reason = match growing {
        Some(key) if updated.is_none() => format!(
            "copied in full; if rows are only ever added, `mode: incremental` + `cursor: {}`",
            key.name
        ),
        _ if table.primary_key.is_empty() => "no primary key: copied in full".into(),
        _ => "no `updated_at`-like column: copied in full".into(),
    };
    Proposal {
        mode: "replace",
        cursor: None,
        reason,
    }
}

/// The engine of a URL, by scheme.
fn kind_of(url: &str) -> Option<SourceKind> {
    [SourceKind::Postgres, SourceKind::Mysql, SourceKind::Sqlite]
        .into_iter()
        .find(|kind| kind.accepts_url(url))
}

/// A manifest name from the URL's database (or file) name: lower case, `[a-z0-9_]`.
fn source_name(url: &str, kind: SourceKind) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit(['/', ':']).next().unwrap_or_default();
    let stem = if kind == SourceKind::Sqlite {
        last.split('.').next().unwrap_or_default()
    } else {
        last
    };
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("{kind:?}").to_ascii_lowercase()
    } else {
        name
    }
}

/// The URL as written in the manifest: its password replaced by `${VAR}`.
fn url_for_manifest(url: &str, var: &str) -> String {
    match crate::secret::url_password(url) {
        Some(password) => url.replacen(&format!(":{password}@"), &format!(":${{{var}}}@"), 1),
        None => url.to_string(),
    }
}

/// Connects to `url` through the manifest's own resolution (TLS defaults, timeouts).
async fn connect(url: &str, kind: SourceKind) -> Result<Source, Error> {
    let probe = serde_json::json!({
        "bigquery": {"project": "datasync-init-probe", "dataset": "probe"},
        "sources": {"probe": {"type": kind, "url": url}},
    });
    let input = ManifestInput {
        name: None,
        text: Some((probe.to_string(), Format::Yaml)),
        env: Env::new(),
    };
    let loaded = manifest::load(&input)?;
    let spec = loaded
        .manifest
        .sources
        .first()
        .ok_or_else(|| Error::Internal("the probe manifest has no source".into()))?;
    Source::connect(spec)
        .await
        .map_err(|error| Error::Usage(error.to_string()))
}

/// `datasync init`.
pub(super) async fn run(args: &InitArgs) -> Result<ExitStatus, Error> {
    let kind = kind_of(&args.source).ok_or_else(|| {
        Error::Usage(format!(
            "`--source` must start with postgres://, mysql://, mariadb:// or sqlite: (got `{}`)",
            crate::secret::redact_url(&args.source)
        ))
    })?;
    let source = connect(&args.source, kind).await?;
    let entries = source
        .list_tables(args.schema.as_deref())
        .await
        .map_err(|error| Error::Usage(error.to_string()))?;
    let mut tables = Vec::with_capacity(entries.len());
    for entry in entries {
        let table = source
            .describe(entry.qualifier.as_deref(), &entry.name)
            .await
            .map_err(|error| Error::Usage(error.to_string()))?;
        tables.push((entry, table));
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| source_name(&args.source, kind));
    let text = render(args, kind, &name, &tables);
    super::print_stdout(&text);
    eprintln!(
        "wrote {} table(s); check it with `datasync -c FILE validate`, then `datasync plan`",
        tables.len()
    );
    Ok(ExitStatus::Success)
}

/// The key of a table in `tables:`: bare in the source's default schema (`public`, the URL's
/// MySQL database, SQLite's `main`), `schema.table` elsewhere.
fn table_key(entry: &CatalogEntry, kind: SourceKind, schema: Option<&str>) -> String {
    let default = match kind {
        SourceKind::Postgres => Some(schema.unwrap_or("public")),
        SourceKind::Mysql | SourceKind::Sqlite => entry.qualifier.as_deref(),
    };
    match &entry.qualifier {
        Some(qualifier) if Some(qualifier.as_str()) != default => entry.label(),
        _ => entry.name.clone(),
    }
}

/// Quotes a YAML key or value when it is not a plain word.
fn yaml(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        text.to_string()
    } else {
        serde_json::Value::from(text).to_string()
    }
}

/// The manifest text. Pure.
fn render(
    args: &InitArgs,
    kind: SourceKind,
    name: &str,
    tables: &[(CatalogEntry, SourceTable)],
) -> String {
    let var = format!("{}_PASSWORD", name.to_ascii_uppercase());
    let url = url_for_manifest(&args.source, &var);
    let mut out = String::new();
    out.push_str("# yaml-language-server: $schema=./sync.schema.json\n");
    out.push_str("# (editor completion: `datasync schema > sync.schema.json`)\n");
    out.push_str(&format!(
        "# Written by `datasync init` from {}. Review the proposed modes, then:\n",
        crate::secret::redact_url(&args.source)
    ));
    out.push_str("#   datasync validate && datasync plan\n");
    out.push_str("version: 1\n\nbigquery:\n");
    out.push_str(&format!(
        "  project: {}   # your GCP project\n",
        yaml(&args.project)
    ));
    out.push_str(&format!("  dataset: {}\n", yaml(&args.dataset)));
    out.push_str("  create_dataset: true\n\ndefaults:\n  mode: replace\n\nsources:\n");
    out.push_str(&format!("  {name}:\n    type: {}\n", kind_name(kind)));
    if url != args.source {
        out.push_str(&format!("    # the password is read from ${var}\n"));
    }
    out.push_str(&format!("    url: {}\n", yaml(&url)));
    if let (SourceKind::Postgres, Some(schema)) = (kind, &args.schema) {
        out.push_str(&format!("    schema: {}\n", yaml(schema)));
    }
    if tables.is_empty() {
        out.push_str("    tables: {}   # no tables found\n");
        return out;
    }
    out.push_str("    tables:\n");
    for (entry, table) in tables {
        render_table(&mut out, entry, table, kind, args.schema.as_deref());
    }
    out
}

fn render_table(
    out: &mut String,
    entry: &CatalogEntry,
    table: &SourceTable,
    kind: SourceKind,
    schema: Option<&str>,
) {
    let proposal = propose(table, entry.view);
    let rows = table
        .estimated_rows
        .map(|rows| format!(", ~{rows} rows"))
        .unwrap_or_default();
    out.push_str(&format!(
        "      {}:   # {}{rows}\n",
        yaml(&table_key(entry, kind, schema)),
        proposal.reason
    ));
    out.push_str(&format!("        mode: {}\n", proposal.mode));
    if proposal.mode == "merge" {
        let keys: Vec<String> = table.primary_key.iter().map(|key| yaml(key)).collect();
        out.push_str(&format!("        primary_key: [{}]\n", keys.join(", ")));
    }
    if let Some(cursor) = &proposal.cursor {
        out.push_str(&format!("        cursor: {}\n", yaml(cursor)));
    }
}

fn kind_name(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Mysql => "mysql",
        SourceKind::Postgres => "postgres",
        SourceKind::Sqlite => "sqlite",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SourceColumn;

    fn column(name: &str, data_type: &str) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            ordinal: 1,
            data_type: data_type.into(),
            column_type: data_type.into(),
            nullable: true,
            precision: None,
            scale: None,
            max_length: None,
            primary_key: false,
            comment: None,
            is_json: false,
        }
    }

    fn table(name: &str, key: &[&str], columns: &[(&str, &str)]) -> SourceTable {
        SourceTable {
            qualifier: None,
            name: name.into(),
            columns: columns.iter().map(|(n, t)| column(n, t)).collect(),
            primary_key: key.iter().map(|k| k.to_string()).collect(),
            unique_keys: Vec::new(),
            estimated_rows: None,
            comment: None,
            query: None,
        }
    }

    #[test]
    fn a_key_and_updated_at_propose_merge() {
        let orders = table(
            "orders",
            &["id"],
            &[("id", "bigint"), ("updated_at", "timestamp")],
        );
        let proposal = propose(&orders, false);
        assert_eq!(
            (proposal.mode, proposal.cursor.as_deref()),
            ("merge", Some("updated_at"))
        );
        // A text `updated_at` is no cursor.
        let odd = table(
            "orders",
            &["id"],
            &[("id", "bigint"), ("updated_at", "text")],
        );
        assert_eq!(propose(&odd, false).mode, "replace");
    }

    #[test]
    fn an_append_only_table_with_a_growing_key_proposes_incremental() {
        let events = table(
            "page_events",
            &["id"],
            &[("id", "bigint"), ("at", "timestamptz")],
        );
        let proposal = propose(&events, false);
        assert_eq!(
            (proposal.mode, proposal.cursor.as_deref()),
            ("incremental", Some("id"))
        );
        // The same shape under an ordinary name: replace, with the hint.
        let customers = table("customers", &["id"], &[("id", "integer"), ("name", "text")]);
        let proposal = propose(&customers, false);
        assert_eq!(proposal.mode, "replace");
        assert!(
            proposal.reason.contains("cursor: id"),
            "{}",
            proposal.reason
        );
        // A text key does not grow.
        let logs = table("logs", &["id"], &[("id", "uuid")]);
        assert_eq!(propose(&logs, false).mode, "replace");
    }

    #[test]
    fn views_and_keyless_tables_propose_replace() {
        let view = table(
            "active",
            &[],
            &[("id", "bigint"), ("updated_at", "timestamp")],
        );
        assert_eq!(propose(&view, true).mode, "replace");
        let keyless = table("t", &[], &[("updated_at", "timestamp")]);
        assert_eq!(
            propose(&keyless, false).reason,
            "no primary key: copied in full"
        );
    }

    #[test]
    fn names_and_urls_for_the_manifest() {
        assert_eq!(
            source_name("postgres://u@h/Shop-DB?sslmode=x", SourceKind::Postgres),
            "shop_db"
        );
        assert_eq!(
            source_name("sqlite:///tmp/app.db", SourceKind::Sqlite),
            "app"
        );
        assert_eq!(
            source_name("mysql://root@h:3306/", SourceKind::Mysql),
            "mysql"
        );
        assert_eq!(
            url_for_manifest("postgres://me:s3cret@db/shop", "SHOP_PASSWORD"),
            "postgres://me:${SHOP_PASSWORD}@db/shop"
        );
        assert_eq!(kind_of("mariadb://x/y"), Some(SourceKind::Mysql));
        assert_eq!(kind_of("oracle://x"), None);
    }
}
