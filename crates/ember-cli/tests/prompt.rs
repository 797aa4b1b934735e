//! Where `ember`'s prompt comes from: `--prompt`, `-p -` (stdin), `--prompt-file`, or a
//! prompt piped on stdin with no `-p`; each must give the answer `--prompt TEXT` gives.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const QUESTION: &str = "Name three large rivers of South America and the oceans they reach.";

/// `ember -c configs/cpu-f32.toml -n 4 ARGS` with `stdin` piped in (or /dev/null):
/// (stdout, "prompt N tokens" of the summary).
fn ember(args: &[&str], stdin: Option<&str>) -> (String, usize) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        // configs/cpu-f32.toml fetches into `models/` of the working directory.
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args(["--config", "configs/cpu-f32.toml", "-n", "4", "-t", "0"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    let tokens = stderr
        .split("prompt ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no prompt count in: {stderr}"));
    (String::from_utf8(out.stdout).unwrap(), tokens)
}

#[test]
fn the_prompt_comes_from_stdin_or_a_file_as_from_the_flag() {
    let flag = ember(&["--prompt", QUESTION], None);
    let dash = ember(&["-p", "-"], Some(&format!("{QUESTION}\n")));
    assert_eq!(dash, flag, "-p - must read the prompt from stdin");
    let piped = ember(&[], Some(&format!("{QUESTION}\n")));
    assert_eq!(piped, flag, "a prompt piped on stdin must be used");
    let file = std::env::temp_dir().join(format!("ember-prompt-{}.txt", std::process::id()));
    std::fs::write(&file, format!("{QUESTION}\n")).unwrap();
    let from_file = ember(&["--prompt-file", file.to_str().unwrap()], None);
    std::fs::remove_file(&file).ok();
    assert_eq!(from_file, flag, "--prompt-file must read the prompt");
    // Nothing on stdin: the config's own question, which is another prompt.
    let config = ember(&[], None);
    assert_ne!(config.1, flag.1);
}

#[test]
fn an_empty_prompt_on_stdin_with_dash_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args(["--config", "configs/cpu-f32.toml", "-p", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the prompt on stdin is empty"), "{stderr}");
    assert!(out.stdout.is_empty());
}
