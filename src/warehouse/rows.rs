//! What every row sink shares, whatever bytes it writes: the table's bad-value policies, the
//! bad-value budget, the statistics and the failure messages naming each row by its key.
//! [`NdjsonWriter`](super::NdjsonWriter) and [`AvroWriter`](super::AvroWriter) encode values;
//! [`RowPolicy`] decides what happens to the values they cannot write.

use crate::schema::{
    Bad, BadKind, BadValuePolicy, BqType, ColumnMapping, Decoded, ExtractStats, FieldMode,
    TooManyBadValues, TypePolicies, Utf8Policy, Val,
};

use super::ndjson::{Target, write_scalar};

/// How many failure messages are kept.
pub const MAX_FAILURE_MESSAGES: usize = 20;

/// One column as the policies see it.
struct Column {
    name: String,
    mode: FieldMode,
}

/// Bad values of one table counted across all its chunks' sinks: the budget is per table.
pub type SharedBadValues = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// Per-extraction policies, budget and statistics.
pub struct RowPolicy {
    columns: Vec<Column>,
    policies: TypePolicies,
    max_failures: Option<u64>,
    /// The table's count when its chunks are read by several sinks.
    shared: Option<SharedBadValues>,
    key_columns: Vec<usize>,
    table: String,
    /// Statistics so far.
    pub stats: ExtractStats,
    /// Bad values of the current row that were written anyway (NULL, replacement).
    notes: Vec<String>,
}

impl RowPolicy {
    /// Policies for `columns` of the table `table` (a label for messages). `max_bad_values`
    /// (`None` = unlimited) is the budget; `key_columns` are the source columns naming a row.
    pub fn new(
        table: String,
        columns: &[ColumnMapping],
        policies: TypePolicies,
        max_bad_values: Option<u64>,
        key_columns: &[String],
    ) -> Self {
        let key_columns = key_columns
            .iter()
            .filter_map(|key| columns.iter().position(|column| &column.source.name == key))
            .collect();
        Self {
            columns: columns
                .iter()
                .map(|column| Column {
                    name: column.source.name.clone(),
                    mode: column.field.mode,
                })
                .collect(),
            policies,
            max_failures: max_bad_values,
            shared: None,
            key_columns,
            table,
            stats: ExtractStats::default(),
            notes: Vec::new(),
        }
    }

    /// Counts bad values in `shared` too, and holds the budget against that total (the
    /// table's, over every chunk).
    pub fn share_budget(&mut self, shared: SharedBadValues) {
        self.shared = Some(shared);
    }

    /// The source name of column `index`.
    pub fn name(&self, index: usize) -> &str {
        &self.columns[index].name
    }

    /// Starts a row.
    pub fn begin_row(&mut self) {
        self.notes.clear();
    }

    fn count_bad(&mut self, kind: BadKind) {
        self.stats.bad_values += 1;
        if let Some(shared) = &self.shared {
            shared.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *self
            .stats
            .by_kind
            .entry(kind.as_str().to_string())
            .or_default() += 1;
    }

    /// Resolves a bad value of column `index` by policy: `Ok(Some(v))` write `v`, `Ok(None)`
    /// write NULL, `Err(message)` fail the row.
    pub fn resolve<'a>(&mut self, index: usize, bad: Bad<'a>) -> Result<Option<Val<'a>>, String> {
        self.count_bad(bad.kind);
        let column = &self.columns[index];
        let policy = match bad.kind {
            BadKind::ZeroDate => self.policies.zero_dates,
            BadKind::NonFinite => self.policies.non_finite,
            BadKind::InvalidUtf8 => {
                return match (self.policies.invalid_utf8, bad.replacement) {
                    (Utf8Policy::Replace, Some(replacement)) => {
                        let note = format!(
                            "column `{}`: {} (replaced with U+FFFD)",
                            column.name, bad.message
                        );
                        self.notes.push(note);
                        Ok(Some(replacement))
                    }
                    _ => Err(format!("column `{}`: {}", column.name, bad.message)),
                };
            }
            BadKind::OutOfRange | BadKind::Malformed | BadKind::NullRequired => {
                BadValuePolicy::Error
            }
        };
        match policy {
            BadValuePolicy::Null if column.mode != FieldMode::Required => {
                let note = format!(
                    "column `{}`: {} (written as NULL)",
                    column.name, bad.message
                );
                self.notes.push(note);
                Ok(None)
            }
            BadValuePolicy::Null => Err(format!(
                "column `{}`: {} (and the field is REQUIRED)",
                column.name, bad.message
            )),
            BadValuePolicy::Error => Err(format!("column `{}`: {}", column.name, bad.message)),
        }
    }

    /// A NULL in the REQUIRED column `index` (e.g. a NULL merge key): a bad value like any
    /// other (counted against `max_parse_failures`) that fails its row; the message says why.
    pub fn null_in_required(&mut self, index: usize) -> String {
        self.count_bad(BadKind::NullRequired);
        format!("column `{}`: NULL in a REQUIRED field", self.name(index))
    }

    /// Decodes column `index`, resolving a bad value by policy (NULL when the policy says so).
    pub fn decode<'r>(
        &mut self,
        index: usize,
        decode: &mut impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<Val<'r>, String> {
        match decode(index) {
            Ok(value) => Ok(value),
            Err(bad) => self
                .resolve(index, bad)
                .map(|value| value.unwrap_or(Val::Null)),
        }
    }

    /// Ends a row: `outcome` is the bytes it took, or why it failed. Keeps the row's notes
    /// (with its key) and fails when the bad values exceed the budget.
    pub fn end_row<'r>(
        &mut self,
        outcome: Result<u64, String>,
        decode: &mut impl FnMut(usize) -> Decoded<'r>,
    ) -> Result<(), TooManyBadValues> {
        match outcome {
            Ok(bytes) => {
                self.stats.rows += 1;
                self.stats.bytes += bytes;
            }
            Err(message) => {
                self.stats.failed_rows += 1;
                if self.stats.rejects.len() < crate::schema::MAX_REJECTS {
                    let reject = self.reject(&message, decode);
                    self.stats.rejects.push(reject);
                }
                self.notes.push(format!("{message} (row left out)"));
            }
        }
        if !self.notes.is_empty() && self.stats.failures.len() < MAX_FAILURE_MESSAGES {
            let key = self.describe_key(decode);
            let notes = std::mem::take(&mut self.notes);
            for note in notes
                .into_iter()
                .take(MAX_FAILURE_MESSAGES - self.stats.failures.len())
            {
                self.stats.failures.push(format!("row {key}: {note}"));
            }
        }
        let count = self
            .shared
            .as_ref()
            .map_or(self.stats.bad_values, |shared| {
                shared.load(std::sync::atomic::Ordering::Relaxed)
            });
        match self.max_failures {
            Some(max) if count > max => Err(TooManyBadValues {
                table: self.table.clone(),
                count,
                max,
                failures: self.stats.failures.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The record of a row a failure left out: key, column, reason, the row as read.
    fn reject<'r>(
        &self,
        message: &str,
        decode: &mut impl FnMut(usize) -> Decoded<'r>,
    ) -> crate::schema::Reject {
        let mut row = serde_json::Map::new();
        for (index, column) in self.columns.iter().enumerate() {
            let value = match decode(index) {
                Ok(value) => value.to_json(),
                Err(bad) => bad
                    .replacement
                    .map_or(serde_json::Value::Null, |value| value.to_json()),
            };
            row.insert(column.name.clone(), value);
        }
        // Messages read "column `name`: reason".
        let (column, reason) = message
            .strip_prefix("column `")
            .and_then(|rest| rest.split_once("`: "))
            .map_or((String::new(), message.to_string()), |(column, reason)| {
                (column.to_string(), reason.to_string())
            });
        crate::schema::Reject {
            key: self.describe_key(decode),
            column,
            reason,
            row: serde_json::Value::Object(row).to_string(),
        }
    }

    fn describe_key<'r>(&self, decode: &mut impl FnMut(usize) -> Decoded<'r>) -> String {
        if self.key_columns.is_empty() {
            return format!("#{}", self.stats.rows + self.stats.failed_rows);
        }
        let parts: Vec<String> = self
            .key_columns
            .iter()
            .map(|&index| {
                let column = &self.columns[index];
                let mut text = Vec::new();
                let shown = match decode(index) {
                    Ok(Val::Null) => "NULL".to_string(),
                    Ok(Val::Int(n)) => n.to_string(),
                    Ok(Val::UInt(n)) => n.to_string(),
                    Ok(Val::Decimal(text)) => text.into_owned(),
                    Ok(value) => match write_scalar(
                        &mut text,
                        &value,
                        Target {
                            bq_type: BqType::String,
                            precision: None,
                            scale: None,
                        },
                    ) {
                        Ok(()) => String::from_utf8_lossy(&text).into_owned(),
                        Err(bad) => format!("<{}>", bad.message),
                    },
                    Err(bad) => format!("<{}>", bad.message),
                };
                format!("{}={shown}", column.name)
            })
            .collect();
        format!("({})", parts.join(", "))
    }
}
