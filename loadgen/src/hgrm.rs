//! The `.hgrm` file: the percentile distribution text that HdrHistogram's Java
//! `AbstractHistogram.outputPercentileDistribution(out, 5, 1000.0)` prints (and wrk2, the
//! HdrHistogram plotter and other tools read), reproduced exactly, so that any of those tools
//! reads a loadgen file as it would read the reference's.
//!
//! The `hdrhistogram` crate records and merges the histograms but does not write this text,
//! and its quantile iterator differs from Java's in where it steps, so the Java
//! `PercentileIterator` and `Formatter` rules are followed here: the `TotalCount` column is the
//! count of values at or below the row's value (cumulative), the iteration steps
//! `ticks_per_half_distance` times per halving of the distance to 100% and ends with one row at
//! 100%, and numbers are rounded the way `java.util.Formatter` rounds `%f` (half up, on the
//! shortest decimal that reads back as the same double). `tests/hgrm.rs` checks the output
//! against files the Java reference wrote. This module only formats; it never reads a clock or
//! a file.

use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// Percentile rows per halving of the distance to 100% (Java's usual 5).
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The loadgen's histograms hold microseconds; the file shows milliseconds.
pub const MICROS_PER_MILLI: f64 = 1000.0;

/// The `.hgrm` text of a histogram of microseconds, in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    percentile_distribution(h, TICKS_PER_HALF_DISTANCE, MICROS_PER_MILLI)
}

/// Java's `outputPercentileDistribution(out, ticks_per_half_distance, unit_ratio)`: values are
/// divided by `unit_ratio` and printed with as many decimals as the histogram has significant
/// digits.
pub fn percentile_distribution(h: &Histogram<u64>, ticks_per_half_distance: u32, unit_ratio: f64) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = format!("{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    for step in percentile_steps(h, ticks_per_half_distance) {
        let value = java_fixed(step.value as f64 / unit_ratio, digits);
        let quantile = java_fixed(step.percentile / 100.0, 12);
        if step.percentile == 100.0 {
            let _ = writeln!(out, "{value:>12} {quantile:>2} {:>10}", step.total);
        } else {
            let inverse = java_fixed(1.0 / (1.0 - step.percentile / 100.0), 2);
            let _ = writeln!(out, "{value:>12} {quantile:>2} {:>10} {inverse:>14}", step.total);
        }
    }
    let (mean, stdev) = mean_and_stdev(h);
    let _ = writeln!(
        out,
        "#[Mean    = {:>12}, StdDeviation   = {:>12}]",
        java_fixed(mean / unit_ratio, digits),
        java_fixed(stdev / unit_ratio, digits)
    );
    let max = if h.is_empty() { 0 } else { h.max() };
    let _ = writeln!(
        out,
        "#[Max     = {:>12}, Total count    = {:>12}]",
        java_fixed(max as f64 / unit_ratio, digits),
        h.len()
    );
    let _ = writeln!(out, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), sub_bucket_count(h.sigfig()));
    out
}

/// One row of the distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    /// The highest value equivalent to the row's bucket.
    value: u64,
    /// The percentile level iterated to (0..=100).
    percentile: f64,
    /// Values at or below `value`.
    total: u64,
}

/// Java's `PercentileIterator`: from 0%, a row each time the cumulative count reaches the next
/// level; once the last recorded value is reached, one row at it and a final one at 100%.
fn percentile_steps(h: &Histogram<u64>, ticks_per_half_distance: u32) -> Vec<Step> {
    let count = h.len();
    let mut steps = Vec::new();
    let mut level = 0.0_f64;
    let mut total = 0u64;
    for v in h.iter_recorded() {
        total += v.count_at_value();
        let value = v.value_iterated_to();
        let reached = 100.0 * total as f64 / count as f64;
        while reached >= level {
            steps.push(Step { value, percentile: level, total });
            level = next_level(level, ticks_per_half_distance);
            if total >= count {
                break;
            }
        }
        if total >= count {
            steps.push(Step { value, percentile: 100.0, total });
            break;
        }
    }
    steps
}

/// Java's `incrementIterationLevel`: the step is 100 / (ticks * 2^(floor(log2(100 / (100 -
/// level))) + 1)), so there are `ticks` rows per halving of the distance to 100%.
fn next_level(level: f64, ticks_per_half_distance: u32) -> f64 {
    let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as i64;
    let ticks = i64::from(ticks_per_half_distance) * 2f64.powi((halvings + 1) as i32) as i64;
    level + 100.0 / ticks as f64
}

/// Java's `getMean` and `getStdDeviation`: over each bucket's median-equivalent value, summed
/// in bucket order and divided once (the crate divides each term, which rounds differently).
fn mean_and_stdev(h: &Histogram<u64>) -> (f64, f64) {
    if h.is_empty() {
        return (0.0, 0.0);
    }
    let n = h.len() as f64;
    let median = |v: u64| h.median_equivalent(v) as f64;
    let sum: f64 = h.iter_recorded().map(|v| median(v.value_iterated_to()) * v.count_at_value() as f64).sum();
    let mean = sum / n;
    let deviations: f64 = h
        .iter_recorded()
        .map(|v| {
            let d = median(v.value_iterated_to()) - mean;
            d * d * v.count_at_value() as f64
        })
        .sum();
    (mean, (deviations / n).sqrt())
}

/// Java's sub-bucket count: the smallest power of two that holds `2 * 10^digits`.
fn sub_bucket_count(digits: u8) -> u64 {
    (2 * 10u64.pow(u32::from(digits))).next_power_of_two()
}

/// `x` as `java.util.Formatter` prints `%.{precision}f`: the shortest decimal that reads back
/// as `x` (what `Double.toString` gives), rounded half up to `precision` decimals. This differs
/// from Rust's (and C's) `{:.N}`, which rounds the exact binary value: Java prints 0.15 as
/// `0.2` with `%.1f`, Rust as `0.1`.
fn java_fixed(x: f64, precision: usize) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    // `{:e}` is the shortest round-trip form: "d.ddde±x".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
    // The number is 0.d0d1d2... * 10^point: digit i stands for 10^(point - 1 - i).
    let point = exponent + 1;
    let digit_at = |i: i64| usize::try_from(i).ok().and_then(|i| digits.get(i)).copied().unwrap_or(0);
    // Kept: the integer digits (at least one) and `precision` decimals; then the first dropped.
    let int_len = point.max(1);
    let first = point - int_len;
    let total = int_len + precision as i64;
    let mut kept: Vec<u8> = (0..total).map(|k| digit_at(first + k)).collect();
    let dropped = digit_at(first + total);
    if dropped >= 5 {
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, 1);
                break;
            }
            i -= 1;
            if kept[i] == 9 {
                kept[i] = 0;
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    let split = kept.len() - precision;
    let mut s = String::with_capacity(kept.len() + 2);
    if x.is_sign_negative() && kept.iter().any(|d| *d != 0) {
        s.push('-');
    }
    s.extend(kept[..split].iter().map(|d| char::from(b'0' + d)));
    if precision > 0 {
        s.push('.');
        s.extend(kept[split..].iter().map(|d| char::from(b'0' + d)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_as_java_formatter_does() {
        // Each expectation is what `String.format` printed on OpenJDK 17.
        let cases = [
            (0.15, 1, "0.2"),
            (0.125, 2, "0.13"),
            (0.125, 1, "0.1"),
            (1.005, 2, "1.01"),
            (2.675, 2, "2.68"),
            (0.000_122_070_312_5, 12, "0.000122070313"),
            (1.0 / 3.0, 12, "0.333333333333"),
            (0.45, 1, "0.5"),
            (0.35, 1, "0.4"),
            (0.0, 3, "0.000"),
            (9.9996, 3, "10.000"),
            (1234.5678, 2, "1234.57"),
            (1e21, 1, "1000000000000000000000.0"),
            (0.025, 3, "0.025"),
        ];
        for (x, precision, java) in cases {
            assert_eq!(java_fixed(x, precision), java, "{x} with {precision} decimals");
        }
    }

    #[test]
    fn total_count_is_cumulative_and_the_last_row_is_100_percent() {
        let mut h = crate::client::latency_histogram();
        for v in [25u64, 50, 75] {
            h.record(v).expect("in range");
        }
        let steps = percentile_steps(&h, 5);
        assert!(steps.windows(2).all(|w| w[0].total <= w[1].total && w[0].percentile < w[1].percentile));
        assert_eq!(steps.last().map(|s| (s.total, s.percentile)), Some((3, 100.0)));
        assert_eq!(steps.len(), 11, "as the Java reference prints for 25, 50, 75");
        let empty = percentile_distribution(&crate::client::latency_histogram(), 5, 1000.0);
        assert!(empty.contains("Total count    =            0"), "{empty}");
    }
}
