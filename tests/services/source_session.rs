//! Connection settings reach the servers: TLS modes (adapting to whether each test server has
//! TLS on), session time zone and timeouts, all checked from the server's side.

use datasync::manifest::raw::{SourceKind, TlsMode};
use datasync::source::Source;
use sqlx::Row as _;

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

async fn connect(kind: SourceKind, url: &str, mode: TlsMode) -> Result<Source, String> {
    let mut spec = crate::support::source_spec(kind, url);
    spec.tls.mode = mode;
    Source::connect(&spec)
        .await
        .map_err(|error| error.to_string())
}

async fn pg_session_uses_tls(source: &Source) -> bool {
    let Source::Postgres(pool) = source else {
        panic!("not postgres")
    };
    sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
        .get::<bool, _>(0)
}

#[tokio::test]
async fn postgres_tls_modes() {
    let plain = crate::support::connect(SourceKind::Postgres, &postgres_url()).await;
    let Source::Postgres(pool) = &plain else {
        panic!("not postgres")
    };
    let server_tls: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(pool)
        .await
        .unwrap();

    let disabled = connect(SourceKind::Postgres, &postgres_url(), TlsMode::Disable)
        .await
        .unwrap();
    assert!(
        !pg_session_uses_tls(&disabled).await,
        "mode disable negotiated TLS"
    );

    let required = connect(SourceKind::Postgres, &postgres_url(), TlsMode::Require).await;
    if server_tls == "on" {
        assert!(
            pg_session_uses_tls(&required.unwrap()).await,
            "mode require did not negotiate TLS"
        );
        // The test server's certificate is self-signed: full verification must refuse it.
        let verified = connect(SourceKind::Postgres, &postgres_url(), TlsMode::VerifyFull).await;
        let error = verified.expect_err("verify-full accepted a self-signed certificate");
        assert!(!error.contains("password"), "{error}");
    } else {
        let error = required.expect_err("require connected to a server without TLS");
        assert!(
            error.to_lowercase().contains("tls") || error.to_lowercase().contains("ssl"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn mysql_tls_modes() {
    let plain = crate::support::connect(SourceKind::Mysql, &mysql_url()).await;
    let Source::Mysql(pool) = &plain else {
        panic!("not mysql")
    };
    let have_ssl: String = sqlx::query("SHOW VARIABLES LIKE 'have_ssl'")
        .fetch_one(pool)
        .await
        .unwrap()
        .get::<String, _>(1);

    let disabled = connect(SourceKind::Mysql, &mysql_url(), TlsMode::Disable)
        .await
        .unwrap();
    let Source::Mysql(pool) = &disabled else {
        panic!("not mysql")
    };
    let cipher: String = sqlx::query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(pool)
        .await
        .unwrap()
        .get::<String, _>(1);
    assert_eq!(cipher, "", "mode disable negotiated TLS");

    let required = connect(SourceKind::Mysql, &mysql_url(), TlsMode::Require).await;
    if have_ssl == "YES" {
        let required = required.unwrap();
        let Source::Mysql(pool) = &required else {
            panic!("not mysql")
        };
        let cipher: String = sqlx::query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            .fetch_one(pool)
            .await
            .unwrap()
            .get::<String, _>(1);
        assert_ne!(cipher, "", "mode require did not negotiate TLS");
    } else {
        // The server has no TLS: `require` must refuse rather than fall back to plain text.
        let error = required.expect_err("require connected without TLS");
        assert!(
            error.to_lowercase().contains("tls") || error.to_lowercase().contains("ssl"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn postgres_session_settings() {
    let mut spec = crate::support::source_spec(SourceKind::Postgres, &postgres_url());
    spec.timeouts.statement = Some(std::time::Duration::from_millis(1500));
    let source = Source::connect(&spec).await.unwrap();
    let Source::Postgres(pool) = &source else {
        panic!("not postgres")
    };
    let row = sqlx::query("SELECT current_setting('TimeZone'), current_setting('statement_timeout'), current_setting('application_name')")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "UTC");
    assert_eq!(row.get::<String, _>(1), "1500ms");
    assert_eq!(row.get::<String, _>(2), "datasync");

    // Without a statement timeout, none is set (one query streams a whole table).
    let source = crate::support::connect(SourceKind::Postgres, &postgres_url()).await;
    let Source::Postgres(pool) = &source else {
        panic!("not postgres")
    };
    let timeout: String = sqlx::query_scalar("SELECT current_setting('statement_timeout')")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(timeout, "0");
}

#[tokio::test]
async fn mysql_session_settings() {
    let mut spec = crate::support::source_spec(SourceKind::Mysql, &mysql_url());
    spec.timeouts.read = Some(std::time::Duration::from_secs(120));
    spec.timeouts.write = Some(std::time::Duration::from_secs(240));
    let source = Source::connect(&spec).await.unwrap();
    let Source::Mysql(pool) = &source else {
        panic!("not mysql")
    };
    let row = sqlx::query(
        "SELECT @@session.time_zone, @@session.net_read_timeout, @@session.net_write_timeout",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "+00:00");
    assert_eq!(row.get::<u64, _>(1), 120);
    assert_eq!(row.get::<u64, _>(2), 240);
}
