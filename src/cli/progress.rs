//! Progress of an apply: bars on a terminal, a log line per 100,000 rows otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use crate::sync::Progress;

/// A progress callback for the tables `labels`, and the bars to clear at the end (terminal only).
pub(super) fn progress(labels: &[String]) -> (Progress, Option<indicatif::MultiProgress>) {
    if std::io::stderr().is_terminal() {
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} {prefix:30} {human_pos:>12} rows  {per_sec:>14}  {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let bars: HashMap<String, indicatif::ProgressBar> = labels
            .iter()
            .map(|label| {
                let bar = multi.add(indicatif::ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(label.clone());
                bar.enable_steady_tick(std::time::Duration::from_millis(200));
                (label.clone(), bar)
            })
            .collect();
        let bars = Arc::new(bars);
        let progress: Progress = Arc::new(move |label: &str, rows: u64| {
            if let Some(bar) = bars.get(label) {
                bar.set_position(rows);
            }
        });
        (progress, Some(multi))
    } else {
        let last = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
        let progress: Progress = Arc::new(move |label: &str, rows: u64| {
            let mut last = last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let previous = last.entry(label.to_string()).or_insert(0);
            if rows >= *previous + 100_000 {
                *previous = rows;
                tracing::info!(table = label, rows, "extracting");
            }
        });
        (progress, None)
    }
}
