//! Arbitrary bytes as an ingest line: decoding never panics; `data` and `state` handed out are
//! valid JSON, and `state` is an object.
use roomcast::wire::ingest::{decode_ingest_line, IngestCmd};

/// One input; panics when an invariant is broken.
pub(crate) fn run(data: &[u8]) {
    match decode_ingest_line(data).map(|l| l.cmd) {
        Ok(IngestCmd::Publish { data, .. }) => {
            assert!(serde_json::from_str::<serde_json::Value>(data.get()).is_ok());
        }
        Ok(IngestCmd::State { state, .. }) => {
            assert!(serde_json::from_str::<serde_json::Value>(state.get()).is_ok_and(|v| v.is_object()));
        }
        _ => {}
    }
}
