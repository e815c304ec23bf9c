//! A counting TCP proxy: bytes each way and HTTP/1.1 requests, counted at the socket,
//! so the figures do not depend on what the daemon reports about itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
pub struct Counters {
    /// Client → upstream.
    pub up: AtomicU64,
    /// Upstream → client.
    pub down: AtomicU64,
    pub requests: AtomicU64,
}

impl Counters {
    pub fn reset(&self) {
        self.up.store(0, Ordering::SeqCst);
        self.down.store(0, Ordering::SeqCst);
        self.requests.store(0, Ordering::SeqCst);
    }

    pub fn read(&self) -> (u64, u64, u64) {
        let load = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        (load(&self.up), load(&self.down), load(&self.requests))
    }
}

pub struct Proxy {
    pub port: u16,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on a free loopback port and forwards every connection to `upstream_port`.
pub async fn start(upstream_port: u16) -> Result<Proxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let counters = Arc::new(Counters::default());
    let shared = counters.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counters = shared.clone();
            tokio::spawn(async move {
                if let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await {
                    relay(client, upstream, counters).await;
                }
            });
        }
    });
    Ok(Proxy { port, counters, task })
}

async fn relay(client: TcpStream, upstream: TcpStream, counters: Arc<Counters>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up_counters = counters.clone();
    let up = async move {
        let (mut buffer, mut framing) = (vec![0u8; 64 * 1024], RequestFraming::default());
        while let Ok(n) = client_read.read(&mut buffer).await {
            if n == 0 || upstream_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
            up_counters.up.fetch_add(n as u64, Ordering::SeqCst);
            let requests = framing.feed(&buffer[..n]);
            up_counters.requests.fetch_add(requests, Ordering::SeqCst);
        }
        let _ = upstream_write.shutdown().await;
    };
    let down = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = upstream_read.read(&mut buffer).await {
            if n == 0 || client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
            counters.down.fetch_add(n as u64, Ordering::SeqCst);
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Splits a client's byte stream into HTTP/1.1 requests (head, then a body of
/// `content-length` bytes) to count them.
#[derive(Default)]
struct RequestFraming {
    head: Vec<u8>,
    body_left: usize,
}

impl RequestFraming {
    /// Consumes `bytes`; returns how many request heads were completed.
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut completed = 0;
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len());
                self.body_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            self.head.push(bytes[0]);
            bytes = &bytes[1..];
            if self.head.ends_with(b"\r\n\r\n") {
                completed += 1;
                self.body_left = content_length(&self.head);
                self.head.clear();
            }
        }
        completed
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_counts_requests_split_anywhere() {
        let stream = b"GET /internal/v1/root HTTP/1.1\r\nhost: x\r\n\r\nPOST /r HTTP/1.1\r\nContent-Length: 10\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        for split in 1..stream.len() {
            let mut framing = RequestFraming::default();
            let (first, rest) = stream.split_at(split);
            assert_eq!(framing.feed(first) + framing.feed(rest), 3, "split at {split}");
        }
    }
}
