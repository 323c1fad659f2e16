//! Test nodes that are hosts of their own, each up in about a second: a network
//! namespace with an address on a bridge of the farm's own subnet (10.231.K.0/24,
//! nothing routed beyond it), and in it, in a mount and UTS namespace of the
//! node's own, a Docker engine (its own data-root, exec-root, socket,
//! `fuse-overlayfs`) and Debian's stock sshd (only its port, keys and paths
//! changed), with a login user `ubuntu` who has passwordless sudo and is not in
//! the `docker` group, as on a stock Ubuntu AMI. The node writes
//! `/var/lib/loads/booted` itself once its engine answers, as an image with
//! Docker baked in would. Instances a broker launches in the moto server map to
//! the nodes through `ec2.address_override`; a watcher gives each node its
//! instance's private address (when inside the farm's subnet) and powers the
//! node off when its instance is terminated. Everything is removed when the
//! farm is dropped; `scripts/test` sweeps what a dead test left, by the names'
//! prefix (`loadsf-` namespaces, `lf` links and their firewall rules,
//! `/var/tmp/loads-farm`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where nodes keep their engines' data; swept by `scripts/test`.
const ROOT: &str = "/var/tmp/loads-farm";
/// The login user of every node.
pub const USER: &str = "ubuntu";

/// Runs `program` with `args`; panics with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `program` with `args`, whatever its outcome (for removal).
fn quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// A subnet index no live farm and no leftover link uses.
fn free_subnet() -> u8 {
    static TAKEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap();
    let k = (1..=250u8)
        .find(|k| !taken.contains(k) && !Path::new(&format!("/sys/class/net/lfb{k}")).exists())
        .expect("a free farm subnet (scripts/test sweeps leftovers)");
    taken.push(k);
    k
}

/// One subnet of the farm: a bridge on this machine at 10.231.K.1.
struct Subnet {
    k: u8,
}

impl Subnet {
    fn create() -> Self {
        let k = free_subnet();
        let bridge = format!("lfb{k}");
        quietly("ip", &["link", "del", &bridge]);
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        run("ip", &["addr", "add", &format!("10.231.{k}.1/24"), "dev", &bridge]);
        run("ip", &["link", "set", &bridge, "up"]);
        // Frames between the subnet's nodes cross this machine's bridge, where its
        // firewall's FORWARD chain sees them (Docker's policy there is DROP).
        run("iptables", &["-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]);
        Self { k }
    }
}

/// Whether `ip` lies in subnet `k` of the farms (10.231.K.0/24).
fn in_subnet(k: u8, ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    (a, b, c) == (10, 231, k)
}

impl Drop for Subnet {
    fn drop(&mut self) {
        let bridge = format!("lfb{}", self.k);
        quietly("iptables", &["-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]);
        quietly("ip", &["link", "del", &bridge]);
    }
}

/// One node: its namespace, its address, its directory, its sshd (whose child is its engine).
pub struct Host {
    /// The network namespace (`loadsf-K-i`).
    pub netns: String,
    /// Its address on the farm's subnet.
    pub ip: Ipv4Addr,
    /// Where the broker reaches its sshd (`ip:22`).
    pub address: String,
    /// This machine's end of its link (`lfK-i`): down, the node is cut off.
    link: String,
    hostname: String,
    public_key: String,
    dir: PathBuf,
    sshd: Mutex<Option<Child>>,
    private: Mutex<Vec<Ipv4Addr>>,
    /// The instance the node now is (the farm's watcher assigns it); empty once it ended.
    instance: Mutex<Option<String>>,
    /// Power changes the watcher asked for, numbered: only the latest is carried out.
    changes: std::sync::atomic::AtomicU64,
    changing: Mutex<()>,
}

impl Host {
    /// Builds the node's namespace and link, then boots it.
    fn start(subnet: &Subnet, i: usize, public_key: &str) -> Self {
        let k = subnet.k;
        let (netns, link, peer) = (format!("loadsf-{k}-{i}"), format!("lf{k}-{i}"), format!("lfn{k}-{i}"));
        let ip = Ipv4Addr::new(10, 231, k, 10 + u8::try_from(i).expect("at most 200 nodes a subnet"));
        run("ip", &["netns", "add", &netns]);
        run("ip", &["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        run("ip", &["link", "set", &peer, "netns", &netns]);
        run("ip", &["link", "set", &link, "master", &format!("lfb{k}"), "up"]);
        run("ip", &["-n", &netns, "link", "set", &peer, "name", "eth0"]);
        run("ip", &["-n", &netns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        let host = Self {
            netns,
            ip,
            address: format!("{ip}:22"),
            link,
            hostname: format!("ip-10-231-{k}-{}", 10 + i),
            public_key: public_key.to_string(),
            dir: PathBuf::from(format!("{ROOT}/{k}-{i}")),
            sshd: Mutex::default(),
            private: Mutex::default(),
            instance: Mutex::default(),
            changes: Default::default(),
            changing: Mutex::default(),
        };
        host.boot();
        host
    }

    /// Boots the node afresh (a new instance: empty disk, new host key): its files,
    /// engine and sshd; answers once its sshd accepts connections.
    fn boot(&self) {
        let dir = &self.dir;
        let _ = std::fs::remove_dir_all(dir);
        for sub in ["etc", "node", "home", "data", "exec"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let hostname = &self.hostname;
        write_files(dir, self.ip, hostname, &self.public_key);
        let d = dir.display();
        // The node's own /run (its engine's socket, sshd's privilege separation), /etc
        // files naming its user, its /var/lib/loads; its engine, then its sshd.
        let script = format!(
            "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/sshd; ln -s {d}/docker.sock /run/docker.sock; \
             for f in passwd group shadow hosts hostname; do mount --bind {d}/etc/$f /etc/$f; done; \
             mount -t tmpfs -o mode=0755 tmpfs /etc/sudoers.d; install -m 0440 {d}/etc/sudoers /etc/sudoers.d/{USER}; \
             mount --bind {d}/node /var/lib/loads; mount --bind {d}/etc/file-max /proc/sys/fs/file-max; hostname {hostname}; \
             dockerd --config-file {d}/etc/daemon.json --data-root {d}/data --exec-root {d}/exec --pidfile {d}/docker.pid \
               --host unix://{d}/docker.sock --storage-driver fuse-overlayfs --bip 172.31.250.1/24 --ip6tables=false \
               > {d}/dockerd.log 2>&1 & \
             i=0; until docker -H unix://{d}/docker.sock version >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.1; done; \
             date +%s > /var/lib/loads/booted; \
             exec /usr/sbin/sshd -D -e -f {d}/etc/sshd_config 2> {d}/sshd.log"
        );
        std::fs::create_dir_all("/var/lib/loads").unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["unshare", "--uts", "--mount", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("start.log")).unwrap()))
            .spawn()
            .expect("nsenter (util-linux)");
        *self.sshd.lock().unwrap() = Some(child);
        let addr = std::net::SocketAddr::from((self.ip, 22));
        crate::helpers::eventually_blocking(60, || {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            let exited = self.sshd.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "node {}'s sshd exited ({exited:?}):\n{}", self.netns, self.logs());
            Err(format!("node {} did not start:\n{}", self.netns, self.logs()))
        });
    }

    /// What the node's start, engine and sshd logged, for failure messages.
    pub fn logs(&self) -> String {
        ["start.log", "dockerd.log", "sshd.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()))
            .collect()
    }

    /// Processes running in the node (none once it is off).
    pub fn processes(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "pids", &self.netns]).output().expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
    }

    /// Whether the node runs.
    pub fn is_on(&self) -> bool {
        !self.processes().is_empty()
    }

    /// Takes the node's link down (its packets are dropped, nothing is said) or brings it back.
    pub fn set_link(&self, up: bool) {
        run("ip", &["link", "set", &self.link, if up { "up" } else { "down" }]);
    }

    /// Stops everything on the node at once, as a machine that loses power does.
    pub fn power_off(&self) {
        // Bounded: a process between fork and exec may need a second round.
        for _ in 0..50 {
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                quietly("kill", &["-KILL", pid]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(mut child) = self.sshd.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ip in self.private.lock().unwrap().drain(..) {
            quietly("ip", &["-n", &self.netns, "addr", "del", &format!("{ip}/24"), "dev", "eth0"]);
        }
    }

    /// Powers the node off and, with `boot`, boots it afresh, off the async runtime;
    /// a change asked for later wins over one not yet begun.
    fn change(self: &Arc<Self>, boot: bool) {
        let this = self.changes.fetch_add(1, Ordering::SeqCst) + 1;
        let node = self.clone();
        actix_web::rt::task::spawn_blocking(move || {
            let _one_at_a_time = node.changing.lock().unwrap();
            if node.changes.load(Ordering::SeqCst) == this {
                node.power_off();
                if boot {
                    node.boot();
                }
            }
        });
    }

    /// Gives the node `ip` too (its instance's private address).
    fn add_address(&self, ip: Ipv4Addr) {
        let mut private = self.private.lock().unwrap();
        if !private.contains(&ip) {
            run("ip", &["-n", &self.netns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            private.push(ip);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.power_off();
        quietly("ip", &["netns", "del", &self.netns]);
        quietly("ip", &["link", "del", &self.link]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The node's /etc files, keys and configuration under `dir`.
fn write_files(dir: &Path, ip: Ipv4Addr, hostname: &str, public_key: &str) {
    let etc = dir.join("etc");
    let home = dir.join("home");
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let passwd = format!("{host_passwd}{USER}:x:61000:61000:Ubuntu:{}:/bin/sh\n", home.display());
    std::fs::write(etc.join("passwd"), passwd).unwrap();
    let group = format!("{}{USER}:x:61000:\n", std::fs::read_to_string("/etc/group").unwrap());
    std::fs::write(etc.join("group"), group).unwrap();
    let shadow = format!("{}{USER}:*:19000:0:99999:7:::\n", std::fs::read_to_string("/etc/shadow").unwrap_or_default());
    std::fs::write(etc.join("shadow"), shadow).unwrap();
    std::fs::write(etc.join("sudoers"), format!("{USER} ALL=(ALL) NOPASSWD:ALL\n")).unwrap();
    std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n{ip} {hostname}\n")).unwrap();
    std::fs::write(etc.join("hostname"), format!("{hostname}\n")).unwrap();
    std::fs::write(etc.join("daemon.json"), "{}\n").unwrap();
    // `fs.file-max` is the machine's, not a namespace's: the node's tuning writes a copy of its own.
    std::fs::write(etc.join("file-max"), std::fs::read_to_string("/proc/sys/fs/file-max").unwrap_or_default()).unwrap();
    std::fs::write(dir.join("authorized_keys"), public_key).unwrap();
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(etc.join("host_key")).output().unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    // Debian's own sshd_config, after the lines that change its port, keys and paths
    // (sshd takes the first value it reads for each).
    let stock = std::fs::read_to_string("/etc/ssh/sshd_config").expect("/etc/ssh/sshd_config (openssh-server)");
    let d = dir.display();
    let config = format!(
        "Port 22\nListenAddress {ip}\nHostKey {d}/etc/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
         PidFile {d}/sshd.pid\nStrictModes no\n{stock}"
    );
    std::fs::write(etc.join("sshd_config"), config).unwrap();
}

/// A farm of nodes, in one subnet or several.
pub struct Hosts {
    /// Every node, subnet after subnet.
    pub nodes: Vec<Arc<Host>>,
    /// The private key the login user accepts.
    pub key: PathBuf,
    subnets: Vec<Subnet>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.nodes.clear();
        self.subnets.clear();
    }
}

impl Hosts {
    /// `n` nodes in one subnet, started in parallel.
    pub fn start(n: usize) -> Self {
        Self::start_in(&[n])
    }

    /// Nodes in as many subnets as `counts` has entries, `counts[s]` in subnet `s`.
    pub fn start_in(counts: &[usize]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", &key.display().to_string()]);
        let public_key = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let started = Instant::now();
        let subnets: Vec<Subnet> = counts.iter().map(|_| Subnet::create()).collect();
        let mut nodes = Vec::new();
        std::thread::scope(|scope| {
            let started: Vec<_> = subnets
                .iter()
                .zip(counts)
                .flat_map(|(subnet, &n)| (0..n).map(move |i| (subnet, i)))
                .map(|(subnet, i)| {
                    let public_key = &public_key;
                    scope.spawn(move || Host::start(subnet, i, public_key))
                })
                .collect();
            for node in started {
                nodes.push(Arc::new(node.join().expect("a node started")));
            }
        });
        eprintln!("farm: {} nodes ready in {:.2} s", nodes.len(), started.elapsed().as_secs_f64());
        Self { nodes, key, subnets, stop: Arc::default(), _dir: dir }
    }

    /// Every node's SSH address, in order (for `ec2.address_override`).
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    /// This machine's address in subnet `s` (its bridge), which the subnet's nodes reach.
    pub fn gateway(&self, s: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnets[s].k, 1)
    }

    /// Which of the farm's subnets `node` sits in.
    pub fn subnet_of(&self, node: &Host) -> usize {
        self.subnets.iter().position(|s| in_subnet(s.k, node.ip)).expect("a node of this farm")
    }

    /// The node at `address`.
    pub fn at(&self, address: &str) -> &Host {
        self.nodes.iter().find(|n| n.address == address).unwrap_or_else(|| panic!("no node at {address}"))
    }

    /// Runs `command` on the node at `address` as its login user; answers its output.
    pub fn ssh(&self, address: &str, command: &str) -> String {
        let host = self.at(address).ip.to_string();
        let out = Command::new("ssh")
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=10", "-i"])
            .arg(&self.key)
            .arg(format!("{USER}@{host}"))
            .arg(command)
            .stderr(Stdio::null())
            .output()
            .expect("ssh (openssh-client)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Follows `broker`'s instances in `regions` of the moto server: an instance
    /// mapped to a node (its `loads:ssh` tag) gives the node its private address
    /// when that lies in the node's subnet, and powers it off once terminated.
    pub fn watch(&self, broker: &str, regions: &[&str]) {
        let (nodes, stop, broker) = (self.nodes.clone(), self.stop.clone(), broker.to_string());
        let ks: Vec<u8> = self.subnets.iter().map(|s| s.k).collect();
        let regions: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
        actix_web::rt::spawn(async move {
            // Bounded: a test that forgets to stop it still ends it within the hour.
            for _ in 0..(3600 * 4) {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let mut seen = Vec::new();
                for region in &regions {
                    seen.extend(crate::ec2_nodes::instances_in(region, &broker).await);
                }
                // Ends before beginnings: a terminated instance's node is free for the next.
                seen.sort_by_key(|i| !["terminated", "shutting-down", "stopped"].contains(&i.state.as_str()));
                for seen in seen {
                    let Some(node) = seen.tags.get("loads:ssh").and_then(|a| nodes.iter().find(|n| &n.address == a)) else {
                        continue;
                    };
                    let ended = ["terminated", "shutting-down", "stopped"].contains(&seen.state.as_str());
                    let mut instance = node.instance.lock().unwrap();
                    if ended {
                        if instance.as_ref() == Some(&seen.id) {
                            *instance = Some(String::new());
                            node.change(false);
                        }
                        continue;
                    }
                    if instance.as_ref() != Some(&seen.id) {
                        // The first instance finds the node as the farm booted it; a later one boots it afresh.
                        if instance.is_some() {
                            node.change(true);
                        }
                        *instance = Some(seen.id.clone());
                    }
                    drop(instance);
                    if let Ok(ip) = seen.private_ip.parse::<Ipv4Addr>() {
                        let k = node.ip.octets()[2];
                        if in_subnet(k, ip) && ks.contains(&k) && ip != node.ip {
                            node.add_address(ip);
                        }
                    }
                }
                actix_web::rt::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
}
