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

/// Endpoint `seed`'s full state of `packages` packages in round `round`: the common packages
/// with one of them at a version of its own, so no two endpoints' bodies are alike (nothing
/// is deduplicated away).
#[allow(dead_code)] // not every bench reports full states
pub fn distinct_state(seed: usize, round: usize, packages: usize) -> pacpool::snapshot::Snapshot {
    pacpool::snapshot::Snapshot::new(
        (0..packages)
            .map(|i| {
                package(
                    i,
                    if i == seed % packages {
                        format!("9.{seed}.{round}-1")
                    } else {
                        format!("1.{i}-1")
                    },
                )
            })
            .collect(),
    )
    .unwrap()
}
