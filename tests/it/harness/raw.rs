//! Hand-driven HTTP/1.1 connections, for what a client library would not send or would hide.

use std::net::SocketAddr;
use std::time::Duration;

use super::DEADLINE;

/// A hand-driven HTTP/1.1 connection, for requests that must stay in flight (a body sent in
/// parts) while the test does something else.
pub struct RawConnection {
    stream: tokio::net::TcpStream,
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> RawConnection {
        let stream = tokio::time::timeout(DEADLINE, tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        RawConnection { stream }
    }

    /// Sends the head of a `PUT /api/cache/{key}` announcing `body_len` bytes, and `first` of them.
    pub async fn start_put(&mut self, key: &str, body_len: usize, first: &[u8]) {
        let head = format!(
            "PUT /api/cache/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
        );
        self.send(head.as_bytes()).await;
        self.send(first).await;
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write to the server");
    }

    /// Reads one response and returns its status and body (needs `Content-Length`).
    pub async fn read_response(&mut self) -> (u16, String) {
        use tokio::io::AsyncReadExt;
        let mut buffer = Vec::new();
        let read = async {
            loop {
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.expect("read from the server");
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(head_end) = find(&buffer, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length:"))
                        .map(|value| value.trim().parse::<usize>().expect("content-length"))
                        .unwrap_or(0);
                    if buffer.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("a response in time");
        let text = String::from_utf8_lossy(&buffer).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text:?}"));
        let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
        (status, body)
    }
}

impl RawConnection {
    /// Reads until `needle` has arrived (or the connection ends), within [`DEADLINE`].
    pub async fn read_until(&mut self, needle: &[u8]) -> String {
        use tokio::io::AsyncReadExt;
        let mut buffer = Vec::new();
        let read = async {
            while find(&buffer, needle).is_none() {
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("the bytes in time");
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Everything the server sends until it closes the connection, and whether it closed it
    /// within `within` (a reset counts as closed).
    pub async fn read_to_close(&mut self, within: Duration) -> (String, bool) {
        use tokio::io::AsyncReadExt;
        let mut buffer = Vec::new();
        let read = async {
            loop {
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let closed = tokio::time::timeout(within, read).await.is_ok();
        (String::from_utf8_lossy(&buffer).into_owned(), closed)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
