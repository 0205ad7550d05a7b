//! Snapshots as their canonical text ([`Snapshot::encode`]), which is what the database
//! stores and what the hash covers.
//!
//! The report path works on this form: a full state is encoded once (the same text is
//! hashed and stored), and a delta is applied line by line to the base's stored text, so
//! the coordinator never decodes the 1,500 packages of a base just to change one.
//! [`apply_delta`] has the semantics of [`Delta::apply`] (the same refusals, tested against
//! it) and checks the result's hash against `delta.target`, so a delta is applied exactly
//! or refused.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::localdb::Reason;
use crate::names::{Arch, NameError, PkgName, PkgVersion, RepoName};
use crate::snapshot::{Delta, PackageState, Snapshot, SnapshotHash};

/// First line of the canonical text (see [`Snapshot::encode`]).
const HEADER: &str = "pacpool-snapshot 1\n";

/// A snapshot in canonical text form, with its hash and package count.
#[derive(Clone)]
pub struct SnapText {
    pub hash: SnapshotHash,
    pub text: Arc<str>,
    pub packages: usize,
    /// SHA-256 states after every [`MARK_EVERY`] bytes of `text` (`marks[k]` has hashed
    /// `text[..(k + 1) * MARK_EVERY]`), so that a delta's result is hashed only from the
    /// first byte it changes: the bytes before are the base's. Empty for texts read from the
    /// database (their hash is trusted and not recomputed).
    marks: Arc<[Sha256]>,
}

impl std::fmt::Debug for SnapText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapText")
            .field("hash", &self.hash)
            .field("packages", &self.packages)
            .field("bytes", &self.text.len())
            .finish()
    }
}

/// Distance between two saved SHA-256 states of a text (a state is about 112 bytes, so
/// 1.4% of the text's size).
const MARK_EVERY: usize = 8192;

/// Hashes `text`, starting from `reuse` (states valid for `text`'s first
/// `reuse.len() * MARK_EVERY` bytes), and returns the hash with the states of all of it.
fn hash_marked(text: &str, reuse: &[Sha256]) -> (SnapshotHash, Arc<[Sha256]>) {
    let bytes = text.as_bytes();
    let mut marks = Vec::with_capacity(bytes.len() / MARK_EVERY);
    marks.extend_from_slice(reuse);
    let mut off = marks.len() * MARK_EVERY;
    let mut h = marks.last().cloned().unwrap_or_default();
    while off + MARK_EVERY <= bytes.len() {
        h.update(&bytes[off..off + MARK_EVERY]);
        off += MARK_EVERY;
        marks.push(h.clone());
    }
    h.update(&bytes[off..]);
    let digest: [u8; 32] = h.finalize().into();
    let hash = hex::encode(digest)
        .parse()
        .expect("64 hex digits are a snapshot hash");
    (hash, marks.into())
}

impl SnapText {
    /// Encodes a decoded snapshot once; the hash is computed from the same text.
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        let text: Arc<str> = snap.encode().into();
        let (hash, marks) = hash_marked(&text, &[]);
        Self {
            hash,
            text,
            packages: snap.len(),
            marks,
        }
    }

    /// Text read from the database under `hash` (content-addressed, so trusted).
    pub fn stored(hash: SnapshotHash, text: String, packages: usize) -> Self {
        Self {
            hash,
            text: text.into(),
            packages,
            marks: Arc::from([]),
        }
    }
}

/// A full state's `snapshot` object (`{"packages": [...]}`, the JSON of [`Snapshot`]) parsed
/// straight into its canonical text: every field is checked by the rules of
/// [`PackageState`]'s types ([`PkgName::check`] and the others) while borrowed from the
/// request body, so a report costs no per-package allocations, and the text is written once
/// with its exact size. Accepts exactly the JSON [`Snapshot`]'s `Deserialize` accepts, and
/// the text is what [`Snapshot::encode`] gives for it (tested against it).
pub struct FullText(pub SnapText);

/// One package of a snapshot's JSON, as [`PackageState`] reads it, with the strings borrowed
/// from the body where they have no escapes.
#[derive(Deserialize)]
struct WirePackage<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(borrow)]
    arch: Cow<'a, str>,
    reason: Reason,
    #[serde(default, borrow)]
    repo: Option<Cow<'a, str>>,
}

/// [`Snapshot`]'s JSON (`SnapshotWire`), borrowed.
#[derive(Deserialize)]
struct WireSnapshot<'a> {
    #[serde(borrow)]
    packages: Vec<WirePackage<'a>>,
}

/// Why a snapshot's JSON is refused (the same refusals as [`Snapshot`]'s).
#[derive(Debug, thiserror::Error)]
pub enum FullTextError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("package {0} appears twice in one snapshot")]
    Duplicate(String),
}

impl<'de> Deserialize<'de> for FullText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireSnapshot::deserialize(d)?;
        encode_wire(wire.packages)
            .map(FullText)
            .map_err(serde::de::Error::custom)
    }
}

/// Validates, sorts and encodes the packages of a snapshot's JSON, as [`Snapshot::new`] and
/// [`Snapshot::encode`] do, and hashes the text.
fn encode_wire(mut pkgs: Vec<WirePackage<'_>>) -> Result<SnapText, FullTextError> {
    let mut len = HEADER.len();
    for p in &pkgs {
        PkgName::check(&p.name)?;
        PkgVersion::check(&p.version)?;
        Arch::check(&p.arch)?;
        if let Some(repo) = &p.repo {
            RepoName::check(repo)?;
        }
        // `name version arch e|d repo-or-dash\n`
        len += p.name.len()
            + p.version.len()
            + p.arch.len()
            + p.repo.as_deref().map_or(1, str::len)
            + 6;
    }
    // Names are unique, so an unstable sort gives the same order as `Snapshot::new`'s.
    pkgs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = pkgs.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(FullTextError::Duplicate(w[0].name.to_string()));
    }
    let mut text = String::with_capacity(len);
    text.push_str(HEADER);
    for p in &pkgs {
        text.push_str(&p.name);
        text.push(' ');
        text.push_str(&p.version);
        text.push(' ');
        text.push_str(&p.arch);
        text.push_str(match p.reason {
            Reason::Explicit => " e ",
            Reason::Dependency => " d ",
        });
        text.push_str(p.repo.as_deref().unwrap_or("-"));
        text.push('\n');
    }
    debug_assert_eq!(text.len(), len);
    let (hash, marks) = hash_marked(&text, &[]);
    Ok(SnapText {
        hash,
        text: text.into(),
        packages: pkgs.len(),
        marks,
    })
}

fn line_name(line: &str) -> &str {
    line.split_once(' ').map_or(line, |(n, _)| n)
}

/// Why a delta does not apply (the caller answers `NeedFull`).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("base text is not a pacpool snapshot")]
    BadBase,
    #[error("delta does not apply: {0}")]
    Inconsistent(String),
    #[error("delta applied, but the result hashes to {actual} instead of {expected}")]
    WrongResult {
        expected: SnapshotHash,
        actual: SnapshotHash,
    },
}

/// One touched package's state while the delta is applied: a line of the base, or a new
/// package state (with a reason possibly overridden), or absent.
#[derive(Clone)]
enum Entry<'a> {
    Base(&'a str, Option<Reason>),
    New(&'a PackageState, Option<Reason>),
}

/// Writes a touched package's final line.
fn emit(out: &mut String, e: Entry<'_>) -> Result<(), ApplyError> {
    match e {
        Entry::Base(line, None) => out.push_str(line),
        Entry::Base(line, Some(r)) => {
            // name version arch reason repo
            let f: Vec<&str> = line.trim_end_matches('\n').split(' ').collect();
            let [name, version, arch, _, repo] = f[..] else {
                return Err(ApplyError::BadBase);
            };
            let r = match r {
                Reason::Explicit => "e",
                Reason::Dependency => "d",
            };
            for (i, s) in [name, version, arch, r].into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(s);
            }
            out.push(' ');
            out.push_str(repo);
            out.push('\n');
        }
        Entry::New(p, None) => crate::snapshot::push_line(out, p),
        Entry::New(p, Some(r)) => {
            let mut p = p.clone();
            p.reason = r;
            crate::snapshot::push_line(out, &p);
        }
    }
    Ok(())
}

/// Finds the line of `name` in `body` (whole lines sorted by name, each ending in a
/// newline) by bisecting byte offsets: `Ok((start, end))` of the line, or `Err(offset)`
/// where a line for `name` would go.
fn locate(body: &str, name: &str) -> Result<(usize, usize), usize> {
    let b = body.as_bytes();
    let (mut lo, mut hi) = (0usize, b.len());
    // Invariant: `lo` and `hi` are line starts; lines before `lo` sort before `name`, lines
    // from `hi` on sort after it.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let start = b[lo..mid]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(lo, |i| lo + i + 1);
        let end = b[start..hi]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(hi, |i| start + i + 1);
        match line_name(&body[start..end]).cmp(name) {
            std::cmp::Ordering::Less => lo = end,
            std::cmp::Ordering::Greater => hi = start,
            std::cmp::Ordering::Equal => return Ok((start, end)),
        }
    }
    Err(lo)
}

/// Applies `delta` to `base` (which must be the text of `delta.base`), checking the result
/// against `delta.target`.
pub fn apply_delta(base: &SnapText, delta: &Delta) -> Result<SnapText, ApplyError> {
    let body = base.text.strip_prefix(HEADER).ok_or(ApplyError::BadBase)?;
    if !body.is_empty() && !body.ends_with('\n') {
        return Err(ApplyError::BadBase);
    }
    let find = |name: &str| match locate(body, name) {
        Ok((s, e)) => Some(&body[s..e]),
        Err(_) => None,
    };
    // The final state of every name the delta touches, in the order `Delta::apply` uses:
    // removals, changes, reason changes, additions.
    let mut touched: BTreeMap<&str, Option<Entry<'_>>> = BTreeMap::new();
    let state_of = |name: &str| find(name).map(|l| Entry::Base(l, None));
    let inconsistent = |what: &str, name: &str| ApplyError::Inconsistent(format!("{what} {name}"));
    for name in &delta.removed {
        let slot = touched
            .entry(name.as_str())
            .or_insert_with(|| state_of(name.as_str()));
        if slot.take().is_none() {
            return Err(inconsistent("removes absent package", name.as_str()));
        }
    }
    for p in &delta.changed {
        let slot = touched
            .entry(p.name.as_str())
            .or_insert_with(|| state_of(p.name.as_str()));
        if slot.is_none() {
            return Err(inconsistent("changes absent package", p.name.as_str()));
        }
        *slot = Some(Entry::New(p, None));
    }
    for (name, reason) in &delta.reason_changed {
        let slot = touched
            .entry(name.as_str())
            .or_insert_with(|| state_of(name.as_str()));
        match slot {
            None => {
                return Err(inconsistent(
                    "changes the reason of absent package",
                    name.as_str(),
                ));
            }
            Some(Entry::Base(_, r) | Entry::New(_, r)) => *r = Some(*reason),
        }
    }
    for p in &delta.added {
        let slot = touched
            .entry(p.name.as_str())
            .or_insert_with(|| state_of(p.name.as_str()));
        if slot.is_some() {
            return Err(inconsistent("adds present package", p.name.as_str()));
        }
        *slot = Some(Entry::New(p, None));
    }
    // Copy the base between the touched names (both sorted by name), a run at a time,
    // without splitting the base into lines.
    let mut out = String::with_capacity(base.text.len() + 64 * delta.len());
    out.push_str(HEADER);
    let mut count = base.packages as isize;
    let mut first = None;
    let mut pos = 0usize;
    for (name, e) in touched {
        let (start, end, present) = match locate(body, name) {
            Ok((s, e)) => (s, e, true),
            Err(at) => (at, at, false),
        };
        first.get_or_insert(start);
        out.push_str(&body[pos..start]);
        pos = end;
        match (present, e.is_some()) {
            (true, false) => count -= 1,
            (false, true) => count += 1,
            _ => {}
        }
        if let Some(e) = e {
            emit(&mut out, e)?;
        }
    }
    out.push_str(&body[pos..]);
    let count = usize::try_from(count).map_err(|_| ApplyError::BadBase)?;
    // The result equals the base up to the first touched line: hash from there on.
    let first = first.map_or(out.len(), |f| HEADER.len() + f);
    let reuse = &base.marks[..(first / MARK_EVERY).min(base.marks.len())];
    let (actual, marks) = hash_marked(&out, reuse);
    if actual != delta.target {
        return Err(ApplyError::WrongResult {
            expected: delta.target,
            actual,
        });
    }
    Ok(SnapText {
        hash: actual,
        text: out.into(),
        packages: count,
        marks,
    })
}

/// Recently used values by snapshot hash, bounded by a total size (bytes of text, or
/// packages of decoded snapshots); the least recently inserted or looked-up entries go first
/// (a hit re-queues the hash; stale queue entries are skipped).
pub struct SizedCache<V> {
    inner: Mutex<CacheInner<V>>,
    max: usize,
}

struct CacheInner<V> {
    map: HashMap<SnapshotHash, (V, usize, u64)>,
    order: VecDeque<(SnapshotHash, u64)>,
    total: usize,
    tick: u64,
}

impl<V: Clone> SizedCache<V> {
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(CacheInner {
                map: HashMap::new(),
                order: VecDeque::new(),
                total: 0,
                tick: 0,
            }),
            max,
        }
    }

    pub fn get(&self, hash: &SnapshotHash) -> Option<V> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let (v, _, stamp) = inner.map.get_mut(hash)?;
        *stamp = tick;
        let v = v.clone();
        inner.order.push_back((*hash, tick));
        // Keep the queue bounded when hits outnumber inserts.
        if inner.order.len() > 4 * inner.map.len() + 64 {
            let map = &inner.map;
            inner
                .order
                .retain(|(h, t)| map.get(h).is_some_and(|(_, _, s)| s == t));
        }
        Some(v)
    }

    pub fn insert(&self, hash: SnapshotHash, v: V, size: usize) {
        if size > self.max {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((_, _, stamp)) = inner.map.get_mut(&hash) {
            *stamp = tick;
        } else {
            inner.map.insert(hash, (v, size, tick));
            inner.total += size;
        }
        inner.order.push_back((hash, tick));
        while inner.total > self.max {
            let Some((h, t)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&h).is_some_and(|(_, _, s)| *s == t)
                && let Some((_, size, _)) = inner.map.remove(&h)
            {
                inner.total -= size;
            }
        }
    }

    pub fn remove(&self, hash: &SnapshotHash) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, size, _)) = g.map.remove(hash) {
            g.total -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkg(name: &str, version: &str, explicit: bool, repo: Option<&str>) -> PackageState {
        PackageState {
            name: name.parse().unwrap(),
            version: version.parse().unwrap(),
            arch: "x86_64".parse().unwrap(),
            reason: if explicit {
                Reason::Explicit
            } else {
                Reason::Dependency
            },
            repo: repo.map(|r| r.parse().unwrap()),
        }
    }

    fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
        // Names that sort differently as lines than as names ("a" < "a-b" < "ab").
        let names = prop::sample::subsequence(
            vec![
                "a",
                "a-b",
                "ab",
                "b",
                "bash",
                "bash-completion",
                "zlib",
                "z",
            ],
            0..8,
        );
        names
            .prop_flat_map(|names| {
                let n = names.len();
                (
                    Just(names),
                    prop::collection::vec((1u8..4, any::<bool>(), any::<bool>()), n),
                )
            })
            .prop_map(|(names, attrs)| {
                Snapshot::new(
                    names
                        .into_iter()
                        .zip(attrs)
                        .map(|(n, (v, e, r))| pkg(n, &format!("{v}.0-1"), e, r.then_some("core")))
                        .collect(),
                )
                .unwrap()
            })
    }

    proptest! {
        #[test]
        fn applies_like_delta_apply(a in arb_snapshot(), b in arb_snapshot()) {
            let delta = a.diff(&b);
            let base = SnapText::from_snapshot(&a);
            prop_assert_eq!(base.hash, a.hash());
            let got = apply_delta(&base, &delta).unwrap();
            prop_assert_eq!(&*got.text, b.encode());
            prop_assert_eq!(got.hash, b.hash());
            prop_assert_eq!(got.packages, b.len());
        }

        #[test]
        fn refuses_what_delta_apply_refuses(
            a in arb_snapshot(),
            b in arb_snapshot(),
            c in arb_snapshot(),
        ) {
            // A delta from b to c applied to a: agrees with Delta::apply on a base whose
            // hash is forced to match.
            let mut delta = b.diff(&c);
            delta.base = a.hash();
            let base = SnapText::from_snapshot(&a);
            let want = delta.apply(&a);
            let got = apply_delta(&base, &delta);
            match (want, got) {
                (Ok(w), Ok(g)) => prop_assert_eq!(w.encode(), g.text.to_string()),
                (Err(_), Err(_)) => {}
                (w, g) => prop_assert!(false, "Delta::apply {:?}, apply_delta {:?}", w.map(|s| s.hash()), g.map(|s| s.hash)),
            }
        }
    }

    #[test]
    fn reason_change_on_base_and_wrong_target() {
        let a = Snapshot::new(vec![
            pkg("bash", "5.2-1", true, Some("core")),
            pkg("zlib", "1.3-1", false, None),
        ])
        .unwrap();
        let b = Snapshot::new(vec![
            pkg("bash", "5.2-1", true, Some("core")),
            pkg("zlib", "1.3-1", true, None),
        ])
        .unwrap();
        let delta = a.diff(&b);
        assert_eq!(delta.reason_changed.len(), 1);
        let got = apply_delta(&SnapText::from_snapshot(&a), &delta).unwrap();
        assert_eq!(&*got.text, b.encode());
        let mut wrong = delta.clone();
        wrong.target = a.hash();
        assert!(matches!(
            apply_delta(&SnapText::from_snapshot(&a), &wrong),
            Err(ApplyError::WrongResult { .. })
        ));
    }

    #[test]
    fn large_texts_reuse_saved_hash_states_exactly() {
        // 1,500 packages (about 60 KiB of text, several saved states): changes at the start,
        // in the middle and at the end, additions past the end and removals, each applied
        // to the previous result so saved states are reused across steps.
        let base = |v: &dyn Fn(usize) -> String| {
            Snapshot::new(
                (0..1500)
                    .map(|i| pkg(&format!("package-{i:04}"), &v(i), i % 3 == 0, Some("extra")))
                    .collect(),
            )
            .unwrap()
        };
        let mut cur = base(&|i| format!("1.{i}-1"));
        let mut text = SnapText::from_snapshot(&cur);
        assert!(text.text.len() > 4 * MARK_EVERY && text.marks.len() >= 4);
        let steps: Vec<Box<dyn Fn(usize) -> String>> = vec![
            Box::new(|i| {
                if i == 1499 {
                    "2-1".into()
                } else {
                    format!("1.{i}-1")
                }
            }),
            Box::new(|i| {
                if i == 750 || i == 1499 {
                    "2-1".into()
                } else {
                    format!("1.{i}-1")
                }
            }),
            Box::new(|i| {
                if i == 0 {
                    "3-1".into()
                } else {
                    format!("1.{i}-1")
                }
            }),
            Box::new(|i| {
                if i == 1200 {
                    "4-1".into()
                } else {
                    format!("1.{i}-1")
                }
            }),
        ];
        for (n, v) in steps.iter().enumerate() {
            let mut next = base(v.as_ref());
            if n == 1 {
                // Also add a package past the end and remove one in the middle.
                let mut p: Vec<PackageState> = next.packages().to_vec();
                p.push(pkg("zzz", "1-1", true, None));
                p.remove(900);
                next = Snapshot::new(p).unwrap();
            }
            let delta = cur.diff(&next);
            let applied = apply_delta(&text, &delta).unwrap();
            assert_eq!(applied.hash, next.hash());
            assert_eq!(&*applied.text, next.encode());
            assert_eq!(applied.packages, next.len());
            let (fresh, marks) = hash_marked(&applied.text, &[]);
            assert_eq!(fresh, applied.hash);
            assert_eq!(marks.len(), applied.marks.len());
            cur = next;
            text = applied;
        }
        // A text read back from the database has no saved states; applying still works.
        let stored = SnapText::stored(text.hash, text.text.to_string(), text.packages);
        let next = base(&|i| format!("5.{i}-1"));
        let applied = apply_delta(&stored, &cur.diff(&next)).unwrap();
        assert_eq!(applied.hash, next.hash());
    }

    #[test]
    fn text_cache_is_bounded_by_bytes() {
        let snaps: Vec<SnapText> = (1..=4)
            .map(|i| {
                SnapText::from_snapshot(
                    &Snapshot::new(vec![pkg("bash", &format!("{i}.0-1"), true, None)]).unwrap(),
                )
            })
            .collect();
        let one = snaps[0].text.len();
        let cache = SizedCache::new(2 * one);
        let put = |s: &SnapText| cache.insert(s.hash, s.clone(), s.text.len());
        put(&snaps[0]);
        put(&snaps[1]);
        assert!(cache.get(&snaps[0].hash).is_some(), "refreshes snaps[0]");
        put(&snaps[2]);
        assert!(
            cache.get(&snaps[1].hash).is_none(),
            "least recently used goes"
        );
        assert!(cache.get(&snaps[0].hash).is_some());
        assert!(cache.get(&snaps[2].hash).is_some());
        cache.remove(&snaps[2].hash);
        assert!(cache.get(&snaps[2].hash).is_none());
    }

    /// A JSON string for `s`; with `escape`, its first ASCII alphanumeric character is written
    /// as a `\u` escape (so the parser cannot borrow it from the body).
    fn json_str(s: &str, escape: bool) -> String {
        let mut out = serde_json::to_string(s).unwrap();
        if escape && let Some(c) = s.chars().next().filter(char::is_ascii_alphanumeric) {
            out.replace_range(1..2, &format!("\\u{:04x}", c as u32));
        }
        out
    }

    /// One package object of a snapshot's JSON, valid or not, in varying shapes.
    fn arb_package_json() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec![
            "a",
            "a-b",
            "ab",
            "bash",
            "z",
            "lib32-glibc",
            "g++",
            "-x",
            ".a",
            "",
            "a b",
            "a/b",
            "pkg@1",
            "é",
        ]);
        let version = prop::sample::select(vec![
            "1.0-1", "2:0.1-1", "1.0", "1.0-1.1", "1:", "a/b", "", "1.0-1-1", "1 0", "1~rc1-1",
        ]);
        let arch = prop::sample::select(vec!["x86_64", "any", "x-86", "", "i686"]);
        let reason = prop::sample::select(vec!["\"explicit\"", "\"dependency\"", "\"other\"", "1"]);
        // None: no `repo` key.
        let repo = prop::sample::select(vec![
            None,
            Some("null"),
            Some("\"core\""),
            Some("\"extra\""),
            Some("\"local\""),
            Some("\"ex tra\""),
            Some("\"-core\""),
        ]);
        (name, version, arch, reason, repo, any::<[bool; 4]>()).prop_map(
            |(name, version, arch, reason, repo, [esc_name, esc_ver, extra, reversed])| {
                let mut fields = vec![
                    format!("\"name\":{}", json_str(name, esc_name)),
                    format!("\"version\":{}", json_str(version, esc_ver)),
                    format!("\"arch\":{}", json_str(arch, false)),
                    format!("\"reason\":{reason}"),
                ];
                if let Some(repo) = repo {
                    fields.push(format!("\"repo\":{repo}"));
                }
                if extra {
                    fields.push("\"installed\":[1,{\"x\":null}]".into());
                }
                if reversed {
                    fields.reverse();
                }
                format!("{{{}}}", fields.join(","))
            },
        )
    }

    /// The fast parse gives exactly what `Snapshot`'s `Deserialize` then `SnapText::from_snapshot`
    /// give: the same acceptance, the same text, hash and count.
    fn same_as_snapshot(json: &str) -> Result<(), TestCaseError> {
        let fast = serde_json::from_str::<FullText>(json);
        let slow = serde_json::from_str::<Snapshot>(json);
        match (fast, slow) {
            (Ok(FullText(fast)), Ok(slow)) => {
                let encoded = slow.encode();
                prop_assert_eq!(&*fast.text, encoded.as_str());
                prop_assert_eq!(fast.hash, slow.hash());
                prop_assert_eq!(fast.packages, slow.len());
                let old = SnapText::from_snapshot(&slow);
                prop_assert_eq!(&fast.text, &old.text);
                prop_assert_eq!(fast.hash, old.hash);
                prop_assert_eq!(fast.marks.len(), old.marks.len());
            }
            (Err(_), Err(_)) => {}
            (fast, slow) => prop_assert!(
                false,
                "fast {:?} vs slow {:?} for {}",
                fast.map(|f| f.0),
                slow,
                json
            ),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn full_text_matches_snapshot_encoding(
            pkgs in prop::collection::vec(arb_package_json(), 0..12),
            extra in any::<bool>(),
        ) {
            let extra = if extra { ",\"hostname\":\"x\"" } else { "" };
            same_as_snapshot(&format!("{{\"packages\":[{}]{extra}}}", pkgs.join(",")))?;
        }

        #[test]
        fn full_text_matches_on_valid_reports(a in arb_snapshot(), b in arb_snapshot()) {
            for s in [&a, &b] {
                same_as_snapshot(&serde_json::to_string(s).unwrap())?;
            }
        }
    }

    #[test]
    fn full_text_matches_on_large_reports_and_odd_shapes() {
        // A large state (several saved hash states) with mixed shapes.
        let big = Snapshot::new(
            (0..3000)
                .map(|i| {
                    pkg(
                        &format!("package-{:05}", (i * 7919) % 3000),
                        &format!("{}:{i}.0.{}-{}", i % 3, i % 17, 1 + i % 4),
                        i % 3 == 0,
                        [None, Some("core"), Some("extra-testing")][i % 3],
                    )
                })
                .collect(),
        )
        .unwrap();
        same_as_snapshot(&serde_json::to_string(&big).unwrap()).unwrap();
        for json in [
            r#"{"packages":[]}"#,
            r#"{"packages":[],"packages":[]}"#,
            r#"{}"#,
            r#"{"packages":null}"#,
            r#"{"packages":[["bash","5.2-1","x86_64","explicit"]]}"#,
            r#"{"packages":[["bash","5.2-1","x86_64","explicit","core"]]}"#,
            r#"{"packages":[["bash","5.2-1","x86_64"]]}"#,
            r#"{"packages":[{"name":"bash","name":"zsh","version":"1-1","arch":"any","reason":"explicit"}]}"#,
            r#"{"packages":[{"name":"bash","version":"1-1","arch":"any","reason":"explicit","repo":"core","repo":"extra"}]}"#,
            r#"{"packages":[{"name":"b","version":"1-1","arch":"any","reason":"explicit"},{"name":"a","version":"1-1","arch":"any","reason":"dependency"}]}"#,
            r#"{"packages":[{"name":"a","version":"1-1","arch":"any","reason":"explicit"},{"name":"a","version":"2-1","arch":"any","reason":"explicit"}]}"#,
            r#"{"packages":[{"name":"a","version":1,"arch":"any","reason":"explicit"}]}"#,
            r#"{"packages":[{"name":"a\u0000","version":"1-1","arch":"any","reason":"explicit"}]}"#,
            r#"{"packages":[{"name":"\ud800","version":"1-1","arch":"any","reason":"explicit"}]}"#,
            r#"{"packages":[{"name":"a","version":"1-1","arch":"any","reason":"Explicit"}]}"#,
            r#"["packages"]"#,
            r#"[[]]"#,
        ] {
            same_as_snapshot(json).unwrap();
        }
    }
}
