//! A real sshd on loopback for tests: its own host key, a client key in
//! `authorized_keys`, root login by key only, and sshd's stock forwarding rules
//! (reverse forwards bind loopback only: `GatewayPorts no`). It runs as this
//! user, so it reaches this machine's Docker engine: a node prepared in advance,
//! as an image with Docker baked in would be. (`vm` has nodes that boot.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running sshd, stopped (with every session) when dropped.
pub struct Sshd {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_with_sessions();
    }
}

impl Sshd {
    /// Stops the server and every session it serves: the node is gone.
    pub fn kill_with_sessions(&mut self) {
        let _ = Command::new("pkill").args(["-KILL", "-P", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What sshd logged so far (debug level: every global request a client sends is there).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).output().expect("ssh-keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Starts an sshd on a free loopback port and waits until it accepts connections.
pub fn start_sshd() -> Sshd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(&d.join("host_key"));
    keygen(&d.join("client_key"));
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
         StrictModes no\nPidFile {d}/sshd.pid\nGatewayPorts no\nAllowTcpForwarding yes\nLogLevel DEBUG1\n",
        d = d.display()
    );
    std::fs::write(d.join("sshd_config"), config).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let log = std::fs::File::create(d.join("sshd.log")).unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("sshd (apt-get install openssh-server)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    crate::helpers::eventually_blocking(20, || std::net::TcpStream::connect(addr).map_err(|e| format!("sshd does not answer: {e}")));
    Sshd { child, addr, dir }
}

/// A known-hosts file naming `key` (a public key file) for this server; answers its path.
pub fn known_hosts_with(sshd: &Sshd, key: &Path, name: &str) -> PathBuf {
    let public = std::fs::read_to_string(key).unwrap();
    let mut fields = public.split_whitespace();
    let line = format!("[127.0.0.1]:{} {} {}\n", sshd.addr.port(), fields.next().unwrap(), fields.next().unwrap());
    let path = sshd.dir.path().join(name);
    std::fs::write(&path, line).unwrap();
    path
}
