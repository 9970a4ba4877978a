//! The `ssh` block of a source without an SSH server: the manifest (defaults, `~/`, secrets,
//! every mistake with its line), the CLI's effective values, and the failures that happen before
//! or instead of a login (key files, known_hosts, a refused port, a server that never answers).
//! The tunnel itself is tested against a real sshd in `tests/services/source_ssh.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use datasync::manifest::raw::SourceKind;
use datasync::manifest::resolve::SshSpec;
use datasync::manifest::{self, Env, Format, LoadFailure, Loaded, ManifestInput};
use datasync::secret::Secret;
use datasync::source::Source;

/// A throwaway Ed25519 key (`ssh-keygen -t ed25519 -N ''`), for these tests only.
const PLAIN_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACApAmnkuz7S1umnKFFpLATMKR38XuyDLl2sX/WnHKYEYQAAAJAo+V+aKPlf
mgAAAAtzc2gtZWQyNTUxOQAAACApAmnkuz7S1umnKFFpLATMKR38XuyDLl2sX/WnHKYEYQ
AAAEAgt9zgzoqR8O82P3SU7mUduZqtRAg5NfaiGg2x6zVlxykCaeS7PtLW6acoUWksBMwp
Hfxe7IMuXaxf9accpgRhAAAADWRhdGFzeW5jLXRlc3Q=
-----END OPENSSH PRIVATE KEY-----
";

/// The same kind of key encrypted with the passphrase `correct horse`.
const LOCKED_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABALFyTNx9
J6w1oxglwYWB3sAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAINfgKFcXg07TSZ3Z
8tOhv1U9GYXBIqzL0HtTRB4ILTYBAAAAkCv1kfZ2bLeH3Y1n8FUztpD+4POk50w/DZ/udS
WSLDAkzsGANl/PIRAcODNAiwdlJL3Ahd56YzQ0noDn8hrgOmzyOyLZjcH78T1DmkvSFCIr
DLhFmSyqLiTJx2WRYyrDpK57q8BT9NEbFl8efXUi7UEztCgteJhoJBeiczNo6BxcNdqBj/
A1xO7GetCx/Q2Njg==
-----END OPENSSH PRIVATE KEY-----
";

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn load(text: &str, env: Env) -> Result<Loaded, LoadFailure> {
    manifest::load(&ManifestInput {
        name: Some("sync.yaml".into()),
        text: Some((text.to_string(), Format::Yaml)),
        env,
    })
}

fn render(failure: &LoadFailure) -> String {
    manifest::diagnostics::render(&failure.problems, failure.source.as_ref(), false, 100)
}

const HEAD: &str = "bigquery: {project: my-project, dataset: analytics}\nsources:\n";

#[test]
fn ssh_settings_take_their_defaults_and_the_home_directory() {
    let text = format!(
        "{HEAD}  app:\n    type: postgres\n    host: 10.0.3.7\n    user: reader\n    database: app\n    tls: {{mode: require}}\n    ssh:\n      host: bastion.example.com\n      user: deploy\n      key: ~/.ssh/id_ed25519\n      key_passphrase: ${{BASTION_KEY_PASSPHRASE}}\n    tables: {{orders: }}\n  shop:\n    type: mysql\n    url: mysql://sync@db.internal/shop\n    tls: {{mode: require}}\n    ssh: {{host: 192.0.2.10, port: 2222, user: ops, password: '${{SSH_PW}}', known_hosts: /etc/datasync/known_hosts}}\n    tables: {{items: }}\n"
    );
    let loaded = load(
        &text,
        env(&[
            ("HOME", "/home/sync/"),
            ("BASTION_KEY_PASSPHRASE", "pass-phrase-1"),
            ("SSH_PW", "ssh-password-1"),
        ]),
    )
    .unwrap_or_else(|failure| panic!("{}", render(&failure)));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let app = loaded.manifest.sources[0].ssh.as_ref().unwrap();
    assert_eq!(app.host, "bastion.example.com");
    assert_eq!(app.port, 22);
    assert_eq!(app.user, "deploy");
    assert_eq!(app.key.as_deref(), Some("/home/sync/.ssh/id_ed25519"));
    assert_eq!(app.known_hosts, "/home/sync/.ssh/known_hosts");
    assert_eq!(
        app.key_passphrase.as_ref().map(Secret::expose),
        Some("pass-phrase-1")
    );
    assert_eq!(app.label(), "deploy@bastion.example.com:22");
    let shop = loaded.manifest.sources[1].ssh.as_ref().unwrap();
    assert_eq!((shop.port, shop.key.as_deref()), (2222, None));
    assert_eq!(shop.known_hosts, "/etc/datasync/known_hosts");
    assert_eq!(
        shop.password.as_ref().map(Secret::expose),
        Some("ssh-password-1")
    );
    // Serialized (plans, logs, `--show-effective`): never the secrets.
    let json = serde_json::to_string(&loaded.manifest).unwrap();
    assert!(!json.contains("pass-phrase-1") && !json.contains("ssh-password-1"));
    let raw = serde_json::to_string(&loaded.manifest.to_raw()).unwrap();
    assert!(!raw.contains("pass-phrase-1") && !raw.contains("ssh-password-1"));
    assert!(raw.contains("\"known_hosts\":\"/home/sync/.ssh/known_hosts\""));
}

#[test]
fn ssh_mistakes_are_reported_at_once_with_their_lines() {
    let text = format!(
        "{HEAD}  local:
    type: sqlite
    database: app.db
    ssh: {{host: bastion, user: deploy, key: /k}}
    tables: {{t: }}
  nouser:
    type: postgres
    host: localhost
    user: reader
    database: app
    ssh:
      host: bastion
      port: 70000
      key: /k
    tables: {{t2: }}
  nologin:
    type: mysql
    host: localhost
    user: reader
    ssh:
      host: ''
      user: deploy
      key_passphrase: ${{PASS}}
    tables: {{t3: }}
  typo:
    type: mysql
    host: /run/mysqld/mysqld.sock
    user: reader
    ssh:
      host: bastion
      user: deploy
      keyfile: /k
      key_passphrase: hunter3-phrase
      password: hunter2-ssh
    tables: {{t4: }}
"
    );
    let failure = load(&text, env(&[("PASS", "p")])).unwrap_err();
    let rendered = render(&failure);
    assert!(!rendered.contains("hunter2-ssh"), "{rendered}");
    assert!(!rendered.contains("hunter3-phrase"), "{rendered}");
    insta::assert_snapshot!(rendered);
}

#[test]
fn a_home_path_without_home_is_an_error_at_the_field() {
    let text = format!(
        "{HEAD}  app:\n    type: postgres\n    url: postgres://reader@10.0.3.7/app\n    tls: {{mode: require}}\n    ssh:\n      host: bastion\n      user: deploy\n      key: ~/.ssh/id_ed25519\n    tables: {{t: }}\n"
    );
    let failure = load(&text, Env::new()).unwrap_err();
    insta::assert_snapshot!(render(&failure));
    // With the known_hosts written out, only the key's `~/` is left to report.
    let text = text.replace(
        "      key: ~/",
        "      known_hosts: /etc/ssh/ssh_known_hosts\n      key: ~/",
    );
    let failure = load(&text, Env::new()).unwrap_err();
    assert_eq!(failure.problems.len(), 1, "{}", render(&failure));
    assert_eq!(
        failure.problems[0].pointer(),
        Some("/sources/app/ssh/key"),
        "{}",
        render(&failure)
    );
}

#[test]
fn show_effective_lists_the_tunnel_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{HEAD}  app:\n    type: postgres\n    url: postgres://reader@10.0.3.7/app\n    tls: {{mode: require}}\n    ssh:\n      host: bastion\n      user: deploy\n      key: ~/.ssh/id_ed25519\n      key_passphrase: ${{PASS}}\n      password: ${{SSH_PW}}\n    tables: {{t: }}\n"
    );
    std::fs::write(dir.path().join("sync.yaml"), text).unwrap();
    let output = assert_cmd::Command::cargo_bin("datasync")
        .unwrap()
        .current_dir(dir.path())
        .env_clear()
        .env("NO_COLOR", "1")
        .env("HOME", "/home/sync")
        .env("PASS", "pass-phrase-2")
        .env("SSH_PW", "ssh-password-2")
        .args(["validate", "--show-effective"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        !stdout.contains("pass-phrase-2") && !stdout.contains("ssh-password-2"),
        "{stdout}"
    );
    let ssh: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("sources.app.ssh."))
        .collect();
    insta::assert_snapshot!(ssh.join("\n"));
}

/// A PostgreSQL source at 10.0.3.7 (unreachable here: a failure must come from the tunnel)
/// through `ssh`.
fn spec(ssh: SshSpec, connect: Duration) -> datasync::manifest::SourceSpec {
    let mut spec = crate::support::source_spec(SourceKind::Postgres, "postgres://u@10.0.3.7/app");
    spec.name = "app".into();
    spec.timeouts.connect = Some(connect);
    spec.ssh = Some(ssh);
    spec
}

fn ssh_spec(port: u16, dir: &Path) -> SshSpec {
    SshSpec {
        host: "127.0.0.1".into(),
        port,
        user: "deploy".into(),
        key: None,
        key_passphrase: None,
        password: Some(Secret::new("ssh-password-3")),
        known_hosts: dir.join("known_hosts").display().to_string(),
    }
}

async fn connect_error(spec: &datasync::manifest::SourceSpec) -> String {
    match Source::connect(spec).await {
        Ok(_) => panic!("connected"),
        Err(error) => error.to_string(),
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn key_files_fail_before_any_connection_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("known_hosts"), "").unwrap();
    let port = closed_port();
    let with_key = |key: &str, passphrase: Option<&str>| {
        let mut ssh = ssh_spec(port, dir.path());
        ssh.password = None;
        ssh.key = Some(dir.path().join(key).display().to_string());
        ssh.key_passphrase = passphrase.map(Secret::new);
        spec(ssh, Duration::from_secs(5))
    };
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(dir.path().join("plain"), PLAIN_KEY).unwrap();
    std::fs::write(dir.path().join("locked"), LOCKED_KEY).unwrap();
    std::fs::write(
        dir.path().join("plain.pub"),
        "ssh-ed25519 AAAA datasync-test\n",
    )
    .unwrap();

    let error = connect_error(&with_key("missing", None)).await;
    assert_eq!(
        error,
        format!(
            "cannot connect to source `app`: cannot read the SSH key `{}`: No such file or directory (os error 2)",
            path("missing")
        )
    );
    let error = connect_error(&with_key("locked", None)).await;
    assert_eq!(
        error,
        format!(
            "cannot connect to source `app`: the SSH key `{}` is encrypted: set `ssh.key_passphrase` (e.g. `${{SSH_KEY_PASSPHRASE}}`)",
            path("locked")
        )
    );
    let error = connect_error(&with_key("locked", Some("wrong horse"))).await;
    assert!(
        error.starts_with(&format!(
            "cannot connect to source `app`: cannot decrypt the SSH key `{}` with `ssh.key_passphrase` (wrong passphrase?)",
            path("locked")
        )),
        "{error}"
    );
    assert!(!error.contains("wrong horse"), "{error}");
    let error = connect_error(&with_key("plain.pub", None)).await;
    assert!(
        error.starts_with(&format!(
            "cannot connect to source `app`: `{}` is not a private key datasync can read",
            path("plain.pub")
        )),
        "{error}"
    );
    // The right passphrase and the plain key get as far as the network.
    for (key, passphrase) in [("locked", Some("correct horse")), ("plain", None)] {
        let error = connect_error(&with_key(key, passphrase)).await;
        assert!(
            error.starts_with(&format!(
                "cannot connect to source `app`: cannot reach the SSH server `127.0.0.1:{port}`: Connection refused"
            )),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_missing_known_hosts_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(ssh_spec(closed_port(), dir.path()), Duration::from_secs(5));
    let error = connect_error(&spec).await;
    assert_eq!(
        error,
        format!(
            "cannot connect to source `app`: cannot read the known_hosts file `{}`: No such file or directory (os error 2) (set `ssh.known_hosts`, or add the SSH server's key to it)",
            dir.path().join("known_hosts").display()
        )
    );
}

#[tokio::test]
async fn an_ssh_server_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("known_hosts"), "").unwrap();
    // Accepts TCP connections and never says a word (a black-holed bastion).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = Instant::now();
    let error = connect_error(&spec(ssh_spec(port, dir.path()), Duration::from_secs(1))).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        error,
        format!(
            "cannot connect to source `app`: the SSH server `127.0.0.1:{port}` did not complete the connection and login within 1s"
        )
    );
    assert!(!error.contains("ssh-password-3"));
    silent.abort();
}

#[tokio::test]
async fn a_sqlite_source_cannot_use_a_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = crate::support::source_spec(
        SourceKind::Sqlite,
        &format!("sqlite://{}", dir.path().join("x.db").display()),
    );
    spec.ssh = Some(ssh_spec(22, dir.path()));
    assert_eq!(
        connect_error(&spec).await,
        "cannot connect to source `test`: a sqlite source is a file: it cannot be reached through `ssh`"
    );
}
