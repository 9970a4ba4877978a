//! Our own serde structs for the BigQuery REST resources we use. They carry what the crate's
//! models drop (precision, scale, maxLength) and tolerate what the emulator omits.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::super::{ExistingTable, QueryColumn, WarehouseError};
use crate::schema::{BqType, FieldMode, TimePartitioning, WarehouseField, WarehouseTable};

/// int64 values arrive as JSON strings (or, from some servers, numbers).
fn de_opt_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(match value {
        Some(Value::String(text)) => text.trim().parse().ok(),
        Some(Value::Number(number)) => number.as_u64(),
        _ => None,
    })
}

fn ser_opt_u64<S: Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_str(&value.to_string()),
        None => serializer.serialize_none(),
    }
}

/// The part of a dataset resource datasync reads.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DatasetResource {
    #[serde(default)]
    pub location: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TableReference {
    pub project_id: String,
    pub dataset_id: String,
    pub table_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FieldResource {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldResource>>,
    #[serde(
        default,
        deserialize_with = "de_opt_u64",
        serialize_with = "ser_opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub precision: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de_opt_u64",
        serialize_with = "ser_opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub scale: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de_opt_u64",
        serialize_with = "ser_opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub(crate) struct SchemaResource {
    #[serde(default)]
    pub fields: Vec<FieldResource>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TimePartitioningResource {
    #[serde(rename = "type")]
    pub granularity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub(crate) struct ClusteringResource {
    #[serde(default)]
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TableResource {
    pub table_reference: TableReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_partitioning: Option<TimePartitioningResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustering: Option<ClusteringResource>,
    #[serde(default, deserialize_with = "de_opt_u64", skip_serializing)]
    pub num_rows: Option<u64>,
    #[serde(default, skip_serializing)]
    pub etag: Option<String>,
    #[serde(default, skip_serializing)]
    pub last_modified_time: Option<String>,
    /// `TABLE`, `VIEW`, `EXTERNAL`, `MATERIALIZED_VIEW`, `SNAPSHOT`.
    #[serde(default, rename = "type", skip_serializing)]
    pub table_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Milliseconds since the epoch, as a string (the emulator ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
    /// Labels (read back; `create_table` sets its own in the request body).
    #[serde(default, skip_serializing)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// One entry of tables.list: a partial table resource with, among others, its kind and labels
/// (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/list#response-body>).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TableListEntry {
    pub table_reference: TableReference,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A tables.list page.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TableList {
    #[serde(default)]
    pub tables: Vec<TableListEntry>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

impl FieldResource {
    pub(crate) fn from_field(field: &WarehouseField) -> Self {
        Self {
            name: field.name.clone(),
            field_type: field.bq_type.as_str().to_string(),
            mode: Some(field.mode.as_str().to_string()),
            fields: None,
            precision: field.precision.map(u64::from),
            scale: field.scale.map(u64::from),
            max_length: field.max_length,
            description: field.description.clone(),
        }
    }

    pub(crate) fn to_field(&self, table: &str) -> Result<WarehouseField, WarehouseError> {
        let bq_type = BqType::parse(&self.field_type).ok_or_else(|| WarehouseError::Protocol {
            context: format!("read schema of table {table}"),
            message: format!(
                "column {} has type {}, which datasync does not support",
                self.name, self.field_type
            ),
        })?;
        let mode = match self.mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("NULLABLE") | Some("") => FieldMode::Nullable,
            Some("REQUIRED") => FieldMode::Required,
            Some("REPEATED") => FieldMode::Repeated,
            Some(other) => {
                return Err(WarehouseError::Protocol {
                    context: format!("read schema of table {table}"),
                    message: format!("column {} has unknown mode {other}", self.name),
                });
            }
        };
        let narrow = |value: Option<u64>| value.and_then(|value| u32::try_from(value).ok());
        Ok(WarehouseField {
            name: self.name.clone(),
            bq_type,
            mode,
            precision: narrow(self.precision),
            scale: narrow(self.scale),
            max_length: self.max_length,
            description: self.description.clone().filter(|text| !text.is_empty()),
        })
    }
}

pub(crate) fn schema_resource(table: &WarehouseTable) -> SchemaResource {
    SchemaResource {
        fields: table.fields.iter().map(FieldResource::from_field).collect(),
    }
}

pub(crate) fn partitioning_resource(table: &WarehouseTable) -> Option<TimePartitioningResource> {
    table
        .partitioning
        .as_ref()
        .map(|partitioning| TimePartitioningResource {
            granularity: partitioning.granularity.clone(),
            field: (partitioning.field != "_PARTITIONTIME").then(|| partitioning.field.clone()),
        })
}

pub(crate) fn clustering_resource(table: &WarehouseTable) -> Option<ClusteringResource> {
    (!table.clustering.is_empty()).then(|| ClusteringResource {
        fields: table.clustering.clone(),
    })
}

impl TableResource {
    pub(crate) fn new(project: &str, dataset: &str, table: &WarehouseTable) -> Self {
        Self {
            table_reference: TableReference {
                project_id: project.into(),
                dataset_id: dataset.into(),
                table_id: table.name.clone(),
            },
            schema: Some(schema_resource(table)),
            time_partitioning: partitioning_resource(table),
            clustering: clustering_resource(table),
            description: table.description.clone().filter(|text| !text.is_empty()),
            ..Self::default()
        }
    }

    /// Our view of the table; ingestion-time partitioning shows as field `_PARTITIONTIME`.
    /// Columns datasync can't model are left out and named in `unsupported`.
    pub(crate) fn to_existing(&self) -> Result<ExistingTable, WarehouseError> {
        let name = &self.table_reference.table_id;
        let mut fields = Vec::new();
        let mut unsupported = Vec::new();
        if let Some(kind) = self.table_type.as_deref()
            && kind != "TABLE"
        {
            unsupported.push(format!("`{name}` is a {kind}, not a table"));
        }
        for field in self.schema.iter().flat_map(|schema| &schema.fields) {
            match field.to_field(name) {
                Ok(field) => fields.push(field),
                Err(WarehouseError::Protocol { message, .. }) => unsupported.push(message),
                Err(error) => return Err(error),
            }
        }
        Ok(ExistingTable {
            table: WarehouseTable {
                name: name.clone(),
                fields,
                partitioning: self.time_partitioning.as_ref().map(|partitioning| {
                    TimePartitioning {
                        granularity: partitioning.granularity.clone(),
                        field: partitioning
                            .field
                            .clone()
                            .unwrap_or_else(|| "_PARTITIONTIME".into()),
                    }
                }),
                clustering: self
                    .clustering
                    .as_ref()
                    .map(|clustering| clustering.fields.clone())
                    .unwrap_or_default(),
                description: self.description.clone().filter(|text| !text.is_empty()),
            },
            num_rows: self.num_rows,
            etag: self.etag.clone(),
            last_modified: self.last_modified_time.clone(),
            unsupported,
            description: self.description.clone(),
            labels: self.labels.clone().unwrap_or_default(),
        })
    }
}

/// One entry of `errors` / `errorResult`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub(crate) struct ErrorProto {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
}

impl ErrorProto {
    pub(crate) fn reason(&self) -> String {
        self.reason.clone().unwrap_or_else(|| "unknown".into())
    }

    pub(crate) fn message(&self) -> String {
        match (&self.message, &self.location) {
            (Some(message), Some(location)) if !location.is_empty() && location != "query" => {
                format!("{message} (at {location})")
            }
            (Some(message), _) => message.clone(),
            (None, _) => "no message".into(),
        }
    }
}

/// The Google error envelope `{"error": {...}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
}

/// Reason and message from an error response body (best effort; bodies may be HTML or empty).
pub(crate) fn error_from_body(body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => {
            let first = envelope.error.errors.first();
            let reason = first
                .and_then(|error| error.reason.clone())
                .or(envelope.error.status.clone())
                .unwrap_or_else(|| "unknown".into());
            let message = envelope
                .error
                .message
                .or_else(|| first.and_then(|error| error.message.clone()))
                .unwrap_or_else(|| "no message".into());
            (reason, message)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let short: String = text.chars().take(300).collect();
            (
                "unknown".into(),
                if short.is_empty() {
                    "empty response body".into()
                } else {
                    short
                },
            )
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobReference {
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobStatus {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub error_result: Option<ErrorProto>,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoadStatistics {
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub output_rows: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub input_file_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobStatistics {
    #[serde(default)]
    pub load: Option<LoadStatistics>,
    #[serde(default)]
    pub query: Option<QueryJobStatistics>,
    /// `statistics.totalBytesProcessed` (a dry run's estimate, also in `query`).
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub total_bytes_processed: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueryJobStatistics {
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub num_dml_affected_rows: Option<u64>,
    #[serde(default)]
    pub dml_stats: Option<DmlStats>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub total_bytes_processed: Option<u64>,
    /// `MERGE`, `DELETE`, `UPDATE`, `SCRIPT`, …
    #[serde(default)]
    pub statement_type: Option<String>,
}

/// jobs.list: one page of jobs (the child jobs of a script with `parentJobId`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobList {
    #[serde(default)]
    pub jobs: Vec<JobResource>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobResource {
    #[serde(default)]
    pub job_reference: Option<JobReference>,
    #[serde(default)]
    pub status: Option<JobStatus>,
    #[serde(default)]
    pub statistics: Option<JobStatistics>,
}

impl JobResource {
    pub(crate) fn is_done(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|status| status.state.as_deref())
            == Some("DONE")
    }

    pub(crate) fn job_id(&self) -> Option<&str> {
        self.job_reference
            .as_ref()
            .map(|reference| reference.job_id.as_str())
            .filter(|id| !id.is_empty())
    }

    /// `Err` when the finished job has `errorResult` (or only `errors`).
    pub(crate) fn check(&self, context: &str, fallback_job_id: &str) -> Result<(), WarehouseError> {
        let Some(status) = &self.status else {
            return Ok(());
        };
        let error = status
            .error_result
            .clone()
            .or_else(|| status.errors.first().cloned());
        match error {
            None => Ok(()),
            Some(error) => {
                let main = error.message();
                let details = status
                    .errors
                    .iter()
                    .map(ErrorProto::message)
                    .filter(|message| *message != main)
                    .take(5)
                    .collect();
                Err(WarehouseError::Job {
                    context: context.to_string(),
                    job_id: self.job_id().unwrap_or(fallback_job_id).to_string(),
                    reason: error.reason(),
                    message: main,
                    details,
                })
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DmlStats {
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub inserted_row_count: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub updated_row_count: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub deleted_row_count: Option<u64>,
}

/// `jobs.query` and `jobs.getQueryResults` responses.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueryResponse {
    #[serde(default)]
    pub job_reference: Option<JobReference>,
    #[serde(default)]
    pub job_complete: Option<bool>,
    #[serde(default)]
    pub schema: Option<SchemaResource>,
    #[serde(default)]
    pub rows: Vec<Row>,
    #[serde(default)]
    pub page_token: Option<String>,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub num_dml_affected_rows: Option<u64>,
    #[serde(default)]
    pub dml_stats: Option<DmlStats>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub(crate) struct Row {
    #[serde(default)]
    pub f: Vec<Cell>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub(crate) struct Cell {
    #[serde(default)]
    pub v: Value,
}

pub(crate) fn query_columns(schema: Option<&SchemaResource>) -> Vec<QueryColumn> {
    schema
        .map(|schema| {
            schema
                .fields
                .iter()
                .map(|field| QueryColumn {
                    name: field.name.clone(),
                    bq_type: BqType::parse(&field.field_type),
                    repeated: field.mode.as_deref() == Some("REPEATED"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes one row in BigQuery's `f`/`v` form using the result schema.
pub(crate) fn decode_row(row: &Row, fields: &[FieldResource]) -> Vec<Value> {
    row.f
        .iter()
        .enumerate()
        .map(|(index, cell)| match fields.get(index) {
            Some(field) => decode_cell(&cell.v, field),
            None => cell.v.clone(),
        })
        .collect()
}

fn decode_cell(value: &Value, field: &FieldResource) -> Value {
    if field.mode.as_deref() == Some("REPEATED") {
        let scalar = FieldResource {
            mode: Some("NULLABLE".into()),
            ..field.clone()
        };
        return match value {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| decode_cell(item.get("v").unwrap_or(&Value::Null), &scalar))
                    .collect(),
            ),
            Value::Null => Value::Array(Vec::new()),
            other => other.clone(),
        };
    }
    let upper = field.field_type.to_ascii_uppercase();
    if upper == "RECORD" || upper == "STRUCT" {
        let nested = field.fields.as_deref().unwrap_or_default();
        return match value.get("f").and_then(Value::as_array) {
            Some(cells) => {
                let mut object = serde_json::Map::new();
                for (index, cell) in cells.iter().enumerate() {
                    if let Some(sub) = nested.get(index) {
                        object.insert(
                            sub.name.clone(),
                            decode_cell(cell.get("v").unwrap_or(&Value::Null), sub),
                        );
                    }
                }
                Value::Object(object)
            }
            None => value.clone(),
        };
    }
    let Value::String(text) = value else {
        return value.clone();
    };
    match BqType::parse(&upper) {
        Some(BqType::Int64 | BqType::Timestamp) => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| value.clone()),
        Some(BqType::Float64) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| value.clone()),
        Some(BqType::Bool) => match text.to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => value.clone(),
        },
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_roundtrip_keeps_parameters_and_maps_legacy_names() {
        let resource: FieldResource = serde_json::from_value(
            json!({"name":"n","type":"NUMERIC","precision":"20","scale":"2"}),
        )
        .unwrap();
        let field = resource.to_field("t").unwrap();
        assert_eq!(
            (field.precision, field.scale, field.mode),
            (Some(20), Some(2), FieldMode::Nullable)
        );
        let back = serde_json::to_value(FieldResource::from_field(&field)).unwrap();
        assert_eq!(
            back,
            json!({"name":"n","type":"NUMERIC","mode":"NULLABLE","precision":"20","scale":"2"})
        );
        for (legacy, standard) in [
            ("INTEGER", BqType::Int64),
            ("FLOAT", BqType::Float64),
            ("BOOLEAN", BqType::Bool),
        ] {
            let resource = FieldResource {
                name: "c".into(),
                field_type: legacy.into(),
                ..FieldResource::default()
            };
            assert_eq!(resource.to_field("t").unwrap().bq_type, standard);
        }
        let record = FieldResource {
            name: "r".into(),
            field_type: "RECORD".into(),
            ..FieldResource::default()
        };
        let error = record.to_field("orders").unwrap_err().to_string();
        assert!(
            error.contains("orders") && error.contains("RECORD"),
            "{error}"
        );
    }

    #[test]
    fn decodes_cells() {
        let fields: Vec<FieldResource> = serde_json::from_value(json!([
            {"name":"i","type":"INTEGER"},{"name":"f","type":"FLOAT"},{"name":"b","type":"BOOLEAN"},
            {"name":"ts","type":"TIMESTAMP"},{"name":"n","type":"NUMERIC"},{"name":"a","type":"INTEGER","mode":"REPEATED"},
            {"name":"r","type":"RECORD","fields":[{"name":"x","type":"STRING"}]},{"name":"z","type":"STRING"},
            {"name":"nan","type":"FLOAT"}
        ]))
        .unwrap();
        let row: Row = serde_json::from_value(json!({"f":[
            {"v":"1"},{"v":"1.5"},{"v":"true"},{"v":"1704164645123456"},{"v":"12.500000000"},
            {"v":[{"v":"1"},{"v":"2"}]},{"v":{"f":[{"v":"x"}]}},{"v":null},{"v":"NaN"}
        ]}))
        .unwrap();
        assert_eq!(
            decode_row(&row, &fields),
            vec![
                json!(1),
                json!(1.5),
                json!(true),
                json!(1704164645123456_i64),
                json!("12.500000000"),
                json!([1, 2]),
                json!({"x":"x"}),
                Value::Null,
                json!("NaN")
            ]
        );
    }

    #[test]
    fn job_errors_are_reported() {
        let job: JobResource = serde_json::from_value(json!({
            "jobReference":{"projectId":"p","jobId":"j1"},
            "status":{"state":"DONE","errorResult":{"reason":"invalid","message":"bad row"},
                      "errors":[{"reason":"invalid","message":"bad row"},{"reason":"invalid","message":"line 2"}]}
        }))
        .unwrap();
        let error = job.check("load table t", "fallback").unwrap_err();
        assert_eq!(
            error.to_string(),
            "load table t: job j1 failed (reason invalid): bad row (line 2)"
        );
        let ok: JobResource = serde_json::from_value(json!({"status":{"state":"DONE"}})).unwrap();
        assert!(ok.check("x", "y").is_ok() && ok.is_done());
    }

    #[test]
    fn error_bodies() {
        let body = br#"{"error":{"code":404,"message":"Not found: Table p:d.t","errors":[{"reason":"notFound","message":"Not found"}],"status":"NOT_FOUND"}}"#;
        assert_eq!(
            error_from_body(body),
            ("notFound".into(), "Not found: Table p:d.t".into())
        );
        assert_eq!(
            error_from_body(b""),
            ("unknown".into(), "empty response body".into())
        );
        assert_eq!(error_from_body(b"<html>oops</html>").1, "<html>oops</html>");
    }
}
