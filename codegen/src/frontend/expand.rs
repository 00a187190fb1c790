//! What `#[kv_layout]` and `#[attention]` expand to.
//!
//! `krate` is the path through which the expansion reaches this crate
//! (`::attnforge::codegen` for users of the facade, `::attnforge_codegen`
//! for crates that depend on codegen directly). `registry` is the build
//! helper's file for the item, when one exists.

use std::path::Path;

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned, ToTokens};

use super::parse::{ParsedAttention, ParsedKvLayout};
use crate::spec::{Alibi, DType, KvLayoutSpec, KvScale, Order};

fn option<T>(v: Option<T>, f: impl FnOnce(T) -> TokenStream) -> TokenStream {
    match v {
        Some(x) => {
            let x = f(x);
            quote!(::core::option::Option::Some(#x))
        }
        None => quote!(::core::option::Option::None),
    }
}

/// A dtype as a constant expression.
fn dtype_tokens(d: DType, krate: &TokenStream) -> TokenStream {
    let v = match d {
        DType::F32 => quote!(F32),
        DType::F16 => quote!(F16),
        DType::BF16 => quote!(BF16),
        DType::F8E4M3 => quote!(F8E4M3),
    };
    quote!(#krate::DType::#v)
}

/// A layout as a constant expression.
pub fn layout_tokens(spec: &KvLayoutSpec, krate: &TokenStream) -> TokenStream {
    let page_size = Literal::u32_unsuffixed(spec.page_size);
    let kv_heads = Literal::u32_unsuffixed(spec.kv_heads);
    let head_dim = Literal::u32_unsuffixed(spec.head_dim);
    let dtype = dtype_tokens(spec.dtype, krate);
    let order = match spec.order {
        Order::Nhd => quote!(Nhd),
        Order::Hnd => quote!(Hnd),
    };
    let scale = match spec.scale {
        KvScale::Unscaled => quote!(Unscaled),
        KvScale::PerTensor => quote!(PerTensor),
        KvScale::PerHead => quote!(PerHead),
    };
    quote! {
        #krate::KvLayoutSpec {
            page_size: #page_size,
            kv_heads: #kv_heads,
            head_dim: #head_dim,
            dtype: #dtype,
            order: #krate::Order::#order,
            scale: #krate::KvScale::#scale,
        }
    }
}

/// The `CODE_OBJECTS` constant: the build helper's registry file, or why there is none.
pub fn code_object_tokens(krate: &TokenStream, registry: Option<&Path>) -> TokenStream {
    match registry.and_then(|p| p.to_str()) {
        Some(path) => quote!({
            #[allow(unused_imports)]
            use #krate as __attnforge;
            include!(#path)
        }),
        None => quote!(#krate::CodeObjects::not_built(#krate::registry::NO_BUILD_HELPER)),
    }
}

/// The expansion of `#[kv_layout(..)]`.
pub fn kv_layout(
    p: &ParsedKvLayout,
    item: &syn::ItemStruct,
    krate: &TokenStream,
    registry: Option<&Path>,
) -> TokenStream {
    let ident = &p.ident;
    let name = &p.name;
    let spec = layout_tokens(&p.spec, krate);
    let objects = code_object_tokens(krate, registry);
    quote! {
        #item
        impl #krate::KvLayout for #ident {
            const NAME: &'static str = #name;
            const SPEC: #krate::KvLayoutSpec = #spec;
            const CODE_OBJECTS: #krate::CodeObjects = #objects;
        }
    }
}

/// The expansion of `#[attention(..)]`.
///
/// The rules that need the layout (q_heads against kv_heads) run in const
/// evaluation, through the same `validate` the build helper calls; a broken
/// rule is a compile error at the field's tokens.
pub fn attention(
    p: &ParsedAttention,
    item: &syn::ItemStruct,
    krate: &TokenStream,
    registry: Option<&Path>,
) -> TokenStream {
    let ident = &p.ident;
    let name = &p.name;
    let kv = &p.kv;
    let kv_type = quote_spanned!(p.span_of("kv")=> #kv);
    let q_heads = Literal::u32_unsuffixed(p.q_heads);
    let scale = option(p.scale, |v| Literal::f32_suffixed(v).into_token_stream());
    let causal = p.causal;
    let window = option(p.sliding_window, |v| {
        Literal::u32_suffixed(v).into_token_stream()
    });
    let cap = option(p.logits_soft_cap, |v| {
        Literal::f32_suffixed(v).into_token_stream()
    });
    let q_dtype = option(p.q_dtype, |d| dtype_tokens(d, krate));
    let alibi = option(p.alibi, |a| match a {
        Alibi::Computed => quote!(#krate::Alibi::Computed),
        Alibi::Given => quote!(#krate::Alibi::Given),
    });
    let sinks = p.sinks;
    let objects = code_object_tokens(krate, registry);
    // The query dtype's rule against the layout first, at `q_dtype` (or at
    // `kv` when it is missing), then every rule at `q_heads`.
    let q_dtype_check = quote_spanned! {p.span_of("q_dtype")=>
        const _: () = match #krate::spec::rules::q_dtype(
            <#ident as #krate::Attention>::SPEC.kv.dtype,
            <#ident as #krate::Attention>::SPEC.q_dtype,
        ) {
            ::core::result::Result::Ok(()) => (),
            ::core::result::Result::Err(e) => ::core::panic!("{}", e.message),
        };
    };
    let check = quote_spanned! {p.span_of("q_heads")=>
        const _: () = match <#ident as #krate::Attention>::SPEC.validate() {
            ::core::result::Result::Ok(()) => (),
            ::core::result::Result::Err(e) if e.is_about("q_dtype") => (),
            ::core::result::Result::Err(e) => ::core::panic!("{}", e.message),
        };
    };
    quote! {
        #item
        impl #krate::Attention for #ident {
            type Kv = #kv_type;
            const NAME: &'static str = #name;
            const SPEC: #krate::AttentionSpec = #krate::AttentionSpec {
                kv: #krate::spec::layout_of::<Self>(),
                q_heads: #q_heads,
                scale: #scale,
                causal: #causal,
                sliding_window: #window,
                logits_soft_cap: #cap,
                q_dtype: #q_dtype,
                alibi: #alibi,
                sinks: #sinks,
            };
            const CODE_OBJECTS: #krate::CodeObjects = #objects;
        }
        #q_dtype_check
        #check
    }
}
