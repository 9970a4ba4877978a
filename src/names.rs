//! BigQuery naming rules, checked in one place: projects, datasets, tables and columns, plus the
//! column-name sanitizer used when a source column name is not a valid BigQuery name.

/// Why a name is not valid, or `None`.
pub fn project_problem(name: &str) -> Option<String> {
    // Domain-scoped projects look like `example.com:my-project`.
    let id = name.rsplit_once(':').map_or(name, |(_, id)| id);
    let ok = (6..=30).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (!ok).then(|| {
        format!("`{name}` is not a valid project ID: 6-30 lowercase letters, digits and hyphens, starting with a letter")
    })
}

/// Why a dataset name is not valid, or `None`.
pub fn dataset_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (!ok).then(|| format!("`{name}` is not a valid dataset name: letters, digits and underscores only, at most 1024"))
}

/// Why a table name is not valid, or `None`. BigQuery allows Unicode letters, marks, numbers,
/// connectors, dashes and spaces, up to 1024 UTF-8 bytes.
pub fn table_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a table name cannot be empty".into());
    }
    if name.len() > 1024 {
        return Some(format!("`{name}` is longer than 1024 bytes"));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == ' '))
    {
        return Some(format!(
            "`{name}` is not a valid BigQuery table name: `{bad}` is not allowed (letters, digits, `_`, `-` and spaces)"
        ));
    }
    None
}

/// The label on every table and job datasync makes.
pub const MANAGED_BY_LABEL: (&str, &str) = ("managed-by", "datasync");
/// The label key naming the run a job belongs to.
pub const RUN_LABEL_KEY: &str = "datasync-run";
/// The label key naming the target table a job is for.
pub const TABLE_LABEL_KEY: &str = "datasync-table";
/// The label keys datasync sets itself, which `bigquery.labels` may not use.
pub const DATASYNC_LABEL_KEYS: [&str; 3] = [MANAGED_BY_LABEL.0, RUN_LABEL_KEY, TABLE_LABEL_KEY];

/// The longest label key or value BigQuery accepts, in characters.
pub const LABEL_MAX_CHARS: usize = 63;

/// Whether `c` may appear in a label key or value: a lowercase letter (international ones too),
/// a digit, `_` or `-` (<https://cloud.google.com/bigquery/docs/labels-intro#requirements>).
fn label_char(c: char) -> bool {
    c.is_lowercase() || c.is_numeric() || c == '_' || c == '-'
}

/// Why `key` is not a valid label key, or `None`: 1–63 characters, lowercase letters, digits,
/// `_` and `-`, starting with a lowercase letter.
pub fn label_key_problem(key: &str) -> Option<String> {
    let count = key.chars().count();
    let ok = (1..=LABEL_MAX_CHARS).contains(&count)
        && key.starts_with(char::is_lowercase)
        && key.chars().all(label_char);
    (!ok).then(|| {
        format!("`{key}` is not a valid label key: 1-63 lowercase letters, digits, `_` and `-`, starting with a lowercase letter")
    })
}

/// Why `value` is not a valid label value, or `None`: at most 63 lowercase letters, digits, `_`
/// and `-` (it may be empty).
pub fn label_value_problem(value: &str) -> Option<String> {
    let ok = value.chars().count() <= LABEL_MAX_CHARS && value.chars().all(label_char);
    (!ok).then(|| {
        format!("`{value}` is not a valid label value: at most 63 lowercase letters, digits, `_` and `-`")
    })
}

/// A valid label value for `text` (a run id, a table name): lowercased, every other character
/// `_`; longer than 63 characters, cut and ended by 8 hex digits of its hash, so two long
/// names stay apart.
pub fn sanitize_label_value(text: &str) -> String {
    let clean: String = text
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.chars().count() <= LABEL_MAX_CHARS {
        return clean;
    }
    // FNV-1a: stable across builds, no dependency.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let head: String = clean.chars().take(LABEL_MAX_CHARS - 9).collect();
    format!("{head}-{:08x}", hash as u32)
}

/// Prefixes BigQuery reserves for column names.
const RESERVED_COLUMN_PREFIXES: &[&str] = &[
    "_table_",
    "_file_",
    "_partition",
    "_row_timestamp",
    "__root__",
    "_colidentifier",
];

/// Why a column name is not a valid BigQuery column name, or `None`.
pub fn column_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 300
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Some(format!(
            "`{name}` is not a valid BigQuery column name: letters, digits and `_`, starting with a letter or `_`, at most 300"
        ));
    }
    let lower = name.to_ascii_lowercase();
    RESERVED_COLUMN_PREFIXES
        .iter()
        .find(|prefix| lower.starts_with(*prefix))
        .map(|prefix| format!("`{name}` starts with the reserved prefix `{prefix}`"))
}

/// A valid BigQuery column name for `name`: every other character becomes `_`, a leading digit
/// gets a `_` in front, reserved prefixes get `x` in front, and the result is cut at 300 bytes.
pub fn sanitize_column(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    let lower = out.to_ascii_lowercase();
    if RESERVED_COLUMN_PREFIXES
        .iter()
        .any(|prefix| lower.starts_with(prefix))
    {
        out.insert(0, 'x');
    }
    out.truncate(300);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects() {
        assert_eq!(project_problem("my-project-1"), None);
        assert_eq!(project_problem("example.com:my-project"), None);
        assert!(project_problem("Bad_Project").is_some());
        assert!(project_problem("abc").is_some());
        assert!(project_problem("trailing-").is_some());
    }

    #[test]
    fn datasets_tables_columns() {
        assert_eq!(dataset_problem("analytics_2"), None);
        assert!(dataset_problem("ana-lytics").is_some());
        assert_eq!(table_problem("orders"), None);
        assert_eq!(table_problem("public__orders"), None);
        assert_eq!(table_problem("2024 sales-ünï"), None);
        assert!(table_problem("a.b").is_some());
        assert_eq!(column_problem("_id"), None);
        assert!(column_problem("1col").is_some());
        assert!(column_problem("_PARTITIONTIME").is_some());
        assert!(column_problem("my col").is_some());
    }

    #[test]
    fn labels_follow_bigquerys_rules() {
        for key in ["team", "cost-center", "env_2", "équipe"] {
            assert_eq!(label_key_problem(key), None, "{key}");
        }
        for key in ["", "Team", "2team", "-x", "a.b", "a b", &"k".repeat(64)] {
            assert!(label_key_problem(key).is_some(), "{key}");
        }
        for value in ["", "data", "1234", "eu-west_1"] {
            assert_eq!(label_value_problem(value), None, "{value}");
        }
        for value in ["Data", "a/b", &"v".repeat(64)] {
            assert!(label_value_problem(value).is_some(), "{value}");
        }
        assert_eq!(
            sanitize_label_value("1700000000_123456"),
            "1700000000_123456"
        );
        assert_eq!(
            sanitize_label_value("Public__Orders 2024"),
            "public__orders_2024"
        );
        let long = sanitize_label_value(&"Very_Long_Table_Name_".repeat(5));
        assert_eq!(long.chars().count(), 63);
        assert_eq!(label_value_problem(&long), None);
        assert_ne!(
            long,
            sanitize_label_value(&"Very_Long_Table_Name_".repeat(6))
        );
    }

    #[test]
    fn sanitizing() {
        assert_eq!(sanitize_column("order-id"), "order_id");
        assert_eq!(sanitize_column("1st"), "_1st");
        assert_eq!(sanitize_column("Prix €"), "Prix__");
        assert_eq!(sanitize_column("_partition_x"), "x_partition_x");
        assert_eq!(column_problem(&sanitize_column("weird name!")), None);
    }
}
