//! Synthetic package states shared by the benches: `package-NNNN` on x86_64 from `extra`,
//! every fourth one installed explicitly and the rest as dependencies (the shape of a
//! desktop's 1,500 packages).

use pacpool::localdb::Reason;
use pacpool::snapshot::PackageState;

/// Package `i` at `version`.
pub fn package(i: usize, version: impl AsRef<str>) -> PackageState {
    PackageState {
        name: format!("package-{i:04}").parse().unwrap(),
        version: version.as_ref().parse().unwrap(),
        arch: "x86_64".parse().unwrap(),
        reason: if i % 4 == 0 {
            Reason::Explicit
        } else {
            Reason::Dependency
        },
        repo: Some("extra".parse().unwrap()),
    }
}
