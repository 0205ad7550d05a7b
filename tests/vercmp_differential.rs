//! Differential test: `pacpool::version::vercmp` against pacman's own `vercmp` binary.
//!
//! At least 100,000 generated pairs (set `PACPOOL_VERCMP_PAIRS` for more) from a seeded PRNG;
//! the seed is printed and `PACPOOL_VERCMP_SEED=N` replays a run. Half of the pairs are one
//! string and a small mutation of it, because near-equal versions are where comparison bugs
//! hide. `vercmp` takes exactly two arguments, so it is spawned once per pair (no shell), on
//! one thread per core.

mod support;

use support::rng::Rng;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use pacpool::version::vercmp;

const DEFAULT_PAIRS: usize = 100_000;

/// The real `vercmp` binary's answer for `a` vs `b`.
///
/// Spawning dominates the test's time, so the child gets an empty environment (besides
/// `LC_ALL=C`) and no stderr pipe: that is about a quarter faster per spawn. stderr is only
/// captured again to explain a failure.
fn oracle(bin: &Path, a: &str, b: &str) -> Ordering {
    let command = || {
        let mut cmd = Command::new(bin);
        cmd.arg(a)
            .arg(b)
            .env_clear()
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    };
    let out = command()
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {} {a:?} {b:?}: {e}", bin.display()));
    match (out.status.success(), out.stdout.as_slice()) {
        (true, b"-1\n") => Ordering::Less,
        (true, b"0\n") => Ordering::Equal,
        (true, b"1\n") => Ordering::Greater,
        _ => {
            let again = command().output();
            panic!(
                "{} {a:?} {b:?} gave {} with stdout {:?}; a second run gave {again:?}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
            )
        }
    }
}

fn vercmp_bin() -> PathBuf {
    support::require_tools();
    support::find_in_path("vercmp").expect("require_tools checked vercmp")
}

const WORDS: &[&str] = &[
    "a", "b", "z", "A", "Z", "alpha", "beta", "rc", "pre", "p", "git", "r", "svn", "dev", "post",
    "final", "aa", "ab",
];
const SEPARATORS: &[&str] = &[
    ".", ".", ".", "_", "+", "~", "..", "._", "+.", "~~", "-", "", "", ":", "%", " ",
];
/// Non-ASCII characters (multi-byte in UTF-8) and odd ASCII, inserted now and then.
const ODD: &[&str] = &[
    "é", "ß", "²", "٣", "€", "ｱ", "\u{7f}", "\u{1}", "\t", "!", "#", "@", "/", "*", "\u{a0}",
];

fn digits(rng: &mut Rng) -> String {
    let len = match rng.below(20) {
        0 => 21 + rng.below(20), // longer than any machine integer
        1..=3 => 2 + rng.below(4),
        _ => 1,
    };
    let mut s = String::new();
    if rng.chance(15) {
        s.push_str(&"0".repeat(1 + rng.below(3))); // leading zeros
    }
    for _ in 0..len {
        // Mostly small digits so that independent strings often share prefixes.
        let d = if rng.chance(70) {
            rng.below(3)
        } else {
            rng.below(10)
        };
        s.push(char::from(b'0' + d as u8));
    }
    s
}

/// A digit run, a word or (in `wild` strings, 1 in 20) an odd character.
fn segment(rng: &mut Rng, wild: bool) -> String {
    match rng.below(20) {
        0..=11 => digits(rng),
        19 if wild => rng.pick(ODD).to_owned(),
        _ => rng.pick(WORDS).to_owned(),
    }
}

/// A random full version: `[epoch:]pkgver[-pkgrel]`. Tame ones look like real versions
/// (digits and words between `.`, `_`, `+`); wild ones may hold anything `vercmp` accepts.
fn version(rng: &mut Rng) -> String {
    let wild = rng.chance(60);
    let mut s = String::new();
    if rng.chance(25) {
        let epoch = match rng.below(6) {
            0 if wild => String::new(), // ":1.0"
            1 => "0".to_owned(),
            2 => "00".to_owned(),
            _ => digits(rng),
        };
        s.push_str(&epoch);
        s.push(':');
    }
    if wild && rng.chance(8) {
        s.push_str(rng.pick(SEPARATORS)); // leading separator
    }
    let segments = 1 + rng.below(5);
    for i in 0..segments {
        if i > 0 {
            if !wild {
                s.push_str(rng.pick(&[".", ".", ".", "", "_", "+"]));
            } else if rng.chance(10) {
                for _ in 0..2 + rng.below(3) {
                    s.push_str(rng.pick(&[".", "_", "+", "~"])); // separator run
                }
            } else {
                s.push_str(rng.pick(SEPARATORS));
            }
        }
        s.push_str(&segment(rng, wild));
    }
    if wild && rng.chance(8) {
        s.push_str(rng.pick(SEPARATORS)); // trailing separator
    }
    if rng.chance(55) {
        s.push('-');
        match rng.below(10) {
            0 if wild => {}         // empty pkgrel
            1 => s.push_str("1.1"), // N.N
            2 => s.push_str(&format!("{}.{}", digits(rng), digits(rng))),
            3 if wild => s.push_str(&segment(rng, wild)), // not a number
            _ => s.push_str(&digits(rng)),
        }
    }
    s
}

/// One small change to `s`; near-equal pairs exercise every branch of the comparison.
fn mutate(rng: &mut Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let pos = rng.below(chars.len() + 1);
    const ALPHABET: &[char] = &[
        '0', '1', '2', '9', 'a', 'b', 'z', 'A', '.', '_', '+', '~', '-', ':', 'é',
    ];
    match rng.below(13) {
        0 => chars.insert(pos, ALPHABET[rng.below(ALPHABET.len())]),
        1 if !chars.is_empty() => {
            chars.remove(pos.min(chars.len() - 1));
        }
        2 if !chars.is_empty() => {
            let i = pos.min(chars.len() - 1);
            chars[i] = ALPHABET[rng.below(ALPHABET.len())];
        }
        3 => {
            // Bump a digit, keeping the length (1.9 -> 2.0 style changes come from `1`/`2`).
            if let Some(i) = chars.iter().rposition(|c| c.is_ascii_digit()) {
                chars[i] = if chars[i] == '9' {
                    '0'
                } else {
                    char::from(chars[i] as u8 + 1)
                };
            }
        }
        4 => chars.extend(
            rng.pick(&[".0", "a", ".a", "0", ".", "~rc1", "-1", "_1", "+"])
                .chars(),
        ),
        5 => {
            // Toggle the epoch.
            let t: String = chars.iter().collect();
            let t = match t.split_once(':') {
                Some((_, rest)) => rest.to_owned(),
                None => format!("{}:{t}", rng.pick(&["0", "1", "", "01"])),
            };
            chars = t.chars().collect();
        }
        6 => {
            // Toggle the pkgrel.
            match chars.iter().rposition(|&c| c == '-') {
                Some(i) => chars.truncate(i),
                None => chars.extend(rng.pick(&["-1", "-1.1", "-0", "-2"]).chars()),
            }
        }
        7 => {
            // Add a leading zero to a digit run.
            let starts: Vec<usize> = (0..chars.len())
                .filter(|&i| {
                    chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_ascii_digit())
                })
                .collect();
            if !starts.is_empty() {
                chars.insert(starts[rng.below(starts.len())], '0');
            }
        }
        8 if !chars.is_empty() => {
            // Double a character (separator runs, repeated letters).
            let i = pos.min(chars.len() - 1);
            chars.insert(i, chars[i]);
        }
        9 if chars.len() >= 2 => {
            let i = pos.min(chars.len() - 2);
            chars.swap(i, i + 1);
        }
        10 if rng.chance(30) => {
            let i = pos.min(chars.len());
            chars.splice(i..i, rng.pick(ODD).chars());
        }
        11 => {
            if let Some(c) = chars.iter_mut().find(|c| c.is_ascii_alphabetic()) {
                *c = if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                };
            }
        }
        // 12, and the guarded arms that did not apply: a digit where a separator was.
        _ => {
            if let Some(c) = chars.iter_mut().find(|c| !c.is_ascii_alphanumeric()) {
                *c = char::from(b'0' + rng.below(10) as u8);
            } else {
                chars.insert(pos, '.');
            }
        }
    }
    chars.into_iter().collect()
}

fn pair(rng: &mut Rng) -> (String, String) {
    let a = version(rng);
    let (a, b) = match rng.below(20) {
        0..=6 => {
            let b = version(rng);
            (a, b)
        }
        7..=16 => {
            let b = mutate(rng, &a);
            (a, b)
        }
        17..=18 => {
            let b = mutate(rng, &a);
            let b = mutate(rng, &b);
            (a, b)
        }
        _ => (a.clone(), a),
    };
    if rng.chance(50) { (b, a) } else { (a, b) }
}

/// `vercmp -h`/`--help` print usage instead of comparing.
fn comparable(a: &str) -> bool {
    a != "-h" && a != "--help"
}

#[derive(Debug)]
struct Mismatch {
    a: String,
    b: String,
    pacman: Ordering,
    ours: Ordering,
}

fn sign(o: Ordering) -> i8 {
    o as i8
}

#[test]
fn vercmp_matches_pacman_on_generated_pairs() {
    let bin = vercmp_bin();
    let seed = match std::env::var("PACPOOL_VERCMP_SEED") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("PACPOOL_VERCMP_SEED={s:?} is not a u64: {e}")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970");
            t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    let count = match std::env::var("PACPOOL_VERCMP_PAIRS") {
        Ok(s) => s
            .trim()
            .parse::<usize>()
            .unwrap_or_else(|e| panic!("PACPOOL_VERCMP_PAIRS={s:?} is not a count: {e}")),
        Err(_) => DEFAULT_PAIRS,
    };
    println!("vercmp differential: seed {seed} (replay with PACPOOL_VERCMP_SEED={seed})");

    let mut rng = Rng(seed);
    let pairs: Vec<(String, String)> = std::iter::repeat_with(|| pair(&mut rng))
        .filter(|(a, _)| comparable(a))
        .take(count)
        .collect();

    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let start = Instant::now();
    let mut mismatches: Vec<(usize, Mismatch)> = std::thread::scope(|scope| {
        let handles: Vec<_> = pairs
            .chunks(pairs.len().div_ceil(threads).max(1))
            .enumerate()
            .map(|(n, chunk)| {
                let bin = &bin;
                let first = n * pairs.len().div_ceil(threads).max(1);
                scope.spawn(move || {
                    let mut found = Vec::new();
                    for (i, (a, b)) in chunk.iter().enumerate() {
                        let pacman = oracle(bin, a, b);
                        let ours = vercmp(a, b);
                        if pacman != ours {
                            let (a, b) = (a.clone(), b.clone());
                            found.push((first + i, Mismatch { a, b, pacman, ours }));
                        }
                    }
                    found
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("vercmp worker panicked"))
            .collect()
    });
    let elapsed = start.elapsed();
    mismatches.sort_by_key(|(i, _)| *i);
    let mut answers = [0usize; 3];
    for (a, b) in &pairs {
        answers[(sign(vercmp(a, b)) + 1) as usize] += 1;
    }
    println!(
        "vercmp differential: {} pairs against {} in {:.1?} on {threads} threads \
         (answers -1/0/1: {answers:?})",
        pairs.len(),
        bin.display(),
        elapsed
    );
    assert!(
        pairs.len() >= count,
        "generated {} of {count} pairs",
        pairs.len()
    );

    if !mismatches.is_empty() {
        let mut msg = format!(
            "pacpool's vercmp disagrees with pacman's on {} of {} pairs (seed {seed}, replay with \
             PACPOOL_VERCMP_SEED={seed}); first {}:\n",
            mismatches.len(),
            pairs.len(),
            mismatches.len().min(20)
        );
        for (i, m) in mismatches.iter().take(20) {
            msg.push_str(&format!(
                "  #{i}: vercmp({:?}, {:?}): pacman {}, ours {}\n",
                m.a,
                m.b,
                sign(m.pacman),
                sign(m.ours)
            ));
        }
        panic!("{msg}");
    }
}

/// pacman's documented orderings (vercmp(8) and the notes in TESTING-NOTES.md), checked
/// against both the real binary and our function, in both argument orders.
#[test]
fn documented_examples_agree_with_pacman() {
    let bin = vercmp_bin();
    let chains: &[&[&str]] = &[
        &[
            "1.0a", "1.0b", "1.0beta", "1.0p", "1.0pre", "1.0rc", "1.0", "1.0.a", "1.0.1",
        ],
        &["1", "1.0", "1.1", "1.1.1", "1.2", "2.0", "3.0.0"],
        &[
            "1.0-1", "1.0-1.1", "1.0-2", "1.0.1-1", "1:0.1-1", "1:1.0-1", "2:0-1",
        ],
        // No dpkg-style tilde: `~` is a separator like `.`, so 1.0~rc1 == 1.0.rc1 > 1.0.
        &["1.0a", "1.0", "1.0~rc1", "1.0.0"],
    ];
    let mut cases: Vec<(&str, &str, Ordering)> = Vec::new();
    for chain in chains {
        for (i, a) in chain.iter().enumerate() {
            for b in &chain[i + 1..] {
                cases.push((a, b, Ordering::Less));
            }
        }
    }
    cases.extend([
        ("1.5-1", "1.5", Ordering::Equal),
        ("1.5", "1.5-1", Ordering::Equal),
        ("1.5-1", "1.5-2", Ordering::Less),
        ("0:1.0", "1.0", Ordering::Equal),
        (":1.0", "1.0", Ordering::Equal),
        ("1:1.0", "1.0", Ordering::Greater),
        ("1:1.0", "9.9", Ordering::Greater),
        ("1:1.0-1", "2:1.0-1", Ordering::Less),
        ("2:1.0", "1:3.0", Ordering::Greater),
        ("1.001", "1.1", Ordering::Equal),
        ("1_0", "1.0", Ordering::Equal),
        ("1.0~rc1", "1.0.rc1", Ordering::Equal),
        (
            "123456789012345678901234567890",
            "123456789012345678901234567891",
            Ordering::Less,
        ),
    ]);

    let mut failures = Vec::new();
    for (a, b, want) in cases {
        for (x, y, want) in [(a, b, want), (b, a, want.reverse())] {
            let pacman = oracle(&bin, x, y);
            let ours = vercmp(x, y);
            if pacman != want || ours != want {
                failures.push(format!(
                    "vercmp({x:?}, {y:?}): expected {}, pacman {}, ours {}",
                    sign(want),
                    sign(pacman),
                    sign(ours)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
