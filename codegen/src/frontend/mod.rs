//! The one spec front-end: attribute parsing, validation and expansion.
//!
//! `attnforge-macros` (at compile time) and [`crate::build`] (in a build
//! script) both call [`parse::kv_layout`] and [`parse::attention`], so both
//! accept the same attributes and reject bad ones with the same messages,
//! which come from [`crate::spec::rules`]. Errors are `syn::Error`s spanned on
//! the offending tokens, all errors of an item combined into one.
//!
//! ```
//! use attnforge_codegen::frontend::parse;
//! let item: syn::ItemStruct = syn::parse_quote!(pub struct Llama3Kv;);
//! let attr = quote::quote!(page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16);
//! let layout = parse::kv_layout(attr, &item).unwrap();
//! assert_eq!(layout.spec.head_dim, 128);
//! assert_eq!(layout.name, "llama3_kv");
//!
//! let bad = quote::quote!(page_size = 0, kv_heads = 8, head_dim = 100, dtype = f16, colour = 3);
//! let err = parse::kv_layout(bad, &item).unwrap_err();
//! assert_eq!(err.into_iter().count(), 3); // every problem, at once
//! ```

pub mod expand;
pub mod parse;
pub mod text;

pub use parse::{ParsedAttention, ParsedKvLayout};

/// Where the build helper writes the registry file of an item, relative to
/// `OUT_DIR`; the macro expansion includes it from there when it exists.
pub fn registry_file(out_dir: &std::path::Path, item: &str) -> std::path::PathBuf {
    out_dir
        .join("attnforge")
        .join("registry")
        .join(format!("{item}.rs"))
}

/// `Llama3Kv` → `llama3_kv`: the default name of a spec item.
pub fn snake_case(ident: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = ident.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_uppercase();
            if prev_lower || (prev_upper && next_lower) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out.replace("__", "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_names() {
        assert_eq!(snake_case("Llama3Kv"), "llama3_kv");
        assert_eq!(snake_case("Gemma2Local"), "gemma2_local");
        assert_eq!(snake_case("SmolLM2"), "smol_lm2");
        assert_eq!(snake_case("Qwen2_5"), "qwen2_5");
        assert_eq!(snake_case("MHA"), "mha");
    }
}
