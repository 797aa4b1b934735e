//! The hostile GGUF corpus (tests/reference/make_hostile_gguf.py): every file is rejected with
//! the error of its own defect, and none panics.

use std::path::PathBuf;

use ember::format::gguf::{GgufError, GgufFile};

fn open(name: &str) -> GgufError {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/gguf_corpus")
        .join(format!("{name}.gguf"));
    assert!(path.is_file(), "{} is missing", path.display());
    GgufFile::open(&path).expect_err(name)
}

macro_rules! rejects {
    ($($name:ident => $pattern:pat),* $(,)?) => {
        const NAMES: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                let err = open(stringify!($name));
                assert!(matches!(err, $pattern), "{}: got {err:?}", stringify!($name));
                assert!(!err.to_string().is_empty());
            }
        )*
    };
}

rejects! {
    bad_magic => GgufError::BadMagic { found: [b'G', b'G', b'M', b'L'] },
    unsupported_version => GgufError::UnsupportedVersion(99),
    truncated_header => GgufError::Truncated { .. },
    truncated_tensor_info => GgufError::Truncated { .. },
    too_many_tensors => GgufError::TooManyTensors { .. },
    too_many_keys => GgufError::TooManyKeys { .. },
    tensor_count_exceeds_file => GgufError::Truncated { .. },
    string_longer_than_file => GgufError::Truncated { .. },
    array_longer_than_file => GgufError::Truncated { .. },
    unknown_value_type => GgufError::UnknownValueType { ty: 99, .. },
    unknown_array_element_type => GgufError::UnknownValueType { ty: 77, .. },
    nested_arrays_too_deep => GgufError::ArrayTooDeep { .. },
    key_not_utf8 => GgufError::BadUtf8 { .. },
    duplicate_key => GgufError::DuplicateKey(_),
    alignment_zero => GgufError::BadAlignment(0),
    alignment_not_power_of_two => GgufError::BadAlignment(48),
    alignment_wrong_type => GgufError::WrongValueType { .. },
    unknown_tensor_type => GgufError::UnknownTensorType { ty: 99, .. },
    too_many_dims => GgufError::TooManyDims { n_dims: 5, .. },
    zero_dim => GgufError::ZeroDim { .. },
    size_overflow => GgufError::SizeOverflow { .. },
    block_size_mismatch => GgufError::BlockMismatch { ne0: 33, block: 32, .. },
    misaligned_offset => GgufError::Misaligned { offset: 3, .. },
    tensor_past_end => GgufError::OutOfBounds { .. },
    offset_past_end => GgufError::OutOfBounds { .. },
    overlapping_tensors => GgufError::Overlap { .. },
    duplicate_tensor => GgufError::DuplicateTensor(_),
}

/// Every file in the corpus has a test above, so a new file cannot go unchecked.
#[test]
fn every_corpus_file_is_covered() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/gguf_corpus");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let mut names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(files, names);
}

/// Every prefix of a valid file is rejected cleanly (no panic, no huge allocation), unless it
/// only lacks trailing padding, in which case every tensor still reads the same.
#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let valid = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-tests/fixtures/dequant/quants.gguf");
    let bytes = std::fs::read(&valid).unwrap();
    let full = GgufFile::open(&valid).unwrap();
    let values = |f: &GgufFile| -> Vec<Vec<f32>> {
        f.tensors()
            .iter()
            .map(|t| f.dequantize(t).unwrap())
            .collect()
    };
    let want = values(&full);
    let dir = std::env::temp_dir().join(format!("ember-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.gguf");
    let mut rejected = 0;
    for len in 0..bytes.len() {
        std::fs::write(&path, &bytes[..len]).unwrap();
        match GgufFile::open(&path) {
            Err(_) => rejected += 1,
            Ok(f) => assert_eq!(values(&f), want, "a {len}-byte prefix reads differently"),
        }
    }
    assert!(
        rejected > bytes.len() * 9 / 10,
        "only {rejected} of {} prefixes rejected",
        bytes.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
