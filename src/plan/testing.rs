//! Test builders shared by the plan's unit tests.

use crate::manifest::raw::WriteMode;
use crate::schema::{BqType, FieldMode, SourceTable, WarehouseField, WarehouseTable};

pub(crate) fn spec(key: &str, mode: WriteMode) -> crate::manifest::TableSpec {
    spec_with(
        key,
        &format!("mode: {}, primary_key: [id], cursor: id", mode.as_str()),
    )
}

/// A table spec from its manifest entry's settings, e.g. `mode: merge, deletes: hard`.
pub(crate) fn spec_with(key: &str, settings: &str) -> crate::manifest::TableSpec {
    let text = format!(
        "bigquery: {{project: demo-project, dataset: ds}}\nsources:\n  shop:\n    type: postgres\n    url: postgres://u@h/db\n    tables:\n      {key}: {{{settings}}}\n"
    );
    let loaded = crate::manifest::load(&crate::manifest::ManifestInput {
        name: None,
        text: Some((text, crate::manifest::Format::Yaml)),
        env: crate::manifest::Env::new(),
    })
    .unwrap();
    loaded.manifest.tables[0].clone()
}

pub(crate) fn source(rows: u64) -> SourceTable {
    SourceTable {
        qualifier: Some("public".into()),
        name: "t".into(),
        columns: vec![],
        primary_key: vec!["id".into()],
        unique_keys: Vec::new(),
        estimated_rows: Some(rows),
        comment: None,
        query: None,
    }
}

pub(crate) fn table(name: &str, fields: &[(&str, BqType, FieldMode)]) -> WarehouseTable {
    WarehouseTable {
        name: name.into(),
        fields: fields
            .iter()
            .map(|(n, t, m)| WarehouseField::new(*n, *t, *m))
            .collect(),
        partitioning: None,
        clustering: vec![],
        description: None,
    }
}

/// The mapping of a table whose source columns are named like its fields.
pub(crate) fn mapped(
    table: WarehouseTable,
    warnings: Vec<crate::diagnostic::Diagnostic>,
) -> Result<crate::mapping::TableMapping, Vec<crate::diagnostic::Diagnostic>> {
    let columns = table
        .fields
        .iter()
        .enumerate()
        .map(|(index, field)| crate::schema::ColumnMapping {
            source: crate::schema::SourceColumn {
                name: field.name.clone(),
                ordinal: u32::try_from(index + 1).unwrap(),
                data_type: "bigint".into(),
                column_type: "bigint".into(),
                nullable: true,
                precision: None,
                scale: None,
                max_length: None,
                primary_key: false,
                comment: None,
                is_json: false,
            },
            target: field.name.clone(),
            field: field.clone(),
            codec: crate::schema::Codec::Int,
            read_as: crate::schema::ReadAs::Native,
            lossy: None,
        })
        .collect();
    Ok(crate::mapping::TableMapping {
        table,
        columns,
        warnings,
        policies: crate::schema::TypePolicies::default(),
        max_parse_failures: Some(100),
        key_columns: vec!["id".into()],
        batch_size: 10_000,
        lineage: false,
    })
}
