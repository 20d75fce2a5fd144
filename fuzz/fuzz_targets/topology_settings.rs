//! The mesh-settings record decoder (control channel 0x04) and the settings state machine:
//! never panics, and every accepted record re-encodes to exactly the bytes it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use topology::settings::{EncryptionRecord, Settings};
use topology::{ConnId, PeerUid};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = EncryptionRecord::decode(data) {
        assert_eq!(&record.encode()[1..], data);
    }
    let _ = EncryptionRecord::decode_message(data);
    let mut settings = Settings::new(PeerUid(1), EncryptionRecord::initial(false, PeerUid(1)));
    let verdict = data.first().is_some_and(|b| b & 1 == 0);
    let _ = settings.handle_message(ConnId(1), data.get(1..).unwrap_or_default(), |_| verdict);
    while settings.poll_transmit().is_some() {}
});
