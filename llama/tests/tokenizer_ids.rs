//! SmolLM2's tokenizer on 474 texts, against the ids this crate's earlier,
//! hand-written tokenizer gave them (`data/tokenizer-ids.json`, written by
//! the `record` test of commit d43b06e, where the texts' list is): the
//! llama.cpp reference prompts and the texts llama.cpp generated for them,
//! strings chosen to reach the pre-tokenizer's and the special-token
//! split's corners (unicode, emoji, CJK, digits, runs of spaces and
//! newlines, contractions, the chat template's tokens), excerpts of this
//! repository's docs and code, and seeded random mixes of all of those,
//! each with and without `parse_special`. The tokenizer is now Hugging
//! Face's `tokenizers`; the file is not to be re-recorded from it.
//!
//! The prompts' ids are also llama.cpp's own (`smollm2.rs` checks them
//! against the reference files).

use attnforge_llama::{default_model_path, Model};

fn model() -> Model {
    Model::load(&default_model_path()).unwrap_or_else(|e| {
        panic!("{e}\n(the test command installs the model: scripts/fetch-model.sh)")
    })
}

#[test]
fn every_recorded_text_gives_the_recorded_ids() {
    let tok = model().tokenizer;
    let v: serde_json::Value =
        serde_json::from_str(include_str!("data/tokenizer-ids.json")).unwrap();
    let cases = v.as_array().unwrap();
    assert_eq!(cases.len(), 474);
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect()
    };
    let mut failures = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        for (parse_special, key) in [(true, "special"), (false, "plain")] {
            let want = ids(&c[key]);
            let got = tok.encode(text, parse_special);
            if got != want {
                failures.push(format!(
                    "{text:?} (parse_special {parse_special}):\n  got  {got:?}\n  want {want:?}"
                ));
            }
            // Without special tokens, every text decodes back to itself.
            if !parse_special {
                assert_eq!(tok.decode(&got), text);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} encodings differ:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
}
