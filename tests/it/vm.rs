//! Test nodes that boot as EC2 instances do: for each instance a broker launches
//! in the moto server, a virtual machine (qemu, software emulation) boots the
//! image `scripts/services.sh` builds: a stock Debian with cloud-init, the
//! stock sshd (`GatewayPorts no`), the default user `debian` with passwordless
//! sudo and not in any docker group, and no Docker. Its NoCloud seed holds the
//! launch's actual user-data, read back from moto, and the test's key as the
//! instance's public key, so cloud-init runs the user-data after sshd already
//! answers, as on EC2. The VM's first network has nothing but its SSH port,
//! forwarded to a loopback port that `ec2.address_override` maps the instance
//! to; its second joins the farm's other VMs (and nothing else) on a hub the
//! test runs on loopback, at the private address EC2 gave the instance, so
//! nodes reach each other as instances of one VPC do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine as _;

use crate::instances::client;

/// Memory of one test node, in MiB.
const VM_MEMORY_MIB: &str = "1024";
/// Virtual CPUs of a farm's only node: under emulation each is a host thread, and
/// two nearly halve a first boot's Docker install. Farms of more nodes give each
/// one, so that their threads do not outnumber this machine's two cores.
fn vm_cpus(nodes: usize) -> &'static str {
    if nodes == 1 {
        "2"
    } else {
        "1"
    }
}

/// The image's directory (`vmlinuz`, `initrd.img`, `image.ext4`).
fn image_dir() -> PathBuf {
    std::env::var("LOADS_TEST_VM_DIR").expect("LOADS_TEST_VM_DIR (scripts/test builds the VM image)").into()
}

/// How a node's boot goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Boot {
    /// As the image comes.
    Stock,
    /// Docker's packages are gone from the image's cache before the user-data runs:
    /// with no network, its package install fails.
    BrokenPackages,
}

/// The farm's private network: a hub on loopback that passes every frame one VM
/// sends to all the others (qemu's `socket` network over UDP).
struct Hub {
    port: u16,
    peers: Arc<Mutex<Vec<std::net::SocketAddr>>>,
}

impl Hub {
    fn start(stop: Arc<AtomicBool>) -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let peers: Arc<Mutex<Vec<std::net::SocketAddr>>> = Arc::default();
        let known = peers.clone();
        std::thread::spawn(move || {
            let mut frame = vec![0u8; 65_536];
            while !stop.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut frame) else { continue };
                for peer in known.lock().unwrap().iter().filter(|p| **p != from) {
                    let _ = socket.send_to(&frame[..n], peer);
                }
            }
        });
        Self { port, peers }
    }

    /// A loopback address for one more VM's end of the network.
    fn join(&self) -> std::net::SocketAddr {
        let addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        self.peers.lock().unwrap().push(addr);
        addr
    }
}

/// One booted node.
struct Vm {
    child: Child,
    dir: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots a VM for every instance one broker launches, on the loopback port of
/// `addresses` that the broker tagged it with (`loads:ssh`, as it does with an
/// address override), and stops it when its instance is terminated.
pub struct Farm {
    /// The SSH addresses the instances are reached at, in launch order (for `ec2.address_override`).
    pub addresses: Vec<String>,
    /// The private key whose public half every instance is given.
    pub key: PathBuf,
    vms: Arc<Mutex<HashMap<String, Vm>>>,
    stop: Arc<AtomicBool>,
    dir: tempfile::TempDir,
}

impl Drop for Farm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.vms.lock().unwrap().clear();
    }
}

impl Farm {
    /// Watches moto for `broker`'s instances (at most `nodes` of them) and boots each as `boot` says.
    pub fn start(broker: &str, nodes: usize, boot: Boot) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().expect("ssh-keygen");
        assert!(out.status.success());
        let ports: Vec<u16> =
            (0..nodes).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        let farm = Self {
            addresses: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            key: key.clone(),
            vms: Arc::default(),
            stop: Arc::default(),
            dir,
        };
        let (vms, stop, work) = (farm.vms.clone(), farm.stop.clone(), farm.dir.path().to_path_buf());
        let hub = Hub::start(stop.clone());
        let broker = broker.to_string();
        let public_key = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        actix_web::rt::spawn(async move {
            let mut assigned: Vec<String> = Vec::new();
            // Bounded: a test that forgets to stop it still ends it within the hour.
            for _ in 0..(3600 * 2) {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                for (id, state, private_ip, ssh) in instances(&broker).await {
                    let gone = state == "terminated" || state == "shutting-down" || state == "stopped";
                    let port = ssh.and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok())).filter(|p| ports.contains(p));
                    if gone {
                        vms.lock().unwrap().remove(&id);
                    } else if let (false, Some(ssh_port)) = (assigned.contains(&id), port) {
                        let node = Node { id: id.clone(), ssh_port, index: assigned.len(), private_ip, cpus: vm_cpus(ports.len()) };
                        assigned.push(id.clone());
                        let user_data = user_data(&id).await;
                        let vm = boot_vm(&work.join(&id), &node, &user_data, &public_key, (hub.port, hub.join()), boot);
                        vms.lock().unwrap().insert(id, vm);
                    }
                }
                actix_web::rt::time::sleep(Duration::from_millis(500)).await;
            }
        });
        farm
    }

    /// What a node's console showed, for failure messages.
    pub fn console(&self, instance: &str) -> String {
        let vms = self.vms.lock().unwrap();
        let dir = vms.get(instance).map(|v| v.dir.clone()).unwrap_or_else(|| self.dir.path().join(instance));
        std::fs::read_to_string(dir.join("console.log")).unwrap_or_default()
    }

    /// Instances whose VM is running now.
    pub fn running(&self) -> Vec<String> {
        let mut vms = self.vms.lock().unwrap();
        vms.retain(|_, vm| matches!(vm.child.try_wait(), Ok(None)));
        vms.keys().cloned().collect()
    }
}

/// An instance as the farm sees it: id, state, private address, `loads:ssh` tag.
type Seen = (String, String, String, Option<String>);

/// `broker`'s instances in launch order.
async fn instances(broker: &str) -> Vec<Seen> {
    let Ok(out) = client().describe_instances().filters(Filter::builder().name("tag:loads:broker").values(broker).build()).send().await
    else {
        return Vec::new();
    };
    let mut found: Vec<((String, i32), Seen)> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            let launched = (i.launch_time().map(|t| t.to_string()).unwrap_or_default(), i.ami_launch_index().unwrap_or_default());
            let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
            let private_ip = i.private_ip_address().unwrap_or_default().to_string();
            let ssh = i.tags().iter().find(|t| t.key() == Some("loads:ssh")).and_then(|t| t.value()).map(str::to_string);
            (launched, (i.instance_id().unwrap_or_default().to_string(), state, private_ip, ssh))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, seen)| seen).collect()
}

/// The user-data the instance was launched with.
async fn user_data(id: &str) -> Vec<u8> {
    let attr = client().describe_instance_attribute().instance_id(id).attribute(InstanceAttributeName::UserData).send().await;
    let encoded = attr.ok().and_then(|a| a.user_data().and_then(|u| u.value().map(str::to_string))).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_default()
}

/// An instance the farm boots: its id, the loopback port its SSH is forwarded
/// from, its place in the farm, and the private address EC2 gave it.
struct Node {
    id: String,
    ssh_port: u16,
    index: usize,
    private_ip: String,
    cpus: &'static str,
}

/// Boots one node: a copy-on-write layer over the image, a NoCloud seed, SSH on
/// its port, and its private address on the farm's hub (`hub`: the hub's port and this VM's end).
fn boot_vm(dir: &Path, node: &Node, user_data: &[u8], public_key: &str, hub: (u16, std::net::SocketAddr), boot: Boot) -> Vm {
    std::fs::create_dir_all(dir).unwrap();
    let image = image_dir();
    let id = &node.id;
    std::fs::write(dir.join("user-data"), user_data).unwrap();
    std::fs::write(dir.join("meta-data"), format!("instance-id: {id}\nlocal-hostname: {id}\npublic-keys:\n  - {}\n", public_key.trim()))
        .unwrap();
    // The first interface takes its address from qemu's DHCP; the second is the VPC.
    let private_mac = format!("52:54:00:4c:00:{:02x}", node.index + 1);
    let network = format!(
        "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    mac_address: \"52:54:00:12:34:56\"\n    subnets: [{{type: dhcp}}]\n  \
         - type: physical\n    name: eth1\n    mac_address: \"{private_mac}\"\n    subnets: [{{type: static, address: {}/16}}]\n",
        node.private_ip
    );
    std::fs::write(dir.join("network-config"), network).unwrap();
    let mut seed = Command::new("cloud-localds");
    seed.arg("--network-config").arg(dir.join("network-config"));
    if boot == Boot::BrokenPackages {
        std::fs::write(dir.join("vendor-data"), "#cloud-config\nbootcmd:\n  - rm -f /var/cache/apt/archives/*.deb\n").unwrap();
        seed.arg("--vendor-data").arg(dir.join("vendor-data"));
    }
    let out = seed.arg(dir.join("seed.img")).arg(dir.join("user-data")).arg(dir.join("meta-data")).output().expect("cloud-localds");
    assert!(out.status.success(), "cloud-localds: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(image.join("image.ext4"))
        .arg(dir.join("disk.qcow2"))
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img: {}", String::from_utf8_lossy(&out.stderr));
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", VM_MEMORY_MIB, "-smp", node.cpus, "-display", "none", "-monitor", "none"])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        .args(["-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0"])
        // The node's disk is thrown away with it: its flushes need not reach the host's disk.
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2,cache=unsafe", dir.join("disk.qcow2").display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw,readonly=on", dir.join("seed.img").display()))
        // No network but the SSH port: `restrict=on` cuts the guest off from everything else.
        .arg("-netdev")
        .arg(format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{}-:22", node.ssh_port))
        .args(["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"])
        .arg("-netdev")
        .arg(format!("socket,id=n1,udp=127.0.0.1:{},localaddr={}", hub.0, hub.1))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n1,mac={private_mac}"))
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/test installs it)");
    Vm { child, dir: dir.to_path_buf() }
}
