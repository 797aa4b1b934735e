//! Knobs that cannot work are rejected when the command line is read, before any work.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `ember ARGS` in the workspace; kills it (and fails) after `limit`.
fn ember(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("`ember {}` still runs after {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The command fails as a usage error whose message holds every one of `needles`.
fn rejected(args: &[&str], needles: &[&str]) {
    let out = ember(args, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert!(out.stdout.is_empty(), "{args:?}");
}

#[test]
fn a_zero_embedding_batch_is_rejected() {
    rejected(
        &[
            "embed",
            "--config",
            "configs/minilm-cpu-f32.toml",
            "-b",
            "0",
            "a cat",
        ],
        &["--batch-size", "must be at least 1"],
    );
}

#[test]
fn a_zero_decode_window_is_rejected() {
    rejected(
        &["--config", "configs/cpu-f32.toml", "--decode-window", "0"],
        &["--decode-window", "must be at least 1"],
    );
}

#[test]
fn an_unknown_bench_output_format_is_rejected_before_any_run() {
    let out_dir = std::env::temp_dir().join(format!("ember-bench-xml-{}", std::process::id()));
    rejected(
        &[
            "bench",
            "configs/cpu-f32.toml",
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "1",
            "-o",
            "md,xml",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ],
        &["'xml'", "md, json, csv, svg"],
    );
    assert!(!out_dir.exists(), "nothing may be written");
}
