//! Desired vs existing BigQuery schema: what changes, and whether BigQuery can make the change
//! in place. Pure.

use serde::{Deserialize, Serialize};

use crate::schema::{BqType, FieldMode, WarehouseField, WarehouseTable};

/// One difference between the desired and the existing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum FieldChange {
    /// A new NULLABLE (or REPEATED) column, appended.
    Add {
        /// The new column.
        field: WarehouseField,
    },
    /// REQUIRED → NULLABLE.
    Relax {
        /// The column.
        name: String,
    },
    /// A coercible type change done in place (`ALTER COLUMN SET DATA TYPE`).
    Widen {
        /// The column as it is.
        from: WarehouseField,
        /// The column as it will be.
        to: WarehouseField,
    },
    /// A change BigQuery cannot make in place: the table must be recreated.
    Incompatible {
        /// The column as it is.
        from: WarehouseField,
        /// The column as the source needs it.
        to: WarehouseField,
        /// Why.
        reason: String,
    },
    /// A column the source no longer has: kept in BigQuery (NULL in new rows).
    Dropped {
        /// The column.
        name: String,
    },
}

impl FieldChange {
    /// Whether applying it needs a recreate.
    pub fn is_incompatible(&self) -> bool {
        matches!(self, Self::Incompatible { .. })
    }
}

fn numeric_rank(bq_type: BqType) -> Option<u8> {
    match bq_type {
        BqType::Int64 => Some(0),
        BqType::Numeric => Some(1),
        BqType::BigNumeric => Some(2),
        BqType::Float64 => Some(3),
        _ => None,
    }
}

/// How an existing column relates to the column the source now needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFit {
    /// Same type (parameters included), or the existing type already holds every value.
    Fits,
    /// BigQuery can widen the existing type in place.
    Widen,
    /// Not coercible.
    Incompatible,
}

/// Whether values of `desired` can be loaded into a column of type `existing`.
pub fn type_fit(existing: &WarehouseField, desired: &WarehouseField) -> TypeFit {
    if existing.bq_type == desired.bq_type {
        let existing_params = (existing.precision, existing.scale, existing.max_length);
        let desired_params = (desired.precision, desired.scale, desired.max_length);
        if existing_params == desired_params || existing_params == (None, None, None) {
            return TypeFit::Fits;
        }
        // Parameterised types widen when every bound grows.
        if desired_params == (None, None, None) {
            return TypeFit::Widen;
        }
        let integer_digits = |field: &WarehouseField| {
            field
                .precision
                .map(|p| p.saturating_sub(field.scale.unwrap_or(0)))
        };
        let grows = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => b >= a,
            (None, Some(_)) => false,
            _ => true,
        };
        let wider = grows(existing.scale.map(u64::from), desired.scale.map(u64::from))
            && grows(
                integer_digits(existing).map(u64::from),
                integer_digits(desired).map(u64::from),
            )
            && grows(existing.max_length, desired.max_length);
        if wider {
            // Existing bounds are the tighter ones: widening is needed.
            return if existing_params == desired_params {
                TypeFit::Fits
            } else {
                TypeFit::Widen
            };
        }
        let narrower = grows(desired.scale.map(u64::from), existing.scale.map(u64::from))
            && grows(
                integer_digits(desired).map(u64::from),
                integer_digits(existing).map(u64::from),
            )
            && grows(desired.max_length, existing.max_length);
        return if narrower {
            TypeFit::Fits
        } else {
            TypeFit::Incompatible
        };
    }
    match (
        numeric_rank(existing.bq_type),
        numeric_rank(desired.bq_type),
    ) {
        // INT64 → NUMERIC → BIGNUMERIC → FLOAT64 are BigQuery's coercions.
        (Some(from), Some(to)) if to > from => {
            // NUMERIC/BIGNUMERIC → FLOAT64 would round: never chosen silently.
            if desired.bq_type == BqType::Float64 && from > 0 {
                TypeFit::Incompatible
            } else {
                TypeFit::Widen
            }
        }
        // A narrower source type loads into the wider column.
        (Some(from), Some(to)) if to < from && !(from == 3 && to > 0) => TypeFit::Fits,
        _ => TypeFit::Incompatible,
    }
}

/// Compares the desired table with the existing one.
pub fn diff_table(desired: &WarehouseTable, existing: &WarehouseTable) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    for field in &desired.fields {
        let Some(current) = existing.field(&field.name) else {
            let mut field = field.clone();
            // BigQuery only adds NULLABLE or REPEATED columns.
            if field.mode == FieldMode::Required {
                field.mode = FieldMode::Nullable;
            }
            changes.push(FieldChange::Add { field });
            continue;
        };
        let repeated_mismatch =
            (current.mode == FieldMode::Repeated) != (field.mode == FieldMode::Repeated);
        if repeated_mismatch {
            changes.push(FieldChange::Incompatible {
                from: current.clone(),
                to: field.clone(),
                reason: "REPEATED cannot be added to or removed from a column".into(),
            });
            continue;
        }
        match type_fit(current, field) {
            TypeFit::Fits => {}
            TypeFit::Widen => changes.push(FieldChange::Widen {
                from: current.clone(),
                to: WarehouseField {
                    mode: current.mode,
                    name: current.name.clone(),
                    description: current.description.clone(),
                    ..field.clone()
                },
            }),
            TypeFit::Incompatible => {
                changes.push(FieldChange::Incompatible {
                    from: current.clone(),
                    to: field.clone(),
                    reason: format!(
                        "{} cannot become {} in place",
                        current.type_text(),
                        field.type_text()
                    ),
                });
                continue;
            }
        }
        if current.mode == FieldMode::Required && field.mode == FieldMode::Nullable {
            changes.push(FieldChange::Relax {
                name: current.name.clone(),
            });
        }
    }
    for current in &existing.fields {
        if desired.field(&current.name).is_none() {
            changes.push(FieldChange::Dropped {
                name: current.name.clone(),
            });
            // New rows carry no value for it: it must accept NULL.
            if current.mode == FieldMode::Required {
                changes.push(FieldChange::Relax {
                    name: current.name.clone(),
                });
            }
        }
    }
    changes
}

/// The table as it will be after the in-place changes: existing columns in their order (widened,
/// relaxed), then added ones; the descriptions and clustering the manifest and the source ask
/// for (others kept). The staging load uses this schema with the target's current clustering.
pub fn evolved_table(
    desired: &WarehouseTable,
    existing: &WarehouseTable,
    changes: &[FieldChange],
) -> WarehouseTable {
    let mut fields = existing.fields.clone();
    for change in changes {
        match change {
            FieldChange::Add { field } => fields.push(field.clone()),
            FieldChange::Relax { name } => {
                if let Some(field) = fields
                    .iter_mut()
                    .find(|field| field.name.eq_ignore_ascii_case(name))
                {
                    field.mode = FieldMode::Nullable;
                }
            }
            FieldChange::Widen { to, .. } => {
                if let Some(field) = fields
                    .iter_mut()
                    .find(|field| field.name.eq_ignore_ascii_case(&to.name))
                {
                    let mode = field.mode;
                    *field = to.clone();
                    field.mode = mode;
                }
            }
            FieldChange::Incompatible { .. } | FieldChange::Dropped { .. } => {}
        }
    }
    // Descriptions the source (or the manifest) gives win; the others stay as they are.
    for field in &mut fields {
        if let Some(description) = desired
            .field(&field.name)
            .and_then(|wanted| wanted.description.clone())
        {
            field.description = Some(description);
        }
    }
    WarehouseTable {
        name: existing.name.clone(),
        fields,
        partitioning: existing
            .partitioning
            .clone()
            .or_else(|| desired.partitioning.clone()),
        // A clustering change is made in place after the write (`Step::PatchTable`).
        clustering: if desired.clustering.is_empty() {
            existing.clustering.clone()
        } else {
            desired.clustering.clone()
        },
        description: desired
            .description
            .clone()
            .or_else(|| existing.description.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, bq_type: BqType, mode: FieldMode) -> WarehouseField {
        WarehouseField::new(name, bq_type, mode)
    }

    fn numeric(name: &str, precision: u32, scale: u32) -> WarehouseField {
        WarehouseField {
            precision: Some(precision),
            scale: Some(scale),
            ..field(name, BqType::Numeric, FieldMode::Nullable)
        }
    }

    fn table(fields: Vec<WarehouseField>) -> WarehouseTable {
        WarehouseTable {
            name: "t".into(),
            fields,
            partitioning: None,
            clustering: vec![],
            description: None,
        }
    }

    #[test]
    fn compatibility_table() {
        use BqType::*;
        let cases = [
            (Int64, Int64, TypeFit::Fits),
            (Int64, Numeric, TypeFit::Widen),
            (Int64, BigNumeric, TypeFit::Widen),
            (Int64, Float64, TypeFit::Widen),
            (Numeric, BigNumeric, TypeFit::Widen),
            (Numeric, Float64, TypeFit::Incompatible),
            (Numeric, Int64, TypeFit::Fits),
            (BigNumeric, Numeric, TypeFit::Fits),
            (Float64, Int64, TypeFit::Fits),
            (Float64, Numeric, TypeFit::Incompatible),
            (String, Int64, TypeFit::Incompatible),
            (Int64, String, TypeFit::Incompatible),
            (Datetime, Timestamp, TypeFit::Incompatible),
            (Json, String, TypeFit::Incompatible),
        ];
        for (existing, desired, expected) in cases {
            let fit = type_fit(
                &field("c", existing, FieldMode::Nullable),
                &field("c", desired, FieldMode::Nullable),
            );
            assert_eq!(fit, expected, "{existing:?} -> {desired:?}");
        }
        assert_eq!(
            type_fit(&numeric("c", 10, 2), &numeric("c", 12, 4)),
            TypeFit::Widen
        );
        assert_eq!(
            type_fit(&numeric("c", 12, 4), &numeric("c", 10, 2)),
            TypeFit::Fits
        );
        assert_eq!(
            type_fit(&numeric("c", 10, 2), &numeric("c", 10, 4)),
            TypeFit::Incompatible
        );
        assert_eq!(
            type_fit(
                &numeric("c", 10, 2),
                &field("c", BqType::Numeric, FieldMode::Nullable)
            ),
            TypeFit::Widen
        );
    }

    #[test]
    fn diff_adds_relaxes_widens_and_keeps_dropped_columns() {
        let existing = table(vec![
            field("id", BqType::Int64, FieldMode::Required),
            field("qty", BqType::Int64, FieldMode::Nullable),
            field("legacy", BqType::String, FieldMode::Required),
            field("name", BqType::String, FieldMode::Required),
        ]);
        let desired = table(vec![
            field("id", BqType::Int64, FieldMode::Required),
            field("qty", BqType::Numeric, FieldMode::Nullable),
            field("name", BqType::String, FieldMode::Nullable),
            field("note", BqType::String, FieldMode::Required),
        ]);
        let changes = diff_table(&desired, &existing);
        assert_eq!(
            changes,
            vec![
                FieldChange::Widen {
                    from: existing.fields[1].clone(),
                    to: field("qty", BqType::Numeric, FieldMode::Nullable)
                },
                FieldChange::Relax {
                    name: "name".into()
                },
                FieldChange::Add {
                    field: field("note", BqType::String, FieldMode::Nullable)
                },
                FieldChange::Dropped {
                    name: "legacy".into()
                },
                FieldChange::Relax {
                    name: "legacy".into()
                },
            ]
        );
        let evolved = evolved_table(&desired, &existing, &changes);
        let lines: Vec<String> = evolved
            .fields
            .iter()
            .map(WarehouseField::diff_line)
            .collect();
        assert_eq!(
            lines,
            [
                "id INT64 REQUIRED",
                "qty NUMERIC NULLABLE",
                "legacy STRING NULLABLE",
                "name STRING NULLABLE",
                "note STRING NULLABLE"
            ]
        );
    }

    #[test]
    fn identical_tables_have_no_changes_and_nullable_to_required_is_not_a_change() {
        let existing = table(vec![field("id", BqType::Int64, FieldMode::Nullable)]);
        let desired = table(vec![field("ID", BqType::Int64, FieldMode::Required)]);
        assert!(diff_table(&desired, &existing).is_empty());
    }

    #[test]
    fn type_and_repeated_changes_are_incompatible() {
        let existing = table(vec![
            field("a", BqType::String, FieldMode::Nullable),
            field("b", BqType::Int64, FieldMode::Nullable),
        ]);
        let desired = table(vec![
            field("a", BqType::Int64, FieldMode::Nullable),
            field("b", BqType::Int64, FieldMode::Repeated),
        ]);
        let changes = diff_table(&desired, &existing);
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(FieldChange::is_incompatible));
    }
}
