//! Frame codec throughput: decoding and encoding 16 KiB PSH frames, and
//! shaping writes with the default padding scheme.

use anytls_benches::{FRAME_DATA, psh_stream};
use anytls_core::frame::{FrameDecoder, FrameLimits, encode_data};
use anytls_core::{PaddingScheme, Shaper, StreamId};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use std::hint::black_box;

const FRAMES: usize = 64;

fn decode(c: &mut Criterion) {
    let wire = psh_stream(FRAMES).freeze();
    let mut g = c.benchmark_group("frame_decode");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    // The adapter hands the decoder a BytesMut it has read into; a fresh one per
    // iteration models that (the copy into it is the socket read, not decoding).
    g.bench_function("psh_16k_x64_whole", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&wire[..]),
            |buf| {
                let mut dec = FrameDecoder::new(FrameLimits::default());
                let mut n = 0;
                while let Ok(Some(f)) = dec.decode(buf) {
                    n += f.data.len();
                }
                assert_eq!(n, FRAMES * FRAME_DATA);
                black_box(n)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let payload: Vec<u8> = (0..FRAME_DATA).map(|i| i as u8).collect();
    let mut g = c.benchmark_group("frame_encode");
    g.throughput(Throughput::Bytes((FRAMES * (FRAME_DATA + 7)) as u64));
    let mut out = BytesMut::with_capacity(FRAMES * (FRAME_DATA + 7));
    g.bench_function("psh_16k_x64", |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..FRAMES {
                encode_data(&mut out, StreamId(1), black_box(&payload));
            }
            black_box(out.len())
        })
    });
    g.finish();
}

fn shaping(c: &mut Criterion) {
    let scheme = PaddingScheme::default_scheme();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let payload = vec![0u8; 1200];
    let mut g = c.benchmark_group("padding");
    g.throughput(Throughput::Elements(7));
    let mut out = BytesMut::with_capacity(16 * 1024);
    g.bench_function("shape_packets_1_to_7", |b| {
        b.iter(|| {
            let mut shaper = Shaper::new();
            out.clear();
            for _ in 1..8 {
                let mut p = &payload[..];
                for r in shaper.plan(&scheme, p.len(), &mut rng) {
                    r.encode(&mut p, &mut out);
                }
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode, shaping);
criterion_main!(benches);
