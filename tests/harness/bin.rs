//! Locating binaries built by cargo for the end-to-end tests (the `hybridgw` appliance binary).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The `hybridgw` binary next to the running test executable: tests run from
/// `target/<profile>/deps/`, the binary is `target/<profile>/hybridgw`. The environment variable
/// `HYBRIDGW_BIN` overrides the lookup.
pub fn hybridgw_bin() -> Result<PathBuf> {
    find_bin("hybridgw", "HYBRIDGW_BIN", "hybridgw")
}

/// Finds binary `name` of package `package` built into the same profile directory as the running
/// test (or at `$env_var`).
pub fn find_bin(name: &str, env_var: &str, package: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{env_var}={} does not name a file", p.display());
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let candidate = dir.join(name);
    if candidate.is_file() {
        return Ok(candidate);
    }
    let profile = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let flag = if profile == "release" {
        " --release"
    } else {
        ""
    };
    bail!(
        "the {name} binary was not found at {}: build it first with `cargo build{flag} -p {package}` \
         (scripts/test-all.sh builds all binaries before testing), or set {env_var}",
        candidate.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_explains_how_to_build_it() {
        let e = find_bin(
            "no-such-binary-xyz",
            "HARNESS_TEST_UNSET_VAR_XYZ",
            "no-such-package",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("build it first") && msg.contains("-p no-such-package"),
            "{msg}"
        );
        // The lookup is relative to target/<profile>/ (tests run from target/<profile>/deps/).
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        assert!(
            msg.contains(&profile_dir.join("no-such-binary-xyz").display().to_string()),
            "{msg}"
        );
    }
}
