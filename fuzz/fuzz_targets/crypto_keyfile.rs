//! The node key file and the mesh password file, as the router reads them. Properties: no
//! input panics; an accepted key file is 64 hex digits (either case) and trailing whitespace,
//! and the key writes back as those digits; a password is the file less one trailing newline.

#![no_main]

use crypto::keyfile::{parse_key_text, password_from_file};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(key) = parse_key_text(text)
    {
        let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, text.trim_end().to_ascii_lowercase());
    }
    let password = password_from_file(Zeroizing::new(data.to_vec()));
    let tail = &data[password.len()..];
    assert!(data.starts_with(&password));
    assert!(
        tail.is_empty() || tail == b"\n" || tail == b"\r\n",
        "{tail:?}"
    );
});
