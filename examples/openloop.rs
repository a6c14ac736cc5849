//! Open-loop load at a fixed rate with coordinated-omission correction (issue 7, target 2).
//!
//! Request k is due at `start + k / rate`, whatever happened before it, and goes on keep-alive
//! connection k mod C (wrk2's model); a request's latency runs from the
//! time it was *due*, not from when a connection got to send it, so a server that stalls is
//! charged for every request that should have gone out during the stall (what a closed-loop
//! tool like wrk hides). The dispatcher spins (yielding) for the last millisecond before a due
//! time instead of sleeping, because tokio's timer has millisecond resolution; run it pinned to
//! a core of its own. `achieved_rps` counts answers over the time until the last one, so a
//! generator or server that falls behind shows it. One thread, HTTP/1.1 over loopback only.
//!
//! usage: openloop URL RATE SECONDS [CONNECTIONS] [HEADER: VALUE]...
//! prints one JSON line: rate, sent, answered, errors, achieved_rps, p50/p99/p999/max in ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

struct Outcome {
    latencies_ns: Vec<u64>,
    errors: u64,
}

/// Sends the requests queued on `due` (their due times) on one connection until it closes.
async fn connection(
    addr: String,
    request: Arc<Vec<u8>>,
    mut due: mpsc::UnboundedReceiver<Instant>,
) -> std::io::Result<Outcome> {
    let stream = TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let mut stream = BufReader::new(stream);
    let mut outcome = Outcome { latencies_ns: Vec::new(), errors: 0 };
    let mut line = String::new();
    let mut body = Vec::new();
    while let Some(due_at) = due.recv().await {
        stream.get_mut().write_all(&request).await?;
        line.clear();
        stream.read_line(&mut line).await?;
        let ok = line.split(' ').nth(1) == Some("200");
        let mut length = 0usize;
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(length, 0);
        stream.read_exact(&mut body).await?;
        outcome.latencies_ns.push(due_at.elapsed().as_nanos() as u64);
        outcome.errors += u64::from(!ok);
    }
    Ok(outcome)
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: openloop URL RATE SECONDS [CONNECTIONS] [HEADER: VALUE]...");
        std::process::exit(2);
    }
    let url = args[1].strip_prefix("http://").expect("an http:// URL");
    let (addr, path) = url.split_once('/').map_or((url, "/".to_string()), |(addr, path)| (addr, format!("/{path}")));
    assert!(addr.starts_with("127.0.0.1:"), "loopback only");
    let rate: f64 = args[2].parse().expect("RATE");
    let seconds: f64 = args[3].parse().expect("SECONDS");
    let connections: usize = args.get(4).map_or(64, |n| n.parse().expect("CONNECTIONS"));
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for header in args.iter().skip(5) {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let request = Arc::new(request.into_bytes());

    let mut senders = Vec::with_capacity(connections);
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (sender, receiver) = mpsc::unbounded_channel();
        senders.push(sender);
        workers.push(tokio::spawn(connection(addr.to_string(), request.clone(), receiver)));
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // connections open before the clock starts

    // Request k goes to connection k mod C (wrk2's model): a connection still busy with an
    // earlier request sends this one late, and the wait counts in its latency.
    let total = (rate * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    for k in 0..total {
        let due_at = start + interval.mul_f64(k as f64);
        if let Some(early) = due_at.checked_duration_since(Instant::now() + Duration::from_millis(1)) {
            tokio::time::sleep(early).await;
        }
        while Instant::now() < due_at {
            tokio::task::yield_now().await;
        }
        senders[k as usize % connections].send(due_at).expect("workers are running");
    }
    drop(senders);

    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0;
    let mut broken = 0;
    for worker in workers {
        match tokio::time::timeout(Duration::from_secs(30), worker).await {
            Ok(Ok(Ok(outcome))) => {
                latencies.extend(outcome.latencies_ns);
                errors += outcome.errors;
            }
            _ => broken += 1,
        }
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let answered = latencies.len() as u64;
    println!(
        "{{\"rate\":{rate},\"sent\":{total},\"answered\":{answered},\"errors\":{},\"achieved_rps\":{:.0},\
         \"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        errors + (total - answered),
        answered as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        percentile(&latencies, 1.0),
    );
    if broken > 0 {
        eprintln!("{broken} connections failed");
        std::process::exit(1);
    }
}
