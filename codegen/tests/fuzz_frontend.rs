//! Fuzzing the attribute front-end (the macros', the build helper's and the
//! command line's one parser): seeded mutations of valid attributes, and
//! random token soup. Every input gives a spec that passes `validate` or
//! an error at tokens of the attribute; nothing panics.

use std::str::FromStr;

use attnforge_codegen::frontend::parse;
use attnforge_codegen::spec::{DType, KvLayoutSpec, KvScale, Order};
use proc_macro2::TokenStream;

#[path = "../../tests/support/splitmix.rs"]
mod splitmix;
use splitmix::Rng;

const LAYOUTS: &[&str] = &[
    "page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16",
    "page_size = 1, kv_heads = 1, head_dim = 8, dtype = f32, order = HND",
    "page_size = 512, kv_heads = 1024, head_dim = 256, dtype = bf16, name = \"big\"",
    "page_size = 16, kv_heads = 2, head_dim = 64, dtype = fp8_e4m3, kv_scale = per_head",
];

const ATTENTIONS: &[&str] = &[
    "kv = Kv, q_heads = 32",
    "kv = Kv, q_heads = 4, causal, sliding_window = 4096, logits_soft_cap = 50.0",
    "kv = crate::m::Kv, q_heads = 1024, scale = 0.125, q_dtype = f32, alibi, sinks",
    "kv = Kv, q_heads = 7, alibi = given, name = \"x\", causal",
];

/// Literals a mutation splices in beside the grammar's own words (see
/// [`pieces`]): the numbers at and past every edge, and stray tokens.
const LITERALS: &[&str] = &[
    "given",
    "computed",
    "0",
    "1",
    "-1",
    "7",
    "8",
    "512",
    "513",
    "1024",
    "1025",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "1e-50",
    "1e-46",
    "1e-40",
    "3.5e38",
    "1e400",
    "-0.0",
    "0.0",
    "2.5",
    "\"\"",
    "\"a b\"",
    "true",
    "=",
    ",",
    "(",
    ")",
    "::",
    "-",
    "[1]",
    "{}",
    "'a'",
    "b'x'",
    "1u8",
    "0x10",
    "1_000",
    "Kv",
    "self",
];

/// Every key and value word the front-end knows, from its own lists, and
/// the literals.
fn pieces() -> Vec<&'static str> {
    let mut p: Vec<&'static str> = parse::KV_LAYOUT_KEYS.to_vec();
    p.extend(parse::ATTENTION_KEYS);
    p.extend(DType::ALL.map(DType::name));
    p.extend([Order::Nhd, Order::Hnd].map(Order::name));
    p.extend([KvScale::PerTensor, KvScale::PerHead].map(KvScale::name));
    p.extend(LITERALS);
    p
}

fn mutate(r: &mut Rng, pieces: &[&str], base: &str) -> String {
    // Entries `key = value` (or a bare flag), mutated a few at a time.
    let mut e: Vec<String> = base.split(", ").map(str::to_string).collect();
    for _ in 0..1 + r.below(3) {
        let i = r.below(e.len().max(1));
        match r.below(8) {
            // A value replaced: the edges of every rule come up often.
            0..=2 if !e.is_empty() => {
                let key = e[i].split(" = ").next().unwrap_or("").to_string();
                e[i] = format!("{key} = {}", r.pick(pieces));
            }
            3 if !e.is_empty() => {
                e.remove(i);
            }
            4 if !e.is_empty() => {
                let dup = e[i].clone();
                e.insert(i, dup);
            }
            5 => e.insert(i, format!("{} = {}", r.pick(pieces), r.pick(pieces))),
            6 => e.insert(i, r.pick(pieces).to_string()),
            _ if e.len() > 1 => {
                let j = r.below(e.len());
                e.swap(i, j);
            }
            _ => e.push(soup(r, pieces)),
        }
    }
    let mut text = e.join(", ");
    // Now and then, damage at the character level too.
    if r.below(6) == 0 && !text.is_empty() {
        let at = r.below(text.len());
        if text.is_char_boundary(at) {
            text.insert_str(at, r.pick(pieces));
        }
    }
    text
}

fn soup(r: &mut Rng, pieces: &[&str]) -> String {
    (0..r.below(12))
        .map(|_| r.pick(pieces))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every error points at tokens of the attribute (its text is the whole
/// parsed source), or at the attribute itself (the call site, for a missing
/// key).
fn assert_points_into(text: &str, e: &syn::Error) {
    for one in e.clone() {
        let range = one.span().byte_range();
        assert!(
            range == (0..0) || range.end <= text.len() && range.start <= range.end,
            "error {one} at bytes {range:?} of `{text}`"
        );
    }
}

fn run(text: &str, item: &syn::ItemStruct, attention: bool) -> bool {
    let Ok(tokens) = TokenStream::from_str(text) else {
        return false; // not Rust tokens: rustc's error, not ours
    };
    if attention {
        match parse::attention(tokens, item) {
            // Over a layout every attention fits (one KV head, f16), an
            // accepted attention is a valid spec.
            Ok(p) => {
                let kv = KvLayoutSpec {
                    page_size: 16,
                    kv_heads: 1,
                    head_dim: 64,
                    dtype: DType::F16,
                    order: Order::Nhd,
                    scale: KvScale::Unscaled,
                };
                let spec = p
                    .resolve(kv)
                    .unwrap_or_else(|e| panic!("`{text}` parsed but does not resolve: {e}"));
                spec.validate().unwrap();
            }
            Err(e) => assert_points_into(text, &e),
        }
    } else {
        match parse::kv_layout(tokens, item) {
            Ok(p) => p
                .spec
                .validate()
                .unwrap_or_else(|e| panic!("`{text}` parsed into an invalid layout: {e}")),
            Err(e) => assert_points_into(text, &e),
        }
    }
    true
}

fn fuzz(bases: &[&str], attention: bool, seed: u64) {
    let item: syn::ItemStruct = syn::parse_str("pub struct A;").unwrap();
    let pieces = pieces();
    let mut r = Rng(seed);
    let mut parsed = 0;
    for case in 0..14_000 {
        let text = match case % 8 {
            0 => soup(&mut r, &pieces),
            _ => {
                let base = bases[r.below(bases.len())];
                mutate(&mut r, &pieces, base)
            }
        };
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(&text, &item, attention)
        }));
        match ok {
            Ok(true) => parsed += 1,
            Ok(false) => {}
            Err(_) => panic!("case {case} panicked on `{text}`"),
        }
    }
    // At least 10,000 inputs reached the parser.
    assert!(parsed >= 10_000, "only {parsed} inputs were tokens");
}

#[test]
fn kv_layout_attributes_parse_to_valid_specs_or_errors_at_their_tokens() {
    fuzz(LAYOUTS, false, 0x1a70_u64);
}

#[test]
fn attention_attributes_parse_to_valid_specs_or_errors_at_their_tokens() {
    fuzz(ATTENTIONS, true, 0xa77e_u64);
}

/// A float rule judges the value the spec stores: a literal that is
/// positive but rounds to 0 in f32 is refused by the parser itself, at the
/// literal (not accepted and then refused by `validate`, far from it).
#[test]
fn a_float_that_rounds_to_zero_is_refused_at_the_literal() {
    let item: syn::ItemStruct = syn::parse_str("pub struct A;").unwrap();
    for (text, at) in [
        ("kv = Kv, q_heads = 4, scale = 1e-50", 30..35),
        ("kv = Kv, q_heads = 4, logits_soft_cap = 1e-46", 40..45),
    ] {
        let e = parse::attention(TokenStream::from_str(text).unwrap(), &item).unwrap_err();
        assert_eq!(e.span().byte_range(), at, "{text}: {e}");
        assert!(e.to_string().contains("must be a positive"), "{e}");
    }
    // A tiny positive value that f32 keeps (a subnormal) is a valid scale.
    let ok = "kv = Kv, q_heads = 4, scale = 1e-40";
    assert!(parse::attention(TokenStream::from_str(ok).unwrap(), &item).is_ok());
}
