//! A model of the macros' input, read once and checked.

use quote::ToTokens;
use syn::{
    Data, DeriveInput, FnArg, GenericArgument, Ident, ItemFn, LitInt, LitStr, Member, Pat,
    PathArguments, Type,
};

use crate::attr::{Container, FieldAttrs, HandlerArgs};
use crate::ctxt::Ctxt;

/// An event type, as `#[derive(Event)]` sees it.
pub(crate) struct EventInput<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) container: Container,
    pub(crate) key: Option<Key<'a>>,
    /// Whether the input is a non-generic struct, so that an impl can be emitted at all.
    pub(crate) implementable: bool,
}

/// The field marked `#[choreo(key)]`.
pub(crate) struct Key<'a> {
    pub(crate) member: Member,
    pub(crate) name: String,
    pub(crate) ty: &'a Type,
}

impl<'a> EventInput<'a> {
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let mut container = Container::from_attrs(cx, &input.attrs);
        let mut implementable = true;
        let mut key: Option<Key<'a>> = None;
        match &input.data {
            Data::Struct(data) => {
                for (index, field) in data.fields.iter().enumerate() {
                    let attrs = FieldAttrs::from_attrs(cx, &field.attrs);
                    for misplaced in attrs.misplaced {
                        match misplaced {
                            "name" => container.name_attempted = true,
                            "version" => container.version_attempted = true,
                            _ => {}
                        }
                    }
                    let Some(marker) = attrs.key else {
                        continue;
                    };
                    let (member, name) = match &field.ident {
                        Some(ident) => (Member::Named(ident.clone()), ident.to_string()),
                        None => (Member::Unnamed(index.into()), index.to_string()),
                    };
                    if let Some(first) = &key {
                        cx.error_spanned_by(
                            marker,
                            format!(
                                "`#[choreo(key)]` is already on field `{}`; an event has at most one key",
                                first.name
                            ),
                        );
                    } else {
                        key = Some(Key {
                            member,
                            name,
                            ty: &field.ty,
                        });
                    }
                }
            }
            Data::Enum(data) => {
                implementable = false;
                cx.push(syn::Error::new(
                    data.enum_token.span,
                    "`#[derive(Event)]` supports structs only: an event is one contract with one schema, so model each case of this enum as its own event type (e.g. `orders.order-placed`, `orders.order-cancelled`)",
                ));
            }
            Data::Union(data) => {
                implementable = false;
                cx.push(syn::Error::new(
                    data.union_token.span,
                    "`#[derive(Event)]` supports structs only: a union has no JSON form",
                ));
            }
        }
        if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
            implementable = false;
            let message = "an event type cannot be generic: each event is one contract with one name, version and schema; declare a concrete struct per event";
            match &input.generics.where_clause {
                Some(clause) if input.generics.params.is_empty() => {
                    cx.error_spanned_by(clause, message);
                }
                _ => cx.error_spanned_by(&input.generics, message),
            }
        }
        Self {
            ident: &input.ident,
            container,
            key,
            implementable,
        }
    }
}

/// A handler function, as `#[handler]` sees it.
pub(crate) struct HandlerInput<'a> {
    pub(crate) function: &'a ItemFn,
    pub(crate) args: HandlerArgs,
    pub(crate) event: Option<&'a Type>,
    /// Every argument after the event, in order.
    pub(crate) extras: Vec<Extra<'a>>,
}

/// An argument after the event.
pub(crate) enum Extra<'a> {
    Context,
    State(&'a Type),
}

impl<'a> HandlerInput<'a> {
    pub(crate) fn from_ast(cx: &Ctxt, args: HandlerArgs, function: &'a ItemFn) -> Self {
        let sig = &function.sig;
        if sig.asyncness.is_none() {
            cx.push(syn::Error::new(
                sig.fn_token.span,
                "a choreo handler must be an `async fn`: write `async fn`",
            ));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            let message = "a choreo handler cannot be generic: it consumes one event type, named by its first argument";
            match &sig.generics.where_clause {
                Some(clause) if sig.generics.params.is_empty() => {
                    cx.error_spanned_by(clause, message);
                }
                _ => cx.error_spanned_by(&sig.generics, message),
            }
        }
        if let Some(variadic) = &sig.variadic {
            cx.error_spanned_by(variadic, "a choreo handler cannot be variadic");
        }

        let mut typed_args = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(receiver) => cx.error_spanned_by(
                    receiver,
                    "a choreo handler cannot take `self`: write a free `async fn` and share state through `State<T>`",
                ),
                FnArg::Typed(typed) => typed_args.push(typed),
            }
        }
        let has_receiver = typed_args.len() < sig.inputs.len();

        let mut event = None;
        let mut extras = Vec::new();
        let mut seen_context = false;
        // When `Context` or `State<T>` comes first, the first other argument is most likely
        // the event, written in the wrong place: that is one mistake, reported once.
        let mut misplaced_event: Option<usize> = None;
        for (index, typed) in typed_args.iter().enumerate() {
            if let Pat::Ident(pat) = &*typed.pat {
                if pat.by_ref.is_some() {
                    cx.error_spanned_by(pat, "handler arguments are taken by value");
                }
            }
            let kind = classify(&typed.ty);
            if index == 0 {
                match kind {
                    Classified::Other => event = Some(&*typed.ty),
                    Classified::Context | Classified::State(_) => {
                        let later = typed_args
                            .iter()
                            .position(|t| matches!(classify(&t.ty), Classified::Other));
                        let what = match kind {
                            Classified::Context => "`Context`",
                            _ => "`State<T>`",
                        };
                        let message = match later {
                            Some(later) => format!(
                                "{what} cannot come first: the first argument of a choreo handler is the event it consumes; move `{}` to the front",
                                typed_args[later].pat.to_token_stream()
                            ),
                            None => format!(
                                "{what} cannot come first: the first argument of a choreo handler is the event it consumes, e.g. `order: OrderPlaced`; `Context` and `State<T>` come after it"
                            ),
                        };
                        misplaced_event = later;
                        cx.error_spanned_by(&typed.ty, message);
                        seen_context |= matches!(kind, Classified::Context);
                    }
                }
                continue;
            }
            match kind {
                Classified::Context => {
                    if seen_context {
                        cx.error_spanned_by(
                            &typed.ty,
                            "a choreo handler takes at most one `Context`",
                        );
                    }
                    seen_context = true;
                    extras.push(Extra::Context);
                }
                Classified::State(inner) => extras.push(Extra::State(inner)),
                Classified::Other if misplaced_event == Some(index) => {}
                Classified::Other => cx.error_spanned_by(
                    &typed.ty,
                    "a choreo handler's arguments after the event must be `Context` or `State<T>`; register shared values with `Service::state` and take them as `State<T>`",
                ),
            }
        }
        if typed_args.is_empty() && !has_receiver {
            cx.error_spanned_by(
                &sig.ident,
                "a choreo handler takes the event it consumes as its first argument, e.g. `async fn charge_card(order: OrderPlaced, ctx: Context)`",
            );
        }
        Self {
            function,
            args,
            event,
            extras,
        }
    }
}

enum Classified<'a> {
    Context,
    State(&'a Type),
    Other,
}

fn classify(ty: &Type) -> Classified<'_> {
    let Type::Path(path) = ty else {
        return Classified::Other;
    };
    if path.qself.is_some() {
        return Classified::Other;
    }
    let Some(last) = path.path.segments.last() else {
        return Classified::Other;
    };
    if last.ident == "Context" && last.arguments.is_none() {
        return Classified::Context;
    }
    if last.ident == "State" {
        if let PathArguments::AngleBracketed(args) = &last.arguments {
            if let [GenericArgument::Type(inner)] = args.args.iter().collect::<Vec<_>>()[..] {
                return Classified::State(inner);
            }
        }
    }
    Classified::Other
}

/// A checked event name: the literal and its domain.
pub(crate) struct EventName {
    pub(crate) value: String,
    pub(crate) domain: String,
}

/// A checked version.
pub(crate) struct Version(pub(crate) u32);

pub(crate) fn literal_version(cx: &Ctxt, lit: &LitInt) -> Option<Version> {
    if !lit.suffix().is_empty() && !matches!(lit.suffix(), "u32" | "u8" | "u16") {
        cx.error_spanned_by(lit, "event versions are `u32`: write `version = 1`");
        return None;
    }
    match lit.base10_parse::<u32>() {
        Ok(0) => {
            cx.error_spanned_by(
                lit,
                "event versions start at 1: `version = 0` is not allowed",
            );
            None
        }
        Ok(v) => Some(Version(v)),
        Err(_) => {
            cx.error_spanned_by(
                lit,
                "event version must be a positive integer that fits in `u32`",
            );
            None
        }
    }
}

pub(crate) fn literal_name(cx: &Ctxt, lit: &LitStr) -> Option<EventName> {
    let value = lit.value();
    match crate::check::event_name(&value) {
        Ok(()) => Some(EventName {
            domain: value.split('.').next().unwrap_or_default().to_owned(),
            value,
        }),
        Err(reason) => {
            cx.error_spanned_by(
                lit,
                format!(
                    "invalid event name `{value}`: {reason}; expected `<domain>.<event>` in lower kebab-case segments, e.g. `orders.order-placed`"
                ),
            );
            None
        }
    }
}
