//! Table metadata the plan keeps in line with the manifest and the source: the table's
//! description, its columns' descriptions and its clustering. Each is changed in place, after
//! the write, with one `tables.patch` (free: no query, no bytes billed;
//! <https://cloud.google.com/bigquery/docs/managing-tables#updating_a_tables_description>,
//! <https://cloud.google.com/bigquery/docs/creating-clustered-tables#modifying-cluster-spec>).
//! Pure.
//!
//! A description the source does not give (no comment, no manifest `description`) leaves the
//! target's as it is: `None` is never a change, so a table without comments never shows one.

use serde::{Deserialize, Serialize};

use crate::schema::WarehouseTable;

/// One in-place metadata change of an existing target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum MetadataChange {
    /// The table's description.
    Description {
        /// As it is (`None`: no description).
        from: Option<String>,
        /// As it will be.
        to: String,
    },
    /// A column's description (also of a column this run adds: `ADD COLUMN` sets none).
    ColumnDescription {
        /// The BigQuery column.
        column: String,
        /// As it is.
        from: Option<String>,
        /// As it will be.
        to: String,
    },
    /// The clustering columns. BigQuery clusters data written from then on by the new columns;
    /// the rows already stored are not re-clustered.
    Clustering {
        /// As it is (empty: not clustered).
        from: Vec<String>,
        /// As it will be.
        to: Vec<String>,
    },
}

/// The metadata changes that make `existing` look like `desired`: descriptions the desired
/// table has and the target lacks or words otherwise, and a clustering the manifest asks for
/// that differs from the target's.
pub fn metadata_changes(
    desired: &WarehouseTable,
    existing: &WarehouseTable,
) -> Vec<MetadataChange> {
    let mut changes = Vec::new();
    if let Some(to) = desired.description.as_ref().filter(|text| !text.is_empty())
        && existing.description.as_ref() != Some(to)
    {
        changes.push(MetadataChange::Description {
            from: existing.description.clone(),
            to: to.clone(),
        });
    }
    for field in &desired.fields {
        let Some(to) = field.description.as_ref().filter(|text| !text.is_empty()) else {
            continue;
        };
        let current = existing.field(&field.name);
        let from = current.and_then(|current| current.description.clone());
        if from.as_ref() != Some(to) {
            changes.push(MetadataChange::ColumnDescription {
                column: current.map_or_else(|| field.name.clone(), |current| current.name.clone()),
                from,
                to: to.clone(),
            });
        }
    }
    if !desired.clustering.is_empty() && desired.clustering != existing.clustering {
        changes.push(MetadataChange::Clustering {
            from: existing.clustering.clone(),
            to: desired.clustering.clone(),
        });
    }
    changes
}

/// At most this many characters of a description in a plan line.
const SHOWN_CHARS: usize = 60;

/// A description as one short plan line: quoted, line breaks shown as `⏎`, cut at
/// 60 characters with `…`; `(none)` for no description.
pub fn shown(description: Option<&str>) -> String {
    let Some(text) = description else {
        return "(none)".to_string();
    };
    let flat: String = text
        .trim()
        .chars()
        .map(|c| if c == '\n' { '⏎' } else { c })
        .filter(|c| *c != '\r')
        .collect();
    let mut cut: String = flat.chars().take(SHOWN_CHARS).collect();
    if flat.chars().count() > SHOWN_CHARS {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// `[a, b]`, or `none`.
pub fn columns_text(columns: &[String]) -> String {
    if columns.is_empty() {
        "none".to_string()
    } else {
        format!("[{}]", columns.join(", "))
    }
}

impl MetadataChange {
    /// One line of the text and Markdown plans.
    pub fn line(&self) -> String {
        match self {
            Self::Description { from, to } => format!(
                "~ description {} -> {}",
                shown(from.as_deref()),
                shown(Some(to))
            ),
            Self::ColumnDescription { column, from, to } => format!(
                "~ column {column} description {} -> {}",
                shown(from.as_deref()),
                shown(Some(to))
            ),
            Self::Clustering { from, to } => format!(
                "~ clustering {} -> {} (in place; data written from now on is clustered by the new columns, stored rows are not re-clustered)",
                columns_text(from),
                columns_text(to)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{BqType, FieldMode, WarehouseField};

    fn table(description: Option<&str>, body: Option<&str>) -> WarehouseTable {
        WarehouseTable {
            name: "t".into(),
            fields: vec![
                WarehouseField::new("id", BqType::Int64, FieldMode::Required),
                WarehouseField {
                    description: body.map(str::to_string),
                    ..WarehouseField::new("body", BqType::String, FieldMode::Nullable)
                },
            ],
            partitioning: None,
            clustering: Vec::new(),
            description: description.map(str::to_string),
        }
    }

    #[test]
    fn no_description_at_the_source_is_never_a_change() {
        // Neither side has one (the source has no comment): no change, whatever the target.
        assert!(metadata_changes(&table(None, None), &table(None, None)).is_empty());
        assert!(metadata_changes(&table(None, None), &table(Some("kept"), Some("too"))).is_empty());
        // An empty comment is no description either.
        assert!(metadata_changes(&table(Some(""), Some("")), &table(None, None)).is_empty());
        // The same text is no change.
        let same = table(Some("Orders"), Some("What was said"));
        assert!(metadata_changes(&same, &same.clone()).is_empty());
    }

    #[test]
    fn new_and_changed_descriptions_and_clustering_are_changes() {
        let mut desired = table(Some("Orders placed"), Some("What the customer wrote"));
        desired.clustering = vec!["id".into()];
        desired.fields.push(WarehouseField {
            description: Some("added".into()),
            ..WarehouseField::new("note", BqType::String, FieldMode::Nullable)
        });
        let mut existing = table(Some("Orders"), None);
        existing.fields[1].name = "BODY".into();
        assert_eq!(
            metadata_changes(&desired, &existing),
            [
                MetadataChange::Description {
                    from: Some("Orders".into()),
                    to: "Orders placed".into()
                },
                MetadataChange::ColumnDescription {
                    column: "BODY".into(),
                    from: None,
                    to: "What the customer wrote".into()
                },
                MetadataChange::ColumnDescription {
                    column: "note".into(),
                    from: None,
                    to: "added".into()
                },
                MetadataChange::Clustering {
                    from: vec![],
                    to: vec!["id".into()]
                },
            ]
        );
        // A manifest without `cluster_by` leaves the target's clustering alone.
        existing.clustering = vec!["body".into()];
        desired.clustering.clear();
        assert!(
            !metadata_changes(&desired, &existing)
                .iter()
                .any(|change| matches!(change, MetadataChange::Clustering { .. }))
        );
    }

    #[test]
    fn long_and_multi_line_descriptions_are_shown_on_one_short_line() {
        assert_eq!(shown(None), "(none)");
        assert_eq!(shown(Some("Orders \"open\"")), r#""Orders \"open\"""#);
        assert_eq!(shown(Some("line one\r\nline two")), "\"line one⏎line two\"");
        let long = "x".repeat(100);
        assert_eq!(shown(Some(&long)), format!("\"{}…\"", "x".repeat(60)));
    }
}
