//! Seal+open throughput of 1,400-byte packets on one core, per AEAD candidate, and through
//! weft's own [`crypto::Session`] batch API.
//!
//! Each iteration seals one 1,400-byte payload in place and opens it again, so the reported
//! throughput counts each payload byte once for a full seal+open round trip.

#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PACKET: usize = 1400;

fn nonce12(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

fn rustcrypto<A: AeadInPlace + KeyInit>(c: &mut Criterion, name: &str) {
    let key = aes_gcm::aead::Key::<A>::default();
    let aead = A::new(&key);
    let mut buf = vec![0x5au8; PACKET];
    let mut counter = 0u64;
    let mut group = c.benchmark_group("seal_open_1400");
    group.throughput(Throughput::Bytes(PACKET as u64));
    group.bench_function(name, |b| {
        b.iter(|| {
            counter += 1;
            let nonce = aes_gcm::aead::Nonce::<A>::clone_from_slice(&nonce12(counter)[..]);
            let tag = aead
                .encrypt_in_place_detached(&nonce, b"hdr", &mut buf)
                .unwrap();
            aead.decrypt_in_place_detached(&nonce, b"hdr", &mut buf, &tag)
                .unwrap();
            black_box(&buf);
        });
    });
    group.finish();
}

fn xsalsa(c: &mut Criterion) {
    use xsalsa20poly1305::XSalsa20Poly1305;
    let aead = XSalsa20Poly1305::new(&xsalsa20poly1305::Key::default());
    let mut buf = vec![0x5au8; PACKET];
    let mut counter = 0u64;
    let mut group = c.benchmark_group("seal_open_1400");
    group.throughput(Throughput::Bytes(PACKET as u64));
    group.bench_function("xsalsa20poly1305 (crypto_box/secretbox)", |b| {
        b.iter(|| {
            counter += 1;
            let mut n = [0u8; 24];
            n[16..].copy_from_slice(&counter.to_be_bytes());
            let nonce = xsalsa20poly1305::Nonce::from(n);
            let tag = aead
                .encrypt_in_place_detached(&nonce, b"", &mut buf)
                .unwrap();
            aead.decrypt_in_place_detached(&nonce, b"", &mut buf, &tag)
                .unwrap();
            black_box(&buf);
        });
    });
    group.finish();
}

fn ring_aead(c: &mut Criterion, alg: &'static ring::aead::Algorithm, name: &str) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).unwrap());
    let mut buf = vec![0x5au8; PACKET];
    let mut counter = 0u64;
    let mut group = c.benchmark_group("seal_open_1400");
    group.throughput(Throughput::Bytes(PACKET as u64));
    group.bench_function(name, |b| {
        b.iter(|| {
            counter += 1;
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce12(counter)),
                    Aad::from(b"hdr"),
                    &mut buf,
                )
                .unwrap();
            key.open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce12(counter)),
                Aad::from(b"hdr"),
                tag,
                &mut buf,
                0..,
            )
            .unwrap();
            black_box(&buf);
        });
    });
    group.finish();
}

/// weft's own path: `Session::seal_batch` then `open_batch` over 64 packets in caller buffers,
/// with the header, counter, replay window and epoch checks included.
fn weft_session(c: &mut Criterion, mode: crypto::Mode, name: &str) {
    use crypto::{HEADER_LEN, OVERHEAD, PacketBuf};
    const BATCH: usize = 64;
    let now = std::time::Instant::now();
    let (mut a, mut b) = session_pair(mode, now);
    let mut batch: Vec<PacketBuf<[u8; PACKET + OVERHEAD]>> = (0..BATCH)
        .map(|_| PacketBuf::new([0x5a; PACKET + OVERHEAD], HEADER_LEN, PACKET))
        .collect();
    let mut group = c.benchmark_group("seal_open_1400");
    group.throughput(Throughput::Bytes((PACKET * BATCH) as u64));
    group.bench_function(name, |bench| {
        bench.iter(|| {
            assert_eq!(a.seal_batch(now, &mut batch), BATCH);
            assert_eq!(b.open_batch(now, &mut batch), BATCH);
            black_box(&batch);
        });
    });
    group.finish();
}

/// Runs a real handshake in memory and returns two facing sessions.
fn session_pair(mode: crypto::Mode, now: std::time::Instant) -> (crypto::Session, crypto::Session) {
    use crypto::{Handshake, HandshakeConfig, NodeKey, Session, SessionConfig};
    use rand_core::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let ca = HandshakeConfig::new(NodeKey::generate(&mut rng), None);
    let cb = HandshakeConfig::new(NodeKey::generate(&mut rng), None);
    let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
    let mut ha = Handshake::initiate(&ca, &mut rng, &mut to_b);
    let mut hb = Handshake::respond(&cb, &mut rng, &mut to_a);
    let (mut ea, mut eb) = (None, None);
    while ea.is_none() || eb.is_none() {
        if eb.is_none() {
            eb = hb
                .handle_input(&std::mem::take(&mut to_b), &mut to_a)
                .unwrap();
        }
        if ea.is_none() {
            ea = ha
                .handle_input(&std::mem::take(&mut to_a), &mut to_b)
                .unwrap();
        }
    }
    let (_, ka) = ea.unwrap().into_parts();
    let (_, kb) = eb.unwrap().into_parts();
    (
        Session::new(ka, SessionConfig::default(), mode, now),
        Session::new(kb, SessionConfig::default(), mode, now),
    )
}

fn candidates(c: &mut Criterion) {
    rustcrypto::<chacha20poly1305::ChaCha20Poly1305>(c, "chacha20poly1305 (RustCrypto 0.10)");
    rustcrypto::<aes_gcm::Aes256Gcm>(c, "aes-256-gcm (RustCrypto aes-gcm 0.10)");
    ring_aead(c, &ring::aead::AES_256_GCM, "aes-256-gcm (ring 0.17)");
    ring_aead(
        c,
        &ring::aead::CHACHA20_POLY1305,
        "chacha20poly1305 (ring 0.17)",
    );
    xsalsa(c);
    weft_session(
        c,
        crypto::Mode::Sealed,
        "weft Session sealed (ring aes-256-gcm, batch of 64)",
    );
    weft_session(
        c,
        crypto::Mode::Plain,
        "weft Session plain (ring aes-256-gcm, batch of 64)",
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = candidates
}
criterion_main!(benches);
