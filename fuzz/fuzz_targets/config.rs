//! `config::load_str` on arbitrary text, with relative paths resolved in a
//! scratch directory that holds a valid JWKS file: never panics, and every
//! error names the source and, when located, a 1-based line and column.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const SOURCE: &str = "fuzz.yaml";

/// A valid one-key JWKS (RFC 7515 A.3), as `keys.json` in the base directory.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"a3","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

fn base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("scopegate-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::write(dir.join("keys.json"), JWKS).expect("keys.json");
        dir
    })
}

/// Files the harness must not make validation read: device and proc files
/// can block (`/dev/stdin`) or never end (`/dev/zero`). The configuration is
/// trusted operator input, so this is the harness's concern, not a finding.
fn reads_special_files(text: &str) -> bool {
    ["dev", "proc", "sys", "\\x", "\\u", "\\U", "\\/"]
        .iter()
        .any(|needle| text.contains(needle))
}

fuzz_target!(|text: &str| {
    if reads_special_files(text) {
        return;
    }
    if let Err(e) = scopegate::config::load_str(SOURCE, base_dir(), text) {
        assert_eq!(e.file, SOURCE);
        assert_eq!(e.line.is_some(), e.column.is_some(), "{e:?}");
        assert!(e.line.is_none_or(|l| l >= 1), "{e:?}");
        assert!(e.column.is_none_or(|c| c >= 1), "{e:?}");
        let shown = e.to_string();
        assert!(shown.starts_with(SOURCE), "{shown}");
        assert!(!e.message.is_empty(), "{e:?}");
    }
});
