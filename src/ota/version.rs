//! How bundle versions are ordered, so that an older bundle is not applied
//! over a newer one by mistake.
//!
//! A version is read as a sequence of runs of digits and runs of other
//! characters: `2026.11.27-3` is `2026 . 11 . 27 - 3`, `v10` is `v 10`.
//! Runs compare pairwise, digits as numbers (`v10` is newer than `v9`,
//! `1.10` than `1.9`), others as text; when one version is the other plus
//! more runs, the longer is newer (`1.2.1` after `1.2`). This orders
//! calendar versions (`2026.11.27-1`), semantic versions without
//! pre-release tags (`1.4.2`) and plain sequences (`v7`, `build-812`) alike.
//! Pre-release tags are not treated specially: `1.0-rc1` is newer than
//! `1.0`; name release candidates below the release instead (`0.9.1`).

use std::cmp::Ordering;

#[derive(Debug, PartialEq, Eq)]
enum Run<'a> {
    Number(&'a str),
    Text(&'a str),
}

fn runs(v: &str) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = v.as_bytes();
    for i in 1..=bytes.len() {
        let boundary =
            i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit();
        if boundary {
            let run = &v[start..i];
            out.push(if bytes[start].is_ascii_digit() {
                Run::Number(run)
            } else {
                Run::Text(run)
            });
            start = i;
        }
    }
    out
}

/// Compares two digit runs as numbers of any length (leading zeros aside).
fn numbers(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// How version `a` stands to version `b`.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let o = match (x, y) {
            (Run::Number(x), Run::Number(y)) => numbers(x, y),
            (Run::Text(x), Run::Text(y)) => x.cmp(y),
            // A number where the other has text: the number is the later
            // release (`1.2` after `1.rc`).
            (Run::Number(_), Run::Text(_)) => Ordering::Greater,
            (Run::Text(_), Run::Number(_)) => Ordering::Less,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn versions_order_as_documented() {
        for (a, b, o) in [
            ("v2", "v1", Greater),
            ("v10", "v9", Greater),
            ("1.10", "1.9", Greater),
            ("1.2.1", "1.2", Greater),
            ("2026.11.27-2", "2026.11.27-1", Greater),
            ("2026.12.01-1", "2026.11.27-9", Greater),
            ("1.0.0", "1.0.0", Equal),
            ("1.02", "1.2", Equal),
            ("build-812", "build-99", Greater),
            ("99999999999999999999999", "1", Greater),
        ] {
            assert_eq!(compare(a, b), o, "{a} vs {b}");
            assert_eq!(compare(b, a), o.reverse(), "{b} vs {a}");
        }
    }
}
