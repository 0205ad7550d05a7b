//! Version comparison exactly as pacman's `alpm_pkg_vercmp` does it.
//!
//! This is a byte-for-byte port of libalpm's `version.c` (`parseEVR` + `rpmvercmp`). It takes
//! any string, valid package version or not, because that is what `alpm_pkg_vercmp` takes and
//! what the differential test against the real `vercmp` binary feeds it.
//! See ARCHITECTURE.md for why this is not `alpm_types::Version`.

use std::cmp::Ordering;

/// Compares two full versions (`[epoch:]pkgver[-pkgrel]`) the way pacman does.
///
/// The epoch is compared first (missing means 0), then pkgver; pkgrel only when both
/// sides have one, so `1.5-1` equals `1.5`.
pub fn vercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (e1, v1, r1) = parse_evr(a.as_bytes());
    let (e2, v2, r2) = parse_evr(b.as_bytes());
    rpmvercmp(e1, e2)
        .then_with(|| rpmvercmp(v1, v2))
        .then_with(|| match (r1, r2) {
            (Some(r1), Some(r2)) => rpmvercmp(r1, r2),
            _ => Ordering::Equal,
        })
}

/// Splits `[epoch:]version[-release]` like libalpm's `parseEVR`.
fn parse_evr(evr: &[u8]) -> (&[u8], &[u8], Option<&[u8]>) {
    // `s` ends the leading run of digits; the release separator is the last '-' after it.
    let s = evr.iter().take_while(|c| c.is_ascii_digit()).count();
    let release_sep = evr[s..].iter().rposition(|&c| c == b'-').map(|i| s + i);
    let version_end = release_sep.unwrap_or(evr.len());
    let (epoch, version_start): (&[u8], usize) = if evr.get(s) == Some(&b':') {
        let epoch = &evr[..s];
        (if epoch.is_empty() { b"0" } else { epoch }, s + 1)
    } else {
        (b"0", 0)
    };
    // With an epoch separator at `s`, a '-' can only be after it, so the slice is ordered.
    let version = &evr[version_start.min(version_end)..version_end];
    let release = release_sep.map(|i| &evr[i + 1..]);
    (epoch, version, release)
}

/// libalpm's `rpmvercmp`: alternating numeric and alphabetic segments separated by runs of
/// anything else.
fn rpmvercmp(a: &[u8], b: &[u8]) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    // `one`/`two` walk the strings; `p1`/`p2` mark the end of the previous segment.
    let (mut one, mut two, mut p1, mut p2) = (0usize, 0usize, 0usize, 0usize);
    while at(a, one) != 0 && at(b, two) != 0 {
        while at(a, one) != 0 && !at(a, one).is_ascii_alphanumeric() {
            one += 1;
        }
        while at(b, two) != 0 && !at(b, two).is_ascii_alphanumeric() {
            two += 1;
        }
        if at(a, one) == 0 || at(b, two) == 0 {
            break;
        }
        // Separator runs of different length decide.
        if one - p1 != two - p2 {
            return (one - p1).cmp(&(two - p2));
        }
        p1 = one;
        p2 = two;
        let isnum = at(a, p1).is_ascii_digit();
        if isnum {
            while at(a, p1).is_ascii_digit() {
                p1 += 1;
            }
            while at(b, p2).is_ascii_digit() {
                p2 += 1;
            }
        } else {
            while at(a, p1).is_ascii_alphabetic() {
                p1 += 1;
            }
            while at(b, p2).is_ascii_alphabetic() {
                p2 += 1;
            }
        }
        // `two` has no segment of `one`'s kind: numeric beats alphabetic.
        if two == p2 {
            return if isnum {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let (mut s1, mut s2) = (&a[one..p1], &b[two..p2]);
        if isnum {
            while s1.first() == Some(&b'0') {
                s1 = &s1[1..];
            }
            while s2.first() == Some(&b'0') {
                s2 = &s2[1..];
            }
            match s1.len().cmp(&s2.len()) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        match s1.cmp(s2) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
        one = p1;
        two = p2;
    }
    let (c1, c2) = (at(a, one), at(b, two));
    if c1 == 0 && c2 == 0 {
        return Ordering::Equal;
    }
    // A remaining alphabetic part never beats an empty string.
    if (c1 == 0 && !c2.is_ascii_alphabetic()) || c1.is_ascii_alphabetic() {
        Ordering::Less
    } else {
        Ordering::Greater
    }
}

#[cfg(test)]
mod tests {
    use super::vercmp;
    use std::cmp::Ordering::{Equal, Greater, Less};

    /// The examples from pacman's vercmp(8) and libalpm's own test suite (test/util/vercmptest.sh).
    #[test]
    fn pacman_documented_examples() {
        let ordered = [
            "1.0a", "1.0b", "1.0beta", "1.0p", "1.0pre", "1.0rc", "1.0", "1.0.a", "1.0.1",
        ];
        for w in ordered.windows(2) {
            assert_eq!(vercmp(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
            assert_eq!(vercmp(w[1], w[0]), Greater, "{} > {}", w[1], w[0]);
        }
        let numeric = ["1", "1.0", "1.1", "1.1.1", "1.2", "2.0", "3.0.0"];
        for w in numeric.windows(2) {
            assert_eq!(vercmp(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
        }
        let cases = [
            ("1.5-1", "1.5", Equal),
            ("1.5", "1.5-1", Equal),
            ("1.5-1", "1.5-2", Less),
            ("1.5-2", "1.5.1-1", Less),
            ("1.5.b-1", "1.5.b", Equal),
            ("1.5-1", "1:1.0-1", Less),
            ("1:1.0-1", "2:1.0-1", Less),
            ("0:1.0", "1.0", Equal),
            ("1:1.0", "1.0", Greater),
            ("1.0", "1.0-1", Equal),
            ("1.0-1", "1.0-1.1", Less),
            ("1.0-1.1", "1.0-2", Less),
            ("1.001", "1.1", Equal),
            ("1.0.0", "1.0", Greater),
            ("1.0..0", "1.0.0", Greater),
            ("1.0", "1.0.", Less),
            ("1.0a", "1.0", Less),
            ("1.0", "1.0~rc1", Less),
            ("1_0", "1.0", Equal),
            ("1+2", "1.2", Equal),
            ("1.0", "1.0", Equal),
            ("", "", Equal),
            ("", "1", Less),
            ("a", "1", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(vercmp(a, b), want, "vercmp({a:?}, {b:?})");
            assert_eq!(vercmp(b, a), want.reverse(), "vercmp({b:?}, {a:?})");
        }
    }

    #[test]
    fn long_numbers_do_not_overflow() {
        assert_eq!(
            vercmp("99999999999999999999999", "99999999999999999999998"),
            Greater
        );
        assert_eq!(vercmp("000000000000000000001", "1"), Equal);
    }
}
