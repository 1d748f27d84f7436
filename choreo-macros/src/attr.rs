//! Parsing of `#[choreo(...)]` and `#[handler(...)]` attributes.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, LitInt, LitStr, Path, Token, Type};

use crate::ctxt::Ctxt;

/// One attribute value that may be given at most once.
pub(crate) struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: &'static str,
    tokens: TokenStream,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    pub(crate) fn none(cx: &'c Ctxt, name: &'static str) -> Self {
        Self {
            cx,
            name,
            tokens: TokenStream::new(),
            value: None,
        }
    }

    /// Sets the value; a second occurrence is an error spanned on it.
    pub(crate) fn set<A: ToTokens>(&mut self, tokens: A, value: T) {
        let tokens = tokens.into_token_stream();
        if self.value.is_some() {
            self.cx.error_spanned_by(
                tokens,
                format!("duplicate choreo attribute `{}`", self.name),
            );
        } else {
            self.tokens = tokens;
            self.value = Some(value);
        }
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }

    pub(crate) fn get_with_tokens(self) -> Option<(TokenStream, T)> {
        let tokens = self.tokens;
        self.value.map(|v| (tokens, v))
    }
}

const CONTAINER_KEYS: &str = "`name`, `version`, `crate`";
const FIELD_KEYS: &str = "`key`";

/// `#[choreo(...)]` on an event type.
pub(crate) struct Container {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) krate: Option<Path>,
}

impl Container {
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut name = Attr::none(cx, "name");
        let mut version = Attr::none(cx, "version");
        let mut krate = Attr::none(cx, "crate");
        for attr in attrs.iter().filter(|a| a.path().is_ident("choreo")) {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    let value: LitStr = string_value(&meta, "name", "\"orders.order-placed\"")?;
                    name.set(&meta.path, value);
                } else if meta.path.is_ident("version") {
                    let lit = int_value(&meta, "version", "1")?;
                    version.set(&meta.path, lit);
                } else if meta.path.is_ident("crate") {
                    let value: LitStr = string_value(&meta, "crate", "\"choreo\"")?;
                    krate.set(&meta.path, value.parse::<Path>()?);
                } else if meta.path.is_ident("key") {
                    skip_value(&meta)?;
                    cx.error_spanned_by(
                        &meta.path,
                        "`key` goes on a field: put `#[choreo(key)]` on the field that holds the business key",
                    );
                } else {
                    skip_value(&meta)?;
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "unknown choreo attribute `{}`; expected one of {CONTAINER_KEYS}",
                            path_text(&meta.path)
                        ),
                    );
                }
                Ok(())
            });
            if let Err(error) = parsed {
                cx.push(error);
            }
        }
        Self {
            name: name.get(),
            version: version.get(),
            krate: krate.get(),
        }
    }
}

/// `#[choreo(...)]` on a field: whether it is the key, and where that was said.
pub(crate) fn field_is_key(cx: &Ctxt, attrs: &[Attribute]) -> Option<TokenStream> {
    let mut key = Attr::none(cx, "key");
    for attr in attrs.iter().filter(|a| a.path().is_ident("choreo")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("key") {
                if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                    skip_value(&meta)?;
                    cx.error_spanned_by(&meta.path, "`key` takes no value: write `#[choreo(key)]`");
                }
                key.set(&meta.path, ());
            } else {
                skip_value(&meta)?;
                let name = path_text(&meta.path);
                let hint = if matches!(name.as_str(), "name" | "version" | "crate") {
                    format!("; `{name}` goes on the struct, not a field")
                } else {
                    String::new()
                };
                cx.error_spanned_by(
                    &meta.path,
                    format!("unknown choreo field attribute `{name}`; expected {FIELD_KEYS}{hint}"),
                );
            }
            Ok(())
        });
        if let Err(error) = parsed {
            cx.push(error);
        }
    }
    key.get_with_tokens().map(|(tokens, ())| tokens)
}

const HANDLER_KEYS: &str = "`emits`, `name`, `retry`, `timeout`, `concurrency`, `crate`";

/// `#[handler(...)]`.
pub(crate) struct HandlerArgs {
    pub(crate) emits: Vec<Type>,
    pub(crate) name: Option<LitStr>,
    pub(crate) retry: Option<Expr>,
    pub(crate) timeout: Option<LitStr>,
    pub(crate) concurrency: Option<LitInt>,
    pub(crate) krate: Option<Path>,
}

impl HandlerArgs {
    pub(crate) fn parse(cx: &Ctxt, args: TokenStream) -> Self {
        let mut emits = Attr::none(cx, "emits");
        let mut name = Attr::none(cx, "name");
        let mut retry = Attr::none(cx, "retry");
        let mut timeout = Attr::none(cx, "timeout");
        let mut concurrency = Attr::none(cx, "concurrency");
        let mut krate = Attr::none(cx, "crate");
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("emits") {
                let content;
                syn::parenthesized!(content in meta.input);
                let types = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
                emits.set(&meta.path, types.into_iter().collect::<Vec<_>>());
            } else if meta.path.is_ident("name") {
                name.set(&meta.path, string_value(&meta, "name", "\"charge-card\"")?);
            } else if meta.path.is_ident("retry") {
                let expr: Expr = meta.value()?.parse()?;
                retry.set(&meta.path, expr);
            } else if meta.path.is_ident("timeout") {
                timeout.set(&meta.path, string_value(&meta, "timeout", "\"30s\"")?);
            } else if meta.path.is_ident("concurrency") {
                concurrency.set(&meta.path, int_value(&meta, "concurrency", "8")?);
            } else if meta.path.is_ident("crate") {
                let value: LitStr = string_value(&meta, "crate", "\"choreo\"")?;
                krate.set(&meta.path, value.parse::<Path>()?);
            } else {
                skip_value(&meta)?;
                cx.error_spanned_by(
                    &meta.path,
                    format!(
                        "unknown handler attribute `{}`; expected one of {HANDLER_KEYS}",
                        path_text(&meta.path)
                    ),
                );
            }
            Ok(())
        });
        if let Err(error) = syn::parse::Parser::parse2(parser, args) {
            cx.push(error);
        }
        Self {
            emits: emits.get().unwrap_or_default(),
            name: name.get(),
            retry: retry.get(),
            timeout: timeout.get(),
            concurrency: concurrency.get(),
            krate: krate.get(),
        }
    }
}

fn string_value(meta: &ParseNestedMeta<'_>, key: &str, example: &str) -> syn::Result<LitStr> {
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Ok(s),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected a string literal, e.g. `{key} = {example}`"),
        )),
    }
}

fn int_value(meta: &ParseNestedMeta<'_>, key: &str, example: &str) -> syn::Result<LitInt> {
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => Ok(i),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected an integer literal, e.g. `{key} = {example}`"),
        )),
    }
}

/// Consumes whatever follows an unknown key so parsing can go on to the next one.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        let _: Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let _content;
        syn::parenthesized!(_content in meta.input);
    }
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}
