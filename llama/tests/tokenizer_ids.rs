//! SmolLM2's tokenizer on many texts, against ids recorded from the
//! tokenizer as it was (`data/tokenizer-ids.json`): the llama.cpp reference
//! prompts and the texts llama.cpp generated for them, strings chosen to
//! reach the pre-tokenizer's and the special-token split's corners
//! (unicode, emoji, CJK, digits, runs of spaces and newlines, contractions,
//! the chat template's tokens), excerpts of this repository's docs and code,
//! and seeded random mixes of all of those, each with and without
//! `parse_special`.
//!
//! The prompts' ids are also llama.cpp's own (`smollm2.rs` checks them
//! against the reference files).

#[path = "../../tests/support/splitmix.rs"]
mod splitmix;

use attnforge_llama::{default_model_path, Model};
use splitmix::Rng;

fn model() -> Model {
    Model::load(&default_model_path()).unwrap_or_else(|e| {
        panic!("{e}\n(the test command installs the model: scripts/fetch-model.sh)")
    })
}

/// Pieces the random texts are made of.
const FRAGMENTS: &[&str] = &[
    "a",
    "Z",
    "word",
    " the",
    "Hello",
    "naïve",
    "café",
    "ß",
    "İ",
    "ǅ",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n ",
    "\u{a0}",
    "\u{3000}",
    "\u{2028}",
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "'S",
    "'RE",
    "’s",
    "'",
    "\"",
    "0",
    "7",
    "42",
    "2024",
    "3.14",
    "1,000",
    "١٢٣",
    "½",
    "Ⅻ",
    "²",
    "東京",
    "中文字符",
    "日本語",
    "한국어",
    "ไทย",
    "Ελληνικά",
    "русский",
    "עברית",
    "عربى",
    "🚀",
    "😀",
    "👨\u{200d}👩\u{200d}👧",
    "❤\u{fe0f}",
    "🇫🇷",
    "e\u{301}",
    "\u{200b}",
    "—",
    "…",
    "...",
    "!",
    "?!",
    "(",
    ")",
    "{}",
    "[]",
    "<",
    ">",
    "|",
    "<|",
    "|>",
    "<|im",
    "_start|>",
    "::",
    "->",
    "=>",
    "//",
    "#",
    "@",
    "$",
    "%",
    "&&",
    "\\",
    "`",
    "~",
    "\u{0}",
    "\u{1}",
    "\u{7f}",
    "Ā",
    "Ġ",
    "Ċ",
    "ĉ",
    "\u{ad}",
    "\u{ff}",
    "\u{fffd}",
    "𝔘𝔫𝔦",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
];

/// Strings picked by hand.
const TRICKY: &[&str] = &[
    "",
    " ",
    "a",
    "Hello, world! 12345",
    "  leading spaces and\ttabs\n\nnewlines",
    "trailing spaces   ",
    "                                                  fifty spaces",
    "\n\n\n\n\n\n\n\n",
    " \n \n\t\t \r\n\r\n  x",
    "naïve café — 東京 🚀",
    "I'm sure it's what they're saying: we've, we'll, he'd.",
    "IT'S WE'RE 'S 'twas ''s '''",
    "don’t it’s",
    "2024-01-01 12:34:56.789 +0100",
    "1234567890 0.5 -3 1e10 0x1F ١٢٣٤ ½ Ⅻ ²³",
    "中文分词测试：今天天气很好。",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 텍스트입니다.",
    "emoji 😀😃😄 👨‍👩‍👧‍👦 🇫🇷🇩🇪 ❤️ 👍🏽",
    "combining: e\u{301} a\u{308} n\u{303}",
    "zero\u{200b}width\u{200d}joiner\u{feff}",
    "control \u{0}\u{1}\u{1f}\u{7f} bytes",
    "byte alphabet chars: Ā Ġ Ċ ĉ ł Ń",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|><|im_end|><|im_start|>",
    " <|im_start|> ",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|<|im_end|>>",
    "<<|im_start|>>",
    "<|im_start|im_end|>",
    "<repo_name>attnforge<file_sep>llama/src/tokenizer.rs<|endoftext|>",
    "<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<issue_start>title<issue_comment>body<issue_closed>",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "def f(x):\n\tif x:\n\t\treturn x ** 2\n    pass",
    "<html><body class=\"x\">&amp;&lt;</body></html>",
    "a|b||c|||d <|> <||>",
    "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2#top",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
];

/// A prefix of `s` of at most `n` bytes, cut at a character boundary.
fn prefix(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The texts to record, in the order the file lists them.
fn texts() -> Vec<String> {
    let mut out: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
    for json in [
        include_str!("data/smollm2-greedy.json"),
        include_str!("data/smollm2-extra.json"),
    ] {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        for c in v.get("cases").unwrap_or(&v).as_array().unwrap() {
            let prompt = c["prompt"].as_str().unwrap();
            let text = c["text"].as_str().unwrap();
            out.extend([
                prompt.to_owned(),
                text.to_owned(),
                format!("{prompt}{text}"),
            ]);
        }
    }
    for doc in [
        include_str!("../../README.md"),
        include_str!("../../ARCHITECTURE.md"),
        include_str!("../src/model.rs"),
    ] {
        out.push(prefix(doc, 4000).to_owned());
    }
    // Long runs: one piece of many letters, spaces, digits.
    out.push("abcdefghij".repeat(300));
    out.push(" ".repeat(500) + "x");
    out.push("9".repeat(300));
    out.push("\n".repeat(200));
    let mut rng = Rng(0x70c3_11e5);
    for _ in 0..400 {
        let n = 1 + rng.below(16);
        out.push((0..n).map(|_| rng.pick(FRAGMENTS)).collect());
    }
    out
}

#[test]
#[ignore = "writes data/tokenizer-ids.json from the tokenizer as it is"]
fn record() {
    let tok = model().tokenizer;
    let mut lines = Vec::new();
    for text in texts() {
        let special = tok.encode(&text, true);
        let plain = tok.encode(&text, false);
        lines.push(
            serde_json::json!({ "text": text, "special": special, "plain": plain }).to_string(),
        );
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tokenizer-ids.json");
    std::fs::write(path, format!("[\n{}\n]\n", lines.join(",\n"))).unwrap();
}

#[test]
fn every_recorded_text_gives_the_recorded_ids() {
    let tok = model().tokenizer;
    let v: serde_json::Value =
        serde_json::from_str(include_str!("data/tokenizer-ids.json")).unwrap();
    let cases = v.as_array().unwrap();
    assert!(cases.len() > 400, "{} cases", cases.len());
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
