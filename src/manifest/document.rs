//! The manifest as text: format detection, parsing into a JSON value, and a span index that maps
//! each JSON pointer to its place in the file (YAML through saphyr, TOML through toml's
//! `DeTable`), so every diagnostic can point at a line and column.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;

/// The manifest file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// TOML (`.toml`).
    Toml,
}

impl Format {
    /// The format for a path, from its extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Self::Yaml),
            "toml" => Some(Self::Toml),
            _ => None,
        }
    }
}

/// Where a node is in the text, as byte ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpan {
    /// The key naming the node in its parent mapping, when it has one.
    pub key: Option<Range<usize>>,
    /// The node's value.
    pub value: Range<usize>,
    /// Whether the value is a mapping or a sequence (then its key is the better label).
    pub container: bool,
}

/// JSON pointer → place in the text.
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    nodes: HashMap<String, NodeSpan>,
}

impl SpanIndex {
    /// The node at `pointer`, or its nearest ancestor that is in the file.
    pub fn lookup(&self, pointer: &str) -> Option<(&str, &NodeSpan)> {
        let mut current = pointer;
        loop {
            if let Some((key, span)) = self.nodes.get_key_value(current) {
                return Some((key.as_str(), span));
            }
            if current.is_empty() {
                return None;
            }
            current = current.rfind('/').map_or("", |at| &current[..at]);
        }
    }

    /// The best range to underline for a problem with the node at `pointer`: the value for a
    /// scalar, the key for a mapping or sequence.
    pub fn label_range(&self, pointer: &str) -> Option<Range<usize>> {
        let (_, node) = self.lookup(pointer)?;
        Some(match (&node.key, node.container) {
            (Some(key), true) => key.clone(),
            _ => node.value.clone(),
        })
    }

    /// The range of the key at `pointer` (or of the value if it has no key).
    pub fn key_range(&self, pointer: &str) -> Option<Range<usize>> {
        let (_, node) = self.lookup(pointer)?;
        Some(node.key.clone().unwrap_or_else(|| node.value.clone()))
    }

    fn insert(&mut self, pointer: String, span: NodeSpan) {
        self.nodes.insert(pointer, span);
    }
}

/// The 1-based line and column (in characters) of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}

/// Escapes one JSON-pointer segment.
pub fn escape_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// A parse failure with its place in the text.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// What went wrong.
    pub message: String,
    /// Where, as a byte range.
    pub range: Range<usize>,
}

/// Parses the text into a JSON value plus its span index.
pub fn parse(text: &str, format: Format) -> Result<(Value, SpanIndex), SyntaxError> {
    match format {
        Format::Yaml => parse_yaml(text),
        Format::Toml => parse_toml(text),
    }
}

fn parse_yaml(text: &str) -> Result<(Value, SpanIndex), SyntaxError> {
    if text.trim().is_empty() {
        return Ok((Value::Object(serde_json::Map::new()), SpanIndex::default()));
    }
    let value: Value = serde_yaml_ng::from_str(text).map_err(|error| {
        let at = error.location().map_or(0, |location| location.index());
        let message = error.to_string();
        // serde_yaml appends " at line L column C"; the label shows that already.
        let message = match message.find(" at line ") {
            Some(cut) => message[..cut].to_string(),
            None => message,
        };
        SyntaxError {
            message,
            range: at..at,
        }
    })?;
    let mut index = SpanIndex::default();
    if let Ok(documents) = <saphyr::MarkedYaml as saphyr::LoadableYamlNode>::load_from_str(text)
        && let Some(root) = documents.first()
    {
        let offsets = CharOffsets::new(text);
        walk_yaml(root, String::new(), None, &offsets, &mut index);
    }
    Ok((value, index))
}

/// Converts saphyr's character indexes into byte offsets.
struct CharOffsets {
    bytes: Vec<usize>,
}

impl CharOffsets {
    fn new(text: &str) -> Self {
        let mut bytes: Vec<usize> = text.char_indices().map(|(at, _)| at).collect();
        bytes.push(text.len());
        Self { bytes }
    }

    fn byte(&self, char_index: usize) -> usize {
        self.bytes
            .get(char_index)
            .copied()
            .unwrap_or_else(|| *self.bytes.last().unwrap_or(&0))
    }
}

fn walk_yaml(
    node: &saphyr::MarkedYaml<'_>,
    pointer: String,
    key: Option<Range<usize>>,
    offsets: &CharOffsets,
    index: &mut SpanIndex,
) {
    let start = offsets.byte(node.span.start.index());
    let end = offsets.byte(node.span.end.index()).max(start);
    let container = node.data.as_mapping().is_some() || node.data.as_sequence().is_some();
    index.insert(
        pointer.clone(),
        NodeSpan {
            key,
            value: start..end,
            container,
        },
    );
    if let Some(mapping) = node.data.as_mapping() {
        for (key_node, value_node) in mapping {
            let key_text = match key_node.data.as_str() {
                Some(text) => text.to_string(),
                None => match &key_node.data {
                    saphyr::YamlData::Value(scalar) => scalar_text(scalar),
                    _ => continue,
                },
            };
            let key_start = offsets.byte(key_node.span.start.index());
            let key_end = offsets.byte(key_node.span.end.index()).max(key_start);
            walk_yaml(
                value_node,
                format!("{pointer}/{}", escape_segment(&key_text)),
                Some(key_start..key_end),
                offsets,
                index,
            );
        }
    } else if let Some(sequence) = node.data.as_sequence() {
        for (position, item) in sequence.iter().enumerate() {
            walk_yaml(item, format!("{pointer}/{position}"), None, offsets, index);
        }
    }
}

fn scalar_text(scalar: &saphyr::Scalar<'_>) -> String {
    match scalar {
        saphyr::Scalar::Null => "null".into(),
        saphyr::Scalar::Boolean(value) => value.to_string(),
        saphyr::Scalar::Integer(value) => value.to_string(),
        saphyr::Scalar::FloatingPoint(value) => value.to_string(),
        saphyr::Scalar::String(value) => value.to_string(),
    }
}

fn parse_toml(text: &str) -> Result<(Value, SpanIndex), SyntaxError> {
    let value: Value = toml::from_str(text).map_err(|error| SyntaxError {
        message: error.message().trim().to_string(),
        range: error.span().unwrap_or(0..0),
    })?;
    let mut index = SpanIndex::default();
    if let Ok(table) = toml::de::DeTable::parse(text) {
        let span = table.span();
        index.insert(
            String::new(),
            NodeSpan {
                key: None,
                value: span,
                container: true,
            },
        );
        walk_toml_table(table.get_ref(), "", &mut index);
    }
    Ok((value, index))
}

fn walk_toml_table(table: &toml::de::DeTable<'_>, pointer: &str, index: &mut SpanIndex) {
    for (key, value) in table {
        let child = format!("{pointer}/{}", escape_segment(key.get_ref()));
        walk_toml_value(value, child, Some(key.span()), index);
    }
}

fn walk_toml_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    pointer: String,
    key: Option<Range<usize>>,
    index: &mut SpanIndex,
) {
    let inner = value.get_ref();
    let container = inner.is_table() || inner.is_array();
    index.insert(
        pointer.clone(),
        NodeSpan {
            key,
            value: value.span(),
            container,
        },
    );
    if let Some(table) = inner.as_table() {
        walk_toml_table(table, &pointer, index);
    } else if let Some(array) = inner.as_array() {
        for (position, item) in array.iter().enumerate() {
            walk_toml_value(item, format!("{pointer}/{position}"), None, index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_spans_point_at_keys_and_values() {
        let text = "# ünïcode comment\nbigquery:\n  project: p1\nsources:\n  main:\n    tables:\n      orders: {mode: merge}\n";
        let (value, index) = parse(text, Format::Yaml).unwrap();
        assert_eq!(value["bigquery"]["project"], "p1");
        let range = index.label_range("/bigquery/project").unwrap();
        assert_eq!(&text[range.clone()], "p1");
        assert_eq!(line_col(text, range.start), (3, 12));
        let range = index
            .label_range("/sources/main/tables/orders/mode")
            .unwrap();
        assert_eq!(&text[range], "merge");
        // A container is labelled by its key.
        let range = index.label_range("/sources/main").unwrap();
        assert_eq!(&text[range], "main");
        // A missing node falls back to its nearest ancestor.
        let range = index
            .label_range("/sources/main/tables/orders/missing")
            .unwrap();
        assert_eq!(&text[range], "orders");
    }

    #[test]
    fn toml_spans_point_at_keys_and_values() {
        let text =
            "[bigquery]\nproject = \"p1\"\n\n[sources.main.tables.orders]\nmode = \"merge\"\n";
        let (value, index) = parse(text, Format::Toml).unwrap();
        assert_eq!(
            value["sources"]["main"]["tables"]["orders"]["mode"],
            "merge"
        );
        let range = index.label_range("/bigquery/project").unwrap();
        assert_eq!(&text[range.clone()], "\"p1\"");
        assert_eq!(line_col(text, range.start), (2, 11));
        let range = index
            .label_range("/sources/main/tables/orders/mode")
            .unwrap();
        assert_eq!(line_col(text, range.start).0, 5);
    }

    #[test]
    fn syntax_errors_are_located() {
        let error = parse("a: [1, 2\nb: 3\n", Format::Yaml).unwrap_err();
        assert!(error.range.start > 0, "{error:?}");
        let error = parse("a = \n", Format::Toml).unwrap_err();
        assert_eq!(error.range.start, 4, "{error:?}");
    }
}
