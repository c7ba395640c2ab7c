//! The line between the pure core and the IO shell (STYLE.md, "a sans-IO core inside a thin IO
//! shell"): nothing in the core folders may name a socket, a thread, a channel or a clock. The
//! core is driven with `now` as a parameter and bytes as slices; this test fails the build of
//! any change that lets IO in.

use std::path::{Path, PathBuf};

/// The core: folders and files that must stay pure.
const CORE: [&str; 7] =
    ["src/wire", "src/session", "src/room", "src/shard", "src/upstream", "src/wheel.rs", "src/ids.rs"];

/// Names that mean IO, threads or clocks, matched as whole words or paths.
const FORBIDDEN: [&str; 6] = ["mio", "std::net", "crossbeam", "std::thread", "Instant::now", "SystemTime"];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path).expect("core folder is readable").flatten().collect();
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            rust_files(&entry.path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// Whether `name` occurs in `line` with no identifier character right before or after it.
fn names(line: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(name).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn no_core_file_names_a_socket_a_thread_a_channel_or_a_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for part in CORE {
        let path = root.join(part);
        assert!(path.exists(), "{part} is part of the core and must exist (update CORE when the layout changes)");
        rust_files(&path, &mut files);
    }
    assert!(files.len() >= 20, "the core has {} files: is CORE still right?", files.len());
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("core file is readable");
        for (n, line) in text.lines().enumerate() {
            for name in FORBIDDEN {
                if names(line, name) {
                    found.push(format!("{}:{}: names `{name}`: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "the core must stay free of IO, threads and clocks:\n{}", found.join("\n"));
}

#[test]
fn the_check_itself_finds_what_it_looks_for() {
    assert!(names("use mio::net::TcpStream;", "mio"));
    assert!(names("let t = std::time::SystemTime::now();", "SystemTime"));
    assert!(!names("let premium = 1;", "mio"), "only whole words count");
    assert!(!names("mio_like", "mio"));
}
