//! The chat page `ember serve` serves at `/`, in headless Chromium: runs
//! tests/serve/chat_page.py (see its docstring for what it checks) with this build's binary.
//! Chromium and chromedriver come from scripts/setup-tests.sh (Debian's chromium and
//! chromium-driver); without them this test fails rather than skips.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn on_path(name: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

#[test]
fn chat_page_works_in_headless_chromium() {
    for tool in ["chromium", "chromedriver"] {
        assert!(
            on_path(tool),
            "{tool} is not on PATH: run scripts/setup-tests.sh (it installs Debian's chromium \
             and chromium-driver)"
        );
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new("python3")
        .arg("tests/serve/chat_page.py")
        .arg("--ember")
        .arg(env!("CARGO_BIN_EXE_ember"))
        .current_dir(&root)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "tests/serve/chat_page.py failed");
}
