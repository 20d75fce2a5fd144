//! The peers file (`--peers-file`): addresses separated by commas or whitespace, `#`
//! comments. Properties: no input panics; no entry is empty or holds a separator or `#`;
//! the entries, joined by newlines, read back the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use router::config::parse_peers;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let peers = parse_peers(text);
    for p in &peers {
        assert!(!p.is_empty());
        assert!(
            !p.contains(|c: char| c == ',' || c == '#' || c.is_whitespace()),
            "{p:?}"
        );
    }
    assert_eq!(parse_peers(&peers.join("\n")), peers);
});
