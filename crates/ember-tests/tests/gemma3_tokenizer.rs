//! Gemma 3's SentencePiece tokenizer, built from the GGUF's metadata, gives llama.cpp's
//! `llama-tokenize` ids on the same file over a corpus with accents, CJK, emoji, code,
//! whitespace runs, special tokens and byte fallback (fixtures/gemma3/tokenizer.json, made by
//! tests/reference/make_gemma3_reference.py). `transformers`' GGUF conversion of this
//! tokenizer is wrong (it splits " capital" into ▁c/ap/it/al), so it is not the judge here.

use std::collections::BTreeMap;

use ember::format::gguf::GgufFile;
use ember::tokenizer::TextTokenizer;
use ember_tests::{fixtures, gemma3_config};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    ids: BTreeMap<String, Vec<u32>>,
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[test]
fn gemma3_tokenizer_matches_llama_cpp() {
    let path = fixtures().join("gemma3").join("tokenizer.json");
    let expected: Expected = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let checkpoint = ember::source::resolve(&gemma3_config().model).unwrap();
    let file = GgufFile::open(checkpoint.path()).unwrap();
    let tok = TextTokenizer::from_gguf(&file).unwrap();
    let mut failures = Vec::new();
    for case in &expected.cases {
        // `bos`: llama.cpp's default (BOS added, special tokens parsed), as Ember encodes a
        // raw prompt; `no_bos`: the text alone, as Ember encodes a rendered chat.
        for (mode, special) in [("bos", true), ("no_bos", false)] {
            let want = &case.ids[mode];
            // A text that already starts with `<bos>`: llama.cpp adds a second one (and
            // warns that the prompt now has two); Ember adds none, as `transformers` does.
            if mode == "bos" && case.text.starts_with("<bos>") {
                assert_eq!(tok.encode(&case.text, true).unwrap(), case.ids["no_bos"]);
                continue;
            }
            let got = tok.encode(&case.text, special).unwrap();
            if &got != want {
                failures.push(format!(
                    "{} ({mode}) {:?}:\n  llama.cpp {want:?}\n  ember     {got:?}",
                    case.name, case.text
                ));
            }
        }
        // Decoding the ids gives the text back, without the control tokens (`<bos>`,
        // `<start_of_turn>`, ...), which Ember's decode leaves out of generated text.
        let text = tok.decode(&case.ids["no_bos"]).unwrap();
        let mut plain = case.text.clone();
        for control in ["<bos>", "<start_of_turn>", "<end_of_turn>"] {
            plain = plain.replace(control, "");
        }
        if text != plain {
            failures.push(format!("{}: decoded {text:?} != {plain:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
