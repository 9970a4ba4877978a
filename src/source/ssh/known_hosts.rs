//! The OpenSSH known_hosts file: which host keys are trusted for a server.
//!
//! Format (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT"): one entry a line, `[marker] patterns
//! key-type base64-key [comment]`, fields separated by spaces or tabs, `#` comments. `patterns`
//! is a comma-separated list of host names with `*` and `?` wildcards and `!` negations, written
//! `[host]:port` for a port other than 22, or one hashed name `|1|salt|hmac-sha1` (what
//! `HashKnownHosts yes`, Debian's default, writes). The markers are `@revoked` (this key is
//! never trusted) and `@cert-authority` (a CA for host certificates, which datasync does not
//! use: such lines are skipped).
//!
//! Why not `russh::keys::check_known_hosts_path`: it splits fields on single spaces only,
//! ignores wildcards and markers (an `@revoked` key would pass), refuses a host with two keys of
//! one type, and miscounts line numbers after comments; the line is part of our message.

use base64::Engine as _;
use russh::keys::{Algorithm, HashAlg, PublicKey};

/// What the file says about a server's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The key is recorded for the server.
    Known,
    /// Nothing is recorded for the server.
    Unknown,
    /// Other keys are recorded for the server; the first at this line.
    Changed {
        /// 1-based line number.
        line: usize,
    },
    /// The key is marked `@revoked` at this line.
    Revoked {
        /// 1-based line number.
        line: usize,
    },
}

/// One entry that applies to the server.
struct Entry {
    line: usize,
    revoked: bool,
    key: PublicKey,
}

/// The name known_hosts records for a server: `host`, or `[host]:port` off port 22. Host names
/// are case-insensitive (OpenSSH lowercases them before matching and hashing).
fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// The entries (not `@cert-authority`) whose patterns match the server. Lines that cannot be
/// parsed are skipped, as OpenSSH does.
fn entries(text: &str, host: &str, port: u16) -> Vec<Entry> {
    let name = lookup_name(host, port);
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split([' ', '\t']).filter(|field| !field.is_empty());
        let Some(mut first) = fields.next() else {
            continue;
        };
        if first.starts_with('#') {
            continue;
        }
        let mut revoked = false;
        if first.starts_with('@') {
            match first {
                "@revoked" => revoked = true,
                _ => continue,
            }
            let Some(next) = fields.next() else { continue };
            first = next;
        }
        let (Some(_key_type), Some(key)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !patterns_match(first, &name) {
            continue;
        }
        if let Ok(key) = russh::keys::parse_public_key_base64(key) {
            out.push(Entry {
                line: index + 1,
                revoked,
                key,
            });
        }
    }
    out
}

/// Whether a comma-separated pattern list matches `name`: some pattern matches and no negated
/// one does.
fn patterns_match(list: &str, name: &str) -> bool {
    if list.starts_with("|1|") {
        return hashed_match(list, name);
    }
    let mut matched = false;
    for pattern in list.split(',') {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('!') {
            Some(negated) if glob(negated.as_bytes(), name.as_bytes()) => return false,
            Some(_) => {}
            None => matched |= glob(pattern.as_bytes(), name.as_bytes()),
        }
    }
    matched
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
fn hashed_match(entry: &str, name: &str) -> bool {
    let mut parts = entry.trim_start_matches("|1|").split('|');
    let engine = base64::engine::general_purpose::STANDARD;
    let (Some(Ok(salt)), Some(Ok(hash))) = (
        parts.next().map(|salt| engine.decode(salt)),
        parts.next().map(|hash| engine.decode(hash)),
    ) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok()
}

/// `*` (any run) and `?` (any one byte) wildcards.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

/// What the file `text` says about `key` offered by `host:port`.
pub(super) fn verdict(text: &str, host: &str, port: u16, key: &PublicKey) -> Verdict {
    let entries = entries(text, host, port);
    if let Some(entry) = entries
        .iter()
        .find(|entry| entry.revoked && entry.key.key_data() == key.key_data())
    {
        return Verdict::Revoked { line: entry.line };
    }
    let trusted: Vec<&Entry> = entries.iter().filter(|entry| !entry.revoked).collect();
    if trusted
        .iter()
        .any(|entry| entry.key.key_data() == key.key_data())
    {
        Verdict::Known
    } else if let Some(entry) = trusted.first() {
        Verdict::Changed { line: entry.line }
    } else {
        Verdict::Unknown
    }
}

/// The host-key algorithms to ask the server for, those of the keys recorded for it first (as
/// OpenSSH orders them): a server with an Ed25519 and an RSA key, known here by its RSA key
/// only, is then checked against that RSA key rather than reported as changed.
pub(super) fn preferred_algorithms(
    text: &str,
    host: &str,
    port: u16,
    defaults: &[Algorithm],
) -> Vec<Algorithm> {
    let recorded: Vec<Algorithm> = entries(text, host, port)
        .into_iter()
        .filter(|entry| !entry.revoked)
        .map(|entry| entry.key.algorithm())
        .collect();
    let is_recorded = |algorithm: &Algorithm| {
        recorded.iter().any(|known| match (known, algorithm) {
            // One RSA key signs with any of the RSA algorithms.
            (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
            (known, algorithm) => known == algorithm,
        })
    };
    let (first, rest): (Vec<Algorithm>, Vec<Algorithm>) = defaults
        .iter()
        .cloned()
        .partition(|algorithm| is_recorded(algorithm));
    first.into_iter().chain(rest).collect()
}

/// `ssh-ed25519 SHA256:…`, as `ssh-keygen -l` shows a key.
pub(super) fn describe(key: &PublicKey) -> String {
    format!(
        "{} {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two Ed25519 public keys and an ECDSA one (`ssh-keygen -t ed25519`, `-t ecdsa`).
    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIIWixd2FBuwYnj3eK/hyks64uZFK+QWMMNdJMX2x+bxA";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINJnsG/eG2qXYHafOMFf7LZXzOyEJPOO2NubePskA0cu";
    const KEY_EC: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKe2/7890rsYX6DWyAE4PstkppJHJXb/Y2d+P50bMpfmxMB6ua1rLhxqwFphH9eJZCrntUDmNkFYv3VXLnJC3P0=";

    fn key(base64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(base64).unwrap()
    }

    #[test]
    fn plain_names_ports_and_comments() {
        let text = format!(
            "# a comment\n\nbastion ssh-ed25519 {KEY_A} ops@laptop\n[bastion]:2222\tssh-ed25519\t{KEY_B}\n"
        );
        assert_eq!(verdict(&text, "bastion", 22, &key(KEY_A)), Verdict::Known);
        assert_eq!(verdict(&text, "BASTION", 22, &key(KEY_A)), Verdict::Known);
        assert_eq!(verdict(&text, "bastion", 2222, &key(KEY_B)), Verdict::Known);
        // Line numbers count comments and blank lines.
        assert_eq!(
            verdict(&text, "bastion", 22, &key(KEY_B)),
            Verdict::Changed { line: 3 }
        );
        assert_eq!(
            verdict(&text, "bastion", 2222, &key(KEY_A)),
            Verdict::Changed { line: 4 }
        );
        assert_eq!(verdict(&text, "other", 22, &key(KEY_A)), Verdict::Unknown);
        assert_eq!(verdict(&text, "bastion", 23, &key(KEY_A)), Verdict::Unknown);
        assert_eq!(verdict("", "bastion", 22, &key(KEY_A)), Verdict::Unknown);
    }

    #[test]
    fn a_second_key_of_one_type_is_trusted_too() {
        let text = format!("db-bastion ssh-ed25519 {KEY_A}\ndb-bastion ssh-ed25519 {KEY_B}\n");
        assert_eq!(
            verdict(&text, "db-bastion", 22, &key(KEY_B)),
            Verdict::Known
        );
    }

    #[test]
    fn wildcards_lists_and_negations() {
        let text = format!(
            "*.corp.example,!evil.corp.example,10.0.0.? ssh-ed25519 {KEY_A}\n[*.corp.example]:2222 ssh-ed25519 {KEY_B}\n"
        );
        assert_eq!(
            verdict(&text, "bastion.corp.example", 22, &key(KEY_A)),
            Verdict::Known
        );
        assert_eq!(verdict(&text, "10.0.0.7", 22, &key(KEY_A)), Verdict::Known);
        assert_eq!(
            verdict(&text, "10.0.0.17", 22, &key(KEY_A)),
            Verdict::Unknown
        );
        assert_eq!(
            verdict(&text, "evil.corp.example", 22, &key(KEY_A)),
            Verdict::Unknown
        );
        assert_eq!(
            verdict(&text, "b.corp.example", 2222, &key(KEY_B)),
            Verdict::Known
        );
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"a*b", b"axxc"));
    }

    #[test]
    fn hashed_names() {
        // Our own hashing of "bastion" and of "[bastion]:2222" with these salts.
        let hash = |name: &str, salt: &[u8]| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
            let engine = base64::engine::general_purpose::STANDARD;
            format!(
                "|1|{}|{}",
                engine.encode(salt),
                engine.encode(ring::hmac::sign(&key, name.as_bytes()))
            )
        };
        let text = format!(
            "{} ssh-ed25519 {KEY_A}\n{} ssh-ed25519 {KEY_B}\n",
            hash("bastion", b"0123456789abcdefghij"),
            hash("[bastion]:2222", b"jihgfedcba9876543210"),
        );
        assert_eq!(verdict(&text, "bastion", 22, &key(KEY_A)), Verdict::Known);
        assert_eq!(verdict(&text, "bastion", 2222, &key(KEY_B)), Verdict::Known);
        assert_eq!(
            verdict(&text, "bastion2", 22, &key(KEY_A)),
            Verdict::Unknown
        );
        // What OpenSSH itself wrote: `ssh-keygen -H` of `localhost KEY_A` and
        // `[bastion]:2222 KEY_B`.
        let openssh = format!(
            "|1|WGHgWlSLQoOojC1lS7Kss86TbbM=|zGUJxPa6JM6HAt2CVM3CE6qryY8= ssh-ed25519 {KEY_A}\n|1|ZHvIOZkz8JK6iQTXSej9l6RDpn8=|pKz4DVa9Ie+bW7f3OSdT9LKwiXg= ssh-ed25519 {KEY_B}\n"
        );
        assert_eq!(
            verdict(&openssh, "localhost", 22, &key(KEY_A)),
            Verdict::Known
        );
        assert_eq!(
            verdict(&openssh, "bastion", 2222, &key(KEY_B)),
            Verdict::Known
        );
        assert_eq!(
            verdict(&openssh, "localhost", 22, &key(KEY_B)),
            Verdict::Changed { line: 1 }
        );
        assert_eq!(
            verdict(&openssh, "bastion", 22, &key(KEY_B)),
            Verdict::Unknown
        );
    }

    #[test]
    fn revoked_keys_are_refused_and_ca_lines_skipped() {
        let text = format!(
            "@cert-authority *.example ssh-ed25519 {KEY_B}\nbastion ssh-ed25519 {KEY_A}\n@revoked * ssh-ed25519 {KEY_A}\n"
        );
        assert_eq!(
            verdict(&text, "bastion", 22, &key(KEY_A)),
            Verdict::Revoked { line: 3 }
        );
        assert_eq!(
            verdict(&text, "x.example", 22, &key(KEY_B)),
            Verdict::Unknown
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text =
            format!("bastion ssh-ed25519 not-base64!\nbastion\nbastion ssh-ed25519 {KEY_A}\n");
        assert_eq!(verdict(&text, "bastion", 22, &key(KEY_A)), Verdict::Known);
    }

    #[test]
    fn recorded_algorithms_come_first() {
        let defaults = [
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: russh::keys::EcdsaCurve::NistP256,
            },
            Algorithm::Rsa { hash: None },
        ];
        let text = format!("bastion ecdsa-sha2-nistp256 {KEY_EC}\n");
        let order = preferred_algorithms(&text, "bastion", 22, &defaults);
        assert_eq!(order[0], defaults[1]);
        assert_eq!(order.len(), 3);
        assert_eq!(
            preferred_algorithms("", "bastion", 22, &defaults),
            defaults.to_vec()
        );
        assert!(describe(&key(KEY_A)).starts_with("ssh-ed25519 SHA256:"));
    }
}
