//! Finding the spec items of a crate's files: syn parses them, the shared
//! front-end checks each item, and every error of every file is kept.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{Build, BuildError, BuiltItem, SourceError};
use crate::frontend::parse;
use crate::kernels::KernelSpec;

impl Build {
    /// Parses every file and resolves every attention's layout.
    pub(super) fn scan(&self) -> Result<Vec<BuiltItem>, BuildError> {
        let mut errors = Vec::new();
        let mut layouts: Vec<(PathBuf, parse::ParsedKvLayout)> = Vec::new();
        let mut attentions: Vec<(PathBuf, parse::ParsedAttention)> = Vec::new();
        for file in &self.files {
            let text = std::fs::read_to_string(file).map_err(|source| BuildError::Io {
                path: file.clone(),
                source,
            })?;
            let ast = match syn::parse_file(&text) {
                Ok(ast) => ast,
                Err(e) => {
                    errors.extend(source_errors(file, e));
                    continue;
                }
            };
            let mut structs = Vec::new();
            collect_structs(&ast.items, &mut structs);
            for s in structs {
                for attr in &s.attrs {
                    let Some(last) = attr.path().segments.last() else {
                        continue;
                    };
                    let args = match &attr.meta {
                        syn::Meta::List(l) => l.tokens.clone(),
                        _ => proc_macro2::TokenStream::new(),
                    };
                    let kind = last.ident.to_string();
                    match kind.as_str() {
                        "kv_layout" => match parse::kv_layout(args, s) {
                            Ok(p) => layouts.push((file.clone(), p)),
                            Err(e) => errors.extend(source_errors(file, e)),
                        },
                        "attention" => match parse::attention(args, s) {
                            Ok(p) => attentions.push((file.clone(), p)),
                            Err(e) => errors.extend(source_errors(file, e)),
                        },
                        _ => {}
                    }
                }
            }
        }

        let mut seen: HashSet<String> = HashSet::new();
        let idents = layouts
            .iter()
            .map(|(f, l)| (f, &l.ident))
            .chain(attentions.iter().map(|(f, a)| (f, &a.ident)));
        for (file, ident) in idents {
            if !seen.insert(ident.to_string()) {
                let msg = format!(
                    "two spec items are named `{ident}`; the build helper's registry needs distinct names"
                );
                errors.extend(source_errors(file, syn::Error::new(ident.span(), msg)));
            }
        }

        let mut items: Vec<BuiltItem> = layouts
            .iter()
            .map(|(_, l)| BuiltItem {
                ident: l.ident.to_string(),
                name: l.name.clone(),
                kernels: vec![KernelSpec::Append(l.spec)],
            })
            .collect();
        for (file, a) in &attentions {
            let target = a.kv.segments.last().map(|s| s.ident.to_string());
            let layout = layouts
                .iter()
                .find(|(_, l)| Some(l.ident.to_string()) == target);
            let Some((_, layout)) = layout else {
                let names: Vec<String> = layouts.iter().map(|(_, l)| l.ident.to_string()).collect();
                let msg = format!(
                    "`kv = {}` does not name a #[kv_layout] struct in the build's files (found: {})",
                    target.unwrap_or_default(),
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                );
                errors.extend(source_errors(file, syn::Error::new(a.span_of("kv"), msg)));
                continue;
            };
            match a.resolve(layout.spec) {
                Ok(spec) => items.push(BuiltItem {
                    ident: a.ident.to_string(),
                    name: a.name.clone(),
                    kernels: crate::kernels::attention_kernels(&spec).to_vec(),
                }),
                Err(e) => errors.extend(source_errors(file, e)),
            }
        }
        if errors.is_empty() {
            Ok(items)
        } else {
            Err(BuildError::Source(errors))
        }
    }
}

fn collect_structs<'a>(items: &'a [syn::Item], out: &mut Vec<&'a syn::ItemStruct>) {
    for item in items {
        match item {
            syn::Item::Struct(s) => out.push(s),
            syn::Item::Mod(m) => {
                if let Some((_, inner)) = &m.content {
                    collect_structs(inner, out);
                }
            }
            _ => {}
        }
    }
}

fn source_errors(file: &Path, e: syn::Error) -> Vec<SourceError> {
    e.into_iter()
        .map(|e| {
            let start = e.span().start();
            SourceError {
                file: file.to_path_buf(),
                line: start.line,
                column: start.column + 1,
                message: e.to_string(),
            }
        })
        .collect()
}
