//! Helpers for the cross-crate tests.
#![warn(missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of the workspace binary `name`, built (or brought up to date) on first use.
///
/// Cargo builds only this package's own binaries for its tests, so binaries of other crates
/// are built here through the `cargo` that runs the tests. They land in the same target
/// directory, next to this test executable's `deps/` folder.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--bins", "--workspace"]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("cannot run cargo to build the binaries");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}
