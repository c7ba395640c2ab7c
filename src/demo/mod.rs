//! The demo page: a viewer in the browser, served at `GET /` on the viewer ports.
//!
//! A newcomer's first minute should be "open http://127.0.0.1:8080/": [`DemoPage`] holds one
//! complete HTTP/1.1 response with the page (`index.html`, embedded with `include_str!`:
//! inline CSS and JS, no external fetches) that connects back to the same server
//! (`ws(s)://location.host` + the upgrade path), joins a room typed into it, shows events,
//! presence and comments live, sends comments, shows the connection state and reconnects with
//! `since`/`epoch` after a drop. Being on the server's own origin, the page (and a console
//! snippet run from it) is not blocked by a browser's local-network checks.
//!
//! The response is built once; answering a request is a lookup. The page's
//! `Content-Security-Policy` allows exactly its own inline script and style (by SHA-256 hash,
//! computed here from the embedded text, so editing the page cannot forget the policy) and
//! WebSocket connections to its own origin (`connect-src 'self'`, which CSP Level 3 extends to
//! `ws:`/`wss:` on the same host and port); nothing else loads.
//!
//! This module is pure: it never touches a socket, and it never serves anything but the page
//! (`/` and `/index.html`, `GET`, no `Upgrade` header). `ring` (already rustls' crypto
//! provider) computes the hashes and `base64` encodes them.

use base64::Engine;

/// The page, with `{{WS_PATH}}` where the upgrade path goes.
const PAGE: &str = include_str!("index.html");

/// The placeholder for the upgrade path in [`PAGE`].
const WS_PATH_SLOT: &str = "{{WS_PATH}}";

/// Request paths that get the page.
pub const PAGE_PATHS: [&str; 2] = ["/", "/index.html"];

/// The demo page's complete HTTP response, built once for an upgrade path.
///
/// Call order on a new connection (the worker's upgrade step): once the request head is
/// complete, ask [`DemoPage::respond_to`] first; `Some(bytes)` is the whole answer (write it
/// and close the connection, as for a refused upgrade); `None` means the request is not for
/// the page (or not complete yet) and goes on to the WebSocket upgrade as before. Both methods
/// are cheap and safe to call for every request; the page is shared by all connections.
#[derive(Debug, Clone)]
pub struct DemoPage {
    response: Box<[u8]>,
}

impl DemoPage {
    /// The page for a server whose WebSocket upgrade path is `ws_path` (`ws.path`).
    pub fn new(ws_path: &str) -> Self {
        let body = PAGE.replace(WS_PATH_SLOT, &html_attribute(ws_path));
        let head = format!(
            "HTTP/1.1 200 OK\r\n\
             Content-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\n\
             Cache-Control: no-cache\r\n\
             Content-Security-Policy: {}\r\n\
             X-Content-Type-Options: nosniff\r\n\
             Referrer-Policy: no-referrer\r\n\
             Connection: close\r\n\r\n",
            body.len(),
            content_security_policy(PAGE)
        );
        let mut response = head.into_bytes();
        response.extend_from_slice(body.as_bytes());
        Self { response: response.into_boxed_slice() }
    }

    /// The complete response for a `GET` of `request_path` (a query string is ignored), or
    /// `None` when the path is not the page's.
    pub fn response(&self, request_path: &str) -> Option<&[u8]> {
        let path = request_path.split_once('?').map_or(request_path, |(path, _)| path);
        PAGE_PATHS.contains(&path).then_some(&*self.response)
    }

    /// The complete response when `request` (the bytes received so far on a new connection)
    /// holds a complete `GET /` or `GET /index.html` without an `Upgrade` header; `None`
    /// otherwise (incomplete, another method or path, a WebSocket upgrade, not HTTP).
    pub fn respond_to(&self, request: &[u8]) -> Option<&[u8]> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(request) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) | Err(_) => return None,
        }
        let upgrade = parsed.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));
        if parsed.method != Some("GET") || upgrade {
            return None;
        }
        self.response(parsed.path?)
    }

    /// The whole response (head and body), for tests and tools.
    pub fn bytes(&self) -> &[u8] {
        &self.response
    }
}

/// The policy for `page`: its inline `<script>` and `<style>` by hash, WebSockets to the
/// page's own origin, nothing else.
fn content_security_policy(page: &str) -> String {
    let hashes = |tag: &str| -> String {
        inline_blocks(page, tag)
            .map(|block| {
                let digest = ring::digest::digest(&ring::digest::SHA256, block.as_bytes());
                format!(" 'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
            })
            .collect()
    };
    format!(
        "default-src 'none'; script-src{}; style-src{}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style")
    )
}

/// The text inside each `<tag>...</tag>` of `page` (tags written without attributes).
fn inline_blocks<'a>(page: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut rest = page;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let block = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(block)
    })
}

/// `text` escaped for a double-quoted HTML attribute.
fn html_attribute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(response: &[u8]) -> (String, String) {
        let text = String::from_utf8(response.to_vec()).expect("UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        (head.to_owned(), body.to_owned())
    }

    fn header<'a>(head: &'a str, name: &str) -> &'a str {
        head.lines()
            .find_map(|l| l.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v))
            .unwrap_or_else(|| panic!("no {name} header in {head}"))
    }

    #[test]
    fn the_page_is_a_complete_response_with_its_headers() {
        let page = DemoPage::new("/ws");
        let (head, body) = split(page.response("/").expect("page at /"));
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(header(&head, "Content-Type"), "text/html; charset=utf-8");
        assert_eq!(header(&head, "Cache-Control"), "no-cache");
        assert_eq!(header(&head, "Content-Length"), body.len().to_string());
        assert!(body.contains(r#"<meta name="roomcast-ws-path" content="/ws">"#));
        assert!(!body.contains(WS_PATH_SLOT));
        assert_eq!(page.response("/index.html"), Some(page.bytes()));
        assert_eq!(page.response("/?room=live-1"), Some(page.bytes()));
        assert_eq!(page.response("/ws"), None);
        assert_eq!(page.response("/favicon.ico"), None);
    }

    #[test]
    fn the_policy_allows_only_the_page_itself_and_its_own_websocket() {
        let page = DemoPage::new("/ws");
        let (head, body) = split(page.bytes());
        let csp = header(&head, "Content-Security-Policy");
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        // One hash per inline block, and nothing that would let other code in.
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        for loose in ["unsafe-inline", "unsafe-eval", "*", "http:", "https:"] {
            assert!(!csp.contains(loose), "{loose} in {csp}");
        }
        let script = inline_blocks(&body, "script").next().expect("inline script");
        let digest = ring::digest::digest(&ring::digest::SHA256, script.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        assert!(csp.contains(&format!("script-src 'sha256-{hash}';")), "{csp}");
        // No external fetches: every URL in the page is the page's own (or data:).
        for external in ["src=\"http", "href=\"http", "@import", "url(", "//cdn", "fetch("] {
            assert!(!body.contains(external), "the page must not load {external}");
        }
        // Inline handlers and style attributes would be blocked by the hash policy.
        assert!(!body.contains(" onclick=") && !body.contains(" style=\""), "no inline handlers or styles");
    }

    #[test]
    fn only_a_plain_get_of_the_page_is_answered() {
        let page = DemoPage::new("/live ws\"");
        let get = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: text/html\r\n\r\n";
        assert_eq!(page.respond_to(get), Some(page.bytes()));
        assert!(split(page.bytes()).1.contains(r#"content="/live ws&quot;""#), "the path is escaped");
        assert_eq!(page.respond_to(b"GET / HTTP/1.1\r\nHost: x\r\n"), None, "incomplete");
        assert_eq!(page.respond_to(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), None);
        assert_eq!(page.respond_to(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        let upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(page.respond_to(upgrade), None, "a WebSocket upgrade to / is not a page request");
        assert_eq!(page.respond_to(b"\x16\x03\x01 not http"), None);
    }

    #[test]
    fn the_page_fits_one_write_of_a_fresh_socket() {
        // The worker writes refusals and this page with one write on a fresh socket; Linux's
        // default send buffer (tcp_wmem) takes 16 KiB at once.
        assert!(DemoPage::new("/ws").bytes().len() < 16 * 1024);
    }
}
