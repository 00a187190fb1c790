//! # attnforge-macros
//!
//! The `#[kv_layout(..)]` and `#[attention(..)]` attributes. This crate is
//! thin on purpose: parsing, validation and expansion live in
//! `attnforge_codegen::frontend`, which the build helper uses too, so the
//! attributes and the build agree on every rule and every message.
//!
//! ```ignore
//! use attnforge::prelude::*;
//!
//! #[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16, order = NHD)]
//! pub struct Llama3Kv;
//!
//! #[attention(kv = Llama3Kv, q_heads = 32, causal)]
//! pub struct Llama3;
//!
//! assert_eq!(<Llama3 as Attention>::SPEC.group_size(), 4);
//! ```
//! (Tested in the facade crate, which the macros expand into.)

use attnforge_codegen::frontend::{expand, parse, registry_file};
use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;

/// Declares a KV-cache page layout on a unit struct.
///
/// Keys: `page_size` (1..=512), `kv_heads`, `head_dim` (a multiple of 8, at
/// most 256), `dtype` (`f32`, `f16`, `bf16`), `order` (`NHD`, the default, or
/// `HND`), `name` (optional, defaults to the struct's name in snake case).
#[proc_macro_attribute]
pub fn kv_layout(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(item as syn::ItemStruct);
    match parse::kv_layout(attr.into(), &item) {
        Ok(p) => {
            let registry = registry(&p.ident);
            expand::kv_layout(&p, &item, &krate(), registry.as_deref()).into()
        }
        Err(e) => with_errors(&item, e),
    }
}

/// Declares an attention over a `#[kv_layout]` on a unit struct.
///
/// Keys: `kv` (the layout struct), `q_heads` (a multiple of the layout's
/// `kv_heads`), `scale` (default 1/sqrt(head_dim)), `causal`,
/// `sliding_window = N`, `logits_soft_cap = X`, `name`.
#[proc_macro_attribute]
pub fn attention(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(item as syn::ItemStruct);
    match parse::attention(attr.into(), &item) {
        Ok(p) => {
            let registry = registry(&p.ident);
            expand::attention(&p, &item, &krate(), registry.as_deref()).into()
        }
        Err(e) => with_errors(&item, e),
    }
}

/// The item unchanged plus every error, so that one bad attribute does not
/// also make every use of the struct an error.
fn with_errors(item: &syn::ItemStruct, e: syn::Error) -> TokenStream {
    let errors = e.to_compile_error();
    quote!(#item #errors).into()
}

/// The build helper's registry file for this item, if the crate being
/// compiled ran the build helper (it then has an `OUT_DIR` holding one).
fn registry(ident: &syn::Ident) -> Option<std::path::PathBuf> {
    let out_dir = std::env::var_os("OUT_DIR")?;
    let path = registry_file(std::path::Path::new(&out_dir), &ident.to_string());
    path.is_file().then_some(path)
}

/// How the expansion names attnforge-codegen: through the facade when the
/// crate depends on `attnforge` (which declares `extern crate self as
/// attnforge`, so the same path works inside it), else directly.
fn krate() -> TokenStream2 {
    use proc_macro_crate::{crate_name, FoundCrate};
    let ident = |n: &str| syn::Ident::new(n, proc_macro2::Span::call_site());
    match crate_name("attnforge") {
        Ok(FoundCrate::Itself) => return quote!(::attnforge::codegen),
        Ok(FoundCrate::Name(n)) => {
            let n = ident(&n);
            return quote!(::#n::codegen);
        }
        Err(_) => {}
    }
    match crate_name("attnforge-codegen") {
        Ok(FoundCrate::Itself) => quote!(crate),
        Ok(FoundCrate::Name(n)) => {
            let n = ident(&n);
            quote!(::#n)
        }
        Err(_) => quote!(::attnforge::codegen),
    }
}
