//! Fuzz target for the appliance configuration parser (`hybridgw::config::parse` and
//! `cross_check`, TOML per the TOML 1.0 specification): arbitrary text, UTF-8 or not.
//!
//! Asserts, for every input:
//! - no panic;
//! - an error carries a location inside the text: either `line == 0` (a file-level error
//!   with no position, and `Display` shows none) or `1 <= line <= number of lines` and
//!   `1 <= column <= byte length of that line + 1`, and a non-empty message;
//! - a parsed configuration's `Debug` output never shows an inline PSK (secrets are never
//!   printed), checked when the PSK is long enough not to occur by chance;
//! - non-UTF-8 bytes: `config::load` on a file holding them returns an error (never panics),
//!   and the lossy text goes through `parse` as well.
//!
//! `psk_file` makes the parser read files: inputs naming `/dev`, `/proc`, `/sys` or `/run`
//! are skipped so that the fuzzer cannot block on a FIFO or read `/dev/zero` forever (that
//! unbounded read is a known finding, see /work/notes/fuzz-findings.md). Relative paths resolve
//! against `appliance-config/` (its `secrets/` hold the examples' PSK files).
//!
//! Run: `cargo fuzz run --sanitizer none config -- -max_total_time=300`
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hybridgw::config::{ConfigError, cross_check, load, parse};
use libfuzzer_sys::fuzz_target;

/// The shipped examples' directory, so that their relative `psk_file`s resolve.
const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../appliance-config/fuzz.toml");

/// `psk_env` lookups: names of even length are set, odd ones are not (both paths run).
fn env(name: &str) -> Option<String> {
    (name.len() % 2 == 0).then(|| "an-environment-psk-of-good-length".to_string())
}

fn check_location(e: &ConfigError, text: &str) {
    assert!(!e.message.is_empty(), "error without a message: {e:?}");
    if e.line == 0 {
        // No position (e.g. a TOML error without a span): `Display` shows none, whatever the
        // column says.
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{}: ", e.file.display())),
            "{shown}"
        );
        return;
    }
    // Lines as the locator counts them: separated by '\n' (a final '\n' opens an empty line).
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        e.line <= lines.len(),
        "line {} outside a text of {} lines: {e:?}",
        e.line,
        lines.len()
    );
    let line_len = lines[e.line - 1].len();
    assert!(
        e.column >= 1 && e.column <= line_len + 1,
        "column {} outside line {} of {} bytes: {e:?}",
        e.column,
        e.line,
        line_len
    );
    // Display must work and name the position.
    let shown = e.to_string();
    assert!(
        shown.contains(&format!(":{}:{}: ", e.line, e.column)),
        "{shown}"
    );
}

fn run(text: &str) {
    match parse(Path::new(FILE), text, &env) {
        Err(e) => check_location(&e, text),
        Ok(cfg) => {
            if let Err(e) = cross_check(&cfg, text) {
                check_location(&e, text);
            }
            let shown = format!("{cfg:?}");
            for c in &cfg.connections {
                let psk = c.psk.expose();
                if let Ok(p) = std::str::from_utf8(psk)
                    && p.len() >= 12
                    && text.matches(p).count() == 1
                {
                    assert!(!shown.contains(p), "Debug of the config shows the PSK");
                }
            }
        }
    }
}

/// A per-process scratch file for the non-UTF-8 `load` path.
fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hybridgw-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir.join("appliance.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    let lower = String::from_utf8_lossy(data).to_ascii_lowercase();
    if ["/dev", "/proc", "/sys", "/run"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return;
    }
    match std::str::from_utf8(data) {
        Ok(text) => run(text),
        Err(_) => {
            let path = scratch();
            std::fs::write(path, data).expect("scratch write");
            let e = load(path).expect_err("non-UTF-8 text must not load");
            assert!(!e.message.is_empty());
            run(&String::from_utf8_lossy(data));
        }
    }
});
