//! A TCP forward on this machine: a listener on one address whose every
//! connection is carried to another. The metrics ingest listener binds
//! loopback only; each local run network gets a forward on its gateway
//! address, so that run's relays (and nothing on any other interface) reach it.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::Task;

/// Listens on `bind` and carries each connection to `target`; answers the bound address.
pub async fn tcp(bind: SocketAddr, target: SocketAddr) -> std::io::Result<(SocketAddr, Task)> {
    let listener = TcpListener::bind(bind).await?;
    let bound = listener.local_addr()?;
    let task = Task::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[actix_rt::test]
    async fn bytes_go_both_ways_and_stop_with_the_task() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let (bound, task) = tcp("127.0.0.1:0".parse().unwrap(), target).await.unwrap();
        let mut client = TcpStream::connect(bound).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        drop(task);
        // The listener is gone once the task is: a new connection is refused (poll, bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while TcpStream::connect(bound).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "the forward still listens after its task was dropped");
            tokio::task::yield_now().await;
        }
    }
}
