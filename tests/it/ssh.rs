//! SSH to a node (a real sshd on loopback, started by the test): host keys
//! are checked, commands run, and the node's Docker engine is driven through
//! the SSH connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use loads_actors::infra::docker::ContainerSpec;
use loads_actors::infra::ssh::{SshError, SshNode, SshSettings};

use crate::helpers::{ensure_images, leftovers, LabelGuard};
use crate::sshd::{known_hosts_with, start_sshd, Sshd};

fn settings(sshd: &Sshd, known_hosts: PathBuf, record: bool) -> SshSettings {
    SshSettings {
        user: "root".into(),
        key_path: sshd.dir.path().join("client_key"),
        known_hosts,
        record_new_hosts: record,
        connect_timeout: Duration::from_secs(10),
        silence: Duration::from_secs(20),
    }
}

/// The host key is checked: known matches connect, a different key or an unknown one is refused,
/// and first-use recording (when enabled) records it.
#[actix_web::test]
async fn host_keys_are_checked_before_logging_in() {
    let sshd = start_sshd();
    let good = known_hosts_with(&sshd, &sshd.dir.path().join("host_key.pub"), "known_good");
    let node = SshNode::connect(sshd.addr, None, &settings(&sshd, good, false)).await.expect("known host connects");
    let (status, out) = node.exec("echo hello; exit 3").await.unwrap();
    assert_eq!((status, out.trim()), (3, "hello"));

    let wrong = known_hosts_with(&sshd, &sshd.dir.path().join("client_key.pub"), "known_wrong");
    let err = SshNode::connect(sshd.addr, None, &settings(&sshd, wrong, false)).await.err().expect("refused");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");

    let empty = sshd.dir.path().join("known_empty");
    let err = SshNode::connect(sshd.addr, None, &settings(&sshd, empty.clone(), false)).await.err().expect("refused");
    assert!(matches!(err, SshError::UnknownHost { .. }), "{err}");
    assert!(err.to_string().contains("SHA256:"), "the message shows the fingerprint: {err}");

    SshNode::connect(sshd.addr, None, &settings(&sshd, empty.clone(), true)).await.expect("recorded on first use");
    assert!(std::fs::read_to_string(&empty).unwrap().contains(&format!("[127.0.0.1]:{}", sshd.addr.port())));
    SshNode::connect(sshd.addr, None, &settings(&sshd, empty, false)).await.expect("then known");
}

/// Keys recorded on first use are filed under the instance id: a new instance at an
/// address an earlier one had (its key still listed for the address) is recorded anew,
/// not refused, and checked under its id from then on; its record goes with it.
#[actix_web::test]
async fn host_keys_are_recorded_per_instance_so_recycled_addresses_do_not_matter() {
    let sshd = start_sshd();
    let stale = known_hosts_with(&sshd, &sshd.dir.path().join("client_key.pub"), "recycled");
    let err = SshNode::connect(sshd.addr, Some("i-0new"), &settings(&sshd, stale.clone(), false)).await.err().expect("refused");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "without recording, a listed key that differs is refused: {err}");
    SshNode::connect(sshd.addr, Some("i-0new"), &settings(&sshd, stale.clone(), true)).await.expect("recorded for the new instance");
    let known = std::fs::read_to_string(&stale).unwrap();
    assert!(known.lines().any(|l| l.starts_with("i-0new ")), "{known}");
    SshNode::connect(sshd.addr, Some("i-0new"), &settings(&sshd, stale.clone(), false)).await.expect("then known by its id");
    loads_actors::infra::ssh::forget_hosts(&stale, &["i-0new".to_string()]).unwrap();
    let known = std::fs::read_to_string(&stale).unwrap();
    assert!(!known.contains("i-0new") && known.contains("[127.0.0.1]"), "only the instance's record goes: {known}");
}

/// An idle connection (a pooled node between runs) sends keepalives, asking for no
/// reply (a reply would be taken for the answer to the next forward request), and
/// stays usable.
#[actix_web::test]
async fn idle_connections_send_keepalives_that_want_no_reply() {
    let sshd = start_sshd();
    let known = known_hosts_with(&sshd, &sshd.dir.path().join("host_key.pub"), "known");
    let node = SshNode::connect(sshd.addr, None, &settings(&sshd, known, false)).await.unwrap();
    crate::helpers::eventually(60, async || match sshd.log() {
        log if log.contains("rtype keepalive@libssh2.org want_reply 0") => Ok(()),
        log => Err(format!("no keepalive yet:\n{log}")),
    })
    .await;
    let (port, _forward) =
        node.forward_to_broker("127.0.0.1", 0, "127.0.0.1:9".parse().unwrap()).await.expect("a forward after keepalives");
    assert!(port > 0);
    assert_eq!(node.exec("echo still here").await.unwrap(), (0, "still here\n".to_string()));
}

/// A node that does not answer is an error after the timeout, not a hang.
#[actix_web::test]
async fn an_unreachable_node_times_out_clearly() {
    let sshd = start_sshd();
    let closed: SocketAddr =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).parse().unwrap();
    let mut s = settings(&sshd, sshd.dir.path().join("kh"), true);
    s.connect_timeout = Duration::from_secs(2);
    let err = SshNode::connect(closed, None, &s).await.err().expect("unreachable");
    assert!(matches!(err, SshError::Unreachable { .. }), "{err}");
}

/// The node's Docker engine is driven through the SSH connection with bollard, as the local one is.
#[actix_web::test]
async fn docker_on_the_node_is_reached_through_ssh() {
    ensure_images();
    let sshd = start_sshd();
    let known = known_hosts_with(&sshd, &sshd.dir.path().join("host_key.pub"), "known");
    let node = SshNode::connect(sshd.addr, None, &settings(&sshd, known, false)).await.unwrap();
    let (engine, _bridge) = node.docker().await.expect("docker over ssh");
    assert!(!engine.version().await.unwrap().is_empty());
    assert!(engine.has_image(loads::images::BUSYBOX).await.unwrap());

    let broker = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let _cleanup = LabelGuard(broker.clone());
    let network = format!("loads-ssh-{broker}");
    let labels = std::collections::HashMap::from([("loads.broker".to_string(), broker.clone())]);
    engine.create_network(&network, labels.clone()).await.unwrap();
    let spec = ContainerSpec {
        name: format!("{network}-c"),
        image: loads::images::BUSYBOX.into(),
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), "echo through-ssh; exit 5".into()]),
        labels,
        network: network.clone(),
        ..Default::default()
    };
    let id = engine.start_container(&spec).await.unwrap();
    assert_eq!(engine.wait(&id).await.unwrap(), 5);
    assert_eq!(engine.logs(&id, None).await.unwrap().trim(), "through-ssh");
    for _ in 0..20 {
        assert!(engine.has_image(loads::images::BUSYBOX).await.unwrap(), "pooled connections keep working");
    }
    // An image streamed from the broker's engine into the node's (here the same engine: a reload).
    let local = loads_actors::infra::docker::Engine::local().await.unwrap();
    engine.copy_image_from(&local, loads::images::BUSYBOX, Duration::from_secs(60)).await.expect("image streamed over ssh");
    let (containers, networks) = engine.sweep(&[("loads.broker", &broker)]).await.unwrap();
    assert_eq!((containers, networks), (1, 1));
    let (c, n) = leftovers(&broker);
    assert!(c.is_empty() && n.is_empty());
}
