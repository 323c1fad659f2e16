//! SSH to nodes, with async-ssh2-lite: connect with host-key checking against a
//! known-hosts file, run commands, and reach the node's Docker engine through
//! the connection (`docker system dial-stdio` on an exec channel per Docker
//! connection, behind a listener on 127.0.0.1), so bollard drives a remote
//! node exactly as it drives the local engine. No Docker port is opened on a node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_ssh2_lite::ssh2::{CheckResult, HashType, KnownHostFileKind};
use async_ssh2_lite::{AsyncSession, SessionConfiguration, TokioTcpStream};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::docker::{DockerError, Engine};
use super::Task;

/// Why a node could not be reached over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// No SSH server answered in time.
    #[error("ssh {addr}: no answer within {seconds} s: {message}")]
    Unreachable {
        /// The node.
        addr: SocketAddr,
        /// The limit.
        seconds: u64,
        /// The last error.
        message: String,
    },
    /// The node's host key is not the one on record.
    #[error("ssh {addr}: the host key ({fingerprint}) does not match {known_hosts}: refusing to connect")]
    HostKeyMismatch {
        /// The node.
        addr: SocketAddr,
        /// SHA-256 of the key offered.
        fingerprint: String,
        /// The known-hosts file.
        known_hosts: String,
    },
    /// The node's host key is not on record and recording is off.
    #[error("ssh {addr}: unknown host key ({fingerprint}); add it to {known_hosts} (or enable ssh.record_new_hosts)")]
    UnknownHost {
        /// The node.
        addr: SocketAddr,
        /// SHA-256 of the key offered.
        fingerprint: String,
        /// The known-hosts file.
        known_hosts: String,
    },
    /// Any other SSH failure.
    #[error("ssh {addr}: {operation}: {message}")]
    Session {
        /// The node.
        addr: SocketAddr,
        /// What was being done.
        operation: &'static str,
        /// What failed.
        message: String,
    },
}

/// How to reach nodes.
#[derive(Clone, Debug)]
pub struct SshSettings {
    /// The user to log in as.
    pub user: String,
    /// The private key.
    pub key_path: PathBuf,
    /// The known-hosts file the broker checks (and maintains when recording).
    pub known_hosts: PathBuf,
    /// Whether an unknown host key is recorded on first use (off by default).
    pub record_new_hosts: bool,
    /// How long to keep trying to connect.
    pub connect_timeout: Duration,
    /// How long a connected node may leave what the broker sent it unacknowledged (or
    /// the kernel's keepalive probes of an idle connection unanswered) before the
    /// connection fails and the node counts as lost.
    pub silence: Duration,
}

impl SshSettings {
    /// What commands needing root are prefixed with: nothing for root, `sudo -n ` for any other user.
    pub fn sudo(&self) -> &'static str {
        if self.user == "root" {
            ""
        } else {
            "sudo -n "
        }
    }

    /// `command`, a whole shell command line (pipes, redirections, `&&`), run as root:
    /// as it is for root, else through `sudo -n sh -c`, so that all of it, not only
    /// its first word, has root's rights.
    pub fn as_root(&self, command: &str) -> String {
        if self.user == "root" {
            command.to_string()
        } else {
            format!("sudo -n sh -c {}", shell_words::quote(command))
        }
    }
}

/// Seconds between keepalives on a node's connection, so an idle pooled node's
/// session outlives NAT and firewall idle timeouts (and a dead peer fails a write).
const KEEPALIVE_SECS: u32 = 15;

/// Connects to `addr` so that a node cut off (every packet dropped, nothing said)
/// fails the connection within `silence` instead of the quarter of an hour TCP
/// takes to give up: data the node leaves unacknowledged for `silence` ends it
/// (`TCP_USER_TIMEOUT`), and so do the kernel's keepalive probes of an idle
/// connection, sent from a quarter of `silence` on, when three go unanswered.
/// Every call through the connection then fails, so its node is lost at once.
async fn connect_watched(addr: SocketAddr, silence: Duration) -> std::io::Result<TokioTcpStream> {
    let stream = TokioTcpStream::connect(addr).await?;
    let every = (silence / 4).max(Duration::from_secs(1));
    let socket = socket2::SockRef::from(&stream);
    socket.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(every).with_interval(every).with_retries(3))?;
    socket.set_tcp_user_timeout(Some(silence))?;
    Ok(stream)
}

/// An authenticated SSH connection to a node.
#[derive(Clone)]
pub struct SshNode {
    session: Arc<AsyncSession<TokioTcpStream>>,
    addr: SocketAddr,
    /// What it was reached as, to open more connections to it.
    instance: Option<String>,
    settings: SshSettings,
    sudo: &'static str,
    _keepalive: Arc<Task>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SshNode {
    /// Connects, retrying until the node answers and takes the key (a booting
    /// instance's sshd may answer before its user's key is in place) or the timeout
    /// passes. The host key is checked under `instance` (an instance id) when given,
    /// and under the address; a key recorded on first use is recorded under `instance`.
    pub async fn connect(addr: SocketAddr, instance: Option<&str>, settings: &SshSettings) -> Result<Self, SshError> {
        let deadline = tokio::time::Instant::now() + settings.connect_timeout;
        let unreachable = |message: String| SshError::Unreachable { addr, seconds: settings.connect_timeout.as_secs(), message };
        loop {
            let attempt = async {
                let mut config = SessionConfiguration::new();
                // No reply asked for: a keepalive's reply (a request failure) would be taken by
                // libssh2 as the answer to the next global request, such as a forward's.
                config.set_keepalive(false, KEEPALIVE_SECS);
                let stream = connect_watched(addr, settings.silence).await?;
                let mut s = AsyncSession::new(stream, Some(config))?;
                s.handshake().await?;
                Ok::<_, async_ssh2_lite::Error>(s)
            };
            let mut session = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) if tokio::time::Instant::now() >= deadline => return Err(unreachable(e.to_string())),
                Err(_) if tokio::time::Instant::now() >= deadline => return Err(unreachable("handshake timed out".into())),
                _ => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            Self::check_host_key(&mut session, addr, instance, settings)?;
            match session.userauth_pubkey_file(&settings.user, None, &settings.key_path, None).await {
                Ok(()) => {}
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%addr, error = %e, "the node refused the key; trying again (its first boot may not have installed it yet)");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(SshError::Session { addr, operation: "public key login", message: e.to_string() }),
            }
            let session = Arc::new(session);
            let weak = Arc::downgrade(&session);
            let keepalive = Task::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(KEEPALIVE_SECS.into())).await;
                    let Some(session) = weak.upgrade() else { return };
                    if session.keepalive_send().await.is_err() {
                        return;
                    }
                }
            });
            return Ok(Self {
                session,
                addr,
                instance: instance.map(str::to_string),
                settings: settings.clone(),
                sudo: settings.sudo(),
                _keepalive: Arc::new(keepalive),
            });
        }
    }

    fn check_host_key(
        session: &mut AsyncSession<TokioTcpStream>,
        addr: SocketAddr,
        instance: Option<&str>,
        settings: &SshSettings,
    ) -> Result<(), SshError> {
        let fail = |operation, e: &dyn std::fmt::Display| SshError::Session { addr, operation, message: e.to_string() };
        let (key, kind) = session.host_key().ok_or_else(|| fail("read the host key", &"none offered"))?;
        let key = key.to_vec();
        let fingerprint = format!("SHA256:{}", hex(session.host_key_hash(HashType::Sha256).unwrap_or_default()));
        let known_hosts = settings.known_hosts.display().to_string();
        let mut known = session.known_hosts().map_err(|e| fail("open known hosts", &e))?;
        if settings.known_hosts.exists() {
            known.read_file(&settings.known_hosts, KnownHostFileKind::OpenSSH).map_err(|e| fail("read known hosts", &e))?;
        }
        let host = addr.ip().to_string();
        // An instance's own record wins: an address EC2 gave an earlier instance says nothing of this one.
        // A key recorded under the address (by hand, or for an earlier instance) is only
        // a default: recording on, an instance whose key differs gets a record of its own.
        let result = match instance.map(|id| known.check_port(id, 22, &key)) {
            Some(r @ (CheckResult::Match | CheckResult::Mismatch)) => r,
            _ => match known.check_port(&host, addr.port(), &key) {
                CheckResult::Mismatch if instance.is_some() && settings.record_new_hosts => CheckResult::NotFound,
                r => r,
            },
        };
        match result {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => Err(SshError::HostKeyMismatch { addr, fingerprint, known_hosts }),
            CheckResult::NotFound | CheckResult::Failure if settings.record_new_hosts => {
                let name = match instance {
                    Some(id) => id.to_string(),
                    None if addr.port() == 22 => host,
                    None => format!("[{host}]:{}", addr.port()),
                };
                known.add(&name, &key, "recorded by loads", kind.into()).map_err(|e| fail("record the host key", &e))?;
                known.write_file(&settings.known_hosts, KnownHostFileKind::OpenSSH).map_err(|e| fail("write known hosts", &e))?;
                Ok(())
            }
            CheckResult::NotFound | CheckResult::Failure => Err(SshError::UnknownHost { addr, fingerprint, known_hosts }),
        }
    }

    /// Runs a command; answers its exit status and output.
    pub async fn exec(&self, command: &str) -> Result<(i32, String), SshError> {
        let fail = |operation, e: async_ssh2_lite::Error| SshError::Session { addr: self.addr, operation, message: e.to_string() };
        let mut channel = self.session.channel_session().await.map_err(|e| fail("open a channel", e))?;
        channel.exec(command).await.map_err(|e| fail("run a command", e))?;
        let mut out = String::new();
        channel.read_to_string(&mut out).await.map_err(|e| fail("read output", e.into()))?;
        channel.wait_close().await.map_err(|e| fail("close a channel", e))?;
        Ok((channel.exit_status().map_err(|e| fail("read the exit status", e))?, out))
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the node's first boot has finished: `dir/booted` exists (the
    /// user-data writes it last; an image prepared another way may write it too).
    /// A boot that failed (`dir/boot-status` says `failed`) fails at once, with the
    /// last lines of `dir/boot.log`; so does a boot unfinished after `timeout`.
    pub async fn wait_for_boot(&self, dir: &str, timeout: Duration) -> Result<(), SshError> {
        let probe = format!(
            "{sudo}sh -c 'if [ -e {dir}/booted ]; then echo booted; \
             elif grep -q ^failed {dir}/boot-status 2>/dev/null; then echo failed; tail -n 20 {dir}/boot.log 2>&1; \
             else echo booting; tail -n 5 {dir}/boot.log 2>/dev/null; fi; exit 0'",
            sudo = self.sudo
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, out) = self.exec(&probe).await?;
            let (state, log) = out.split_once('\n').unwrap_or((out.trim(), ""));
            let fail = |message: String| SshError::Session { addr: self.addr, operation: "wait for the first boot", message };
            match (status, state.trim()) {
                (0, "booted") => return Ok(()),
                (0, "failed") => return Err(fail(format!("the boot script failed; last lines of {dir}/boot.log:\n{}", log.trim_end()))),
                (0, _) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_secs(1)).await,
                (0, _) => {
                    return Err(fail(format!(
                        "not finished within {} s (no {dir}/booted); last lines of {dir}/boot.log:\n{}",
                        timeout.as_secs(),
                        log.trim_end()
                    )))
                }
                (code, _) => return Err(fail(format!("the probe exited {code}: {}", out.trim()))),
            }
        }
    }

    /// Runs `docker version` until the node's engine answers or `timeout` passes.
    pub async fn wait_for_docker(&self, timeout: Duration) -> Result<(), SshError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, out) = self.exec(&format!("{}docker version --format '{{{{.Server.Version}}}}' 2>&1", self.sudo)).await?;
            if status == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SshError::Session { addr: self.addr, operation: "wait for Docker", message: out.trim().to_string() });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The node's Docker engine: a listener on 127.0.0.1 whose every connection
    /// is an exec channel running `docker system dial-stdio` on the node, each over
    /// an SSH connection of its own to the node. One connection shared by several
    /// busy channels (an image streaming in while another call waits for an answer)
    /// has its channels wait on each other's directions, which the SSH library does
    /// not allow; connections of their own keep them apart. The engine works while the task lives.
    pub async fn docker(&self) -> Result<(Engine, Task), DockerError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| DockerError::Connect(e.into()))?;
        let port = listener.local_addr().map_err(|e| DockerError::Connect(e.into()))?.port();
        let (addr, instance, dial) = (self.addr, self.instance.clone(), format!("{}docker system dial-stdio", self.sudo));
        // A node that answered a moment ago answers at once, or is lost: no long retrying.
        let settings = SshSettings { connect_timeout: Duration::from_secs(10), ..self.settings.clone() };
        let task = Task::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (instance, settings, dial) = (instance.clone(), settings.clone(), dial.clone());
                tokio::spawn(async move {
                    let node = match SshNode::connect(addr, instance.as_deref(), &settings).await {
                        Ok(node) => node,
                        Err(e) => return tracing::warn!(%addr, error = %e, "cannot open a Docker connection to the node"),
                    };
                    let Ok(mut channel) = node.session.channel_session().await else { return };
                    if channel.exec(&dial).await.is_ok() {
                        pump(&mut socket, &mut channel).await;
                    }
                    close(socket, channel).await;
                });
            }
        });
        Ok((Engine::at(&format!("tcp://127.0.0.1:{port}")).await?, task))
    }

    /// A reverse forward: the node listens on `bind` (an address of the node, port
    /// chosen by its sshd) and every connection made there reaches `local` on this
    /// machine. Answers the node's port. Binding anything but the node's loopback
    /// would need `GatewayPorts clientspecified` in the node's sshd, so loads binds loopback.
    /// `port` 0 lets sshd choose; a given port takes back a forward an earlier connection had.
    pub async fn forward_to_broker(&self, bind: &str, port: u16, local: SocketAddr) -> Result<(u16, Task), SshError> {
        let (mut listener, port) = self.session.channel_forward_listen(port, Some(bind), None).await.map_err(|e| SshError::Session {
            addr: self.addr,
            operation: "open a remote forward (is AllowTcpForwarding off on the node?)",
            message: e.to_string(),
        })?;
        let task = Task::spawn(async move {
            while let Ok(mut channel) = listener.accept().await {
                tokio::spawn(async move {
                    match tokio::net::TcpStream::connect(local).await {
                        Ok(mut socket) => {
                            pump(&mut socket, &mut channel).await;
                            close(socket, channel).await;
                        }
                        Err(_) => {
                            let _ = tokio::time::timeout(Duration::from_secs(5), channel.close()).await;
                        }
                    }
                });
            }
        });
        Ok((port, task))
    }
}

/// Removes the host keys recorded under these instance ids from a known-hosts file:
/// a terminated instance's key is of no use, and its address goes to another.
pub fn forget_hosts(known_hosts: &std::path::Path, instances: &[String]) -> std::io::Result<()> {
    if instances.is_empty() || !known_hosts.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(known_hosts)?;
    let kept: String = text
        .lines()
        .filter(|line| !line.split_whitespace().next().is_some_and(|host| instances.iter().any(|id| id == host)))
        .map(|line| format!("{line}\n"))
        .collect();
    if kept.len() == text.len() {
        return Ok(());
    }
    let temporary = known_hosts.with_extension(format!("loads-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&temporary, kept)?;
    std::fs::rename(&temporary, known_hosts)
}

/// Ends an exchange: the local side at once (whoever waits on it learns now, even
/// when the node is gone), then the channel, given a few seconds to say so.
async fn close(socket: tokio::net::TcpStream, mut channel: async_ssh2_lite::AsyncChannel<TokioTcpStream>) {
    drop(socket);
    let _ = tokio::time::timeout(Duration::from_secs(5), channel.close()).await;
}

/// Copies bytes both ways between a local connection and an exec channel.
/// A channel read of 0 bytes is end-of-stream only when the channel says so:
/// libssh2 also answers 0 when it processed another channel's packet.
/// The session is never asked to read and write at once (the SSH library refuses a
/// read while a write waits, and the other way round): while the channel is read,
/// the local side is only watched; once it has bytes, the read is given up (a read
/// that has not answered has taken nothing) and they are written to the channel alone.
async fn pump(socket: &mut tokio::net::TcpStream, channel: &mut async_ssh2_lite::AsyncChannel<TokioTcpStream>) {
    use tokio::io::AsyncWriteExt;
    let mut from_node = channel.stream(0);
    let (mut up, mut down) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    loop {
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_err() {
                    return;
                }
                let n = match socket.try_read(&mut up) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                };
                if from_node.write_all(&up[..n]).await.is_err() || from_node.flush().await.is_err() {
                    return;
                }
            }
            // Asked again every 250 ms: the SSH library may leave a read waiting with nothing
            // to wake it (the session not blocked on its socket), even once the socket failed.
            read = tokio::time::timeout(Duration::from_millis(250), from_node.read(&mut down)) => match read {
                Err(_) => continue,
                Ok(Err(_)) => return,
                Ok(Ok(0)) if channel.eof() => return,
                Ok(Ok(0)) => tokio::time::sleep(Duration::from_millis(1)).await,
                Ok(Ok(n)) => {
                    if socket.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(user: &str) -> SshSettings {
        SshSettings {
            user: user.into(),
            key_path: PathBuf::new(),
            known_hosts: PathBuf::new(),
            record_new_hosts: false,
            connect_timeout: Duration::from_secs(1),
            silence: Duration::from_secs(20),
        }
    }

    #[test]
    fn a_whole_command_line_runs_as_root_not_only_its_first_word() {
        let line = "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse && sysctl -q fs.file-max";
        assert_eq!(settings("root").as_root(line), line);
        let wrapped = settings("ubuntu").as_root(line);
        assert_eq!(wrapped, "sudo -n sh -c 'echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse && sysctl -q fs.file-max'");
        // What the remote shell hands to `sh -c` is the line, byte for byte.
        let words = shell_words::split(&wrapped).unwrap();
        assert_eq!(words, ["sudo", "-n", "sh", "-c", line]);
        let quoted = settings("ubuntu").as_root("echo 'it''s' \"$HOME\"");
        assert_eq!(shell_words::split(&quoted).unwrap()[4], "echo 'it''s' \"$HOME\"");
    }
}
