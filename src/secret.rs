//! Values that must never be printed: passwords, connection URLs with credentials.
//!
//! [`Secret`] has a redacted `Debug` and `Display`; [`redact_url`] masks the password in a URL.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The text shown in place of a secret.
pub const REDACTED: &str = "********";

/// A string that is never shown by `Debug`, `Display` or `Serialize` (all write [`REDACTED`]).
/// Use [`Secret::expose`] at the one place where the value is handed to a driver.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for handing to a driver. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The password of a `scheme://user:password@host/...` URL, if it has one (percent-encoded as
/// written).
pub fn url_password(url: &str) -> Option<&str> {
    let (_, password, _) = split_password(url)?;
    Some(password)
}

/// `url` cut around its password: (before, password, after).
fn split_password(url: &str) -> Option<(&str, &str, &str)> {
    let rest_start = url.find("://")? + 3;
    let rest = &url[rest_start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    let start = rest_start + colon + 1;
    let end = rest_start + at;
    Some((&url[..start], &url[start..end], &url[end..]))
}

/// Masks the password (and only the password) of a `scheme://user:password@host/...` URL.
/// Strings that are not URLs are returned unchanged.
pub fn redact_url(url: &str) -> String {
    match split_password(url) {
        Some((before, _, after)) => format!("{before}{REDACTED}{after}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_in_debug_and_display() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn url_password_is_masked() {
        assert_eq!(
            redact_url("postgres://app:p%40ss@db:5432/x?sslmode=require"),
            "postgres://app:********@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(redact_url("sqlite://data.db"), "sqlite://data.db");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("mysql://:pw@h/db"), "mysql://:********@h/db");
        assert_eq!(
            url_password("postgres://app:p%40ss@db:5432/x"),
            Some("p%40ss")
        );
        assert_eq!(url_password("postgres://a:b:c@db/x"), Some("b:c"));
        assert_eq!(url_password("mysql://root@127.0.0.1/test"), None);
        assert_eq!(url_password("sqlite://data.db"), None);
    }

    #[test]
    fn secrets_serialize_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"********\"");
        let back: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(back.expose(), "hunter2");
    }
}

/// Keys whose values are secrets wherever they appear in a manifest text.
const SECRET_KEYS: &str = r"(?i)\b(password|passwd|pwd|secret|token|private_key|client_secret|refresh_token|key_passphrase|passphrase)\b";

fn secret_value_regex() -> &'static regex::Regex {
    static REGEX: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        // `key: value`, `key = value`, `"key": value` — the value up to the end of the line, a
        // flow separator or a comment.
        regex::Regex::new(&format!(
            r#"{SECRET_KEYS}["']?\s*[:=][ \t]*(?P<value>\$\{{[^}}\n]*\}}|"(?:[^"\\\n]|\\.)*"?|'[^'\n]*'?|[^\s,}}\]#][^\n,}}\]]*)"#
        ))
        .expect("valid regex")
    });
    &REGEX
}

fn url_userinfo_regex() -> &'static regex::Regex {
    static REGEX: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"://[^\s/:@]*:(?P<value>[^\s/@]+)@").expect("valid regex")
    });
    &REGEX
}

/// A manifest text with every secret value masked, byte for byte (so spans into the text stay
/// valid): values of `password`-like keys (YAML and TOML, quoted or not) and URL passwords.
/// A `${VAR}` reference is not a secret and stays readable. Returns the text and the masked
/// values (to mask them in messages too).
pub fn redact_text(text: &str) -> (String, Vec<String>) {
    let mut ranges = Vec::new();
    for captures in secret_value_regex().captures_iter(text) {
        if let Some(value) = captures.name("value") {
            let raw = value.as_str().trim_end();
            let inner = raw.trim_matches(['"', '\'']);
            if inner.is_empty() || (inner.starts_with("${") && inner.ends_with('}')) {
                continue;
            }
            ranges.push(value.start()..value.start() + raw.len());
        }
    }
    for captures in url_userinfo_regex().captures_iter(text) {
        if let Some(value) = captures.name("value") {
            if value.as_str().starts_with("${") && value.as_str().ends_with('}') {
                continue;
            }
            ranges.push(value.range());
        }
    }
    let mut bytes = text.as_bytes().to_vec();
    let mut values = Vec::new();
    for range in ranges {
        let value = &text[range.clone()];
        let inner = value.trim_matches(['"', '\'']);
        if !inner.is_empty() {
            values.push(inner.to_string());
        }
        for byte in &mut bytes[range] {
            if *byte != b'"' && *byte != b'\'' {
                *byte = b'*';
            }
        }
    }
    // Masking whole UTF-8 sequences with ASCII keeps the text valid UTF-8.
    let masked = String::from_utf8(bytes).unwrap_or_else(|_| "*".repeat(text.len()));
    values.sort_by_key(|value| std::cmp::Reverse(value.len()));
    (masked, values)
}

/// `message` with every one of `values` replaced by [`REDACTED`].
pub fn redact_values(message: &str, values: &[String]) -> String {
    values
        .iter()
        .filter(|value| value.len() >= 2)
        .fold(message.to_string(), |message, value| {
            message.replace(value.as_str(), REDACTED)
        })
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn yaml_toml_and_url_passwords_are_masked_byte_for_byte() {
        let text = "a:\n  password: hunter2-yaml\n  password = \"hunter2-toml\"\n  url: postgres://u:hunter2-url@h/db\n  dsn: mysql://u:${PW}@h/db\n  token: 'hunter2-token' # c\n  other: {password: hunter2-flow, x: 1}\n  pw: ${PW}\n  password: ${PW}\n";
        let (masked, values) = redact_text(text);
        assert_eq!(masked.len(), text.len());
        assert!(!masked.contains("hunter2"), "{masked}");
        assert!(masked.contains("password: ${PW}"), "{masked}");
        assert!(masked.contains("mysql://u:${PW}@h"), "{masked}");
        assert!(masked.contains("password = \"************\""), "{masked}");
        assert!(masked.contains("x: 1}"), "{masked}");
        assert_eq!(values.len(), 5, "{values:?}");
        assert_eq!(
            redact_values("bad value hunter2-yaml here", &values),
            "bad value ******** here"
        );
    }

    #[test]
    fn non_ascii_secrets_keep_the_text_valid() {
        let (masked, _) = redact_text("password: pässwörd\nnext: 1\n");
        assert_eq!(masked, "password: **********\nnext: 1\n");
    }
}
