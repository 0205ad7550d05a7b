//! Validated package names, versions and repository names.
//!
//! Architecture Invariant: every string that reaches a pacman argv is one of these types.
//! The rules are makepkg's lint rules (`lint_pkgname`, `lint_pkgver`, `lint_pkgrel`,
//! `lint_epoch`), narrowed to printable ASCII and a length cap so that nothing that looks like
//! an option, a path or a control sequence can pass.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest name or version accepted: a package directory `NAME-VERSION` must fit in 255 bytes.
pub const MAX_LEN: usize = 255;

/// Why a name or version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {shown} is {len} bytes long; at most {MAX_LEN} are allowed")]
    TooLong {
        what: &'static str,
        shown: String,
        len: usize,
    },
    #[error("{what} {shown} must not start with {first:?}")]
    BadStart {
        what: &'static str,
        shown: String,
        first: char,
    },
    #[error("{what} {shown} contains {bad:?}, which pacman does not allow there ({rule})")]
    BadChar {
        what: &'static str,
        shown: String,
        bad: char,
        rule: &'static str,
    },
    #[error("{what} {shown} is malformed: {why}")]
    Malformed {
        what: &'static str,
        shown: String,
        why: &'static str,
    },
}

/// Quotes a rejected input for an error message, shortened and with control characters escaped.
fn shown(s: &str) -> String {
    let mut short: String = s.chars().take(40).collect();
    if short.len() < s.len() {
        short.push('…');
    }
    format!("{short:?}")
}

fn check_len(what: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > MAX_LEN {
        return Err(NameError::TooLong {
            what,
            shown: shown(s),
            len: s.len(),
        });
    }
    Ok(())
}

fn check_chars(
    what: &'static str,
    s: &str,
    allowed: impl Fn(char) -> bool,
    rule: &'static str,
) -> Result<(), NameError> {
    match s.chars().find(|&c| !allowed(c)) {
        Some(bad) => Err(NameError::BadChar {
            what,
            shown: shown(s),
            bad,
            rule,
        }),
        None => Ok(()),
    }
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $validate:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                $validate(&s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// Checks `s` by the same rules as [`Self::new`] without wrapping (or copying) it.
            pub fn check(s: &str) -> Result<(), NameError> {
                $validate(s)
            }
        }
        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | '+' | '-')
}

fn validate_name(what: &'static str, s: &str) -> Result<(), NameError> {
    check_len(what, s)?;
    check_chars(what, s, is_name_char, "allowed: A-Z a-z 0-9 @ . _ + -")?;
    let first = s.chars().next().unwrap_or_default();
    if first == '-' || first == '.' {
        return Err(NameError::BadStart {
            what,
            shown: shown(s),
            first,
        });
    }
    Ok(())
}

fn validate_pkg_name(s: &str) -> Result<(), NameError> {
    validate_name("package name", s)
}

fn validate_repo_name(s: &str) -> Result<(), NameError> {
    validate_name("repository name", s)?;
    if s == "local" {
        return Err(NameError::Malformed {
            what: "repository name",
            shown: shown(s),
            why: "\"local\" is reserved by pacman",
        });
    }
    Ok(())
}

fn validate_arch(s: &str) -> Result<(), NameError> {
    check_len("architecture", s)?;
    check_chars(
        "architecture",
        s,
        |c| c.is_ascii_alphanumeric() || c == '_',
        "allowed: A-Z a-z 0-9 _",
    )
}

/// `[epoch:]pkgver[-pkgrel]` per makepkg: epoch digits, pkgver without `:` `/` `-` or
/// whitespace, pkgrel `N` or `N.N`; and only characters safe in file names and URLs.
fn validate_version(s: &str) -> Result<(), NameError> {
    const WHAT: &str = "package version";
    check_len(WHAT, s)?;
    // Narrower than makepkg (which allows any character but `:/-` and whitespace): versions
    // end up in file names and archive URLs, where `;`, `$`, `#`, `?` or `%` have meanings.
    check_chars(
        WHAT,
        s,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '~' | '@' | ':' | '-'),
        "allowed: A-Z a-z 0-9 . _ + ~ @, ':' after the epoch, '-' before the pkgrel",
    )?;
    let malformed = |why| NameError::Malformed {
        what: WHAT,
        shown: shown(s),
        why,
    };
    let (epoch, rest) = match s.split_once(':') {
        Some((e, rest)) => (Some(e), rest),
        None => (None, s),
    };
    if let Some(e) = epoch
        && (e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(malformed("the epoch before ':' must be digits"));
    }
    let (pkgver, pkgrel) = match rest.rsplit_once('-') {
        Some((v, r)) => (v, Some(r)),
        None => (rest, None),
    };
    if pkgver.is_empty() {
        return Err(malformed("pkgver is empty"));
    }
    if let Some(bad) = pkgver.chars().find(|c| matches!(c, ':' | '/' | '-')) {
        return Err(NameError::BadChar {
            what: WHAT,
            shown: shown(s),
            bad,
            rule: "pkgver must not contain ':', '/' or '-'",
        });
    }
    if let Some(rel) = pkgrel {
        let ok = match rel.split_once('.') {
            Some((a, b)) => is_digits(a) && is_digits(b),
            None => is_digits(rel),
        };
        if !ok {
            return Err(malformed("pkgrel must be N or N.N"));
        }
    }
    Ok(())
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

string_newtype!(
    /// A package name as makepkg accepts it: `[A-Za-z0-9@._+-]`, not starting with `-` or `.`.
    PkgName,
    validate_pkg_name
);
string_newtype!(
    /// A full package version, `[epoch:]pkgver[-pkgrel]`. Ordered as strings; use
    /// [`crate::version::vercmp`] to order versions.
    PkgVersion,
    validate_version
);
string_newtype!(
    /// A sync repository name (a `[section]` of pacman.conf other than `options`).
    RepoName,
    validate_repo_name
);
string_newtype!(
    /// A package architecture such as `x86_64` or `any`.
    Arch,
    validate_arch
);

impl PkgVersion {
    /// The version without its pkgrel, e.g. `1:2.0` for `1:2.0-3`.
    pub fn without_pkgrel(&self) -> &str {
        self.0.rsplit_once('-').map_or(&self.0, |(v, _)| v)
    }
    /// Whether the version carries a pkgrel.
    pub fn has_pkgrel(&self) -> bool {
        self.0.contains('-')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        for n in [
            "glibc",
            "linux-firmware",
            "libstdc++5",
            "python-ruamel.yaml",
            "r8168-dkms",
            "gtk+",
            "lib32-gcc-libs",
            "A_b@c",
            "0ad",
        ] {
            PkgName::new(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn rejects_hostile_names() {
        let long = "a".repeat(10 * 1024);
        for n in [
            "-Syu",
            "--config=/x",
            "a;b",
            "../x",
            ".hidden",
            "",
            "a b",
            "naïve",
            "a/b",
            "a\nb",
            "$(id)",
            "`id`",
            "a*",
            "repo/pkg",
            long.as_str(),
        ] {
            let err = PkgName::new(n).expect_err(n);
            assert!(
                err.to_string().contains("package name"),
                "message names what failed: {err}"
            );
        }
    }

    #[test]
    fn versions_follow_makepkg() {
        for v in [
            "1.0-1",
            "1:2.3.4-5",
            "2024.01.01-1.1",
            "1.0rc1-2",
            "1.0+git20240101-1",
            "1_2-1",
            "1.0",
            "0:1",
        ] {
            PkgVersion::new(v).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
        let long = "1".repeat(10 * 1024);
        for v in [
            "",
            "-1",
            "--config=/x",
            "1.0-",
            "1.0-a",
            "1.0-1.2.3",
            ":1.0",
            "a:1.0",
            "1:2:3",
            "1/0-1",
            "1 0-1",
            "1.0-1\n",
            "1.0-1;rm",
            "1.0;id-1",
            "1$(id)-1",
            "1#x-1",
            "1?x-1",
            "1%2f-1",
            "ü-1",
            long.as_str(),
        ] {
            assert!(PkgVersion::new(v).is_err(), "{v:?} must be rejected");
        }
    }

    #[test]
    fn repo_and_arch() {
        assert!(RepoName::new("core").is_ok());
        assert!(RepoName::new("local").is_err());
        assert!(RepoName::new("-x").is_err());
        assert!(Arch::new("x86_64").is_ok());
        assert!(Arch::new("any").is_ok());
        assert!(Arch::new("x86-64").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: PkgName = serde_json::from_str("\"bash\"").unwrap();
        assert_eq!(ok.as_str(), "bash");
        assert!(serde_json::from_str::<PkgName>("\"-Syu\"").is_err());
        assert!(serde_json::from_str::<PkgVersion>("\"1.0-1;x\"").is_err());
    }

    #[test]
    fn version_parts() {
        let v = PkgVersion::new("1:2.0-3").unwrap();
        assert_eq!(v.without_pkgrel(), "1:2.0");
        assert!(v.has_pkgrel());
    }
}
