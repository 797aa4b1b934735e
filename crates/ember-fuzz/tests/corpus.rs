//! Replays every committed fuzz input (the seed corpora under `fuzz/corpus/` and the inputs
//! that once crashed a target under `fuzz/regressions/`) through the fuzz targets' code: none
//! may panic, and the seeds must get as deep as a valid file goes, so that the fuzzer starts
//! from inputs that exercise the whole load.

use std::path::PathBuf;

use ember_fuzz::Reached;

type Target = fn(&[u8]) -> Reached;

const TARGETS: [(&str, Target, Reached); 5] = [
    ("gguf", ember_fuzz::gguf, Reached::Generated),
    ("hf_dir", ember_fuzz::hf_dir, Reached::Generated),
    ("chat", ember_fuzz::chat, Reached::Parsed),
    ("config", ember_fuzz::config, Reached::Parsed),
    ("ct2", ember_fuzz::ct2, Reached::Parsed),
];

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

#[test]
fn seeds_reach_the_deepest_stage() {
    for (target, run, deepest) in TARGETS {
        let seeds: Vec<PathBuf> = inputs("corpus", target)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-")
            })
            .collect();
        assert!(!seeds.is_empty(), "no seed-* inputs for {target}");
        for seed in seeds {
            let reached = run(&std::fs::read(&seed).unwrap());
            assert_eq!(reached, deepest, "{}", seed.display());
        }
    }
}

#[test]
fn every_committed_input_runs_without_panicking() {
    for (target, run, _) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for input in inputs(kind, target) {
                let data = std::fs::read(&input).unwrap();
                // A panic fails the test and names the input.
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{target} panicked on {}", input.display());
            }
        }
    }
}

#[test]
fn packing_round_trips() {
    let parts: [&[u8]; 3] = [b"{}", b"", b"abc"];
    let packed = ember_fuzz::pack(&parts);
    assert_eq!(
        ember_fuzz::split(&packed, ember_fuzz::FILE_SEPARATOR),
        parts
    );
}
