//! Progress of an apply: bars on a terminal (rows of the plan's estimate, an integer rate, an
//! ETA, the phase: extract, load, write), a log line per 100,000 rows and per phase otherwise.
//! Log lines go through [`LogWriter`], which hides the bars while it writes, so they never tear.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};

use crate::sync::{Phase, PhaseProgress, Progress};

/// The bars being drawn, if any: [`LogWriter`] suspends them.
static BARS: OnceLock<Mutex<Option<indicatif::MultiProgress>>> = OnceLock::new();

fn active() -> &'static Mutex<Option<indicatif::MultiProgress>> {
    BARS.get_or_init(|| Mutex::new(None))
}

/// stderr for tracing: each event (one `write` call) is written with the bars hidden.
pub(super) struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let active = active()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match active {
            Some(multi) => multi.suspend(|| std::io::stderr().write_all(buf).map(|()| buf.len())),
            None => std::io::stderr().write_all(buf).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// What a phase is called on a bar and in logs.
pub(super) fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Extract => "extract+upload",
        Phase::Load => "load",
        Phase::Write => "write",
        Phase::Done => "done",
        Phase::Failed => "failed",
    }
}

/// `12,345/s`: rows per second as a whole number.
pub(super) fn rate(per_sec: f64) -> String {
    let whole = if per_sec.is_finite() && per_sec > 0.0 {
        per_sec.round() as u64
    } else {
        0
    };
    format!("{}/s", indicatif::HumanCount(whole))
}

fn style(estimated: bool) -> indicatif::ProgressStyle {
    let template = if estimated {
        "{spinner} {prefix:30} {human_pos:>11}/{human_len:<11} rows {percent:>3}%  {rate:>10}  ETA {eta:<4} {msg}"
    } else {
        "{spinner} {prefix:30} {human_pos:>11} rows  {rate:>10}  {elapsed:<4} {msg}"
    };
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = out.write_str(&rate(state.per_sec()));
            },
        )
}

/// Callbacks for the tables `labels` (with the plan's row estimate), and the bars to clear at
/// the end (terminal only).
pub(super) fn progress(
    tables: &[(String, Option<u64>)],
    quiet: bool,
) -> (Progress, PhaseProgress, Option<indicatif::MultiProgress>) {
    if quiet {
        return (
            Arc::new(|_: &str, _: u64| {}),
            crate::sync::no_phases(),
            None,
        );
    }
    if !std::io::stderr().is_terminal() {
        return logged();
    }
    let multi = indicatif::MultiProgress::new();
    let bars: HashMap<String, indicatif::ProgressBar> = tables
        .iter()
        .map(|(label, estimate)| {
            let bar = multi.add(match estimate {
                Some(rows) => indicatif::ProgressBar::new(*rows),
                None => indicatif::ProgressBar::new_spinner(),
            });
            bar.set_style(style(estimate.is_some()));
            bar.set_prefix(label.clone());
            bar.set_message("waiting");
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            (label.clone(), bar)
        })
        .collect();
    *active()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(multi.clone());
    let bars = Arc::new(bars);
    let rows_bars = Arc::clone(&bars);
    let progress: Progress = Arc::new(move |label: &str, rows: u64| {
        if let Some(bar) = rows_bars.get(label) {
            // More rows than estimated: the estimate grows, the bar never overflows.
            if bar.length().is_some_and(|length| rows > length) {
                bar.set_length(rows);
            }
            bar.set_position(rows);
        }
    });
    let phases: PhaseProgress = Arc::new(move |label: &str, phase: Phase| {
        if let Some(bar) = bars.get(label) {
            bar.set_message(phase_name(phase));
            if matches!(phase, Phase::Done | Phase::Failed) {
                // Done with fewer rows than the catalog estimated: the bar ends at 100%.
                if phase == Phase::Done {
                    bar.set_length(bar.position());
                }
                // A finished bar stops: no spinner, its rate and time frozen.
                bar.finish();
            }
        }
    });
    (progress, phases, Some(multi))
}

/// Not a terminal: a log line per 100,000 rows and per phase.
fn logged() -> (Progress, PhaseProgress, Option<indicatif::MultiProgress>) {
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
    let phases: PhaseProgress = Arc::new(|label: &str, phase: Phase| {
        tracing::info!(table = label, phase = phase_name(phase), "phase");
    });
    (progress, phases, None)
}

/// Forgets the bars (after they are cleared), so logs write straight to stderr again.
pub(super) fn finished() {
    *active()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_whole_numbers() {
        assert_eq!(rate(79_815.016_808_333), "79,815/s");
        assert_eq!(rate(23.33), "23/s");
        assert_eq!(rate(f64::NAN), "0/s");
        assert_eq!(rate(0.0), "0/s");
    }
}
