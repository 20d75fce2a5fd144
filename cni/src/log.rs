//! Optional debug log: lines appended to the file named by `WEFT_CNI_LOG`. stdout carries only
//! the result or error JSON, so nothing else may be printed there.

use std::fmt;
use std::io::Write;

/// Appends one line to the debug log, if one is configured; failures are ignored.
pub(crate) fn log(args: fmt::Arguments<'_>) {
    let Some(path) = std::env::var_os("WEFT_CNI_LOG") else {
        return;
    };
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let line = format!(
        "{}.{:06} weft-cni[{}] {args}\n",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    );
    let _ = f.write_all(line.as_bytes());
}
