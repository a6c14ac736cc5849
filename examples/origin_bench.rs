//! Helpers for `bench/origin.sh`: a local origin to read through to, and the coalescing probe.
//!
//! `origin_bench serve ADDR DELAY_MS` answers `GET /items/{key}` with a ~100-byte JSON value
//! after DELAY_MS, and `GET /count/{key}` with how many times `key` was requested.
//!
//! `origin_bench coalesce CACHE_BASE ORIGIN_BASE ROUNDS CLIENTS` sends, per round, CLIENTS
//! concurrent GETs of one key nobody has read, each on its own connection, and prints per round
//! how many requests reached the origin and how many clients got a 200.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;

type Counts = Arc<Mutex<HashMap<String, u64>>>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 4 => serve(&args[2], args[3].parse().expect("DELAY_MS")).await,
        Some("coalesce") if args.len() == 6 => {
            coalesce(&args[2], &args[3], args[4].parse().expect("ROUNDS"), args[5].parse().expect("CLIENTS")).await
        }
        _ => {
            eprintln!("usage: origin_bench serve ADDR DELAY_MS | coalesce CACHE_BASE ORIGIN_BASE ROUNDS CLIENTS");
            std::process::exit(2);
        }
    }
}

async fn serve(addr: &str, delay_ms: u64) {
    let counts: Counts = Arc::default();
    let delay = Duration::from_millis(delay_ms);
    let router = Router::new()
        .route(
            "/items/{key}",
            get(move |State(counts): State<Counts>, Path(key): Path<String>| async move {
                *counts.lock().unwrap().entry(key.clone()).or_default() += 1;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let padding = "x".repeat(100usize.saturating_sub(key.len() + 24));
                ([("content-type", "application/json")], format!(r#"{{"key":"{key}","pad":"{padding}"}}"#))
            }),
        )
        .route(
            "/count/{key}",
            get(|State(counts): State<Counts>, Path(key): Path<String>| async move {
                counts.lock().unwrap().get(&key).copied().unwrap_or(0).to_string()
            }),
        )
        .with_state(counts);
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the origin");
    axum::serve(listener, router).await.expect("serve");
}

async fn coalesce(cache: &str, origin: &str, rounds: usize, clients: usize) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    for round in 0..rounds {
        let key = format!("coalesce-{nonce}-{round}");
        // One client per request: each opens its own connection, as independent callers would.
        let requests = (0..clients).map(|_| {
            let url = format!("{cache}/api/cache/{key}");
            async move {
                let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
                client.get(url).send().await.map(|response| response.status().as_u16()).unwrap_or(0)
            }
        });
        let statuses = futures_util::future::join_all(requests).await;
        let ok = statuses.iter().filter(|status| **status == 200).count();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let fetches: u64 =
            client.get(format!("{origin}/count/{key}")).send().await.unwrap().text().await.unwrap().parse().unwrap();
        println!("{fetches} {ok}");
    }
}
