//! Engine micro-benchmarks (issue 7): L1 get and insert at 1M entries, glob matching, L2
//! envelope encode/decode, snapshot write and read per entry. `cargo bench --bench engine`;
//! BENCHMARKS.md tracks the figures so regressions show.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tiercache::bench_api::{glob_matches, restore_snapshot, EnvelopeBench, L1Bench};

const ENTRIES: usize = 1_000_000;

fn l1(c: &mut Criterion) {
    let bench = L1Bench::filled(ENTRIES, 100);
    let mut group = c.benchmark_group("l1_1m_entries");
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    group.bench_function("get_hit", |b| {
        b.iter(|| {
            next = (next + 7919) % ENTRIES;
            assert!(bench.get(black_box(next)));
        })
    });
    group.bench_function("insert_replace", |b| {
        b.iter(|| {
            next = (next + 7919) % ENTRIES;
            bench.insert(black_box(next));
        })
    });
    group.finish();
}

fn glob(c: &mut Criterion) {
    let mut group = c.benchmark_group("glob");
    let cases = [
        ("prefix", "user:*", "user:12345:profile"),
        ("classes", "user:[0-9][0-9]?:*[^x]", "user:12a:profile"),
        ("miss", "order:*:items", "user:12345:profile"),
        ("many_stars", "*a*b*c*d*e*", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ];
    for (name, pattern, text) in cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), &(pattern, text), |b, (pattern, text)| {
            b.iter(|| glob_matches(black_box(pattern), black_box(text)))
        });
    }
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for (name, size, tags, compressed) in
        [("100B", 100, 0, false), ("1KiB_2tags", 1024, 2, false), ("16KiB_zstd", 16384, 0, true)]
    {
        let bench = EnvelopeBench::new(size, tags, compressed);
        let encoded = bench.encode();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| b.iter(|| black_box(bench.encode())));
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| EnvelopeBench::decode(black_box(&encoded)))
        });
    }
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    const SNAPSHOT_ENTRIES: usize = 100_000;
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("bench.snapshot");
    let bench = L1Bench::filled(SNAPSHOT_ENTRIES, 100);
    let mut group = c.benchmark_group("snapshot_100k_entries");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SNAPSHOT_ENTRIES as u64));
    group.bench_function("write", |b| b.iter(|| assert_eq!(bench.write_snapshot(&path), SNAPSHOT_ENTRIES as u64)));
    group.bench_function("read", |b| {
        b.iter_batched(|| (), |()| restore_snapshot(&path, SNAPSHOT_ENTRIES), BatchSize::PerIteration)
    });
    group.finish();
}

criterion_group!(benches, l1, glob, envelope, snapshot);
criterion_main!(benches);
