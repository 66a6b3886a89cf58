//! How many bytes a state takes as JSON, and when it is kept as its text.

use aether_core::protocol::SharedJson;

/// States of at most this many bytes of JSON are kept as their text between commands
/// ([`SharedJson::compact`]): writing it costs less than a microsecond,
/// and a parsed small object takes many times its size. Larger ones stay parsed while in use
/// and are kept as text when loaded or moved.
pub const COMPACT_STATE_BYTES: usize = 2 * 1024;

/// Bytes of a state's JSON: its text's length when kept as text, else counted.
#[must_use]
pub fn state_size(state: &SharedJson) -> usize {
    state.text().map_or_else(|| json_size(state), str::len)
}

/// Keeps a state as its text when it is small ([`COMPACT_STATE_BYTES`]); returns its size.
pub fn compact_small(state: &mut SharedJson) -> usize {
    let size = state_size(state);
    if size <= COMPACT_STATE_BYTES {
        state.compact();
    }
    size
}

/// Bytes of a value's JSON, counted without building it.
pub fn json_size(v: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}
