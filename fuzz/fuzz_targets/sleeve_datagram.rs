//! Feeds arbitrary bytes to the sleeve receiver and checks the codec's properties:
//! - a datagram that parses re-emits, header by header, to exactly the same bytes;
//! - a frame the receiver hands out passed the virtio_net_hdr safety check and fits the budget;
//! - nothing panics, whatever the input (including across calls: reassembly state persists).
#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use topology::sleeve::{
    ChunkPacket, ChunkRepr, HEADER_LEN, MAX_FRAME_LEN, MessageType, Packet, ReassemblyConfig,
    Received, Receiver, Repr, VnetHdr,
};

const LOCAL: [u8; 6] = [2, 0, 0, 0, 0, 2];

struct State {
    receiver: Receiver,
    epoch: Instant,
    tick: u64,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        Mutex::new(State {
            receiver: Receiver::new(
                LOCAL,
                ReassemblyConfig {
                    slots: 4,
                    max_per_source: 2,
                    ..ReassemblyConfig::default()
                },
            ),
            epoch: Instant::now(),
            tick: 0,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    // Round trip: parse, emit into a fresh buffer, compare.
    if let Ok(packet) = Packet::new_checked(data) {
        if let Ok(repr) = Repr::parse(&packet) {
            let mut out = vec![0u8; data.len()];
            repr.emit(&mut Packet::new_unchecked(&mut out[..]));
            if repr.msg_type == MessageType::Chunk {
                if let Ok(chunk) = ChunkPacket::new_checked(&data[HEADER_LEN..]) {
                    if let Ok(c) = ChunkRepr::parse(&chunk) {
                        assert!(c.offset as usize + c.data_len <= c.total as usize);
                        assert!(c.total as usize <= MAX_FRAME_LEN);
                        let mut view = ChunkPacket::new_unchecked(&mut out[HEADER_LEN..]);
                        c.emit(&mut view);
                        view.data_mut().copy_from_slice(chunk.data());
                        assert_eq!(out, data, "plain chunk did not re-emit to the same bytes");
                    }
                }
            } else {
                out[HEADER_LEN..].copy_from_slice(&data[HEADER_LEN..]);
                assert_eq!(out, data, "header did not re-emit to the same bytes");
            }
        }
    }

    // Stateful receive: frames delivered must be safe to write to a TAP.
    let mut guard = state().lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *guard;
    st.tick += 1;
    let now = st.epoch + Duration::from_millis(st.tick);
    if let Received::Inject { frame, .. } = st.receiver.handle_datagram(now, data) {
        assert!(frame.len() <= MAX_FRAME_LEN);
        assert!(VnetHdr::parse(frame).is_ok());
    }
    if st.tick % 64 == 0 {
        st.receiver.handle_timeout(now);
    }
});
