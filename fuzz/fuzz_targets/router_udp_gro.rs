//! The UDP_GRO control message (the segment size of a GRO-coalesced receive). Properties: no
//! input panics; control data laid out as the kernel lays it (messages built from the input:
//! level, type, data) yields the first UDP_GRO message's int, or nothing when it is negative
//! or absent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use router::udp::gro_segment;

/// SOL_UDP and UDP_GRO (linux/udp.h).
const SOL_UDP: i32 = 17;
const UDP_GRO: i32 = 104;
const HDR: usize = 16;

fn align(n: usize) -> usize {
    (n + 7) & !7
}

fuzz_target!(|data: &[u8]| {
    let _ = gro_segment(data);
    // Structured: each message is [kind, len, data...]; kind & 1 marks a UDP_GRO message
    // (its data: 4 bytes), else another level and type.
    let mut control = Vec::new();
    let mut want = None;
    let mut rest = data;
    while let [kind, len, tail @ ..] = rest {
        let (level, ty, n) = if kind & 1 == 1 {
            (SOL_UDP, UDP_GRO, 4)
        } else {
            (
                i32::from(*kind >> 1),
                i32::from(*len),
                usize::from(*len % 24),
            )
        };
        if (level, ty) == (SOL_UDP, UDP_GRO) && n != 4 {
            break;
        }
        let Some(body) = tail.get(..n) else { break };
        if kind & 1 == 1 && want.is_none() {
            want = Some(usize::try_from(i32::from_ne_bytes(body.try_into().unwrap())).ok());
        }
        control.extend_from_slice(&(HDR + n).to_ne_bytes());
        control.extend_from_slice(&level.to_ne_bytes());
        control.extend_from_slice(&ty.to_ne_bytes());
        control.extend_from_slice(body);
        control.resize(align(control.len()), 0);
        rest = &tail[n..];
    }
    assert_eq!(gro_segment(&control), want.flatten());
});
