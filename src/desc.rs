//! The `desc` format shared by pacman's local database and sync databases:
//! `%KEY%` on a line, then value lines, then a blank line. Unknown keys are kept in the raw
//! map and ignored by the typed readers.

use std::collections::BTreeMap;

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

/// A parsed `desc` file: each key with its value lines.
#[derive(Debug, Default)]
pub struct Desc {
    fields: BTreeMap<String, Vec<String>>,
}

impl Desc {
    /// Parses the text of a `desc` file.
    pub fn parse(text: &str) -> Result<Self, DescError> {
        let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                current = None;
            } else if line.len() > 2 && line.starts_with('%') && line.ends_with('%') {
                let key = line[1..line.len() - 1].to_owned();
                fields.entry(key.clone()).or_default();
                current = Some(key);
            } else if let Some(key) = &current {
                fields.entry(key.clone()).or_default().push(line.to_owned());
            } else {
                return Err(DescError::ValueWithoutKey {
                    line: i + 1,
                    value: line.chars().take(80).collect(),
                });
            }
        }
        Ok(Self { fields })
    }

    /// Parses raw bytes, refusing anything that is not UTF-8.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, DescError> {
        Self::parse(std::str::from_utf8(bytes).map_err(|_| DescError::NotUtf8)?)
    }

    /// All value lines of `key` (empty when absent).
    pub fn list(&self, key: &str) -> &[String] {
        self.fields.get(key).map_or(&[], Vec::as_slice)
    }

    /// The first value line of `key`.
    pub fn first(&self, key: &str) -> Option<&str> {
        self.list(key).first().map(String::as_str)
    }

    pub fn require(&self, key: &'static str) -> Result<&str, DescError> {
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
