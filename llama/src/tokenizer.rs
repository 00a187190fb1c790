//! A byte-level BPE tokenizer built from a GGUF file's own metadata
//! (`tokenizer.ggml.*`), as llama.cpp builds it for `gpt2`-model
//! vocabularies, on Hugging Face's `tokenizers`: a BPE model of the file's
//! vocabulary and merges, the vocabulary's split regexes and GPT-2's byte
//! alphabet as the pre-tokenizer, and the control and user-defined tokens as
//! added tokens.
//!
//! Encoding: the text is first split at special tokens (control tokens when
//! `parse_special` is on, user-defined tokens always); each remaining
//! fragment is pre-tokenized with the vocabulary's regexes, mapped to GPT-2's
//! byte alphabet, and merged pair by pair in merge-rank order (the leftmost
//! pair on ties). That is llama.cpp's tokenization, id for id:
//! `tests/tokenizer_ids.rs` checks it against the ids this crate's earlier,
//! hand-written tokenizer gave 474 texts, and `tests/smollm2.rs` against
//! llama.cpp's on its reference prompts.
//!
//! Where `tokenizers` and llama.cpp could part, the vocabulary is either
//! brought into the form where they cannot or refused:
//! - llama.cpp splits at the longest special token first, `tokenizers` at
//!   the leftmost (the longest there). They agree unless one special token
//!   can end inside another, so such vocabularies are refused.
//! - A merge whose parts or result are not tokens never applies in
//!   llama.cpp; `tokenizers` refuses the whole model, so those are dropped.
//!   Of a merge listed twice, the first rank counts (in `tokenizers` the
//!   last would), so repeats are dropped.
//! - A token text listed twice is the first one's id.
//!
//! Decoding is this module's: `tokenizers` decodes the text of user-defined
//! tokens through the byte alphabet where llama.cpp copies it, and gives
//! only strings, where streaming needs the bytes of each token.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::LlamaError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// GPT-2's pre-tokenizer regex (with the `\s+` fallback of the original).
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// A token id.
pub type TokenId = u32;

/// A byte-level BPE tokenizer.
#[derive(Debug)]
pub struct Tokenizer {
    /// Splits out user-defined tokens only.
    plain: tokenizers::Tokenizer,
    /// `plain` that splits out control tokens too (`parse_special`), made
    /// at its first use: a copy compiles the split regexes again, which
    /// loading a model need not pay for.
    special: OnceLock<tokenizers::Tokenizer>,
    tokens: Vec<String>,
    types: Vec<i32>,
    char_to_byte: HashMap<char, u8>,
    /// End-of-sequence token.
    pub eos: Option<TokenId>,
    /// Beginning-of-sequence token, and whether to add it.
    pub bos: Option<TokenId>,
    /// Whether the vocabulary asks for a BOS token at the start.
    pub add_bos: bool,
}

/// GPT-2's reversible byte-to-character map: printable bytes map to
/// themselves, the others to code points from 256 up.
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).expect("below 256")
        } else {
            let c = char::from_u32(next).expect("below 512");
            next += 1;
            c
        };
    }
    map
}

/// Two special tokens where one can begin inside the other and end after
/// it (a proper suffix of the first is a proper prefix of the second), if
/// any: the only case where splitting at the longest token first and at
/// the leftmost one give different fragments. (A token overlapping itself
/// is split at its leftmost occurrence by both.)
fn overlapping<'a>(specials: &[&'a str]) -> Option<(&'a str, &'a str)> {
    let cuts = |t: &'a str| t.char_indices().skip(1).map(move |(i, _)| t.split_at(i));
    let mut starts: HashMap<&str, Vec<&str>> = HashMap::new();
    for &t in specials {
        for (head, _) in cuts(t) {
            starts.entry(head).or_default().push(t);
        }
    }
    specials.iter().find_map(|&t| {
        cuts(t).find_map(|(_, tail)| {
            let others = starts.get(tail)?;
            others.iter().find(|&&o| o != t).map(|&o| (t, o))
        })
    })
}

/// The texts of the tokens of a type (the empty one left out).
fn texts_of<'a>(tokens: &'a [String], types: &[i32], ty: i32) -> Vec<&'a str> {
    tokens
        .iter()
        .zip(types)
        .filter(|&(t, &y)| y == ty && !t.is_empty())
        .map(|(t, _)| t.as_str())
        .collect()
}

/// Special tokens as `tokenizers`' added tokens, matched in the text as
/// written (there is no normalizer).
fn added(texts: &[&str], special: bool) -> Vec<AddedToken> {
    texts
        .iter()
        .map(|&t| AddedToken::from(t, special).normalized(false))
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer from a vocabulary, its merges ("a b" strings),
    /// token types and the pre-tokenizer's name.
    pub fn new(
        tokens: Vec<String>,
        types: Vec<i32>,
        merges: &[String],
        pre: &str,
    ) -> Result<Tokenizer, LlamaError> {
        let err = |e: String| LlamaError::Tokenizer(e);
        if types.len() != tokens.len() {
            return Err(err(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let mut vocab = Vocab::default();
        vocab.reserve(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as TokenId);
        }
        let mut seen = HashSet::with_capacity(merges.len());
        let mut kept = Vec::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| err(format!("merge {rank} ({m:?}) is not two tokens")))?;
            // A merge whose parts or result are not tokens can never apply.
            if let (Some(&x), Some(&y), true) = (
                vocab.get(a),
                vocab.get(b),
                vocab.contains_key(&format!("{a}{b}")),
            ) {
                if seen.insert((x, y)) {
                    kept.push((a.to_owned(), b.to_owned()));
                }
            }
        }
        // llama.cpp's pre-tokenizers for the vocabularies this runner knows.
        let patterns: Vec<&str> = match pre {
            // Digits one by one, then GPT-2's split.
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => {
                vec![r"\p{N}", GPT2_SPLIT]
            }
            "gpt-2" | "gpt2" | "mpt" | "olmo" => vec![GPT2_SPLIT],
            // llama.cpp's "default" splits punctuation and digit groups
            // differently; rather than tokenize almost like it, refuse.
            other => {
                return Err(err(format!(
                    "pre-tokenizer {other:?} is not supported (known: smollm, starcoder, refact, \
                     command-r, codeshell, gpt-2, mpt, olmo)"
                )))
            }
        };
        let control = texts_of(&tokens, &types, TYPE_CONTROL);
        let user = texts_of(&tokens, &types, TYPE_USER_DEFINED);
        if let Some((a, b)) = overlapping(&[control.as_slice(), user.as_slice()].concat()) {
            return Err(err(format!(
                "special tokens {a:?} and {b:?} overlap (one can end inside the other), where \
                 llama.cpp's split at the longest token and tokenizers' at the leftmost differ"
            )));
        }

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, kept)
            .build()
            .map_err(|e| err(e.to_string()))?;
        let mut steps = Vec::with_capacity(patterns.len() + 1);
        for p in patterns {
            let split = Split::new(
                SplitPattern::Regex(p.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(e.to_string()))?;
            steps.push(PreTokenizerWrapper::Split(split));
        }
        // The byte alphabet only: the splitting is the regexes' above.
        steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, false, false,
        )));
        let mut plain = tokenizers::Tokenizer::new(bpe);
        plain.with_pre_tokenizer(Some(Sequence::new(steps)));
        plain.add_tokens(&added(&user, false));

        let char_to_byte = byte_alphabet()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Tokenizer {
            plain,
            special: OnceLock::new(),
            tokens,
            types,
            char_to_byte,
            eos: None,
            bos: None,
            add_bos: false,
        })
    }

    /// The texts of the tokens of a type (the empty one left out).
    fn texts_of(&self, ty: i32) -> Vec<&str> {
        texts_of(&self.tokens, &self.types, ty)
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token's exact text, if it is in the vocabulary.
    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        // Special tokens are vocabulary tokens, so `plain` knows them all.
        self.plain.token_to_id(text)
    }

    /// Encodes `text`; with `parse_special`, control tokens written in the
    /// text (`<|im_start|>`) become their ids. Adds BOS if the vocabulary
    /// asks for it.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<TokenId> {
        let tok = if parse_special {
            self.special.get_or_init(|| {
                let mut t = self.plain.clone();
                t.add_special_tokens(&added(&self.texts_of(TYPE_CONTROL), true));
                t
            })
        } else {
            &self.plain
        };
        let enc = tok
            .encode_fast(text, false)
            // Nothing in this pipeline can fail: the regexes stop at an
            // error rather than return it, and a byte-level BPE without an
            // unknown token drops what it cannot map.
            .expect("byte-level BPE encoding does not fail");
        let mut out = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            out.extend(self.bos);
        }
        out.extend_from_slice(enc.get_ids());
        out
    }

    /// The bytes a token stands for: nothing for control tokens, the text
    /// of user-defined tokens, the decoded byte alphabet for the others.
    pub fn token_bytes(&self, id: TokenId) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match self.types[id as usize] {
            TYPE_CONTROL => Vec::new(),
            TYPE_USER_DEFINED => text.as_bytes().to_vec(),
            // Normal tokens (TYPE_NORMAL) and any other type: the byte alphabet.
            _ => text
                .chars()
                .flat_map(|c| {
                    self.char_to_byte
                        .get(&c)
                        .copied()
                        .map_or_else(|| c.to_string().into_bytes(), |b| vec![b])
                })
                .collect(),
        }
    }

    /// Decodes tokens to text (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[TokenId]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of tokens into text as it is generated, holding back
/// bytes until they form whole UTF-8 characters.
#[derive(Default, Debug)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// Adds a token; returns the text that became complete. Invalid bytes
    /// become U+FFFD, as in [`Tokenizer::decode`]; an incomplete character
    /// at the end waits for the next token.
    pub fn push(&mut self, tok: &Tokenizer, id: TokenId) -> String {
        self.pending.extend(tok.token_bytes(id));
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    text.push_str(s);
                    self.pending.clear();
                    return text;
                }
                Err(e) => {
                    let n = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.pending[..n]).expect("valid prefix"));
                    match e.error_len() {
                        // Incomplete at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..n);
                            return text;
                        }
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..n + bad);
                        }
                    }
                }
            }
        }
    }

    /// The bytes still held back (an incomplete character), as text.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 256 byte tokens, plus merges "a b" -> "ab" and "ab c" -> "abc".
    fn tiny() -> Tokenizer {
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        tokens.extend(["ab".to_owned(), "abc".to_owned(), "<|end|>".to_owned()]);
        let mut types = vec![1; tokens.len()];
        *types.last_mut().unwrap() = TYPE_CONTROL;
        let merges = ["a b".to_owned(), "ab c".to_owned()];
        Tokenizer::new(tokens, types, &merges, "gpt-2").unwrap()
    }

    #[test]
    fn merges_apply_by_rank_and_leftmost_first() {
        let t = tiny();
        let (ab, abc) = (256, 257);
        assert_eq!(t.encode("abc", false), vec![abc]);
        assert_eq!(t.encode("abab", false), vec![ab, ab]);
        // "aab": the pair (a, b) at position 1 merges; the first a stays.
        assert_eq!(t.encode("aab", false), vec![b'a' as u32, ab]);
        assert_eq!(t.encode("x<|end|>", true), vec![b'x' as u32, 258]);
        assert_eq!(t.decode(&t.encode("x<|end|>abc", true)), "xabc");
    }

    #[test]
    fn a_long_piece_is_encoded_in_near_linear_time() {
        // 200,000 letters are one pre-tokenized piece. A pair-rescanning BPE
        // needs about 10^10 steps for this; the heap needs a few million.
        let t = tiny();
        let text = "abc".repeat(66_667);
        let ids = t.encode(&text, false);
        assert_eq!(ids.len(), 66_667);
        assert_eq!(t.decode(&ids), text);
    }

    #[test]
    fn the_stream_matches_decode_on_split_and_invalid_bytes() {
        let t = tiny();
        // "€" is E2 82 AC; feed AC E2 | 82 AC: an invalid byte, then a
        // character split across tokens.
        let ids: Vec<TokenId> = [0xAC, 0xE2, 0x82, 0xAC].iter().map(|&b| b as u32).collect();
        let mut s = TextStream::default();
        let mut text = String::new();
        for &id in &ids {
            text += &s.push(&t, id);
        }
        text += &s.finish();
        assert_eq!(text, t.decode(&ids));
        assert_eq!(text, "\u{FFFD}€");
        // An incomplete character at the end comes out of finish().
        let mut s = TextStream::default();
        assert_eq!(s.push(&t, 0xE2), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn user_defined_tokens_are_split_out_always_and_control_tokens_on_request() {
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        tokens.extend(["<u>".to_owned(), "<c>".to_owned()]);
        let mut types = vec![1; tokens.len()];
        types[256] = TYPE_USER_DEFINED;
        types[257] = TYPE_CONTROL;
        let t = Tokenizer::new(tokens, types, &[], "gpt-2").unwrap();
        let (u, c) = (256, 257);
        let bytes = |s: &str| s.bytes().map(u32::from).collect::<Vec<_>>();
        assert_eq!(t.encode("x<u>", false), [bytes("x"), vec![u]].concat());
        assert_eq!(t.encode("x<c>", false), bytes("x<c>"));
        assert_eq!(t.encode("<c><u>", true), vec![c, u]);
        // User-defined tokens decode to their text, control tokens to nothing.
        assert_eq!(t.decode(&[c, u]), "<u>");
    }

    #[test]
    fn merges_that_cannot_apply_are_dropped_and_a_repeat_keeps_its_first_rank() {
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        tokens.extend(["ab".to_owned(), "bc".to_owned()]);
        let types = vec![1; tokens.len()];
        // "x q" makes a token the vocabulary lacks; "a b" comes twice.
        let merges = ["x q", "a b", "b c", "a b"].map(String::from);
        let t = Tokenizer::new(tokens, types, &merges, "gpt-2").unwrap();
        // At its first rank "a b" beats "b c"; at its last it would lose.
        assert_eq!(t.encode("abc", false), vec![256, b'c' as u32]);
        assert_eq!(t.encode("xq", false), vec![b'x' as u32, b'q' as u32]);
    }

    #[test]
    fn overlapping_special_tokens_are_refused() {
        // "<a|" ends inside "a|b>": llama.cpp would split "<a|b>" at the
        // longer, tokenizers at the leftmost.
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        tokens.extend(["<a|".to_owned(), "a|b>".to_owned()]);
        let mut types = vec![1; tokens.len()];
        types[256] = TYPE_CONTROL;
        types[257] = TYPE_USER_DEFINED;
        let e = Tokenizer::new(tokens, types, &[], "gpt-2").unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        // Nested tokens are fine: both splits take the outer one.
        assert_eq!(overlapping(&["<|im|>", "im", "<|", "aa"]), None);
        assert_eq!(overlapping(&["ab", "ba"]), Some(("ab", "ba")));
        assert_eq!(overlapping(&["<|", "|>"]), Some(("<|", "|>")));
    }

    #[test]
    fn an_unknown_pre_tokenizer_is_refused() {
        let e = Tokenizer::new(vec!["a".into()], vec![1], &[], "default").unwrap_err();
        assert!(
            e.to_string().contains("\"default\" is not supported"),
            "{e}"
        );
    }
}
