//! Start-up time (issue 7, target 7): from exec of `tiercache` (no warm source, no snapshot,
//! L1 only) until `/ready` answers 200, over N starts; prints median, p90 and max. `/ready` is
//! polled every 200 µs over raw HTTP/1.1 on loopback, so the figure is exec → ready within that.
//!
//! usage: startup_bench TIERCACHE_BIN STARTS [PORT]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: startup_bench TIERCACHE_BIN STARTS [PORT]");
        std::process::exit(2);
    }
    let starts: usize = args[2].parse().expect("STARTS");
    let port: u16 = args.get(3).map_or(18601, |port| port.parse().expect("PORT"));
    let bin = std::fs::canonicalize(&args[1]).expect("TIERCACHE_BIN exists");
    let mut times = Vec::with_capacity(starts);
    for _ in 0..starts {
        let started = Instant::now();
        let mut child = Command::new(&bin)
            .env_clear()
            .env("TIERCACHE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("TIERCACHE__LOG__LEVEL", "warn")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tiercache starts");
        let deadline = started + Duration::from_secs(10);
        while !ready(port) {
            assert!(Instant::now() < deadline, "not ready within 10 s");
            std::thread::sleep(Duration::from_micros(200));
        }
        times.push(started.elapsed());
        let _ = child.kill();
        let _ = child.wait();
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "starts {starts}: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(times[starts / 2]),
        ms(times[(starts * 9 / 10).min(starts - 1)]),
        ms(times[starts - 1])
    );
}
