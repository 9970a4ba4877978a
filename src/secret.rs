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
