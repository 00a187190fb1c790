//! A byte-level BPE tokenizer built from a GGUF file's own metadata
//! (`tokenizer.ggml.*`), as llama.cpp builds it for `gpt2`-model vocabularies.
//!
//! Encoding: the text is first split at special tokens (control tokens when
//! `parse_special` is on, user-defined tokens always), longest token first;
//! each remaining fragment is pre-tokenized with the vocabulary's regexes,
//! mapped to GPT-2's byte alphabet, and merged pair by pair in merge-rank
//! order.

use std::collections::HashMap;

use fancy_regex::Regex;

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
    tokens: Vec<String>,
    types: Vec<i32>,
    ids: HashMap<String, TokenId>,
    /// (left, right) token ids -> (rank, merged token id).
    merges: HashMap<(TokenId, TokenId), (usize, TokenId)>,
    /// Pre-tokenizer regexes, applied in order (each splits every piece the
    /// previous one left).
    splits: Vec<Regex>,
    /// Special tokens, longest first: (text, id, is_control).
    specials: Vec<(String, TokenId, bool)>,
    /// The token of each byte (its character in GPT-2's byte alphabet).
    byte_ids: [Option<TokenId>; 256],
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

impl Tokenizer {
    /// Builds the tokenizer from a vocabulary, its merges ("a b" strings),
    /// token types and the pre-tokenizer's name.
    pub fn new(
        tokens: Vec<String>,
        types: Vec<i32>,
        merges: &[String],
        pre: &str,
    ) -> Result<Tokenizer, LlamaError> {
        if types.len() != tokens.len() {
            return Err(LlamaError::Tokenizer(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as TokenId);
        }
        let mut merge_ids = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                LlamaError::Tokenizer(format!("merge {rank} ({m:?}) is not two tokens"))
            })?;
            // A merge whose parts or result are not tokens can never apply.
            if let (Some(&x), Some(&y), Some(&z)) =
                (ids.get(a), ids.get(b), ids.get(&format!("{a}{b}")))
            {
                merge_ids.entry((x, y)).or_insert((rank, z));
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
                return Err(LlamaError::Tokenizer(format!(
                    "pre-tokenizer {other:?} is not supported (known: smollm, starcoder, refact, \
                     command-r, codeshell, gpt-2, mpt, olmo)"
                )))
            }
        };
        let splits = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| LlamaError::Tokenizer(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut specials: Vec<(String, TokenId, bool)> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (t, &ty))| {
                !t.is_empty() && (ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED)
            })
            .map(|(i, (t, &ty))| (t.clone(), i as TokenId, ty == TYPE_CONTROL))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let byte_to_char = byte_alphabet();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let byte_ids = byte_to_char.map(|c| ids.get(c.encode_utf8(&mut [0; 4]) as &str).copied());
        Ok(Tokenizer {
            tokens,
            types,
            ids,
            merges: merge_ids,
            splits,
            specials,
            byte_ids,
            char_to_byte,
            eos: None,
            bos: None,
            add_bos: false,
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token's exact text, if it is in the vocabulary.
    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        self.ids.get(text).copied()
    }

    /// Encodes `text`; with `parse_special`, control tokens written in the
    /// text (`<|im_start|>`) become their ids. Adds BOS if the vocabulary
    /// asks for it.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<TokenId> {
        let mut out = Vec::new();
        if self.add_bos {
            out.extend(self.bos);
        }
        // Split at special tokens, longest first.
        enum Frag<'a> {
            Text(&'a str),
            Token(TokenId),
        }
        let mut frags = vec![Frag::Text(text)];
        for (special, id, control) in &self.specials {
            if *control && !parse_special {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Frag::Text(mut s) => {
                        while let Some(at) = s.find(special.as_str()) {
                            if at > 0 {
                                next.push(Frag::Text(&s[..at]));
                            }
                            next.push(Frag::Token(*id));
                            s = &s[at + special.len()..];
                        }
                        if !s.is_empty() {
                            next.push(Frag::Text(s));
                        }
                    }
                    t => next.push(t),
                }
            }
            frags = next;
        }
        for f in frags {
            match f {
                Frag::Token(id) => out.push(id),
                Frag::Text(s) => {
                    for piece in self.pre_tokenize(s) {
                        self.bpe(piece, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Splits text the way the vocabulary's pre-tokenizer does: each regex
    /// splits every piece into its matches and the gaps between them.
    fn pre_tokenize<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = vec![text];
        for re in &self.splits {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p).flatten() {
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }

    /// Byte-level BPE of one pre-tokenized piece: the lowest-ranked
    /// adjacent pair is merged first (the leftmost on ties), with a heap
    /// over a linked list of symbols, so long pieces stay O(n log n).
    fn bpe(&self, piece: &str, out: &mut Vec<TokenId>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        // Symbols as token ids; a byte missing from the vocabulary is skipped.
        let mut ids: Vec<TokenId> = piece
            .bytes()
            .filter_map(|b| self.byte_ids[b as usize])
            .collect();
        let n = ids.len();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, ids: &[TokenId], i: usize, j: usize| {
            if let Some(&(rank, merged)) = self.merge_of(ids[i], ids[j]) {
                heap.push(Reverse((rank, i, ids[i], ids[j], merged)));
            }
        };
        for i in 1..n {
            push(&mut heap, &ids, i - 1, i);
        }
        while let Some(Reverse((_, i, left, right, merged))) = heap.pop() {
            let j = next[i];
            // Stale entries: a side was merged away or changed since.
            if !alive[i] || j >= n || ids[i] != left || ids[j] != right {
                continue;
            }
            ids[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[j] < n {
                prev[next[j]] = i;
            }
            if prev[i] < n {
                push(&mut heap, &ids, prev[i], i);
            }
            if next[i] < n {
                push(&mut heap, &ids, i, next[i]);
            }
        }
        out.extend((0..n).filter(|&i| alive[i]).map(|i| ids[i]));
    }

    /// The rank of merging tokens `a` and `b`, and the token it makes.
    fn merge_of(&self, a: TokenId, b: TokenId) -> Option<&(usize, TokenId)> {
        self.merges.get(&(a, b))
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
    fn an_unknown_pre_tokenizer_is_refused() {
        let e = Tokenizer::new(vec!["a".into()], vec![1], &[], "default").unwrap_err();
        assert!(
            e.to_string().contains("\"default\" is not supported"),
            "{e}"
        );
    }
}
