//! Invalidation propagation between two running instances: for each round, B reads a key (so
//! B's L1 holds it), A overwrites it, and B is polled until it answers the new value. The time
//! from A's acknowledgement to B's first new answer is one sample.
//!
//! cargo run --release --example propagation -- http://127.0.0.1:18201 http://127.0.0.1:18202 1000

use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // reqwest is built without a bundled TLS provider (see Cargo.toml): ring, as the service.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let (a, b) = (args.get(1).expect("URL of A"), args.get(2).expect("URL of B"));
    let writes: usize = args.get(3).map_or(1000, |n| n.parse().expect("a count"));
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let mut samples = Vec::with_capacity(writes);
    for round in 0..writes {
        let key = format!("prop:{}", round % 50);
        let url_a = format!("{a}/api/cache/{key}");
        let url_b = format!("{b}/api/cache/{key}");
        put(&client, &url_a, round * 2).await;
        // B reads until its L1 holds the current value (A's message about that write may land
        // after B's first read and drop it: keep reading).
        loop {
            let body = body_at(&client, &url_b).await;
            if body["value"].as_u64() == Some(round as u64 * 2) && body["source"] == "l1" {
                break;
            }
        }

        put(&client, &url_a, round * 2 + 1).await;
        let acknowledged = Instant::now();
        let deadline = acknowledged + Duration::from_secs(2);
        loop {
            if value_at(&client, &url_b).await == Some(round as u64 * 2 + 1) {
                samples.push(acknowledged.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: B never saw the write");
        }
    }
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "writes={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        samples.len(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.90).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}

async fn put(client: &reqwest::Client, url: &str, value: usize) {
    let response = client
        .put(url)
        .header("content-type", "application/json")
        .body(format!("{{\"value\":{value}}}"))
        .send()
        .await
        .expect("PUT");
    assert!(response.status().is_success());
}

async fn body_at(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.expect("GET").json().await.expect("JSON")
}

async fn value_at(client: &reqwest::Client, url: &str) -> Option<u64> {
    body_at(client, url).await["value"].as_u64()
}
