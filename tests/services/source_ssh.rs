//! Sources through an SSH tunnel, against a real OpenSSH server: each test starts its own
//! `sshd -D -e -f <generated config>` on a free loopback port with a generated host key and
//! authorized_keys in a temporary directory (the system's sshd is neither needed nor touched;
//! `scripts/services.sh ssh` installs the binary). The databases are PostgreSQL and MariaDB on
//! loopback, reached as `127.0.0.1` *from the SSH server*; sshd's own log proves the rows came
//! through its `direct-tcpip` channels and counts its logins.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use datasync::manifest::SourceSpec;
use datasync::manifest::raw::{SourceKind, TlsMode};
use datasync::manifest::resolve::{BigQuerySpec, SshSpec};
use datasync::source::Source;
use datasync::warehouse::{BigQuery, Warehouse};
use sqlx::Executor as _;

const SSHD: &str = "/usr/sbin/sshd";

fn postgres_url() -> String {
    crate::support::url(
        "DATASYNC_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

fn mysql_url() -> String {
    crate::support::url(
        "DATASYNC_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
    )
}

fn bigquery_url() -> String {
    crate::support::url("DATASYNC_TEST_BIGQUERY_URL", "http://127.0.0.1:9050")
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A new unencrypted Ed25519 key pair at `path` (and `path.pub`).
fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "datasync-test", "-f"])
        .arg(path));
}

/// `SHA256:…` of a public key file, as `ssh-keygen -l` prints it.
fn fingerprint(public: &Path) -> String {
    let line = run(Command::new("ssh-keygen").arg("-lf").arg(public));
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// A loopback port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Our own sshd on loopback, killed (by its pid) when dropped.
struct Sshd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    user: String,
}

impl Sshd {
    fn start() -> Sshd {
        Self::start_with("")
    }

    /// With `extra` directives first in the config (the first value of a keyword wins).
    fn start_with(extra: &str) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "OpenSSH's sshd is not installed ({SSHD}); run `bash scripts/services.sh ssh` as root (it installs Debian's openssh-server without starting it)"
        );
        let dir = tempfile::tempdir().unwrap();
        for key in ["host_key", "user_key", "stranger_key"] {
            keygen(&dir.path().join(key));
        }
        std::fs::copy(
            dir.path().join("user_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let user = run(Command::new("id").arg("-un")).trim().to_string();
        if user == "root" && !Path::new("/run/sshd").exists() {
            // sshd's privilege-separation directory (the distribution's unit file makes it).
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let mut sshd = Sshd {
            dir,
            child: None,
            port: 0,
            user,
        };
        for _ in 0..5 {
            sshd.port = free_port();
            let config = sshd.path("sshd_config");
            let text = format!("{extra}\n{}", Self::config(sshd.dir.path(), sshd.port));
            std::fs::write(&config, text).unwrap();
            let log = std::fs::File::create(sshd.path("sshd.log")).unwrap();
            sshd.child = Some(
                Command::new(SSHD)
                    .args(["-D", "-e", "-f"])
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            );
            if sshd.ready() {
                return sshd;
            }
            sshd.stop();
        }
        panic!(
            "sshd did not start on a free loopback port in 5 tries:\n{}",
            sshd.log()
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn config(dir: &Path, port: u16) -> String {
        let dir = dir.display();
        format!(
            "Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
AllowAgentForwarding no
X11Forwarding no
PrintMotd no
LogLevel DEBUG1
"
        )
    }

    /// Waits (10 s at most) until sshd answers with its banner; false if it exited.
    fn ready(&mut self) -> bool {
        use std::io::Read as _;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Some(child) = self.child.as_mut() else {
                return false;
            };
            if child.try_wait().unwrap().is_some() {
                eprintln!("sshd exited: {}", self.log());
                return false;
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut banner = [0u8; 8];
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-" {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// Logins sshd accepted so far.
    fn logins(&self) -> usize {
        self.log()
            .matches(&format!("Accepted publickey for {} ", self.user))
            .count()
    }

    /// A known_hosts file `name` recording `key` (a public key file) for this server.
    fn known_hosts(&self, name: &str, key: &str) -> PathBuf {
        let public = std::fs::read_to_string(self.path(key)).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, base64) = (fields.next().unwrap(), fields.next().unwrap());
        let path = self.path(name);
        std::fs::write(
            &path,
            format!(
                "# datasync test\n[127.0.0.1]:{} {kind} {base64}\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    /// The tunnel settings: this server, our user, `key`, `known_hosts`.
    fn ssh(&self, key: &str, known_hosts: &Path) -> SshSpec {
        SshSpec {
            host: "127.0.0.1".into(),
            port: self.port,
            user: self.user.clone(),
            key: Some(self.path(key).display().to_string()),
            key_passphrase: None,
            password: None,
            known_hosts: known_hosts.display().to_string(),
        }
    }

    /// Waits (10 s at most) until sshd's log contains `text`.
    fn wait_for_log(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spec(kind: SourceKind, url: &str, ssh: SshSpec) -> SourceSpec {
    let mut spec = crate::support::source_spec(kind, url);
    spec.name = "tunnelled".into();
    spec.ssh = Some(ssh);
    spec
}

async fn connect_error(spec: &SourceSpec) -> String {
    match Source::connect(spec).await {
        Ok(_) => panic!("connected through the tunnel"),
        Err(error) => error.to_string(),
    }
}

/// The unique scratch names, and their removal (also when a test fails).
struct Scratch {
    name: String,
}

impl Scratch {
    fn new(test: &str) -> Self {
        Self {
            name: crate::support::unique(&format!("dsssh_{test}")),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&postgres_url()).await {
                    let _ = pool
                        .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                        .await;
                }
                if let Ok(pool) = sqlx::MySqlPool::connect(&mysql_url()).await {
                    let _ = pool
                        .execute(format!("DROP TABLE IF EXISTS {name}").as_str())
                        .await;
                }
                let url = format!(
                    "{}/bigquery/v2/projects/datasync-test/datasets/{name}?deleteContents=true",
                    bigquery_url()
                );
                let _ = reqwest::Client::new().delete(url).send().await;
            });
        })
        .join();
    }
}

fn datasync(dir: &Path, args: &[&str]) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("datasync"))
        .current_dir(dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn seed(name: &str) {
    let pg = sqlx::PgPool::connect(&postgres_url())
        .await
        .unwrap_or_else(|error| {
            panic!("PostgreSQL is unreachable ({error}); run scripts/services.sh")
        });
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {name};
         CREATE TABLE {name}.items (id bigint PRIMARY KEY, label text NOT NULL);
         INSERT INTO {name}.items SELECT g, 'pg-' || g FROM generate_series(1, 250) g;"
    ))
    .execute(&pg)
    .await
    .unwrap();
    let my = sqlx::MySqlPool::connect(&mysql_url())
        .await
        .unwrap_or_else(|error| {
            panic!("MariaDB is unreachable ({error}); run scripts/services.sh")
        });
    sqlx::raw_sql(&format!(
        "CREATE TABLE {name} (id bigint PRIMARY KEY, label varchar(20) NOT NULL);
         INSERT INTO {name} SELECT seq, CONCAT('my-', seq) FROM seq_1_to_120;"
    ))
    .execute(&my)
    .await
    .unwrap();
}

async fn count(warehouse: &BigQuery, dataset: &str, table: &str) -> u64 {
    let sql = format!("SELECT COUNT(*) FROM `datasync-test.{dataset}.{table}`");
    let result = warehouse.query(&sql, &[]).await.unwrap();
    let cell = result.scalar().cloned().unwrap_or_default();
    cell.as_u64()
        .or_else(|| cell.as_str().and_then(|text| text.parse().ok()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_and_mariadb_sources_sync_through_the_tunnel() {
    let sshd = Sshd::start();
    let scratch = Scratch::new("sync");
    let name = &scratch.name;
    seed(name).await;
    // The PostgreSQL entry is plain, the MariaDB one hashed (`ssh-keygen -H`, Debian's
    // default for the entries ssh itself learns).
    let plain = sshd.known_hosts("known_hosts", "host_key.pub");
    let hashed = sshd.known_hosts("known_hosts_hashed", "host_key.pub");
    run(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&hashed));
    assert!(std::fs::read_to_string(&hashed).unwrap().contains("|1|"));
    let tunnel = |known_hosts: &Path| {
        format!(
            "{{host: 127.0.0.1, port: {}, user: {}, key: {}, known_hosts: {}}}",
            sshd.port,
            sshd.user,
            sshd.path("user_key").display(),
            known_hosts.display()
        )
    };
    let manifest = format!(
        "bigquery:
  project: datasync-test
  dataset: {name}
  endpoint: {bq}
  emulator: true
  create_dataset: true
sources:
  pg:
    type: postgres
    url: {pg}
    schema: {name}
    ssh: {pg_tunnel}
    tables:
      items: {{target: pg_items}}
  my:
    type: mysql
    url: {my}
    ssh: {my_tunnel}
    tables:
      {name}: {{target: my_items}}
",
        bq = bigquery_url(),
        pg = postgres_url(),
        my = mysql_url(),
        pg_tunnel = tunnel(&plain),
        my_tunnel = tunnel(&hashed),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sync.yaml"), manifest).unwrap();

    let plan = datasync(dir.path(), &["plan"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(text(&plan).contains("~250 rows"), "{}", text(&plan));
    assert!(text(&plan).contains("~120 rows"), "{}", text(&plan));
    // One login per source and run, however many connections each pool opened.
    assert_eq!(sshd.logins(), 2, "{}", sshd.log());

    let dry = datasync(dir.path(), &["apply", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(
        text(&dry).contains("dry run: 2 of 2 table(s) synced, 370 rows"),
        "{}",
        text(&dry)
    );

    let apply = datasync(dir.path(), &["apply"]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    let warehouse = BigQuery::new(&BigQuerySpec {
        project: "datasync-test".into(),
        dataset: name.clone(),
        endpoint: Some(bigquery_url()),
        emulator: true,
        ..BigQuerySpec::default()
    })
    .unwrap();
    assert_eq!(count(&warehouse, name, "pg_items").await, 250);
    assert_eq!(count(&warehouse, name, "my_items").await, 120);

    // The rows came through sshd's channels: it connected to both databases itself.
    let log = sshd.log();
    let port = |url: &str| {
        url.rsplit_once(':')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    for target in [port(&postgres_url()), port(&mysql_url())] {
        assert!(
            log.contains(&format!("server_request_direct_tcpip: originator 127.0.0.1 port 0, target 127.0.0.1 port {target}")),
            "no direct-tcpip channel to port {target} in the sshd log:\n{log}"
        );
    }
    assert_eq!(sshd.logins(), 6, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_or_changed_host_key_is_refused_before_logging_in() {
    let sshd = Sshd::start();
    let offered = fingerprint(&sshd.path("host_key.pub"));
    let server = format!("127.0.0.1:{}", sshd.port);

    let empty = sshd.path("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let error = connect_error(&spec(
        SourceKind::Postgres,
        &postgres_url(),
        sshd.ssh("user_key", &empty),
    ))
    .await;
    assert_eq!(
        error,
        format!(
            "cannot connect to source `tunnelled`: the SSH server `{server}` is not in the known_hosts file `{file}` (it offers the host key ssh-ed25519 {offered}): check that fingerprint with the server's administrator, then add the key, e.g. `ssh-keyscan -p {port} 127.0.0.1 >> {file}`",
            file = empty.display(),
            port = sshd.port,
        )
    );

    // Another key recorded for this server: a changed key, by line.
    let changed = sshd.known_hosts("changed_known_hosts", "stranger_key.pub");
    let error = connect_error(&spec(
        SourceKind::Mysql,
        &mysql_url(),
        sshd.ssh("user_key", &changed),
    ))
    .await;
    assert_eq!(
        error,
        format!(
            "cannot connect to source `tunnelled`: the host key of the SSH server `{server}` changed: it offers ssh-ed25519 {offered}, but line 2 of the known_hosts file `{}` records another key. Someone may be intercepting the connection, or the server's key was replaced: ask its administrator before updating that line",
            changed.display()
        )
    );

    // The right key, but for another port of the same host: still unknown.
    let other_port = sshd.path("other_port_known_hosts");
    std::fs::write(
        &other_port,
        std::fs::read_to_string(sshd.known_hosts("x", "host_key.pub"))
            .unwrap()
            .replace(&format!("]:{} ", sshd.port), "]:1 "),
    )
    .unwrap();
    let error = connect_error(&spec(
        SourceKind::Postgres,
        &postgres_url(),
        sshd.ssh("user_key", &other_port),
    ))
    .await;
    assert!(error.contains("is not in the known_hosts file"), "{error}");
    assert_eq!(
        sshd.logins(),
        0,
        "a refused host key must end before the login"
    );

    // The CLI says the same, and fails as a connection error.
    let scratch = Scratch::new("hostkey");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "bigquery: {{project: datasync-test, dataset: {}, endpoint: {}, emulator: true, create_dataset: true}}\nsources:\n  pg:\n    type: postgres\n    url: {}\n    ssh: {{host: 127.0.0.1, port: {}, user: {}, key: {}, known_hosts: {}}}\n    tables: {{items: }}\n",
            scratch.name,
            bigquery_url(),
            postgres_url(),
            sshd.port,
            sshd.user,
            sshd.path("user_key").display(),
            changed.display()
        ),
    )
    .unwrap();
    let plan = datasync(dir.path(), &["plan"]);
    assert_ne!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        text(&plan).contains(&format!(
            "cannot connect to source `pg`: the host key of the SSH server `{server}` changed: it offers ssh-ed25519 {offered}"
        )),
        "{}",
        text(&plan)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_the_server_does_not_authorize_is_refused() {
    let sshd = Sshd::start();
    let known = sshd.known_hosts("known_hosts", "host_key.pub");
    let error = connect_error(&spec(
        SourceKind::Postgres,
        &postgres_url(),
        sshd.ssh("stranger_key", &known),
    ))
    .await;
    assert_eq!(
        error,
        format!(
            "cannot connect to source `tunnelled`: the SSH server `127.0.0.1:{}` refused the login of user `{}` with the key `{}` (ssh-ed25519 {}) (it accepts: publickey); is the key's public half in that user's ~/.ssh/authorized_keys on the server?",
            sshd.port,
            sshd.user,
            sshd.path("stranger_key").display(),
            fingerprint(&sshd.path("stranger_key.pub")),
        )
    );
    assert_eq!(sshd.logins(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_the_ssh_server_cannot_reach_is_named_with_the_cause() {
    let sshd = Sshd::start();
    let known = sshd.known_hosts("known_hosts", "host_key.pub");
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let error = connect_error(&spec(
        SourceKind::Postgres,
        &url,
        sshd.ssh("user_key", &known),
    ))
    .await;
    assert!(
        error.starts_with(&format!(
            "cannot connect to source `tunnelled`: the SSH server `127.0.0.1:{ssh}` could not open a connection to `127.0.0.1:{port}`: connect failed (is the database's host and port right as seen from the SSH server?) (the driver: ",
            ssh = sshd.port,
        )),
        "{error}"
    );
    assert!(
        error.ends_with(&format!(
            ") (at {url} through the SSH server `{user}@127.0.0.1:{ssh}`)",
            user = sshd.user,
            ssh = sshd.port,
        )),
        "{error}"
    );

    // A server that forbids forwarding says so.
    let strict = Sshd::start_with("AllowTcpForwarding no");
    let known = strict.known_hosts("known_hosts", "host_key.pub");
    let error = connect_error(&spec(
        SourceKind::Mysql,
        &mysql_url(),
        strict.ssh("user_key", &known),
    ))
    .await;
    assert!(
        error.starts_with(&format!(
            "cannot connect to source `tunnelled`: the SSH server `127.0.0.1:{}` could not open a connection to `127.0.0.1:3306`: administratively prohibited (does the server allow TCP forwarding, `AllowTcpForwarding`, for this user?)",
            strict.port
        )),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tunnel_keeps_tls_lives_with_the_source_and_reconnects() {
    let sshd = Sshd::start();
    let known = sshd.known_hosts("known_hosts", "host_key.pub");
    let mut spec = spec(
        SourceKind::Postgres,
        &postgres_url(),
        sshd.ssh("user_key", &known),
    );
    // TLS is negotiated end to end, inside the tunnel, when the server has it on.
    let direct = crate::support::connect(SourceKind::Postgres, &postgres_url()).await;
    let Source::Postgres(direct_pool) = &direct else {
        panic!("not postgres")
    };
    let server_tls: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(direct_pool)
        .await
        .unwrap();
    if server_tls == "on" {
        spec.tls.mode = TlsMode::Require;
    }
    let source = Source::connect(&spec).await.unwrap();
    let Source::Postgres(pool) = &source else {
        panic!("not postgres")
    };
    let tls: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(tls, server_tls == "on");
    assert_eq!(sshd.logins(), 1);

    // The SSH session dies (its sshd processes are killed): the next connection the pool
    // opens logs in again, through the same `Source`.
    let sessions = children(sshd.pid());
    assert!(!sessions.is_empty(), "no sshd session process");
    for pid in sessions {
        run(Command::new("kill").arg("-9").arg(pid.to_string()));
    }
    let listed = source.list_tables(Some("pg_catalog")).await.unwrap();
    assert!(listed.iter().any(|entry| entry.name == "pg_class"));
    assert_eq!(sshd.logins(), 2, "{}", sshd.log());

    // Dropping the source ends the SSH session.
    drop(source);
    assert!(
        sshd.wait_for_log(&format!("Disconnected from user {}", sshd.user)),
        "{}",
        sshd.log()
    );
    drop(direct);
}

/// A CA and a server certificate for `name` it signed: (CA PEM, TLS acceptor).
fn tls_for(name: &str) -> (String, tokio_rustls::TlsAcceptor) {
    use tokio_rustls::rustls;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut leaf_params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    (
        ca.pem(),
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
    )
}

/// A PostgreSQL server that only does TLS: it answers the SSLRequest, completes the handshake
/// and reports the server name the client asked for, then hangs up.
async fn tls_only_postgres(
    acceptor: tokio_rustls::TlsAcceptor,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Option<String>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, handshakes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            if stream.read_exact(&mut request).await.is_err() {
                continue;
            }
            // SSLRequest: length 8, code 80877103.
            assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47]);
            stream.write_all(b"S").await.unwrap();
            if let Ok(tls) = acceptor.accept(stream).await {
                let _ = seen.send(tls.get_ref().1.server_name().map(str::to_string));
            }
        }
    });
    (port, handshakes)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_checks_the_database_host_name_through_the_tunnel() {
    let sshd = Sshd::start();
    let known = sshd.known_hosts("known_hosts", "host_key.pub");
    for (certificate_for, verified) in [("localhost", true), ("db.elsewhere.example", false)] {
        let (ca, acceptor) = tls_for(certificate_for);
        let ca_file = sshd.path("ca.pem");
        std::fs::write(&ca_file, ca).unwrap();
        let (port, mut handshakes) = tls_only_postgres(acceptor).await;
        // `localhost` is what the SSH server connects to, and what TLS must check.
        let mut spec = spec(
            SourceKind::Postgres,
            &format!("postgres://reader@localhost:{port}/app"),
            sshd.ssh("user_key", &known),
        );
        spec.tls.mode = TlsMode::VerifyFull;
        spec.tls.ca = Some(ca_file.display().to_string());
        let error = connect_error(&spec).await;
        let handshake = tokio::time::timeout(Duration::from_millis(500), handshakes.recv()).await;
        if verified {
            assert_eq!(
                handshake.ok().flatten(),
                Some(Some("localhost".to_string())),
                "no TLS handshake for `localhost` through the tunnel: {error}"
            );
        } else {
            assert!(
                handshake.is_err() || handshake.is_ok_and(|seen| seen.is_none()),
                "a certificate for another host was accepted"
            );
            assert!(error.contains("certificate"), "{error}");
        }
    }
}

/// The pids of a process's descendants (Linux `/proc`), children first.
fn children(pid: u32) -> Vec<u32> {
    let direct: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    let mut all = direct.clone();
    for child in direct {
        all.extend(children(child));
    }
    all
}
