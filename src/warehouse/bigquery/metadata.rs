//! In-place metadata changes of a target: descriptions and clustering with one tables.patch.
//!
//! - Table description: `description`
//!   (<https://cloud.google.com/bigquery/docs/managing-tables#updating_a_tables_description>).
//! - Column descriptions: `schema.fields[].description`. tables.patch replaces the whole
//!   `schema`, so the schema sent is the one tables.get returned, untouched but for the
//!   descriptions (policy tags, default values, collations and nested fields stay), under
//!   `If-Match` with that answer's etag: a change made meanwhile fails the patch (HTTP 412)
//!   instead of being overwritten ("the patch method only replaces fields that are provided in
//!   the submitted table resource": <https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/patch>).
//! - Clustering: `clustering.fields`; BigQuery clusters data written from then on by the new
//!   columns (<https://cloud.google.com/bigquery/docs/creating-clustered-tables#modifying-cluster-spec>).
//!
//! None of these is a job: nothing is billed, and it is not one of the 1,500 table operations
//! a day (it counts against the 5 metadata updates per 10 s per table).

use reqwest::Method;
use serde_json::{Value, json};

use super::BigQuery;
use crate::warehouse::{TableUpdate, WarehouseError};

impl BigQuery {
    /// [`crate::warehouse::Warehouse::update_table`].
    pub(super) async fn patch_table_metadata(
        &self,
        name: &str,
        update: &TableUpdate,
    ) -> Result<(), WarehouseError> {
        if update.is_empty() {
            return Ok(());
        }
        let context = format!("update the metadata of table {}.{name}", self.dataset);
        let url = self.api_url(&["datasets", &self.dataset, "tables", name])?;
        let mut body = json!({});
        let mut etag = None;
        if !update.column_descriptions.is_empty() {
            let current: Value = self
                .send_json(&context, Method::GET, url.clone(), None)
                .await?;
            let mut schema = current.get("schema").cloned().unwrap_or(Value::Null);
            set_descriptions(&context, &mut schema, &update.column_descriptions)?;
            body["schema"] = schema;
            etag = current
                .get("etag")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        if let Some(description) = &update.description {
            body["description"] = json!(description);
        }
        if let Some(clustering) = &update.clustering {
            body["clustering"] = json!({ "fields": clustering });
        }
        self.send_if_match(&context, Method::PATCH, url, Some(&body), etag.as_deref())
            .await
            .map(drop)
    }
}

/// Sets the description of each named top-level column of a tables.get `schema` (names
/// compared ignoring case, as BigQuery does); a column it lacks is an error.
fn set_descriptions(
    context: &str,
    schema: &mut Value,
    descriptions: &[(String, String)],
) -> Result<(), WarehouseError> {
    let fields = schema
        .get_mut("fields")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| WarehouseError::Protocol {
            context: context.to_string(),
            message: "tables.get returned no schema fields".into(),
        })?;
    for (column, description) in descriptions {
        let field = fields
            .iter_mut()
            .find(|field| {
                field
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| name.eq_ignore_ascii_case(column))
            })
            .ok_or_else(|| {
                WarehouseError::Invalid(format!("{context}: the table has no column `{column}`"))
            })?;
        field["description"] = json!(description);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_descriptions_of_the_schema_change() {
        let mut schema = json!({"fields": [
            {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
            {"name": "Email", "type": "STRING", "policyTags": {"names": ["projects/p/taxonomies/1/policyTags/2"]}},
            {"name": "r", "type": "RECORD", "fields": [{"name": "x", "type": "STRING"}]}
        ]});
        set_descriptions(
            "t",
            &mut schema,
            &[("email".into(), "Where to write".into())],
        )
        .unwrap();
        assert_eq!(
            schema,
            json!({"fields": [
                {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
                {"name": "Email", "type": "STRING", "policyTags": {"names": ["projects/p/taxonomies/1/policyTags/2"]}, "description": "Where to write"},
                {"name": "r", "type": "RECORD", "fields": [{"name": "x", "type": "STRING"}]}
            ]})
        );
        let error = set_descriptions("t", &mut schema, &[("gone".into(), "x".into())]).unwrap_err();
        assert!(error.to_string().contains("no column `gone`"), "{error}");
    }
}
