//! Snapshots: a machine's package state as a canonical, sorted set with a content hash as its
//! identity, and deltas between two snapshots that apply back exactly.
//!
//! Architecture Invariant: a snapshot's hash is the SHA-256 of [`Snapshot::encode`], and
//! `encode` is canonical (sorted by name, one line per package), so equal states have equal
//! hashes on every machine.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::localdb::{LocalPackage, Reason};
use crate::names::{Arch, NameError, PkgName, PkgVersion, RepoName};

/// First line of the compact text form; bump the number on any change of the line format.
const HEADER: &str = "pacpool-snapshot 1";

/// One package in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackageState {
    pub name: PkgName,
    pub version: PkgVersion,
    pub arch: Arch,
    pub reason: Reason,
    /// The sync repository that offers this package, if any (foreign packages have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoName>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("package {0} appears twice in one snapshot")]
    Duplicate(PkgName),
    #[error(
        "snapshot text does not start with {HEADER:?}: not a pacpool snapshot, or from a newer pacpool"
    )]
    BadHeader,
    #[error("snapshot line {line}: {why}")]
    BadLine { line: usize, why: String },
    #[error("snapshot line {line}: {source}")]
    BadName {
        line: usize,
        #[source]
        source: NameError,
    },
    #[error("not a snapshot hash (64 hex digits): {0:?}")]
    BadHash(String),
}

/// The most packages a state may hold by default, at the coordinator (reports, and so
/// targets) and at the daemon (pool targets): well above real machines (a few thousand),
/// far below what would exhaust either's memory. Both make it configurable (`max_packages`).
pub const DEFAULT_MAX_PACKAGES: usize = 20_000;

/// A SHA-256 content hash identifying a snapshot.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotHash([u8; 32]);

impl SnapshotHash {
    /// The hash of a snapshot's canonical text (see [`Snapshot::encode`]).
    pub fn of_text(text: &str) -> Self {
        Self(Sha256::digest(text.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The first 12 hex digits, for display.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_owned()
    }
}

impl fmt::Display for SnapshotHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SnapshotHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotHash({})", self.short())
    }
}

impl FromStr for SnapshotHash {
    type Err = SnapshotError;
    fn from_str(s: &str) -> Result<Self, SnapshotError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| SnapshotError::BadHash(s.chars().take(80).collect()))?;
        Ok(Self(out))
    }
}

impl Serialize for SnapshotHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SnapshotHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A canonical package set: sorted by name, names unique. Immutable once built, so its
/// hash is computed once, on first use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "SnapshotWire", into = "SnapshotWire")]
pub struct Snapshot {
    packages: Vec<PackageState>,
    hash: OnceLock<SnapshotHash>,
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.packages == other.packages
    }
}

impl Eq for Snapshot {}

#[derive(Serialize, Deserialize)]
struct SnapshotWire {
    packages: Vec<PackageState>,
}

impl TryFrom<SnapshotWire> for Snapshot {
    type Error = SnapshotError;
    fn try_from(w: SnapshotWire) -> Result<Self, SnapshotError> {
        Snapshot::new(w.packages)
    }
}

impl From<Snapshot> for SnapshotWire {
    fn from(s: Snapshot) -> Self {
        Self {
            packages: s.packages,
        }
    }
}

impl Snapshot {
    /// Sorts `packages` by name; refuses a name that appears twice.
    pub fn new(mut packages: Vec<PackageState>) -> Result<Self, SnapshotError> {
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = packages.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(SnapshotError::Duplicate(w[0].name.clone()));
        }
        Ok(Self {
            packages,
            hash: OnceLock::new(),
        })
    }

    /// Builds a snapshot from the local database; `repo_of` names the sync repository that
    /// offers a package (see [`crate::plan::Availability::repo_of`]).
    pub fn from_local(
        local: &[LocalPackage],
        repo_of: impl Fn(&PkgName) -> Option<RepoName>,
    ) -> Self {
        let packages = local
            .iter()
            .map(|p| PackageState {
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.arch.clone(),
                reason: p.reason,
                repo: repo_of(&p.name),
            })
            .collect();
        // The local database has one directory per name, so names are unique.
        Self::new(packages).expect("local database names are unique")
    }

    pub fn packages(&self) -> &[PackageState] {
        &self.packages
    }

    pub fn len(&self) -> usize {
        self.packages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&PackageState> {
        self.packages
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.packages[i])
    }

    /// The compact canonical text form: a header line, then
    /// `name version arch e|d repo-or-dash` per package.
    pub fn encode(&self) -> String {
        // The exact size, so the text is written without growing its buffer.
        let size = self
            .packages
            .iter()
            .map(|p| {
                // `name version arch e|d repo-or-dash\n`
                p.name.as_str().len()
                    + p.version.as_str().len()
                    + p.arch.as_str().len()
                    + p.repo.as_ref().map_or(1, |r| r.as_str().len())
                    + 6
            })
            .sum::<usize>();
        let mut out = String::with_capacity(HEADER.len() + 1 + size);
        out.push_str(HEADER);
        out.push('\n');
        for p in &self.packages {
            push_line(&mut out, p);
        }
        out
    }

    /// Parses [`Snapshot::encode`]'s output, validating every name and version.
    pub fn decode(text: &str) -> Result<Self, SnapshotError> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(SnapshotError::BadHeader);
        }
        let mut packages = Vec::new();
        for (i, line) in lines.enumerate() {
            let line_no = i + 2;
            let bad = |why: &str| SnapshotError::BadLine {
                line: line_no,
                why: why.to_owned(),
            };
            let named = |source| SnapshotError::BadName {
                line: line_no,
                source,
            };
            let f: Vec<&str> = line.split(' ').collect();
            let [name, version, arch, reason, repo] = f[..] else {
                return Err(bad("expected 5 fields: name version arch e|d repo"));
            };
            packages.push(PackageState {
                name: name.parse().map_err(named)?,
                version: version.parse().map_err(named)?,
                arch: arch.parse().map_err(named)?,
                reason: match reason {
                    "e" => Reason::Explicit,
                    "d" => Reason::Dependency,
                    _ => return Err(bad("reason must be e or d")),
                },
                repo: match repo {
                    "-" => None,
                    r => Some(r.parse().map_err(named)?),
                },
            });
        }
        let snap = Self::new(packages)?;
        if snap.encode() != text {
            return Err(SnapshotError::BadLine {
                line: 0,
                why: "not in canonical form (sorted, single spaces, trailing newline)".into(),
            });
        }
        Ok(snap)
    }

    /// The content hash: SHA-256 of the canonical text form.
    pub fn hash(&self) -> SnapshotHash {
        *self
            .hash
            .get_or_init(|| SnapshotHash::of_text(&self.encode()))
    }

    /// What turns `self` into `to`.
    pub fn diff(&self, to: &Snapshot) -> Delta {
        let mut delta = Delta {
            base: self.hash(),
            target: to.hash(),
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            reason_changed: Vec::new(),
        };
        for (name, pair) in pair_up(&self.packages, &to.packages) {
            match pair {
                (Some(_), None) => delta.removed.push(name.clone()),
                (None, Some(new)) => delta.added.push(new.clone()),
                (Some(old), Some(new)) if old == new => {}
                (Some(old), Some(new))
                    if old.version == new.version
                        && old.arch == new.arch
                        && old.repo == new.repo =>
                {
                    delta.reason_changed.push((name.clone(), new.reason));
                }
                (Some(_), Some(new)) => delta.changed.push(new.clone()),
                (None, None) => unreachable!("pair_up yields at least one side"),
            }
        }
        delta
    }
}

/// Appends the canonical line of one package: `name version arch e|d repo-or-dash`.
pub(crate) fn push_line(out: &mut String, p: &PackageState) {
    out.push_str(p.name.as_str());
    out.push(' ');
    out.push_str(p.version.as_str());
    out.push(' ');
    out.push_str(p.arch.as_str());
    out.push_str(match p.reason {
        Reason::Explicit => " e ",
        Reason::Dependency => " d ",
    });
    out.push_str(p.repo.as_ref().map_or("-", RepoName::as_str));
    out.push('\n');
}

/// One package name with its entry on either side of a comparison.
pub(crate) type Pair<'a> = (
    &'a PkgName,
    (Option<&'a PackageState>, Option<&'a PackageState>),
);

/// Walks two name-sorted package lists together, yielding each name with its entry on
/// either side.
pub(crate) fn pair_up<'a>(a: &'a [PackageState], b: &'a [PackageState]) -> Vec<Pair<'a>> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let ord = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                out.push((&a[i].name, (Some(&a[i]), None)));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push((&b[j].name, (None, Some(&b[j]))));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((&a[i].name, (Some(&a[i]), Some(&b[j]))));
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// The difference between two snapshots, identified by both hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub base: SnapshotHash,
    pub target: SnapshotHash,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<PackageState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<PkgName>,
    /// Packages whose version, arch or repo changed (with their new full state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<PackageState>,
    /// Packages where only the install reason changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reason_changed: Vec<(PkgName, Reason)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(
        "delta is against snapshot {expected}, but the snapshot given is {actual}: send the full state"
    )]
    WrongBase {
        expected: SnapshotHash,
        actual: SnapshotHash,
    },
    #[error("delta does not apply: {0}")]
    Inconsistent(String),
    #[error("delta applied, but the result hashes to {actual} instead of {expected}")]
    WrongResult {
        expected: SnapshotHash,
        actual: SnapshotHash,
    },
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.reason_changed.is_empty()
    }

    /// Number of packages the delta touches.
    pub fn len(&self) -> usize {
        self.added.len() + self.removed.len() + self.changed.len() + self.reason_changed.len()
    }

    /// Applies the delta to `base`, checking both hashes, so a delta is either applied exactly
    /// or refused.
    pub fn apply(&self, base: &Snapshot) -> Result<Snapshot, DeltaError> {
        let actual = base.hash();
        if actual != self.base {
            return Err(DeltaError::WrongBase {
                expected: self.base,
                actual,
            });
        }
        let mut map: BTreeMap<&str, PackageState> = base
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.clone()))
            .collect();
        let inconsistent =
            |what: &str, name: &PkgName| DeltaError::Inconsistent(format!("{what} {name}"));
        for name in &self.removed {
            map.remove(name.as_str())
                .ok_or_else(|| inconsistent("removes absent package", name))?;
        }
        for p in &self.changed {
            let slot = map
                .get_mut(p.name.as_str())
                .ok_or_else(|| inconsistent("changes absent package", &p.name))?;
            *slot = p.clone();
        }
        for (name, reason) in &self.reason_changed {
            map.get_mut(name.as_str())
                .ok_or_else(|| inconsistent("changes the reason of absent package", name))?
                .reason = *reason;
        }
        for p in &self.added {
            if map.insert(p.name.as_str(), p.clone()).is_some() {
                return Err(inconsistent("adds present package", &p.name));
            }
        }
        let result = Snapshot::new(map.into_values().collect()).expect("a map has unique names");
        let actual = result.hash();
        if actual != self.target {
            return Err(DeltaError::WrongResult {
                expected: self.target,
                actual,
            });
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn pkg(name: &str, version: &str, reason: Reason) -> PackageState {
        PackageState {
            name: name.parse().unwrap(),
            version: version.parse().unwrap(),
            arch: "x86_64".parse().unwrap(),
            reason,
            repo: Some("core".parse().unwrap()),
        }
    }

    #[test]
    fn canonical_order_and_hash() {
        let a = Snapshot::new(vec![
            pkg("zlib", "1.3-1", Reason::Dependency),
            pkg("bash", "5.2-1", Reason::Explicit),
        ])
        .unwrap();
        let b = Snapshot::new(vec![
            pkg("bash", "5.2-1", Reason::Explicit),
            pkg("zlib", "1.3-1", Reason::Dependency),
        ])
        .unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(
            a.encode(),
            "pacpool-snapshot 1\nbash 5.2-1 x86_64 e core\nzlib 1.3-1 x86_64 d core\n"
        );
        assert_eq!(Snapshot::decode(&a.encode()).unwrap(), a);
        assert_eq!(a.get("zlib").unwrap().version.as_str(), "1.3-1");
        assert!(a.get("nope").is_none());
        let c = Snapshot::new(vec![pkg("bash", "5.2-2", Reason::Explicit)]).unwrap();
        assert_ne!(a.hash(), c.hash());
        let hash: SnapshotHash = a.hash().to_hex().parse().unwrap();
        assert_eq!(hash, a.hash());
    }

    #[test]
    fn rejects_duplicates_and_bad_text() {
        assert!(matches!(
            Snapshot::new(vec![
                pkg("a", "1-1", Reason::Explicit),
                pkg("a", "2-1", Reason::Explicit)
            ]),
            Err(SnapshotError::Duplicate(_))
        ));
        assert!(matches!(
            Snapshot::decode("hello\n"),
            Err(SnapshotError::BadHeader)
        ));
        for bad in [
            "pacpool-snapshot 1\n-Syu 1-1 any e -\n",
            "pacpool-snapshot 1\na 1-1 any x -\n",
            "pacpool-snapshot 1\na 1-1 any e\n",
            "pacpool-snapshot 1\nb 1-1 any e -\na 1-1 any e -\n",
            "pacpool-snapshot 1\na 1-1 any e ../x\n",
        ] {
            assert!(Snapshot::decode(bad).is_err(), "{bad:?}");
        }
        assert!("xyz".parse::<SnapshotHash>().is_err());
        let json = r#"{"packages":[{"name":"--config=x","version":"1-1","arch":"any","reason":"explicit"}]}"#;
        assert!(serde_json::from_str::<Snapshot>(json).is_err());
    }

    #[test]
    fn delta_categories() {
        let a = Snapshot::new(vec![
            pkg("gone", "1-1", Reason::Explicit),
            pkg("same", "1-1", Reason::Explicit),
            pkg("up", "1-1", Reason::Explicit),
            pkg("why", "1-1", Reason::Explicit),
        ])
        .unwrap();
        let b = Snapshot::new(vec![
            pkg("new", "1-1", Reason::Dependency),
            pkg("same", "1-1", Reason::Explicit),
            pkg("up", "2-1", Reason::Explicit),
            pkg("why", "1-1", Reason::Dependency),
        ])
        .unwrap();
        let d = a.diff(&b);
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.removed, vec!["gone".parse::<PkgName>().unwrap()]);
        assert_eq!(d.changed[0].version.as_str(), "2-1");
        assert_eq!(
            d.reason_changed,
            vec![("why".parse().unwrap(), Reason::Dependency)]
        );
        assert_eq!(d.apply(&a).unwrap(), b);
        // Applying against the wrong base is refused, not half-done.
        assert!(matches!(d.apply(&b), Err(DeltaError::WrongBase { .. })));
        assert!(a.diff(&a).is_empty());
        // A tampered delta is caught by the result hash.
        let mut t = d.clone();
        t.changed[0].version = "3-1".parse().unwrap();
        assert!(matches!(t.apply(&a), Err(DeltaError::WrongResult { .. })));
    }

    fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
        let entry = (
            0u8..40,
            prop::sample::select(vec!["1.0-1", "1.0-2", "2:0.1-1", "1.1-1"]),
            any::<bool>(),
            prop::sample::select(vec![None, Some("core"), Some("extra")]),
            prop::sample::select(vec!["x86_64", "any"]),
        );
        prop::collection::vec(entry, 0..40).prop_map(|entries| {
            let mut map = BTreeMap::new();
            for (n, v, dep, repo, arch) in entries {
                map.insert(
                    n,
                    PackageState {
                        name: format!("pkg{n}").parse().unwrap(),
                        version: v.parse().unwrap(),
                        arch: arch.parse().unwrap(),
                        reason: if dep {
                            Reason::Dependency
                        } else {
                            Reason::Explicit
                        },
                        repo: repo.map(|r| r.parse().unwrap()),
                    },
                );
            }
            Snapshot::new(map.into_values().collect()).unwrap()
        })
    }

    proptest! {
        #[test]
        fn delta_applies_back_exactly(a in arb_snapshot(), b in arb_snapshot()) {
            let d = a.diff(&b);
            prop_assert_eq!(d.apply(&a).unwrap(), b.clone());
            let json = serde_json::to_string(&d).unwrap();
            let back: Delta = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back.apply(&a).unwrap(), b.clone());
            prop_assert_eq!(Snapshot::decode(&b.encode()).unwrap(), b);
        }
    }
}
