//! The fuzz targets of `tests/support/fuzzing.rs`, bounded and deterministic, in the normal
//! suite (no nightly, no cargo-fuzz): every target runs over its seeds, then over
//! `PACPOOL_FUZZ_ITERS` (default 2,000) mutations of them from a seeded generator (bit flips,
//! interesting bytes, deletions, insertions, truncations, repeats, splices with other seeds,
//! hostile tokens, random bytes). A failure prints the seed and iteration so it can be
//! replayed, and the input is written to `target/fuzz-bounded-failures/`.
//!
//! Memory: each input's allocations are counted per thread; no input of up to 1 MiB may make
//! a parser hold more than [`MEMORY_LIMIT`] at once.
//!
//! Long runs with coverage guidance: `fuzz/README.md` (cargo-fuzz).

#[path = "support/fuzzing.rs"]
mod fuzzing;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Per-thread allocation accounting.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = LIVE.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK.try_with(|p| {
            if now > p.get() {
                p.set(now)
            }
        });
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Most memory one input may make a parser hold at once (inputs are at most 1 MiB).
const MEMORY_LIMIT: isize = 64 * 1024 * 1024;

/// Runs `f(input)`; returns the peak of bytes it held beyond what was live before.
fn peak_of(f: fn(&[u8]), input: &[u8]) -> isize {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    f(input);
    PEAK.with(Cell::get) - start
}

// ---------------------------------------------------------------------------------------------
// Deterministic mutations.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&[u8]] = &[
    b"-Syu",
    b"--config=x",
    b"../",
    b"a;b",
    b"\\u0000",
    b"\n",
    b"\0",
    b"null",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b"\"",
    b"\\",
    b"%NAME%\n",
    b"%VERSION%\n",
    b"Include = ",
    b"[options]\n",
    b"= [",
    b"{\"a\":",
    b":",
    b"\xc3\x28",
    b"\xf0\x9f\x92\xa9",
];

const INTERESTING: &[u8] = b"\0\xff\x7f\x80\"\\\n\r\t[]{}%-/:=.#,0 ";

/// Largest input the mutator makes (and the size the memory limit is promised for).
const MAX_INPUT: usize = 1024 * 1024;

fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                d.drain(a..b);
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, bytes);
            }
            4 => d.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let piece = d[a..b].to_vec();
                let most = if rng.below(8) == 0 { 10_000 } else { 8 };
                let times = 1 + rng.below(most);
                let at = rng.below(d.len() + 1);
                d.splice(
                    at..at,
                    piece.iter().copied().cycle().take(piece.len() * times),
                );
            }
            6 if !others.is_empty() => {
                let o = &others[rng.below(others.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(o.len() + 1);
                d.truncate(cut);
                d.extend_from_slice(&o[from..]);
            }
            7 => {
                let at = rng.below(len + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                d.splice(at..at, t.iter().copied());
            }
            8 if rng.below(4) == 0 => {
                let n = rng.below(256);
                d = (0..n).map(|_| rng.next() as u8).collect();
            }
            _ => {}
        }
    }
    d.truncate(MAX_INPUT);
    d
}

fn iterations() -> usize {
    std::env::var("PACPOOL_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Runs one input; on a panic or too much memory, saves the input and fails with where it
/// came from.
fn run_one(name: &str, f: fn(&[u8]), input: &[u8], origin: &str) {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| peak_of(f, input)));
    let failure = match result {
        Ok(peak) if peak <= MEMORY_LIMIT || input.len() > MAX_INPUT => return,
        Ok(peak) => format!("held {peak} bytes at once (limit {MEMORY_LIMIT})"),
        Err(_) => "panicked (message above)".to_owned(),
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-bounded-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}-{}", origin.replace([' ', '/'], "_")));
    std::fs::write(&file, input).unwrap();
    panic!(
        "fuzz target {name}: {origin} ({} bytes, saved to {}) {failure}",
        input.len(),
        file.display()
    );
}

fn fuzz_target(name: &str) {
    let (_, f) = fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a known target");
    let mut seeds = fuzzing::seeds(name);
    // Inputs that once failed (found by this run or by cargo fuzz), kept as regression cases.
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(name);
    if let Ok(dir) = std::fs::read_dir(&regressions) {
        let mut files: Vec<_> = dir.map(|e| e.unwrap().path()).collect();
        files.sort();
        seeds.extend(files.iter().map(|f| std::fs::read(f).unwrap()));
    }
    for (i, s) in seeds.iter().enumerate() {
        run_one(name, *f, s, &format!("seed {i}"));
    }
    // Mutate only the small seeds; big ones (1 MiB nesting, the gzip bomb) ran once above.
    let small: Vec<Vec<u8>> = seeds.into_iter().filter(|s| s.len() <= 64 * 1024).collect();
    // Seeded by the target's name, so each target is reproducible on its own.
    let seed = name.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng(seed);
    for i in 0..iterations() {
        let base = &small[rng.below(small.len())];
        let mut input = mutate(&mut rng, base, &small);
        // Sync databases: most mutations of compressed bytes stop at the checksum, so half
        // of them are mutations of the plain tar, compressed afterwards.
        if name == "syncdb" && i % 2 == 0 && !input.starts_with(b"\x1f\x8b") {
            input = fuzzing::gzip(&input);
        }
        run_one(
            name,
            *f,
            &input,
            &format!("iteration {i} (rng seed {seed:#x})"),
        );
    }
    // 1 MiB of random bytes and 1 MiB of nesting: refused, within the memory limit.
    let mut big: Vec<u8> = (0..MAX_INPUT).map(|_| rng.next() as u8).collect();
    run_one(name, *f, &big, "1 MiB random");
    big.fill(b'[');
    run_one(name, *f, &big, "1 MiB of [");
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                fuzz_target(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_run() {
            let listed: Vec<&str> = vec![$(stringify!($name)),*];
            let all: Vec<&str> = fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(listed, all);
        }
    };
}

targets!(
    desc,
    syncdb,
    vercmp,
    ws_endpoint_msg,
    ws_server_msg,
    rest_bodies,
    local_request,
    local_reply,
    daemon_config,
    coordinator_settings,
    pacman_conf,
);

// ---------------------------------------------------------------------------------------------
// Documented size limits.

#[test]
fn sync_database_entry_over_the_limit_is_refused_without_reading_it() {
    use pacpool::syncdb::{MAX_DESC_SIZE, SyncDbError, read_sync_db_from};
    // A header that claims a 10 GiB `desc` and no data behind it.
    let mut h = tar::Header::new_ustar();
    h.set_path("foo-1.0-1/desc").unwrap();
    h.set_size(10 * 1024 * 1024 * 1024);
    h.set_mode(0o644);
    h.set_cksum();
    let input = h.as_bytes().to_vec();
    let repo = "core".parse().unwrap();
    let peak = {
        let start = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(start));
        let err = read_sync_db_from(&repo, Path::new("core.db"), &input[..]).unwrap_err();
        assert!(
            matches!(&err, SyncDbError::BadEntry { why, .. } if why.contains(&MAX_DESC_SIZE.to_string())),
            "{err}"
        );
        PEAK.with(Cell::get) - start
    };
    assert!(peak < 4 * 1024 * 1024, "{peak}");
    // Exactly at the limit is read (and then refused as a bad entry, not as too big).
    let body = vec![b'x'; MAX_DESC_SIZE as usize];
    let tar = fuzzing::tar_of(&[("foo-1.0-1/desc", &body)]);
    let err = read_sync_db_from(&repo, Path::new("core.db"), &tar[..]).unwrap_err();
    assert!(matches!(err, SyncDbError::Entry { .. }), "{err}");
}

#[test]
fn pacman_conf_refuses_an_endless_include() {
    use pacpool::pacman_conf::{MAX_FILE_SIZE, PacmanConf};
    let err = PacmanConf::parse("[options]\nInclude = /dev/zero\n", Path::new("x.conf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&MAX_FILE_SIZE.to_string()), "{err}");
    assert!(PacmanConf::load(Path::new("/dev/zero")).is_err());
}

/// Writes every target's seeds and regression inputs to `fuzz/corpus/<target>/` (or under
/// `PACPOOL_FUZZ_CORPUS`), the starting corpus for cargo-fuzz:
/// `cargo test --test fuzz_bounded -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes the cargo-fuzz seed corpus; run on demand (fuzz/README.md)"]
fn write_seed_corpus() {
    let root = std::env::var_os("PACPOOL_FUZZ_CORPUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"),
        std::path::PathBuf::from,
    );
    for (name, _) in fuzzing::TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in fuzzing::seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}

/// Transitivity of `vercmp` on plain versions (see `fuzzing::vercmp`), over triples drawn
/// from a small alphabet so that near-equal versions meet often. Counterexamples outside
/// plain versions are pacman's own (`fuzz/regressions/vercmp/`).
#[test]
fn vercmp_is_transitive_on_plain_versions() {
    const SEGMENTS: &[&str] = &[
        "0", "00", "1", "01", "2", "10", "a", "b", "rc", "1a", "a1", "Z",
    ];
    let mut rng = Rng(0x5eed);
    let version = |rng: &mut Rng, with_rel: bool| {
        let mut v = String::new();
        if rng.below(4) == 0 {
            v.push_str(["0:", "1:", "2:"][rng.below(3)]);
        }
        for i in 0..1 + rng.below(3) {
            if i > 0 {
                v.push('.');
            }
            v.push_str(SEGMENTS[rng.below(SEGMENTS.len())]);
        }
        if with_rel {
            v.push_str(["-1", "-2", "-1.1", "-10"][rng.below(4)]);
        }
        assert!(fuzzing::is_plain_version(&v), "{v}");
        v
    };
    let mut checked = 0;
    for _ in 0..iterations() * 50 {
        let rel = rng.below(2) == 0;
        let (a, b, c) = (
            version(&mut rng, rel),
            version(&mut rng, rel),
            version(&mut rng, rel),
        );
        fuzzing::vercmp(format!("{a}\0{b}\0{c}").as_bytes());
        checked += 1;
    }
    assert!(checked > 0);
}
