//! The `.hgrm` text is HdrHistogram's percentile distribution format exactly: for the same
//! recorded values, loadgen writes byte for byte what the Java reference implementation wrote
//! (`fixtures/hgrm/*.hgrm`, made by `fixtures/hgrm/make.sh` with Debian's
//! libhdrhistogram-java 2.1.11), including the cumulative `TotalCount` column, the last row at
//! 100% and the `#[Mean`, `#[Max` and `#[Buckets` footer.

use std::path::Path;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hgrm").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Record `NAME.values` ("VALUE [COUNT]" lines, microseconds) as loadgen records latencies.
fn recorded(name: &str) -> hdrhistogram::Histogram<u64> {
    let mut h = loadgen::client::latency_histogram();
    for line in fixture(&format!("{name}.values")).lines() {
        let mut f = line.split_whitespace();
        let Some(value) = f.next() else { continue };
        let count = f.next().map_or(1, |c| c.parse().expect("count"));
        h.record_n(value.parse().expect("value"), count).expect("in range");
    }
    h
}

fn assert_same_as_java(name: &str) {
    let ours = loadgen::hgrm::hgrm(&recorded(name));
    let java = fixture(&format!("{name}.hgrm"));
    if ours != java {
        let first = ours.lines().zip(java.lines()).position(|(a, b)| a != b);
        panic!(
            "{name}: loadgen's .hgrm differs from HdrHistogram's (first different line {first:?}):\n--- loadgen\n{ours}\n--- java\n{java}"
        );
    }
}

#[test]
fn three_values_as_java_prints_them() {
    assert_same_as_java("three");
}

#[test]
fn one_value_as_java_prints_it() {
    assert_same_as_java("one");
}

#[test]
fn no_value_as_java_prints_it() {
    assert_same_as_java("empty");
}

#[test]
fn a_wide_lumpy_distribution_as_java_prints_it() {
    assert_same_as_java("latency");
}
