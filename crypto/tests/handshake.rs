//! Two handshakes wired together in memory: success, wrong password, password on one side only,
//! unknown version, garbage and truncated messages; then the control channel over the result.

#![allow(clippy::unwrap_used)]

use crypto::control::{FrameKind, MAX_CHUNK_LEN, split_frame};
use crypto::{
    ControlError, Established, Handshake, HandshakeConfig, HandshakeError, MeshPassword, NodeKey,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct Outcome {
    initiator: Result<Established, HandshakeError>,
    responder: Result<Established, HandshakeError>,
}

fn config(seed: u64, password: Option<&MeshPassword>) -> HandshakeConfig {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    HandshakeConfig::new(NodeKey::generate(&mut rng), password.cloned())
}

/// Drives both sides until neither has anything to say, delivering bytes `chunk` at a time.
fn run(i_cfg: &HandshakeConfig, r_cfg: &HandshakeConfig, chunk: usize) -> Outcome {
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let (mut to_r, mut to_i) = (Vec::new(), Vec::new());
    let mut i = Handshake::initiate(i_cfg, &mut rng, &mut to_r);
    let mut r = Handshake::respond(r_cfg, &mut rng, &mut to_i);
    let (mut i_res, mut r_res) = (None, None);
    for _ in 0..10_000 {
        if to_r.is_empty() && to_i.is_empty() {
            break;
        }
        if !to_r.is_empty() && r_res.is_none() {
            let n = chunk.min(to_r.len());
            let bytes: Vec<u8> = to_r.drain(..n).collect();
            match r.handle_input(&bytes, &mut to_i) {
                Ok(Some(e)) => r_res = Some(Ok(e)),
                Ok(None) => {}
                Err(e) => r_res = Some(Err(e)),
            }
        } else {
            to_r.clear();
        }
        if !to_i.is_empty() && i_res.is_none() {
            let n = chunk.min(to_i.len());
            let bytes: Vec<u8> = to_i.drain(..n).collect();
            match i.handle_input(&bytes, &mut to_r) {
                Ok(Some(e)) => i_res = Some(Ok(e)),
                Ok(None) => {}
                Err(e) => i_res = Some(Err(e)),
            }
        } else {
            to_i.clear();
        }
    }
    Outcome {
        initiator: i_res.unwrap_or(Err(HandshakeError::Timeout)),
        responder: r_res.unwrap_or(Err(HandshakeError::Timeout)),
    }
}

#[test]
fn success_without_password_yields_matching_keys() {
    let (a, b) = (config(1, None), config(2, None));
    let o = run(&a, &b, usize::MAX);
    let (i, r) = (o.initiator.unwrap(), o.responder.unwrap());
    assert_eq!(i.remote(), b.public());
    assert_eq!(r.remote(), a.public());
    assert_eq!(i.peer_name(), crypto::peer_name_bytes(&b.public()));
    assert!(i.is_initiator() && !r.is_initiator());
    assert_eq!(i.version(), 1);
    exchange_control(i, r);
}

#[test]
fn success_with_password_byte_at_a_time() {
    let pw = MeshPassword::new(b"correct horse").unwrap();
    let o = run(&config(1, Some(&pw)), &config(2, Some(&pw)), 1);
    exchange_control(o.initiator.unwrap(), o.responder.unwrap());
}

#[test]
fn wrong_password_is_rejected_on_both_sides() {
    let pw1 = MeshPassword::new(b"correct horse").unwrap();
    let pw2 = MeshPassword::new(b"battery staple").unwrap();
    let o = run(&config(1, Some(&pw1)), &config(2, Some(&pw2)), usize::MAX);
    assert_eq!(o.responder.unwrap_err(), HandshakeError::WrongPassword);
    assert_eq!(o.initiator.unwrap_err(), HandshakeError::WrongPassword);
}

#[test]
fn password_on_one_side_only() {
    let pw = MeshPassword::new(b"correct horse").unwrap();
    let o = run(&config(1, Some(&pw)), &config(2, None), usize::MAX);
    assert_eq!(
        o.initiator.unwrap_err(),
        HandshakeError::PasswordMismatch {
            local_has_password: true
        }
    );
    assert_eq!(
        o.responder.unwrap_err(),
        HandshakeError::PasswordMismatch {
            local_has_password: false
        }
    );
}

#[test]
fn unknown_version_and_bad_magic() {
    let cfg = config(2, None);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut out = Vec::new();
    let mut r = Handshake::respond(&cfg, &mut rng, &mut out);
    let err = r.handle_input(b"weft\x07\x09\x00", &mut out).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::UnknownVersion {
            local_min: 1,
            local_max: 1,
            remote_min: 7,
            remote_max: 9
        }
    );
    assert_eq!(err.code(), "unknown_version");
    assert!(err.to_string().contains("7..=9"));
    // Later calls keep failing the same way.
    assert_eq!(r.handle_input(b"", &mut out).unwrap_err(), err);

    let mut i = Handshake::initiate(&cfg, &mut rng, &mut out);
    // Weave's header: "weave" + versions.
    assert_eq!(
        i.handle_input(b"weave\x01\x02", &mut out).unwrap_err(),
        HandshakeError::BadMagic
    );
}

#[test]
fn garbage_and_truncated_messages_fail_cleanly() {
    let (a, b) = (config(1, None), config(2, None));
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    // Garbage HELLO body.
    let mut out = Vec::new();
    let mut r = Handshake::respond(&b, &mut rng, &mut out);
    let mut input = b"weft\x01\x01\x00".to_vec();
    input.extend_from_slice(&[0x00, 0x04, 0x01, 1, 2, 3]);
    assert_eq!(
        r.handle_input(&input, &mut out).unwrap_err(),
        HandshakeError::Malformed
    );
    // Unknown frame kind.
    let mut r = Handshake::respond(&b, &mut rng, &mut out);
    let mut input = b"weft\x01\x01\x00".to_vec();
    input.extend_from_slice(&[0x00, 0x01, 0x55]);
    assert_eq!(
        r.handle_input(&input, &mut out).unwrap_err(),
        HandshakeError::Malformed
    );
    // Wrong frame for the step.
    let mut r = Handshake::respond(&b, &mut rng, &mut out);
    let mut input = b"weft\x01\x01\x00".to_vec();
    input.extend_from_slice(&[0x00, 0x01, FrameKind::Finish.to_byte()]);
    assert_eq!(
        r.handle_input(&input, &mut out).unwrap_err(),
        HandshakeError::UnexpectedFrame
    );

    // A real exchange whose RESPONSE is truncated by one byte, or has one bit flipped.
    for corrupt in [0usize, 1] {
        let (mut to_r, mut to_i) = (Vec::new(), Vec::new());
        let mut i = Handshake::initiate(&a, &mut rng, &mut to_r);
        let mut r = Handshake::respond(&b, &mut rng, &mut to_i);
        assert!(
            i.handle_input(&to_i.split_off(0), &mut to_r)
                .unwrap()
                .is_none()
        );
        assert!(
            r.handle_input(&to_r.split_off(0), &mut to_i)
                .unwrap()
                .is_none()
        );
        let frame = split_frame(&to_i).unwrap().unwrap();
        assert_eq!(frame.kind, FrameKind::Response);
        let mut bad = to_i.clone();
        if corrupt == 0 {
            // Shorten the frame by one byte, fixing up the length field.
            let len = u16::from_be_bytes([bad[0], bad[1]]) - 1;
            bad[..2].copy_from_slice(&len.to_be_bytes());
            bad.pop();
        } else {
            let last = bad.len() - 1;
            bad[last] ^= 0x01;
        }
        assert_eq!(
            i.handle_input(&bad, &mut to_r).unwrap_err(),
            HandshakeError::Malformed
        );
    }
}

#[test]
fn error_strings_hold_no_secrets() {
    for e in [
        HandshakeError::WrongPassword,
        HandshakeError::PasswordMismatch {
            local_has_password: true,
        },
        HandshakeError::Timeout,
        HandshakeError::Malformed,
    ] {
        let s = e.to_string();
        assert!(!s.contains("correct horse"));
        assert!(!e.code().is_empty());
    }
    let pw = MeshPassword::new(b"correct horse").unwrap();
    assert_eq!(format!("{pw:?}"), "MeshPassword(<redacted>)");
    assert!(!format!("{:?}", config(1, Some(&pw))).contains("horse"));
}

/// Sends messages both ways over the established control channels, including one that spans
/// several frames, byte-at-a-time delivery, and a tampered frame.
fn exchange_control(i: Established, r: Established) {
    let (mut ic, _) = i.into_parts();
    let (mut rc, _) = r.into_parts();
    let big: Vec<u8> = (0..3 * MAX_CHUNK_LEN + 17).map(|n| n as u8).collect();
    for msg in [b"hello".to_vec(), Vec::new(), big] {
        let mut wire = Vec::new();
        ic.seal_message(&msg, &mut wire).unwrap();
        for b in wire.chunks(40_000) {
            rc.handle_input(b).unwrap();
        }
        let mut got = None;
        while let Some(m) = rc.poll_message().unwrap() {
            got = Some(m);
        }
        assert_eq!(got.unwrap(), msg);

        let mut wire = Vec::new();
        rc.seal_message(&msg, &mut wire).unwrap();
        ic.handle_input(&wire).unwrap();
        assert_eq!(ic.poll_message().unwrap().unwrap(), msg);
        assert_eq!(ic.poll_message().unwrap(), None);
    }
    let mut wire = Vec::new();
    ic.seal_message(b"tamper", &mut wire).unwrap();
    wire[5] ^= 0x80;
    rc.handle_input(&wire).unwrap();
    assert_eq!(rc.poll_message(), Err(ControlError::BadTag));
    assert_eq!(rc.poll_message(), Err(ControlError::Failed));
}
