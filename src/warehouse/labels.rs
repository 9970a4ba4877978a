//! Labels for cost attribution. Every job datasync starts carries `managed-by: datasync` and
//! the manifest's `bigquery.labels`; a job started for a table of a run also carries
//! `datasync-run: <run id>` and `datasync-table: <target>`, so billing exports and
//! `INFORMATION_SCHEMA.JOBS` group the bytes and slots by run and by table
//! (<https://cloud.google.com/bigquery/docs/adding-labels#job-label>). Tables datasync creates
//! carry `managed-by: datasync` and `bigquery.labels`.
//!
//! The run and the table are not arguments of every [`Warehouse`](super::Warehouse) call: the
//! executor runs each table inside [`scope`], and the BigQuery adapter reads [`current`] when
//! it builds a job. A scope covers everything awaited inside it (including `join!` and
//! `select!` branches), not tasks spawned from it.

use std::collections::BTreeMap;
use std::future::Future;

pub use crate::names::{
    MANAGED_BY_LABEL as MANAGED_BY, RUN_LABEL_KEY as RUN_KEY, TABLE_LABEL_KEY as TABLE_KEY,
};

/// What the current work is about, where it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobLabels {
    /// The run id (apply).
    pub run: Option<String>,
    /// The target table.
    pub table: Option<String>,
}

impl JobLabels {
    /// The labels of the jobs a run starts for `table`.
    pub fn for_table(run: Option<&str>, table: &str) -> Self {
        Self {
            run: run.map(str::to_string),
            table: Some(table.to_string()),
        }
    }

    /// The job labels: `managed-by`, `user` (the manifest's, already checked), then the run
    /// and the table, sanitized to label values.
    pub fn to_map(&self, user: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut labels = user.clone();
        labels.insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
        if let Some(run) = &self.run {
            labels.insert(RUN_KEY.to_string(), crate::names::sanitize_label_value(run));
        }
        if let Some(table) = &self.table {
            labels.insert(
                TABLE_KEY.to_string(),
                crate::names::sanitize_label_value(table),
            );
        }
        labels
    }
}

tokio::task_local! {
    static CURRENT: JobLabels;
}

/// Runs `work` with `labels` on every job it starts.
pub async fn scope<F: Future>(labels: JobLabels, work: F) -> F::Output {
    CURRENT.scope(labels, work).await
}

/// The labels of the current [`scope`] (none outside one).
pub fn current() -> JobLabels {
    CURRENT.try_with(Clone::clone).unwrap_or_default()
}

/// The labels of a table datasync creates: `managed-by` and the manifest's.
pub fn table_labels(user: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    JobLabels::default().to_map(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_labels_what_is_awaited_inside_it_only() {
        assert_eq!(current(), JobLabels::default());
        let labels = JobLabels::for_table(Some("1700000000_000001"), "Public__Orders");
        let (inside, joined) = scope(labels.clone(), async {
            let joined = tokio::join!(async { current() }).0;
            (current(), joined)
        })
        .await;
        assert_eq!(inside, labels);
        assert_eq!(joined, labels);
        assert_eq!(current(), JobLabels::default());
        let user = BTreeMap::from([("team".to_string(), "data".to_string())]);
        assert_eq!(
            labels.to_map(&user),
            BTreeMap::from([
                ("datasync-run".to_string(), "1700000000_000001".to_string()),
                ("datasync-table".to_string(), "public__orders".to_string()),
                ("managed-by".to_string(), "datasync".to_string()),
                ("team".to_string(), "data".to_string()),
            ])
        );
        assert_eq!(table_labels(&BTreeMap::new()).len(), 1);
    }
}
