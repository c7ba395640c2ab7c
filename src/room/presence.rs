//! A room's presence changes within one interval, kept as the JSON its `presence` message
//! will carry.
//!
//! Each side of a delta (who came, who went) is one buffer of encoded viewers,
//! `{"user":..,"name":..}` separated by commas. The tick at the end of the interval copies one
//! buffer per side instead of visiting every viewer's strings (100 names per room cost ~24 us
//! per room that way, ~1.3 us this way: BENCHMARKS.md, presence at scale), and a viewer's id and
//! name are let go when it leaves, while they are still in cache.
//!
//! A viewer who comes and goes within one interval must appear in neither list, so an entry
//! can be taken out again. It is found by searching the buffer for `{"user":<id>,`: ids and
//! names are JSON-escaped, so those bytes (with their unescaped quotes) occur only where an
//! entry starts. A list holds at most `presence.large_room` entries, so the search is short;
//! `memchr`'s `memmem` does it.

use crate::wire::server_msg;

/// Encoded viewers, in the order they were added.
#[derive(Debug, Default)]
pub struct ViewerList {
    json: Vec<u8>,
    len: usize,
}

impl ViewerList {
    /// Viewers listed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no viewer is listed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The listed viewers as the inside of a JSON array.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// List `user` (shown as `name`).
    pub fn push(&mut self, user: &str, name: &str) {
        if !self.json.is_empty() {
            self.json.push(b',');
        }
        server_msg::viewer(&mut self.json, user, name);
        self.len += 1;
    }

    /// Take `user` out of the list; false when it was not listed.
    pub fn remove(&mut self, user: &str) -> bool {
        if self.len == 0 {
            return false;
        }
        let mut prefix = Vec::with_capacity(user.len() + 12);
        server_msg::viewer_prefix(&mut prefix, user);
        let Some(start) = memchr::memmem::find(&self.json, &prefix) else { return false };
        // The entry ends at its closing brace: the first `}` outside a string after the name.
        let end = entry_end(&self.json, start + prefix.len());
        // Take one separator with the entry: the one after it, or before it if it is last.
        let (cut_start, cut_end) =
            if end < self.json.len() { (start, end + 1) } else { (start.saturating_sub(1), end) };
        self.json.drain(cut_start..cut_end);
        self.len -= 1;
        true
    }
}

/// The index just past the `}` closing the entry whose `"name":..` part starts at `from`.
fn entry_end(json: &[u8], from: usize) -> usize {
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in json.iter().enumerate().skip(from) {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (false, _, b'"') => in_string = true,
            (false, _, b'}') => return i + 1,
            _ => {}
        }
    }
    json.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn parsed(list: &ViewerList) -> Value {
        let text = format!("[{}]", String::from_utf8_lossy(list.json()));
        serde_json::from_str(&text).expect("a valid JSON array")
    }

    #[test]
    fn entries_come_and_go_leaving_valid_json() {
        let mut l = ViewerList::default();
        l.push("a", "Ann");
        l.push("b\"q", "B");
        l.push("c", "C");
        assert!(!l.remove("x"), "not listed");
        assert!(l.remove("b\"q"));
        assert_eq!(parsed(&l), json!([{"user":"a","name":"Ann"},{"user":"c","name":"C"}]));
        assert!(l.remove("c"));
        assert!(l.remove("a"));
        assert!(l.is_empty() && l.json().is_empty());
    }

    #[test]
    fn a_user_id_that_prefixes_another_is_not_confused_with_it() {
        let mut l = ViewerList::default();
        l.push("ab", "x");
        assert!(!l.remove("a"));
        assert_eq!(l.len(), 1);
    }

    proptest! {
        /// Against a plain list of (user, name): any sequence of pushes and removals leaves
        /// the same viewers, in order, as valid JSON.
        #[test]
        fn matches_a_plain_list(ops in proptest::collection::vec((any::<bool>(), 0u8..6), 0..60)) {
            let mut l = ViewerList::default();
            let mut model: Vec<(String, String)> = Vec::new();
            for (add, u) in ops {
                let user = format!("u{u}\\\"");
                // Names with braces, quotes and backslashes: the end of an entry must still be found.
                let name = format!("N}}\\\"{{{u}");
                if add && !model.iter().any(|(m, _)| *m == user) {
                    l.push(&user, &name);
                    model.push((user, name));
                } else {
                    let listed = model.iter().position(|(m, _)| *m == user);
                    prop_assert_eq!(l.remove(&user), listed.is_some());
                    if let Some(i) = listed {
                        model.remove(i);
                    }
                }
            }
            let want: Vec<Value> = model.iter().map(|(u, n)| json!({"user": u, "name": n})).collect();
            prop_assert_eq!(parsed(&l), Value::Array(want));
            prop_assert_eq!(l.len(), model.len());
        }
    }
}
