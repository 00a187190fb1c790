//! The command line's way into the front-end: a `--layout` and an
//! `--attention` argument, written with the attributes' own keys
//! (`"page_size=16, kv_heads=8, head_dim=128, dtype=f16"`), go through
//! [`parse::kv_layout`] and [`parse::attention`], so they meet the same
//! rules with the same messages. Errors point into the argument's text.
//!
//! On the command line the attention's layout is the `--layout` argument,
//! so `--attention` has no `kv` key.
//!
//! ```
//! use attnforge_codegen::frontend::text;
//! let layout = text::kv_layout("page_size=16, kv_heads=8, head_dim=128, dtype=f16").unwrap();
//! let spec = text::attention("q_heads=32, causal", &layout.spec).unwrap();
//! assert_eq!(spec.group_size(), 4);
//!
//! let err = text::attention("q_heads=30, causal", &layout.spec).unwrap_err();
//! assert_eq!(err.errors[0].columns, Some(8..10)); // the `30`
//! println!("{err}");
//! ```

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use proc_macro2::{Span, TokenStream, TokenTree};

use super::parse::{self, ParsedKvLayout};
use crate::spec::{AttentionSpec, KvLayoutSpec};

/// One problem with an argument.
#[derive(Clone, Debug, PartialEq)]
pub struct ArgError {
    /// The argument (`--layout`, `--attention`).
    pub arg: &'static str,
    /// The argument's text.
    pub text: String,
    /// The characters the problem is about (0-based, end exclusive), when
    /// it is about some and not the whole argument.
    pub columns: Option<Range<usize>>,
    /// What is wrong: the front-end's message.
    pub message: String,
}

impl fmt::Display for ArgError {
    /// One line: the argument, the place, the offending text, the message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.columns {
            Some(c) => {
                let what: String = self.text.chars().skip(c.start).take(c.len()).collect();
                write!(
                    f,
                    "{} at column {} (`{what}`): {}",
                    self.arg,
                    c.start + 1,
                    self.message
                )
            }
            None => write!(f, "{} \"{}\": {}", self.arg, self.text, self.message),
        }
    }
}

/// Every problem found in the arguments, one per line.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct ArgErrors {
    /// The problems, in the order the front-end found them.
    pub errors: Vec<ArgError>,
}

impl fmt::Display for ArgErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The character range of `span` inside `text`, when it lies inside it.
/// The front-end's spans come from lexing `text` alone, so their lines and
/// columns are relative to it.
fn columns(text: &str, span: Span) -> Option<Range<usize>> {
    let (start, end) = (span.start(), span.end());
    let offset = |line: usize, column: usize| -> Option<usize> {
        let mut at = 0;
        for (i, l) in text.split('\n').enumerate() {
            if i + 1 == line {
                return (column <= l.chars().count()).then_some(at + column);
            }
            at += l.chars().count() + 1;
        }
        None
    };
    let (a, b) = (
        offset(start.line, start.column)?,
        offset(end.line, end.column)?,
    );
    (a < b && b <= text.chars().count()).then_some(a..b)
}

fn errors(arg: &'static str, text: &str, user_chars: usize, e: syn::Error) -> ArgErrors {
    ArgErrors {
        errors: e
            .into_iter()
            .map(|e| ArgError {
                arg,
                text: text.chars().take(user_chars).collect(),
                columns: columns(text, e.span()).filter(|c| c.end <= user_chars),
                message: e.to_string(),
            })
            .collect(),
    }
}

fn lex(arg: &'static str, text: &str) -> Result<TokenStream, ArgErrors> {
    TokenStream::from_str(text).map_err(|e| ArgErrors {
        errors: vec![ArgError {
            arg,
            text: text.to_string(),
            columns: columns(text, e.span()),
            message: format!("cannot read the argument: {e}"),
        }],
    })
}

/// Parses and checks a `--layout` argument.
pub fn kv_layout(text: &str) -> Result<ParsedKvLayout, ArgErrors> {
    let tokens = lex("--layout", text)?;
    let item: syn::ItemStruct = syn::parse_quote!(
        struct Layout;
    );
    parse::kv_layout(tokens, &item).map_err(|e| errors("--layout", text, text.chars().count(), e))
}

/// Parses an `--attention` argument over `layout` and checks it, the
/// rules that involve the layout included.
pub fn attention(text: &str, layout: &KvLayoutSpec) -> Result<AttentionSpec, ArgErrors> {
    const ARG: &str = "--attention";
    let tokens = lex(ARG, text)?;
    // A `kv` key at the start of an entry: the layout is `--layout`'s.
    let mut at_entry_start = true;
    for tt in tokens {
        match &tt {
            TokenTree::Ident(i) if at_entry_start && i == "kv" => {
                return Err(ArgErrors {
                    errors: vec![ArgError {
                        arg: ARG,
                        text: text.to_string(),
                        columns: columns(text, i.span()),
                        message: "on the command line the layout is `--layout`; remove `kv`"
                            .to_string(),
                    }],
                })
            }
            TokenTree::Punct(p) if p.as_char() == ',' => at_entry_start = true,
            _ => at_entry_start = false,
        }
    }
    // The user's text, then the layout's key: spans in the user's part
    // keep their columns.
    let user = text.trim_end();
    let full = match user.trim_end_matches(',').len() {
        0 if user.is_empty() => "kv = Layout".to_string(),
        n if n < user.len() => format!("{user} kv = Layout"),
        _ => format!("{user}, kv = Layout"),
    };
    let user_chars = text.chars().count();
    let tokens = lex(ARG, &full)?;
    let item: syn::ItemStruct = syn::parse_quote!(
        struct Attention;
    );
    let parsed = parse::attention(tokens, &item).map_err(|e| errors(ARG, &full, user_chars, e))?;
    parsed
        .resolve(*layout)
        .map_err(|e| errors(ARG, &full, user_chars, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: &str = "page_size=16, kv_heads=8, head_dim=128, dtype=f16";

    #[test]
    fn good_arguments_give_the_attributes_specs() {
        let l = kv_layout(LAYOUT).unwrap();
        assert_eq!(
            (l.spec.page_size, l.spec.kv_heads, l.spec.head_dim),
            (16, 8, 128)
        );
        let a = attention("q_heads=32, causal, sliding_window=4096,", &l.spec).unwrap();
        assert_eq!(
            (a.q_heads, a.causal, a.sliding_window),
            (32, true, Some(4096))
        );
    }

    #[test]
    fn errors_point_at_the_offending_text() {
        let e = kv_layout("page_size=16, kv_heads=8, head_dim=100, dtype=f16").unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].columns, Some(35..38), "{e}");
        assert!(
            e.to_string().starts_with("--layout at column 36 (`100`): "),
            "{e}"
        );

        let e = kv_layout("page_size=16, colour=3").unwrap_err();
        let cols: Vec<_> = e.errors.iter().map(|e| e.columns.clone()).collect();
        // The unknown key, then the keys that are missing (the whole argument).
        assert_eq!(cols[0], Some(14..20), "{e}");
        assert!(cols[1..].iter().all(|c| c.is_none()), "{e}");

        let l = kv_layout(LAYOUT).unwrap().spec;
        // A rule that needs the layout: 30 query heads over 8 KV heads.
        let e = attention("causal, q_heads=30", &l).unwrap_err();
        assert_eq!(e.errors[0].columns, Some(16..18), "{e}");
        let e = attention("q_heads=32, kv=Other", &l).unwrap_err();
        assert_eq!(e.errors[0].columns, Some(12..14), "{e}");
        let e = attention("", &l).unwrap_err();
        assert!(e.to_string().contains("missing `q_heads`"), "{e}");
        let e = attention("q_heads=\"32", &l).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
