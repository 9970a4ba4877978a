//! SSH tunnels: a source database behind a bastion host.
//!
//! [`Tunnel::open`] connects to the SSH server once per source, checks its host key against the
//! known_hosts file — always: an unknown server, a changed or a revoked key fails the
//! connection, nothing is learned on first use — and logs in with the key file (then the
//! password, if one is set). It then listens on a Unix socket in a private temporary directory
//! (mode 0700: no other local user can use the tunnel, unlike a loopback TCP port). Each
//! connection the driver opens there becomes one `direct-tcpip` channel (RFC 4254 §7.2) to the
//! database's `host:port`, resolved and connected by the SSH server, and bytes are copied both
//! ways. Only the driver's socket changes: the host name the user wrote stays the TLS server
//! name, so `verify-full` checks the database's certificate against it.
//!
//! The source's pool owns the tunnel (its connect hook holds the `Arc`): dropping the `Source`
//! drops the pool, which stops the listener and every channel, ends the SSH session and removes
//! the directory. Keepalives detect a dead link (no hang); a session that ended is opened again for
//! the next connection.

mod known_hosts;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult, Handle, Msg};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure};

use crate::manifest::resolve::SshSpec;

/// Keepalive interval on the SSH session; after [`KEEPALIVE_MAX`] unanswered ones the session
/// ends and the connections through it fail instead of hanging.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 3;

/// Why a tunnel could not be opened (or a channel through it). The message names the SSH
/// server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SshError {
    /// A refusal we worded (host key, login, key file, timeout); the message is complete.
    #[error("{0}")]
    Refused(String),
    /// The SSH library's error (network, protocol).
    #[error("{0}")]
    Protocol(#[from] russh::Error),
}

impl SshError {
    /// The message, with the server named for library errors.
    fn describe(self, server: &str) -> String {
        match self {
            Self::Refused(message) => message,
            Self::Protocol(russh::Error::IO(error)) => {
                format!("cannot reach the SSH server `{server}`: {error}")
            }
            Self::Protocol(russh::Error::Disconnect | russh::Error::HUP) => {
                format!("the SSH server `{server}` closed the connection")
            }
            Self::Protocol(error) => format!("SSH server `{server}`: {error}"),
        }
    }
}

/// Checks the server's host key; refuses channels the server would open towards us.
struct Client {
    /// `host:port`, for messages.
    server: String,
    host: String,
    port: u16,
    known_hosts: PathBuf,
}

impl client::Handler for Client {
    type Error = SshError;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, SshError> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Err(SshError::Refused(format!(
                "the SSH server `{}` offered a host certificate; datasync checks host keys against known_hosts only",
                self.server
            )));
        };
        let text = read_known_hosts(&self.known_hosts)?;
        let file = self.known_hosts.display();
        let offered = known_hosts::describe(key);
        let server = &self.server;
        match known_hosts::verdict(&text, &self.host, self.port, key) {
            known_hosts::Verdict::Known => Ok(true),
            known_hosts::Verdict::Unknown => Err(SshError::Refused(format!(
                "the SSH server `{server}` is not in the known_hosts file `{file}` (it offers the host key {offered}): check that fingerprint with the server's administrator, then add the key, e.g. `ssh-keyscan -p {port} {host} >> {file}`",
                port = self.port,
                host = self.host,
            ))),
            known_hosts::Verdict::Changed { line } => Err(SshError::Refused(format!(
                "the host key of the SSH server `{server}` changed: it offers {offered}, but line {line} of the known_hosts file `{file}` records another key. Someone may be intercepting the connection, or the server's key was replaced: ask its administrator before updating that line"
            ))),
            known_hosts::Verdict::Revoked { line } => Err(SshError::Refused(format!(
                "the SSH server `{server}` offers the host key {offered}, which line {line} of the known_hosts file `{file}` marks @revoked"
            ))),
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), SshError> {
        // No remote forwarding was asked for: dropping the reply refuses the channel.
        drop(reply);
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: Channel<Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), SshError> {
        drop(reply);
        Ok(())
    }
}

fn read_known_hosts(path: &Path) -> Result<String, SshError> {
    std::fs::read_to_string(path).map_err(|error| {
        SshError::Refused(format!(
            "cannot read the known_hosts file `{}`: {error} (set `ssh.known_hosts`, or add the SSH server's key to it)",
            path.display()
        ))
    })
}

/// Reads (and decrypts) the private key file. Off the async threads: decrypting an OpenSSH key
/// runs bcrypt rounds.
async fn load_key(path: &str, passphrase: Option<String>) -> Result<PrivateKey, SshError> {
    let file = path.to_string();
    let loaded = tokio::task::spawn_blocking(move || {
        russh::keys::load_secret_key(&file, passphrase.as_deref())
            .map_err(|error| (error, passphrase.is_some()))
    })
    .await
    .map_err(|error| SshError::Refused(format!("reading the SSH key `{path}`: {error}")))?;
    loaded.map_err(|(error, had_passphrase)| {
        SshError::Refused(match error {
            russh::keys::Error::IO(error) => format!("cannot read the SSH key `{path}`: {error}"),
            russh::keys::Error::KeyIsEncrypted => format!(
                "the SSH key `{path}` is encrypted: set `ssh.key_passphrase` (e.g. `${{SSH_KEY_PASSPHRASE}}`)"
            ),
            error if had_passphrase => format!(
                "cannot decrypt the SSH key `{path}` with `ssh.key_passphrase` (wrong passphrase?): {error}"
            ),
            error => format!("`{path}` is not a private key datasync can read: {error}"),
        })
    })
}

/// Everything needed to open (and reopen) the SSH session.
struct Connector {
    spec: SshSpec,
    /// `host:port`.
    server: String,
    key: Option<Arc<PrivateKey>>,
    config: Arc<client::Config>,
    timeout: Duration,
}

impl Connector {
    async fn new(spec: &SshSpec, timeout: Duration) -> Result<Self, SshError> {
        let key = match &spec.key {
            Some(path) => Some(Arc::new(
                load_key(
                    path,
                    spec.key_passphrase
                        .as_ref()
                        .map(|secret| secret.expose().to_string()),
                )
                .await?,
            )),
            None => None,
        };
        let known = read_known_hosts(Path::new(&spec.known_hosts))?;
        let defaults = russh::Preferred::default();
        let preferred = russh::Preferred {
            key: known_hosts::preferred_algorithms(&known, &spec.host, spec.port, &defaults.key)
                .into(),
            ..defaults.clone()
        };
        let config = client::Config {
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            preferred,
            ..client::Config::default()
        };
        Ok(Self {
            server: format!("{}:{}", spec.host, spec.port),
            spec: spec.clone(),
            key,
            config: Arc::new(config),
            timeout,
        })
    }

    /// Connects, checks the host key and logs in, within the connect timeout.
    async fn connect(&self) -> Result<Handle<Client>, String> {
        match tokio::time::timeout(self.timeout, self.handshake()).await {
            Ok(result) => result.map_err(|error| error.describe(&self.server)),
            Err(_) => Err(format!(
                "the SSH server `{}` did not complete the connection and login within {}",
                self.server,
                humantime::format_duration(self.timeout)
            )),
        }
    }

    async fn handshake(&self) -> Result<Handle<Client>, SshError> {
        let client = Client {
            server: self.server.clone(),
            host: self.spec.host.clone(),
            port: self.spec.port,
            known_hosts: PathBuf::from(&self.spec.known_hosts),
        };
        let address = (self.spec.host.as_str(), self.spec.port);
        let mut handle = client::connect(Arc::clone(&self.config), address, client).await?;
        self.login(&mut handle).await?;
        Ok(handle)
    }

    /// Public key first, then the password; a refusal names what was tried and what the
    /// server accepts.
    async fn login(&self, handle: &mut Handle<Client>) -> Result<(), SshError> {
        let user = &self.spec.user;
        let mut tried = Vec::new();
        let mut accepted = String::new();
        if let Some(key) = &self.key {
            let hash = if key.algorithm().is_rsa() {
                handle.best_supported_rsa_hash().await?.flatten()
            } else {
                None
            };
            let offer = PrivateKeyWithHashAlg::new(Arc::clone(key), hash);
            match handle.authenticate_publickey(user, offer).await? {
                AuthResult::Success => return Ok(()),
                AuthResult::Failure {
                    remaining_methods, ..
                } => accepted = methods(&remaining_methods),
            }
            tried.push(format!(
                "the key `{}` ({})",
                self.spec.key.as_deref().unwrap_or_default(),
                known_hosts::describe(key.public_key())
            ));
        }
        if let Some(password) = &self.spec.password {
            match handle
                .authenticate_password(user, password.expose())
                .await?
            {
                AuthResult::Success => return Ok(()),
                AuthResult::Failure {
                    remaining_methods, ..
                } => accepted = methods(&remaining_methods),
            }
            tried.push("the password".into());
        }
        Err(SshError::Refused(format!(
            "the SSH server `{}` refused the login of user `{user}` with {} (it accepts: {accepted}); is the key's public half in that user's ~/.ssh/authorized_keys on the server?",
            self.server,
            tried.join(" and "),
        )))
    }
}

fn methods(set: &russh::MethodSet) -> String {
    let names: Vec<&str> = set.iter().map(<&str>::from).collect();
    if names.is_empty() {
        "nothing more".into()
    } else {
        names.join(", ")
    }
}

/// The SSH session and where its channels go, shared by the listener's connections.
struct Link {
    connector: Connector,
    session: tokio::sync::Mutex<Arc<Handle<Client>>>,
    target_host: String,
    target_port: u16,
    last_error: Mutex<Option<String>>,
}

impl Link {
    fn fail(&self, message: String) {
        tracing::warn!(target: "datasync::ssh", "{message}");
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(message);
        }
    }

    /// The session, opened again if it ended (a server restart, a dead link) or is `stale`
    /// (a channel could not be opened on it).
    async fn session(
        &self,
        stale: Option<&Arc<Handle<Client>>>,
    ) -> Result<Arc<Handle<Client>>, String> {
        let mut current = self.session.lock().await;
        if current.is_closed() || stale.is_some_and(|stale| Arc::ptr_eq(stale, &current)) {
            tracing::info!(
                target: "datasync::ssh",
                "the SSH session to `{}` ended; logging in again",
                self.connector.server
            );
            *current = Arc::new(self.connector.connect().await?);
        }
        Ok(Arc::clone(&current))
    }

    /// A `direct-tcpip` channel to the database. A session that fails to open one (it died
    /// before we noticed) is replaced once; a refusal by the server is final.
    async fn open_channel(&self) -> Result<Channel<Msg>, String> {
        let (host, port) = (&self.target_host, self.target_port);
        let server = &self.connector.server;
        let mut stale = None;
        loop {
            let session = self.session(stale.as_ref()).await?;
            let open =
                session.channel_open_direct_tcpip(host.as_str(), u32::from(port), "127.0.0.1", 0);
            match tokio::time::timeout(self.connector.timeout, open).await {
                Ok(Ok(channel)) => return Ok(channel),
                Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
                    return Err(format!(
                        "the SSH server `{server}` could not open a connection to `{host}:{port}`: {}",
                        open_failure(&reason)
                    ));
                }
                Ok(Err(error)) if stale.is_some() => {
                    return Err(SshError::Protocol(error).describe(server));
                }
                Ok(Err(_)) => stale = Some(session),
                Err(_) => {
                    return Err(format!(
                        "the SSH server `{server}` did not open a connection to `{host}:{port}` within {}",
                        humantime::format_duration(self.connector.timeout)
                    ));
                }
            }
        }
    }
}

fn open_failure(reason: &ChannelOpenFailure) -> String {
    match reason {
        ChannelOpenFailure::AdministrativelyProhibited => {
            "administratively prohibited (does the server allow TCP forwarding, `AllowTcpForwarding`, for this user?)".into()
        }
        ChannelOpenFailure::ConnectFailed => {
            "connect failed (is the database's host and port right as seen from the SSH server?)".into()
        }
        ChannelOpenFailure::UnknownChannelType => "the server does not support direct-tcpip channels".into(),
        ChannelOpenFailure::ResourceShortage => "resource shortage on the server".into(),
        ChannelOpenFailure::Other { code, reason } => format!("{reason} (code {code})"),
    }
}

/// One connection from the driver: a channel to the database, bytes copied both ways until
/// either side closes.
#[cfg(unix)]
async fn forward(mut local: tokio::net::UnixStream, link: Arc<Link>) {
    let channel = match link.open_channel().await {
        Ok(channel) => channel,
        // Dropping `local` closes the driver's connection; its error is completed with this.
        Err(message) => return link.fail(message),
    };
    let mut remote = channel.into_stream();
    if let Err(error) = tokio::io::copy_bidirectional(&mut local, &mut remote).await {
        tracing::debug!(target: "datasync::ssh", "tunnelled connection ended: {error}");
    }
}

#[cfg(unix)]
async fn serve(listener: tokio::net::UnixListener, link: Arc<Link>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(forward(stream, Arc::clone(&link)));
                }
                Err(error) => {
                    link.fail(format!("the SSH tunnel's socket failed: {error}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// An open tunnel: the SSH session and the socket the driver connects to. Dropping it stops
/// the listener and every tunnelled connection, and removes the socket's directory.
pub(crate) struct Tunnel {
    /// `user@host:port` of the SSH server.
    label: String,
    /// The private directory holding the socket.
    dir: tempfile::TempDir,
    socket: PathBuf,
    link: Arc<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("server", &self.label)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
        // Say goodbye (SSH_MSG_DISCONNECT) when a runtime is still there to send it; otherwise
        // the session just ends with its TCP connection.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let link = Arc::clone(&self.link);
            runtime.spawn(async move {
                let session = Arc::clone(&*link.session.lock().await);
                let _ = session
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await;
            });
        }
    }
}

impl Tunnel {
    /// Connects and logs in to the SSH server (within `timeout`), then listens on
    /// `<private dir>/<socket_name>` for connections to `target_host:target_port` (as the SSH
    /// server resolves them).
    pub(crate) async fn open(
        spec: &SshSpec,
        target_host: &str,
        target_port: u16,
        socket_name: &str,
        timeout: Duration,
    ) -> Result<Tunnel, String> {
        let server = format!("{}:{}", spec.host, spec.port);
        let connector = Connector::new(spec, timeout)
            .await
            .map_err(|error| error.describe(&server))?;
        let session = connector.connect().await?;
        let dir = tempfile::Builder::new()
            .prefix("datasync-ssh-")
            .tempdir()
            .map_err(|error| format!("cannot create the SSH tunnel's socket directory: {error}"))?;
        let socket = dir.path().join(socket_name);
        let link = Arc::new(Link {
            connector,
            session: tokio::sync::Mutex::new(Arc::new(session)),
            target_host: target_host.to_string(),
            target_port,
            last_error: Mutex::new(None),
        });
        let task = Self::listen(&socket, Arc::clone(&link))?;
        tracing::debug!(target: "datasync::ssh", "tunnel to {target_host}:{target_port} through {} at {}", spec.label(), socket.display());
        Ok(Tunnel {
            label: spec.label(),
            dir,
            socket,
            link,
            task,
        })
    }

    #[cfg(unix)]
    fn listen(socket: &Path, link: Arc<Link>) -> Result<tokio::task::JoinHandle<()>, String> {
        let listener = tokio::net::UnixListener::bind(socket).map_err(|error| {
            format!(
                "cannot listen on the SSH tunnel's socket `{}`: {error}",
                socket.display()
            )
        })?;
        Ok(tokio::spawn(serve(listener, link)))
    }

    #[cfg(not(unix))]
    fn listen(_socket: &Path, _link: Arc<Link>) -> Result<tokio::task::JoinHandle<()>, String> {
        Err("SSH tunnels need Unix sockets, which this system lacks".into())
    }

    /// The directory of the socket (PostgreSQL's driver takes the directory and names the
    /// socket `.s.PGSQL.<port>` itself).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The socket's path.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The last failure inside the tunnel (a channel the server could not open, a lost
    /// session), to complete a driver error that only saw its connection close.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.link
            .last_error
            .lock()
            .ok()
            .and_then(|last| last.clone())
    }
}
