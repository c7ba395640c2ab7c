//! What a call on a non-blocking socket came to, in one place.
//!
//! Every read, write and accept in the shell (the workers, the ingest loop, the transports)
//! and in the loadgen needs the same three answers from an `io::Error`: `EINTR` is retried at
//! once, `EAGAIN` means "nothing now: wait for the next readiness event", anything else is the
//! connection's (or the listener's) failure. [`call`] gives them as `Ok(Some(_))`, `Ok(None)`
//! and `Err(_)`, so a call site matches what the value means instead of spelling both error
//! arms again (they were written out at nine sites before).

use std::io;

/// Run `op` until a signal does not interrupt it: `Ok(Some(value))` when it went through,
/// `Ok(None)` when it would block, the error otherwise.
#[inline]
pub fn call<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<Option<T>> {
    loop {
        match op() {
            Ok(value) => return Ok(Some(value)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::call;
    use std::io;

    #[test]
    fn an_interrupted_call_is_retried_and_would_block_is_none() {
        let mut answers = vec![Ok(7), Err(io::ErrorKind::Interrupted.into()), Err(io::ErrorKind::Interrupted.into())];
        assert_eq!(call(|| answers.pop().expect("asked once too often")).expect("no error"), Some(7));
        assert_eq!(call(|| Err::<u8, _>(io::ErrorKind::WouldBlock.into())).expect("no error"), None);
        let broken = call(|| Err::<u8, _>(io::ErrorKind::ConnectionReset.into()));
        assert_eq!(broken.expect_err("a reset is an error").kind(), io::ErrorKind::ConnectionReset);
    }
}
