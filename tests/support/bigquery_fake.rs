//! A stateful loopback fake of the BigQuery REST API, as far as `datasync apply` of NDJSON
//! tables in replace/append mode uses it: datasets.get/insert; tables.get/insert/patch
//! (`If-Match`)/delete/list; resumable uploads of load jobs (NDJSON rows kept as JSON);
//! jobs.get; copy jobs (jobs.insert); jobs.cancel. Unlike the emulator it keeps client job ids
//! the way BigQuery does (jobs.get finds them, a reused id is a 409) and reports each load's own
//! `outputRows`, so resuming a killed apply can be tested against the real client.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use super::fakes::{Fake, Handler, Reply, Seen, reply, serve};

#[derive(Debug, Default)]
struct Table {
    schema: Value,
    rows: Vec<Value>,
    description: Option<String>,
    version: u64,
}

#[derive(Debug, Default)]
struct State {
    datasets: Vec<String>,
    tables: BTreeMap<String, Table>,
    /// Upload sessions: the job resource asked for and the bytes so far.
    uploads: BTreeMap<u64, (Value, Vec<u8>)>,
    next_upload: u64,
    jobs: BTreeMap<String, Value>,
}

/// A running fake BigQuery.
pub struct FakeBigQuery {
    pub server: Fake,
    state: Arc<Mutex<State>>,
}

impl FakeBigQuery {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let base = Arc::new(OnceLock::<String>::new());
        let (handler_state, handler_base) = (Arc::clone(&state), Arc::clone(&base));
        let handler: Handler = Arc::new(move |seen: &Seen| {
            let mut state = handler_state.lock().unwrap();
            route(
                &mut state,
                seen,
                handler_base.get().map_or("", String::as_str),
            )
        });
        let server = serve(handler).await;
        let _ = base.set(server.base.clone());
        Self { server, state }
    }

    /// A table's rows, if it exists.
    pub fn rows(&self, table: &str) -> Option<Vec<Value>> {
        let state = self.state.lock().unwrap();
        state.tables.get(table).map(|table| table.rows.clone())
    }

    /// The names of the tables.
    pub fn tables(&self) -> Vec<String> {
        self.state.lock().unwrap().tables.keys().cloned().collect()
    }

    /// The ids of the jobs, in order of their ids.
    pub fn jobs(&self) -> Vec<String> {
        self.state.lock().unwrap().jobs.keys().cloned().collect()
    }
}

fn error(status: u16, reason: &str, message: &str) -> Reply {
    reply(
        status,
        json!({"error": {"code": status, "message": message, "errors": [{"reason": reason, "message": message}]}})
            .to_string(),
    )
}

fn ok(body: Value) -> Reply {
    reply(200, body.to_string())
}

fn table_resource(name: &str, table: &Table) -> Value {
    let mut resource = json!({
        "tableReference": {"projectId": "p", "datasetId": "d", "tableId": name},
        "schema": table.schema,
        "numRows": table.rows.len().to_string(),
        "etag": table.version.to_string(),
        "type": "TABLE",
    });
    if let Some(description) = &table.description {
        resource["description"] = json!(description);
    }
    resource
}

fn done(job: &Value, statistics: Value) -> Value {
    let mut job = job.clone();
    job["status"] = json!({"state": "DONE"});
    job["statistics"] = statistics;
    job
}

/// `/bigquery/v2/projects/{p}/…` or `/upload/bigquery/v2/projects/{p}/…` → the parts after the
/// project.
fn parts(path: &str) -> Vec<String> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let start = segments
        .iter()
        .position(|segment| *segment == "projects")
        .map_or(segments.len(), |at| at + 2);
    segments[start.min(segments.len())..]
        .iter()
        .map(|segment| segment.replace("%2F", "/"))
        .collect()
}

fn route(state: &mut State, seen: &Seen, base: &str) -> Reply {
    let parts = parts(seen.path());
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let method = seen.method.as_str();
    if seen.path().starts_with("/upload/") {
        return upload(state, seen, base);
    }
    match (method, parts.as_slice()) {
        ("GET", ["datasets", dataset]) => {
            if state.datasets.iter().any(|known| known == dataset) {
                ok(
                    json!({"datasetReference": {"projectId": "p", "datasetId": dataset}, "location": "US"}),
                )
            } else {
                error(404, "notFound", "Not found: Dataset")
            }
        }
        ("POST", ["datasets"]) => {
            let id = seen.json()["datasetReference"]["datasetId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            state.datasets.push(id.clone());
            ok(json!({"datasetReference": {"projectId": "p", "datasetId": id}, "location": "US"}))
        }
        ("DELETE", ["datasets", _]) => reply(204, ""),
        (_, ["datasets", _, "tables", ..]) => tables(state, seen, &parts[3..]),
        ("GET", ["jobs", id]) => match state.jobs.get(*id) {
            Some(job) => ok(job.clone()),
            None => error(404, "notFound", "Not found: Job"),
        },
        ("POST", ["jobs", _, "cancel"]) => ok(json!({})),
        ("POST", ["jobs"]) => copy(state, &seen.json()),
        _ => error(
            400,
            "invalid",
            &format!("the fake can't {method} {}", seen.target),
        ),
    }
}

fn tables(state: &mut State, seen: &Seen, rest: &[&str]) -> Reply {
    match (seen.method.as_str(), rest) {
        ("GET", []) => {
            let tables: Vec<Value> = state
                .tables
                .keys()
                .map(|name| json!({"tableReference": {"projectId": "p", "datasetId": "d", "tableId": name}}))
                .collect();
            ok(json!({"tables": tables}))
        }
        ("POST", []) => {
            let body = seen.json();
            let name = body["tableReference"]["tableId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if state.tables.contains_key(&name) {
                return error(409, "duplicate", "Already Exists: Table");
            }
            let table = Table {
                schema: body["schema"].clone(),
                rows: Vec::new(),
                description: body["description"].as_str().map(str::to_string),
                version: 1,
            };
            let resource = table_resource(&name, &table);
            state.tables.insert(name, table);
            ok(resource)
        }
        ("GET", [name]) => match state.tables.get(*name) {
            Some(table) => ok(table_resource(name, table)),
            None => error(404, "notFound", "Not found: Table"),
        },
        ("DELETE", [name]) => match state.tables.remove(*name) {
            Some(_) => reply(204, ""),
            None => error(404, "notFound", "Not found: Table"),
        },
        ("PATCH", [name]) => {
            let Some(table) = state.tables.get_mut(*name) else {
                return error(404, "notFound", "Not found: Table");
            };
            if seen
                .header("if-match")
                .is_some_and(|etag| etag != table.version.to_string())
            {
                return error(412, "conditionNotMet", "Precondition check failed.");
            }
            let body = seen.json();
            if let Some(description) = body["description"].as_str() {
                table.description = Some(description.to_string());
            }
            table.version += 1;
            ok(table_resource(name, table))
        }
        _ => error(400, "invalid", "the fake can't do this with tables"),
    }
}

fn upload(state: &mut State, seen: &Seen, base: &str) -> Reply {
    let query = seen.query();
    match (seen.method.as_str(), query.get("upload_id")) {
        ("POST", None) => {
            let job = seen.json();
            let id = job["jobReference"]["jobId"].as_str().unwrap_or_default();
            if state.jobs.contains_key(id) {
                return error(409, "duplicate", "Already Exists: Job");
            }
            state.next_upload += 1;
            let upload = state.next_upload;
            state.uploads.insert(upload, (job, Vec::new()));
            let mut answer = reply(200, "");
            answer.headers.push((
                "Location".into(),
                format!(
                    "{base}/upload/bigquery/v2/projects/p/jobs?uploadType=resumable&upload_id={upload}"
                ),
            ));
            answer
        }
        ("PUT", Some(upload)) => {
            let Some((job, data)) = upload
                .parse::<u64>()
                .ok()
                .and_then(|upload| state.uploads.get_mut(&upload))
            else {
                return error(404, "notFound", "Upload session not found");
            };
            data.extend_from_slice(&seen.body);
            let last = seen
                .header("content-range")
                .is_some_and(|range| !range.ends_with("/*"));
            if !last {
                let mut answer = reply(308, "");
                answer
                    .headers
                    .push(("Range".into(), format!("bytes=0-{}", data.len() - 1)));
                return answer;
            }
            let (job, data) = (job.clone(), std::mem::take(data));
            finish_load(state, &job, &data)
        }
        _ => error(400, "invalid", "the fake can't do this with uploads"),
    }
}

fn finish_load(state: &mut State, job: &Value, data: &[u8]) -> Reply {
    let load = &job["configuration"]["load"];
    let name = load["destinationTable"]["tableId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let rows: Vec<Value> = data
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| serde_json::from_slice(line).unwrap_or(Value::Null))
        .collect();
    let output = rows.len();
    let table = state.tables.entry(name).or_insert_with(|| Table {
        schema: load["schema"].clone(),
        version: 1,
        ..Table::default()
    });
    if load["writeDisposition"] == "WRITE_TRUNCATE" {
        table.rows.clear();
    }
    table.rows.extend(rows);
    table.version += 1;
    let job = done(job, json!({"load": {"outputRows": output.to_string()}}));
    let id = job["jobReference"]["jobId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    state.jobs.insert(id, job.clone());
    ok(job)
}

fn copy(state: &mut State, job: &Value) -> Reply {
    let id = job["jobReference"]["jobId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if state.jobs.contains_key(&id) {
        return error(409, "duplicate", "Already Exists: Job");
    }
    let copy = &job["configuration"]["copy"];
    let (Some(source), Some(target)) = (
        copy["sourceTable"]["tableId"].as_str(),
        copy["destinationTable"]["tableId"].as_str(),
    ) else {
        return error(400, "invalid", "the fake only runs copy jobs");
    };
    let Some(from) = state.tables.get(source) else {
        return error(404, "notFound", "Not found: Table");
    };
    let (schema, rows) = (from.schema.clone(), from.rows.clone());
    let into = state.tables.entry(target.to_string()).or_default();
    if copy["writeDisposition"] == "WRITE_TRUNCATE" {
        into.rows = rows;
        into.schema = schema;
    } else {
        if into.schema.is_null() {
            into.schema = schema;
        }
        into.rows.extend(rows);
    }
    into.version += 1;
    let job = done(job, json!({}));
    state.jobs.insert(id, job.clone());
    ok(job)
}
