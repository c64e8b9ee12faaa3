//! Criterion benches of the store's hot paths: chunk+hash, compress, pack write and
//! block read. Ratios between these, not absolute times, are what to compare.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stasis_store::{
    Algorithm, Backend, BlobKind, Codec, Compression, Id, MemoryBackend, PackBuilder, Store,
    StoreConfig, compress, decompress, is_zero,
};

/// Data like a disk image's: text, binary-like structure and random bytes.
fn sample(n: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match (i / 65536) % 3 {
                0 => b"lorem ipsum dolor sit amet, consectetur "[i % 40],
                1 => (i as u8).wrapping_mul(3) ^ ((x & 7) as u8),
                _ => x as u8,
            }
        })
        .collect()
}

fn chunk_hash(c: &mut Criterion) {
    let data = sample(16 << 20);
    let mut g = c.benchmark_group("chunk_hash");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for bs in [4096usize, 65536, 1 << 20] {
        g.bench_with_input(BenchmarkId::from_parameter(bs), &bs, |b, &bs| {
            b.iter(|| {
                for blk in data.chunks(bs) {
                    if !is_zero(blk) {
                        black_box(Id::of(blk));
                    }
                }
            })
        });
    }
    g.finish();
}

fn codecs(c: &mut Criterion) {
    let data = sample(4 << 20);
    let mut g = c.benchmark_group("compress_64k");
    g.throughput(Throughput::Bytes(data.len() as u64));
    let settings = [
        ("zstd1", Compression::new(Algorithm::Zstd, Some(1))),
        ("zstd3", Compression::new(Algorithm::Zstd, Some(3))),
        ("lz4", Compression::new(Algorithm::Lz4, Some(0))),
        ("lz4hc9", Compression::new(Algorithm::Lz4, Some(9))),
    ];
    for (name, comp) in settings {
        let Ok(comp) = comp else { continue };
        g.bench_function(BenchmarkId::new("compress", name), |b| {
            let mut out = Vec::new();
            b.iter(|| {
                for blk in data.chunks(65536) {
                    black_box(compress(comp, blk, &mut out).ok());
                }
            })
        });
        let encoded: Vec<(Codec, Vec<u8>, usize)> = data
            .chunks(65536)
            .map(|blk| {
                let mut out = Vec::new();
                let c = compress(comp, blk, &mut out).unwrap_or(Codec::Raw);
                if c == Codec::Raw {
                    out = blk.to_vec();
                }
                (c, out, blk.len())
            })
            .collect();
        g.bench_function(BenchmarkId::new("decompress", name), |b| {
            let mut out = Vec::new();
            b.iter(|| {
                for (c, enc, len) in &encoded {
                    black_box(decompress(*c, enc, *len, &mut out).ok());
                }
            })
        });
    }
    g.finish();
}

fn pack_write(c: &mut Criterion) {
    let data = sample(32 << 20);
    let blocks: Vec<(Id, &[u8])> = data.chunks(65536).map(|b| (Id::of(b), b)).collect();
    let mut g = c.benchmark_group("pack_write");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(20);
    g.bench_function("build_seal_32MiB", |b| {
        b.iter(|| {
            let mut p = PackBuilder::new();
            for (id, blk) in &blocks {
                black_box(
                    p.add(*id, BlobKind::Data, Codec::Raw, blk.len() as u32, blk, 0)
                        .ok(),
                );
            }
            black_box(p.finish())
        })
    });
    g.finish();
}

fn block_read(c: &mut Criterion) {
    let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let Ok(store) = Store::init(be, StoreConfig::default()) else {
        return;
    };
    let data = sample(8 << 20);
    let Ok(mut w) = store.writer(Compression::default()) else {
        return;
    };
    let ids: Vec<Id> = data
        .chunks(65536)
        .map(|b| {
            let id = Id::of(b);
            let _ = w.add(id, BlobKind::Data, b);
            id
        })
        .collect();
    if w.commit().is_err() {
        return;
    }
    let mut g = c.benchmark_group("block_read_64k");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("storage_decode_verify", |b| {
        b.iter(|| {
            for id in &ids {
                black_box(store.read_blob(id).ok());
            }
        })
    });
    g.bench_function("cached", |b| {
        b.iter(|| {
            for id in &ids {
                black_box(store.block(id).ok());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, chunk_hash, codecs, pack_write, block_read);
criterion_main!(benches);
