//! The answer goes to stdout; a reader that goes away, or Ctrl-C, ends the run as shells
//! expect: quietly (no panic) when the pipe closes, with status 130 on SIGINT.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ember() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    // configs/cpu-f32.toml fetches into `models/` of the working directory: the workspace's.
    cmd.current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args(["--config", "configs/cpu-f32.toml", "--raw", "--prompt"])
        .arg("Once upon a time, in a land far away,")
        .args(["--max-new-tokens", "200", "--temperature", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Reads stdout until `n` bytes came, then returns the child (stdout still open).
fn read_some(child: &mut std::process::Child, n: usize) -> Vec<u8> {
    let out = child.stdout.as_mut().unwrap();
    let mut got = vec![0u8; n];
    out.read_exact(&mut got).unwrap();
    got
}

#[test]
fn a_closed_pipe_ends_the_run_quietly() {
    let mut child = ember().spawn().unwrap();
    let start = Instant::now();
    read_some(&mut child, 10);
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Generation stopped at the first failed write: no summary of a finished run.
    assert!(!stderr.contains("stop: Length"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(120));
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_generation_with_status_130() {
    let mut child = ember().spawn().unwrap();
    read_some(&mut child, 10);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stop: Cancelled"), "{stderr}");
}

#[test]
fn embed_into_a_closed_pipe_ends_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args([
            "embed",
            "--config",
            "configs/minilm-cpu-f32.toml",
            "a cat",
            "a dog",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// Logs on a piped stderr carry no ANSI colour codes (issue 20, item 2: colours only when
/// stderr is a terminal).
#[test]
fn logs_into_a_pipe_have_no_colour_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args(["--config", "configs/cpu-f32.toml", "--max-new-tokens", "2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("INFO"), "the load is logged: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escapes in a piped stderr: {stderr:?}"
    );
}
