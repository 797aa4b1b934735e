//! `ember serve` against the official `openai` Python client, and its faults: runs
//! tests/serve/openai_client.py (see its docstring for what it checks) with this build's
//! binary. The client lives in .venv/, which scripts/setup-tests.sh makes.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn serve_answers_the_openai_client_and_survives_faults() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-tests.sh (it installs the openai client)",
        python.display()
    );
    let status = Command::new(&python)
        .arg("tests/serve/openai_client.py")
        .arg("--ember")
        .arg(env!("CARGO_BIN_EXE_ember"))
        .current_dir(&root)
        .status()
        .expect("python runs");
    assert!(status.success(), "tests/serve/openai_client.py failed");
}
