//! SIGTERM closes every viewer connection with 1001 and the process exits with status 0.

mod support;

use support::Server;

#[test]
fn sigterm_closes_viewers_with_1001_and_exits_cleanly() {
    let mut server = Server::start_tls(&[]);
    let mut plain = server.viewer("p");
    let mut tls = server.tls_viewer("t");
    plain.join("r");
    tls.join("r");
    let status = server.terminate();
    assert_eq!(plain.close_code(), Some(1001));
    assert_eq!(tls.close_code(), Some(1001));
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
}
