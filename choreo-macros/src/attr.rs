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
    /// `choreo` or `handler`, for messages.
    scope: &'static str,
    name: &'static str,
    tokens: TokenStream,
    given: bool,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    pub(crate) fn none(cx: &'c Ctxt, scope: &'static str, name: &'static str) -> Self {
        Self {
            cx,
            scope,
            name,
            tokens: TokenStream::new(),
            given: false,
            value: None,
        }
    }

    /// Sets the value; a second occurrence is an error spanned on it.
    pub(crate) fn set<A: ToTokens>(&mut self, tokens: A, value: T) {
        if self.check_once(&tokens) {
            self.tokens = tokens.into_token_stream();
            self.value = Some(value);
        }
    }

    /// Sets the value when it parsed, or else records the key as given with a value already
    /// reported as invalid.
    pub(crate) fn set_parsed<A: ToTokens>(&mut self, tokens: A, value: Option<T>) {
        match value {
            Some(value) => self.set(tokens, value),
            None => self.set_invalid(tokens),
        }
    }

    /// Records that the key was written with a value already reported as invalid, so that it
    /// is neither reported missing nor, when written again, accepted silently.
    pub(crate) fn set_invalid<A: ToTokens>(&mut self, tokens: A) {
        self.check_once(&tokens);
    }

    fn check_once<A: ToTokens>(&mut self, tokens: &A) -> bool {
        if self.given {
            self.cx.error_spanned_by(
                tokens,
                format!(
                    "duplicate {} attribute `{}`: give it once",
                    self.scope, self.name
                ),
            );
            return false;
        }
        self.given = true;
        true
    }

    /// Whether the key was written at all, valid or not.
    pub(crate) fn given(&self) -> bool {
        self.given
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }

    pub(crate) fn get_with_tokens(self) -> Option<(TokenStream, T)> {
        let tokens = self.tokens;
        self.value.map(|v| (tokens, v))
    }
}

const CONTAINER_KEYS: &[&str] = &["name", "version", "upcast_from", "crate"];
const FIELD_KEYS: &[&str] = &["key"];

/// `#[choreo(...)]` on an event type.
pub(crate) struct Container {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) krate: Option<Path>,
    /// Older versions of the event this type reads, each converted with `From`.
    pub(crate) upcast_from: Vec<Type>,
    /// Whether the type has a `#[choreo(...)]` attribute at all.
    pub(crate) has_attr: bool,
    /// Whether a name was attempted: written with a bad value, under a misspelt key, or in
    /// an attribute that did not parse. A missing name is then not reported a second time.
    pub(crate) name_attempted: bool,
    /// The same for the version.
    pub(crate) version_attempted: bool,
}

impl Container {
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut name = Attr::none(cx, "choreo", "name");
        let mut version = Attr::none(cx, "choreo", "version");
        let mut krate = Attr::none(cx, "choreo", "crate");
        let mut upcast_from = Attr::none(cx, "choreo", "upcast_from");
        let mut has_attr = false;
        let mut name_attempted = false;
        let mut version_attempted = false;
        for attr in attrs.iter().filter(|a| a.path().is_ident("choreo")) {
            has_attr = true;
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    let value = string_value(cx, &meta, "name", "\"orders.order-placed\"")?;
                    name.set_parsed(&meta.path, value);
                } else if meta.path.is_ident("version") {
                    version.set_parsed(&meta.path, int_value(cx, &meta, "version", "1")?);
                } else if meta.path.is_ident("upcast_from") {
                    if !meta.input.peek(syn::token::Paren) {
                        skip_value(&meta)?;
                        upcast_from.set_invalid(&meta.path);
                        cx.error_spanned_by(
                            &meta.path,
                            "`upcast_from` lists the older versions this type reads, in parentheses: `upcast_from(OrderPlacedV1)`",
                        );
                    } else {
                        let content;
                        syn::parenthesized!(content in meta.input);
                        let types = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
                        upcast_from.set(&meta.path, types.into_iter().collect::<Vec<_>>());
                    }
                } else if meta.path.is_ident("crate") {
                    crate_value(cx, &meta, &mut krate)?;
                } else if meta.path.is_ident("key") {
                    skip_value(&meta)?;
                    cx.error_spanned_by(
                        &meta.path,
                        "`key` goes on a field: put `#[choreo(key)]` on the field that holds the business key",
                    );
                } else {
                    skip_value(&meta)?;
                    let unknown = path_text(&meta.path);
                    let suggestion = closest(&unknown, CONTAINER_KEYS);
                    match suggestion {
                        Some("name") => name_attempted = true,
                        Some("version") => version_attempted = true,
                        Some(_) => {}
                        None => {
                            name_attempted = true;
                            version_attempted = true;
                        }
                    }
                    cx.error_spanned_by(
                        &meta.path,
                        unknown_key("choreo attribute", &unknown, CONTAINER_KEYS, suggestion),
                    );
                }
                Ok(())
            });
            if let Err(error) = parsed {
                name_attempted = true;
                version_attempted = true;
                cx.push(error);
            }
        }
        Self {
            name_attempted: name_attempted || name.given(),
            version_attempted: version_attempted || version.given(),
            name: name.get(),
            version: version.get(),
            krate: krate.get(),
            upcast_from: upcast_from.get().unwrap_or_default(),
            has_attr,
        }
    }
}

/// `#[choreo(...)]` on a field.
pub(crate) struct FieldAttrs {
    /// Where `key` was written, when it was.
    pub(crate) key: Option<TokenStream>,
    /// Container keys written on the field instead, already reported.
    pub(crate) misplaced: Vec<&'static str>,
}

impl FieldAttrs {
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut key = Attr::none(cx, "choreo", "key");
        let mut misplaced = Vec::new();
        for attr in attrs.iter().filter(|a| a.path().is_ident("choreo")) {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("key") {
                    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                        skip_value(&meta)?;
                        cx.error_spanned_by(&meta.path, "`key` takes no value: write `#[choreo(key)]`");
                    }
                    key.set(&meta.path, ());
                } else if let Some(&container_key) =
                    CONTAINER_KEYS.iter().find(|k| meta.path.is_ident(k))
                {
                    skip_value(&meta)?;
                    misplaced.push(container_key);
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "`{container_key}` goes on the struct, not a field: move it to the `#[choreo(...)]` above the struct; a field takes only `key`"
                        ),
                    );
                } else {
                    skip_value(&meta)?;
                    let unknown = path_text(&meta.path);
                    cx.error_spanned_by(
                        &meta.path,
                        unknown_key(
                            "choreo field attribute",
                            &unknown,
                            FIELD_KEYS,
                            closest(&unknown, FIELD_KEYS),
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
            key: key.get_with_tokens().map(|(tokens, ())| tokens),
            misplaced,
        }
    }
}

const HANDLER_KEYS: &[&str] = &["emits", "name", "retry", "timeout", "concurrency", "crate"];

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
        let mut emits = Attr::none(cx, "handler", "emits");
        let mut name = Attr::none(cx, "handler", "name");
        let mut retry = Attr::none(cx, "handler", "retry");
        let mut timeout = Attr::none(cx, "handler", "timeout");
        let mut concurrency = Attr::none(cx, "handler", "concurrency");
        let mut krate = Attr::none(cx, "handler", "crate");
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("emits") {
                if !meta.input.peek(syn::token::Paren) {
                    skip_value(&meta)?;
                    emits.set_invalid(&meta.path);
                    cx.error_spanned_by(
                        &meta.path,
                        "`emits` lists event types in parentheses, e.g. `emits(PaymentCaptured, PaymentFailed)`",
                    );
                    return Ok(());
                }
                let content;
                syn::parenthesized!(content in meta.input);
                let types = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
                emits.set(&meta.path, types.into_iter().collect::<Vec<_>>());
            } else if meta.path.is_ident("name") {
                name.set_parsed(
                    &meta.path,
                    string_value(cx, &meta, "name", "\"charge-card\"")?,
                );
            } else if meta.path.is_ident("retry") {
                let expr: Expr = meta.value()?.parse()?;
                retry.set(&meta.path, expr);
            } else if meta.path.is_ident("timeout") {
                timeout.set_parsed(&meta.path, string_value(cx, &meta, "timeout", "\"30s\"")?);
            } else if meta.path.is_ident("concurrency") {
                concurrency.set_parsed(&meta.path, int_value(cx, &meta, "concurrency", "8")?);
            } else if meta.path.is_ident("crate") {
                crate_value(cx, &meta, &mut krate)?;
            } else {
                skip_value(&meta)?;
                let unknown = path_text(&meta.path);
                cx.error_spanned_by(
                    &meta.path,
                    unknown_key(
                        "handler attribute",
                        &unknown,
                        HANDLER_KEYS,
                        closest(&unknown, HANDLER_KEYS),
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

/// `crate = "path"`: the path generated code uses for the runtime.
fn crate_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    krate: &mut Attr<'_, Path>,
) -> syn::Result<()> {
    match string_value(cx, meta, "crate", "\"::my_platform::choreo\"")? {
        Some(value) => match value.parse::<Path>() {
            Ok(path) => krate.set(&meta.path, path),
            Err(_) => {
                krate.set_invalid(&meta.path);
                cx.error_spanned_by(
                    &value,
                    "expected a path to the `choreo` crate, e.g. `crate = \"::my_platform::choreo\"`",
                );
            }
        },
        None => krate.set_invalid(&meta.path),
    }
    Ok(())
}

/// A string literal, or `None` after reporting that the value is something else.
fn string_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    key: &str,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    let expr: Expr = meta.value()?.parse()?;
    if let Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Str(s),
        ..
    }) = expr
    {
        return Ok(Some(s));
    }
    cx.error_spanned_by(
        expr,
        format!("`{key}` takes a string literal, e.g. `{key} = {example}`"),
    );
    Ok(None)
}

/// A positive integer literal, or `None` after reporting that the value is something else.
fn int_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    key: &str,
    example: &str,
) -> syn::Result<Option<LitInt>> {
    let expr: Expr = meta.value()?.parse()?;
    let message = match &expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => return Ok(Some(i.clone())),
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) if s.value().trim().parse::<u64>().is_ok() => format!(
            "`{key}` takes an integer, not a string: write `{key} = {}` without quotes",
            s.value().trim()
        ),
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            ..
        }) => format!(
            "`{key}` cannot be negative: write a positive integer, e.g. `{key} = {example}`"
        ),
        _ => format!("`{key}` takes a positive integer literal, e.g. `{key} = {example}`"),
    };
    cx.error_spanned_by(expr, message);
    Ok(None)
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

fn unknown_key(what: &str, unknown: &str, expected: &[&str], suggestion: Option<&str>) -> String {
    let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    let expected = match &list[..] {
        [only] => format!("expected {only}"),
        _ => format!("expected one of {}", list.join(", ")),
    };
    match suggestion {
        // With a single key allowed, the list already says it.
        Some(s) if list.len() > 1 => {
            format!("unknown {what} `{unknown}` (did you mean `{s}`?); {expected}")
        }
        _ => format!("unknown {what} `{unknown}`; {expected}"),
    }
}

/// The known key a misspelt one most likely meant: at most one edit away for short keys,
/// two for longer ones (a swap of two neighbours counts as one edit).
fn closest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (distance(unknown, k), *k))
        .filter(|(d, k)| *d <= if k.len() <= 4 { 1 } else { 2 })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance with adjacent transpositions (optimal string alignment).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(closest("nmae", CONTAINER_KEYS), Some("name"));
        assert_eq!(closest("verison", CONTAINER_KEYS), Some("version"));
        assert_eq!(closest("kye", FIELD_KEYS), Some("key"));
        assert_eq!(closest("timout", HANDLER_KEYS), Some("timeout"));
        assert_eq!(closest("id", CONTAINER_KEYS), None);
        assert_eq!(closest("topic", HANDLER_KEYS), None);
    }
}
