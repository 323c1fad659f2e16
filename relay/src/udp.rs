//! Statsd over UDP at the rate one core can parse: a receive thread of its own
//! taking up to 64 datagrams per system call (`recvmmsg`) into buffers
//! allocated once, parsing their bytes in place, and locking the aggregator
//! once per batch rather than once per datagram. The socket asks for a large
//! receive queue so that bursts wait in the kernel instead of being dropped;
//! with that queue granted, a thread that emptied it pauses for 5 ms so that it
//! wakes once per batch rather than once per datagram.
//!
//! What the kernel still drops is counted: the socket's drop counter (the one
//! `SO_RXQ_OVFL` reports per datagram, here read whole through `SO_MEMINFO`)
//! goes with every window, so the run's summary shows the loss.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mask::Masker;
use crate::metrics::Aggregator;

/// The receive queue asked for by default: 32 MiB, about 3 s of 1 M lines/s at 20 lines a datagram.
pub const RECEIVE_BUFFER: usize = 32 << 20;
/// Datagrams taken per system call at most.
const BATCH: usize = 64;
/// The largest datagram taken whole.
const DATAGRAM: usize = 65_536;
/// How often the thread looks whether it should stop while nothing arrives.
const IDLE: Duration = Duration::from_millis(100);
/// `SK_MEMINFO_DROPS` and `SK_MEMINFO_VARS` of the kernel's `sock_diag.h`.
const MEMINFO_DROPS: usize = 8;
const MEMINFO_VARS: usize = 9;

fn set_int(socket: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live c_int for the duration of the call.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds statsd's socket, asking for a receive queue of `queue_bytes` (beyond the
/// system's `net.core.rmem_max` where the relay may, as root in its container).
pub fn bind(addr: SocketAddr, queue_bytes: usize) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let queue = libc::c_int::try_from(queue_bytes / 2).unwrap_or(libc::c_int::MAX);
    // The kernel doubles what it is asked for (its bookkeeping); FORCE passes rmem_max with CAP_NET_ADMIN.
    if set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, queue).is_err() {
        let _ = set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, queue);
    }
    socket.set_read_timeout(Some(IDLE))?;
    Ok(socket)
}

/// The receive queue the kernel granted, in bytes.
pub fn queue_bytes(socket: &UdpSocket) -> usize {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the pointers describe a live c_int and its length.
    let done = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, (&mut value as *mut libc::c_int).cast(), &mut len)
    };
    if done == 0 {
        usize::try_from(value).unwrap_or(0)
    } else {
        0
    }
}

/// Datagrams the kernel dropped on `socket` since it was opened (its queue was full).
pub fn kernel_drops(socket: &UdpSocket) -> u64 {
    let mut info = [0u32; MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the pointers describe a live array and its length; the kernel writes at most `len` bytes.
    let done = unsafe { libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len) };
    if done == 0 && len as usize > MEMINFO_DROPS * 4 {
        u64::from(info[MEMINFO_DROPS])
    } else {
        0
    }
}

/// How long the receive thread lets datagrams gather once it has emptied a queue of
/// `queue` bytes: none for a queue smaller than the one the relay asks for (the
/// system's default when it may not pass `rmem_max`), else 5 ms: at a million
/// datagrams a second, about 7 MB of the kernel's memory, a fifth of that queue.
fn gather_pause(queue: usize) -> Duration {
    if queue >= GATHER_QUEUE {
        Duration::from_millis(5)
    } else {
        Duration::ZERO
    }
}

/// The smallest receive queue the thread lets datagrams gather in.
const GATHER_QUEUE: usize = RECEIVE_BUFFER;

/// Receives on `socket` into `aggregator` until `stop` is set (then takes what is queued), on a thread of its own.
pub fn spawn(
    socket: Arc<UdpSocket>,
    aggregator: Arc<Mutex<Aggregator>>,
    mask: Masker,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("statsd-udp".into())
        .spawn(move || receive(&socket, &aggregator, &mask, &stop))
        .expect("a thread for statsd")
}

fn receive(socket: &UdpSocket, aggregator: &Mutex<Aggregator>, mask: &Masker, stop: &AtomicBool) {
    let mut buffers = vec![0u8; BATCH * DATAGRAM];
    let mut iovecs: Vec<libc::iovec> =
        buffers.chunks_mut(DATAGRAM).map(|chunk| libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: DATAGRAM }).collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr is valid (no name, no control data); only the iovec is set.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = iov;
            header.msg_iovlen = 1;
            libc::mmsghdr { msg_hdr: header, msg_len: 0 }
        })
        .collect();
    let pause = gather_pause(queue_bytes(socket));
    // Once told to stop, what the kernel already queued is still taken, without waiting for more.
    let mut draining = false;
    loop {
        if !draining && stop.load(Ordering::Relaxed) {
            draining = true;
        }
        let flags = if draining { libc::MSG_DONTWAIT } else { libc::MSG_WAITFORONE };
        // SAFETY: `headers` holds BATCH headers whose iovecs point into `buffers`, both alive and
        // not moved while the call runs; MSG_WAITFORONE returns once one datagram is in.
        let received =
            unsafe { libc::recvmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), BATCH as libc::c_uint, flags, std::ptr::null_mut()) };
        if received < 0 {
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if !draining => continue,
                _ => return,
            }
        }
        if received == 0 && draining {
            return;
        }
        // A batch that emptied the queue means the relay is ahead of its senders: waking for
        // every datagram or two would cost more than parsing them, so it lets a batch gather.
        let gather = !draining && (received as usize) < BATCH && pause > Duration::ZERO;
        // A lock poisoned by a panic elsewhere still holds sound counts: go on with them.
        let mut aggregator = aggregator.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, header) in headers.iter().take(received as usize).enumerate() {
            let start = i * DATAGRAM;
            let bytes = &buffers[start..start + (header.msg_len as usize).min(DATAGRAM)];
            if mask.is_empty() {
                aggregator.take_bytes(bytes);
            } else {
                aggregator.take(&mask.mask(&String::from_utf8_lossy(bytes)));
            }
        }
        drop(aggregator);
        if gather {
            std::thread::sleep(pause);
        }
    }
}
