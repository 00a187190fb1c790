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
    ranks: HashMap<(String, String), usize>,
    /// Pre-tokenizer regexes, applied in order (each splits every piece the
    /// previous one left).
    splits: Vec<Regex>,
    /// Special tokens, longest first: (text, id, is_control).
    specials: Vec<(String, TokenId, bool)>,
    byte_to_char: [char; 256],
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
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                LlamaError::Tokenizer(format!("merge {rank} ({m:?}) is not two tokens"))
            })?;
            ranks.entry((a.to_owned(), b.to_owned())).or_insert(rank);
        }
        // llama.cpp's pre-tokenizers for the vocabularies this runner knows.
        let patterns: Vec<&str> = match pre {
            // Digits one by one, then GPT-2's split.
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => {
                vec![r"\p{N}", GPT2_SPLIT]
            }
            "gpt2" | "default" | "" => vec![GPT2_SPLIT],
            other => {
                return Err(LlamaError::Tokenizer(format!(
                    "pre-tokenizer {other:?} is not supported (known: smollm, gpt2)"
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
        Ok(Tokenizer {
            tokens,
            types,
            ids,
            ranks,
            splits,
            specials,
            byte_to_char,
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

    /// Byte-level BPE of one pre-tokenized piece.
    fn bpe(&self, piece: &str, out: &mut Vec<TokenId>) {
        let mut syms: Vec<String> = piece
            .bytes()
            .map(|b| self.byte_to_char[b as usize].to_string())
            .collect();
        loop {
            let mut best: Option<(usize, usize)> = None; // (rank, index)
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&r) = self.ranks.get(&(syms[i].clone(), syms[i + 1].clone())) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        for s in syms {
            match self.ids.get(&s) {
                Some(&id) => out.push(id),
                // Not in the vocabulary: fall back to its characters.
                None => out.extend(
                    s.chars()
                        .filter_map(|c| self.ids.get(&c.to_string()).copied()),
                ),
            }
        }
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
    /// Adds a token; returns the text that became complete.
    pub fn push(&mut self, tok: &Tokenizer, id: TokenId) -> String {
        self.pending.extend(tok.token_bytes(id));
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let s = s.to_owned();
                self.pending.clear();
                s
            }
            Err(e) if e.error_len().is_none() => {
                // An incomplete character at the end: emit what is whole.
                let n = e.valid_up_to();
                let s = String::from_utf8_lossy(&self.pending[..n]).into_owned();
                self.pending.drain(..n);
                s
            }
            Err(_) => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                s
            }
        }
    }
}
