//! The `desc` format shared by pacman's local database and sync databases:
//! `%KEY%` on a line, then value lines, then a blank line. Unknown keys are kept and ignored
//! by the typed readers. Parsing borrows from the text: two allocations per entry.

use crate::names::{Arch, NameError, PkgName, PkgVersion};

/// What is wrong with a `desc` entry. The caller adds the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum DescError {
    #[error("line {line}: value {value:?} outside any %KEY% section")]
    ValueWithoutKey { line: usize, value: String },
    #[error("missing %{0}%")]
    Missing(&'static str),
    #[error("%{key}% has an invalid value: {source}")]
    Invalid {
        key: &'static str,
        #[source]
        source: NameError,
    },
    #[error("%{key}% is not a number: {value:?}")]
    NotNumber { key: &'static str, value: String },
    #[error("not UTF-8 text")]
    NotUtf8,
}

/// A parsed `desc` file, borrowing from its text: each key with its value lines.
#[derive(Debug, Default)]
pub struct Desc<'a> {
    /// Every value line, in file order.
    lines: Vec<&'a str>,
    /// Each key with the range of its value lines in `lines`.
    sections: Vec<(&'a str, std::ops::Range<usize>)>,
}

impl<'a> Desc<'a> {
    /// Parses the text of a `desc` file.
    pub fn parse(text: &'a str) -> Result<Self, DescError> {
        let mut d = Desc {
            lines: Vec::with_capacity(32),
            sections: Vec::with_capacity(24),
        };
        let mut in_section = false;
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                in_section = false;
            } else if line.len() > 2 && line.starts_with('%') && line.ends_with('%') {
                let at = d.lines.len();
                d.sections.push((&line[1..line.len() - 1], at..at));
                in_section = true;
            } else if in_section {
                d.lines.push(line);
                if let Some((_, range)) = d.sections.last_mut() {
                    range.end = d.lines.len();
                }
            } else {
                return Err(DescError::ValueWithoutKey {
                    line: i + 1,
                    value: line.chars().take(80).collect(),
                });
            }
        }
        Ok(d)
    }

    /// Parses raw bytes, refusing anything that is not UTF-8.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self, DescError> {
        Self::parse(std::str::from_utf8(bytes).map_err(|_| DescError::NotUtf8)?)
    }

    /// All value lines of `key` (empty when absent; the first section when repeated).
    pub fn list(&self, key: &str) -> &[&'a str] {
        self.sections
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(&[], |(_, r)| &self.lines[r.clone()])
    }

    /// All value lines of `key`, owned.
    pub fn strings(&self, key: &str) -> Vec<String> {
        self.list(key).iter().map(|s| s.to_string()).collect()
    }

    /// The first value line of `key`.
    pub fn first(&self, key: &str) -> Option<&'a str> {
        self.list(key).first().copied()
    }

    pub fn require(&self, key: &'static str) -> Result<&'a str, DescError> {
        self.first(key).ok_or(DescError::Missing(key))
    }

    pub fn name(&self) -> Result<PkgName, DescError> {
        PkgName::new(self.require("NAME")?).map_err(|source| DescError::Invalid {
            key: "NAME",
            source,
        })
    }

    pub fn version(&self) -> Result<PkgVersion, DescError> {
        PkgVersion::new(self.require("VERSION")?).map_err(|source| DescError::Invalid {
            key: "VERSION",
            source,
        })
    }

    pub fn arch(&self) -> Result<Arch, DescError> {
        Arch::new(self.require("ARCH")?).map_err(|source| DescError::Invalid {
            key: "ARCH",
            source,
        })
    }

    /// An optional unsigned number such as `%SIZE%` or `%INSTALLDATE%`.
    pub fn number(&self, key: &'static str) -> Result<Option<u64>, DescError> {
        self.first(key)
            .map(|v| {
                v.trim().parse().map_err(|_| DescError::NotNumber {
                    key,
                    value: v.chars().take(40).collect(),
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_lists() {
        let d = Desc::parse(
            "%NAME%\nfoo\n\n%VERSION%\n1.0-1\n\n%DEPENDS%\nbar\nbaz>=2\n\n%XDATA%\npkgtype=pkg\n\n",
        )
        .unwrap();
        assert_eq!(d.name().unwrap().as_str(), "foo");
        assert_eq!(d.version().unwrap().as_str(), "1.0-1");
        assert_eq!(d.list("DEPENDS"), ["bar", "baz>=2"]);
        assert!(d.list("CONFLICTS").is_empty());
        assert!(matches!(d.arch(), Err(DescError::Missing("ARCH"))));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Desc::parse("foo\n%NAME%\nx\n"),
            Err(DescError::ValueWithoutKey { line: 1, .. })
        ));
        assert!(matches!(
            Desc::parse_bytes(b"%NAME%\n\xff\n"),
            Err(DescError::NotUtf8)
        ));
        let d = Desc::parse("%NAME%\n-Syu\n\n%SIZE%\nbig\n").unwrap();
        assert!(matches!(
            d.name(),
            Err(DescError::Invalid { key: "NAME", .. })
        ));
        assert!(matches!(
            d.number("SIZE"),
            Err(DescError::NotNumber { key: "SIZE", .. })
        ));
    }
}
