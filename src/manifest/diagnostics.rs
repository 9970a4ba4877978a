//! Renders manifest [`Diagnostic`]s as miette diagnostics that point at the manifest's line and column.

use std::fmt;
use std::ops::Range;

use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, Severity as MietteSeverity,
};

use super::SourceText;
use super::document::line_col;
use crate::diagnostic::{Diagnostic, Location, Severity};
use crate::secret::{redact_text, redact_values};

/// The longest line miette is asked to show (it panics on columns past `u16::MAX`).
const MAX_SNIPPET_LINE: usize = 10_000;

/// Whether the line around byte `offset` of `text` is short enough to show as a snippet.
fn renderable(text: &str, offset: usize) -> bool {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |at| at + 1);
    let end = text[offset..]
        .find('\n')
        .map_or(text.len(), |at| offset + at);
    end - start <= MAX_SNIPPET_LINE
}

/// One problem, ready for miette.
#[derive(Debug)]
pub struct ManifestDiagnostic {
    problem: Diagnostic,
    source: Option<NamedSource<String>>,
    range: Option<Range<usize>>,
}

/// Where `problem` is in `source`, if it points into it.
fn span_range(problem: &Diagnostic, source: Option<&SourceText>) -> Option<Range<usize>> {
    match &problem.location {
        Location::Span(range) => Some(range.clone()),
        Location::Manifest { pointer, on_key } => source.and_then(|source| {
            if *on_key {
                source.spans.key_range(pointer)
            } else {
                source.spans.label_range(pointer)
            }
        }),
        _ => None,
    }
}

impl ManifestDiagnostic {
    /// Locates `problem` in `source`.
    pub fn new(problem: &Diagnostic, source: Option<&SourceText>) -> Self {
        let range = span_range(problem, source);
        // Secrets never reach the output: the snippet is the text with secret values masked
        // (byte for byte, so the span still fits), and so are the message and the help.
        let (text, secrets) = source.map_or_else(
            || (String::new(), Vec::new()),
            |source| redact_text(&source.text),
        );
        let mut problem = problem.clone();
        problem.message = redact_values(&problem.message, &secrets);
        problem.help = problem.help.map(|help| redact_values(&help, &secrets));
        // miette cannot render a snippet of a very long line (it panics past column 65,536):
        // such a diagnostic is shown without its snippet (the line and column are still given).
        let range = range
            .filter(|range| source.is_some_and(|source| renderable(&source.text, range.start)));
        Self {
            source: source
                .filter(|_| range.is_some())
                .map(|source| NamedSource::new(&source.name, text)),
            problem,
            range,
        }
    }
}

impl fmt::Display for ManifestDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem.message)
    }
}

impl std::error::Error for ManifestDiagnostic {}

impl miette::Diagnostic for ManifestDiagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.problem.code.as_str()))
    }

    fn severity(&self) -> Option<MietteSeverity> {
        Some(match self.problem.severity {
            Severity::Error => MietteSeverity::Error,
            Severity::Warning => MietteSeverity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let mut help = self.problem.help.clone();
        if self.range.is_none()
            && let Some(pointer) = self.problem.pointer()
        {
            let at = if pointer.is_empty() {
                "the manifest's top level".to_string()
            } else {
                format!("`{pointer}`")
            };
            help = Some(match help {
                Some(help) => format!("{help} (at {at})"),
                None => format!("at {at}"),
            });
        }
        help.map(|help| Box::new(help) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source
            .as_ref()
            .map(|source| source as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let range = self.range.clone()?;
        self.source.as_ref()?;
        let label = match self.problem.severity {
            Severity::Error => "here",
            Severity::Warning => "this",
        };
        Some(Box::new(std::iter::once(LabeledSpan::new(
            Some(label.to_string()),
            range.start,
            range.end.saturating_sub(range.start),
        ))))
    }
}

/// Renders problems the way the CLI prints them: one diagnostic each, then a count.
/// `color` selects ANSI colours; `width` the wrap width.
pub fn render(
    problems: &[Diagnostic],
    source: Option<&SourceText>,
    color: bool,
    width: usize,
) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(width)
        .with_links(false);
    let mut out = String::new();
    for problem in problems {
        let diagnostic = ManifestDiagnostic::new(problem, source);
        if handler.render_report(&mut out, &diagnostic).is_err() {
            out.push_str(&problem.message);
            out.push('\n');
        }
        out.push('\n');
    }
    let errors = problems
        .iter()
        .filter(|problem| problem.severity == Severity::Error)
        .count();
    let warnings = problems.len() - errors;
    if !problems.is_empty() {
        out.push_str(&summary(errors, warnings));
        out.push('\n');
    }
    out
}

fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("1 {word}")
    } else {
        format!("{count} {word}s")
    }
}

fn summary(errors: usize, warnings: usize) -> String {
    match (errors, warnings) {
        (0, warnings) => plural(warnings, "warning"),
        (errors, 0) => plural(errors, "error"),
        (errors, warnings) => format!(
            "{} and {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        ),
    }
}

/// Problems as JSON for machines (`validate --format json`): severity, code, message, help,
/// JSON pointer, environment variable, and the 1-based line and column in the file.
pub fn to_json(problems: &[Diagnostic], source: Option<&SourceText>) -> serde_json::Value {
    let items: Vec<serde_json::Value> = problems
        .iter()
        .map(|problem| {
            let diagnostic = ManifestDiagnostic::new(problem, source);
            let position = span_range(problem, source)
                .zip(source)
                .map(|(range, source)| line_col(&source.text, range.start));
            let problem = &diagnostic.problem;
            serde_json::json!({
                "severity": problem.severity.as_str(),
                "code": problem.code.as_str(),
                "message": problem.message,
                "help": problem.help,
                "pointer": problem.pointer(),
                "env_var": problem.env_var(),
                "file": source.map(|source| source.name.clone()),
                "line": position.map(|(line, _)| line),
                "column": position.map(|(_, column)| column),
            })
        })
        .collect();
    serde_json::Value::Array(items)
}
