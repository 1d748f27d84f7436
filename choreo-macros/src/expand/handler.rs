//! `#[handler]`.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType};

use crate::ast::{Extra, HandlerInput};
use crate::attr::HandlerArgs;
use crate::check;
use crate::ctxt::Ctxt;

pub(crate) fn expand(args: TokenStream, function: &ItemFn) -> TokenStream {
    let cx = Ctxt::new();
    let args = HandlerArgs::parse(&cx, args);
    let model = HandlerInput::from_ast(&cx, args, function);

    let name = match &model.args.name {
        Some(lit) => {
            let value = lit.value();
            if let Err(why) = check::kebab(&value) {
                cx.error_spanned_by(
                    lit,
                    format!("invalid handler name `{value}`: it {why}; use lower kebab-case, e.g. `charge-card`"),
                );
            }
            value
        }
        None => {
            let value = check::kebab_case(&function.sig.ident.to_string());
            if let Err(why) = check::kebab(&value) {
                cx.error_spanned_by(
                    &function.sig.ident,
                    format!("the handler name `{value}` taken from this function's name {why}; name the function in snake_case or set `#[handler(name = \"...\")]` in lower kebab-case"),
                );
            }
            value
        }
    };
    let timeout_ms = model.args.timeout.as_ref().and_then(|lit| {
        match check::duration(&lit.value()) {
            Ok(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(why) => {
                cx.error_spanned_by(
                    lit,
                    format!("invalid timeout `{}`: {why}; write a whole number followed by `ms`, `s`, `m` or `h`, e.g. `timeout = \"30s\"`", lit.value()),
                );
                None
            }
        }
    });
    let concurrency =
        model
            .args
            .concurrency
            .as_ref()
            .and_then(|lit| match lit.base10_parse::<u16>() {
                Ok(n) if n > 0 => Some(usize::from(n)),
                _ => {
                    cx.error_spanned_by(
                        lit,
                        "`concurrency` is how many messages the handler works on at once: write a number from 1 to 65535, e.g. `concurrency = 8`",
                    );
                    None
                }
            });

    let event = model.event;
    if let Some(errors) = cx.check() {
        // Leave the function as written so the rest of the crate still type-checks.
        return quote!(#errors #function);
    }
    let Some(event) = event else {
        return quote!(#function);
    };
    generate(&model, event, &name, timeout_ms, concurrency)
}

fn generate(
    model: &HandlerInput<'_>,
    event: &syn::Type,
    name: &str,
    timeout_ms: Option<u64>,
    concurrency: Option<usize>,
) -> TokenStream {
    let HandlerArgs {
        emits,
        retry,
        krate,
        ..
    } = &model.args;
    let krate = super::crate_path(krate.as_ref());
    let function = model.function;
    let ident = &function.sig.ident;
    let vis = &function.vis;
    let (docs, attrs): (Vec<_>, Vec<_>) = function
        .attrs
        .iter()
        .partition(|a| a.path().is_ident("doc"));

    let emitted = emits.iter().map(|ty| {
        quote_spanned! {ty.span()=>
            #krate::EventType {
                name: <#ty as #krate::Event>::NAME,
                version: <#ty as #krate::Event>::VERSION,
            }
        }
    });
    // Each `State<T>` is checked once, where its slot is made; the requirement the service
    // verifies and the call that takes the value both come from the slot.
    let mut slots = Vec::new();
    let mut slot_defs = Vec::new();
    for (index, ty) in model
        .extras
        .iter()
        .filter_map(|e| match e {
            Extra::State(ty) => Some(*ty),
            Extra::Context => None,
        })
        .enumerate()
    {
        let slot = format_ident!("__CHOREO_STATE_{}", index);
        let private = respan(quote!(#krate::__private), ty.span());
        slot_defs.push(quote_spanned! {ty.span()=>
            const #slot: #private::StateSlot<#ty> = #private::state_slot::<#ty>();
        });
        slots.push(slot);
    }
    let ctx = format_ident!("__choreo_ctx");
    let state = format_ident!("__choreo_state");
    let mut next_slot = slots.iter();
    let arguments: Vec<_> = model
        .extras
        .iter()
        .map(|e| match e {
            Extra::Context => quote!(#ctx),
            Extra::State(_) => {
                let slot = next_slot.next();
                quote!((#slot.take)(#state))
            }
        })
        .collect();
    let retry = retry.as_ref().map(|expr| {
        let policy = respan(quote!(#krate::RetryPolicy), expr.span());
        quote_spanned! {expr.span()=>
            let __choreo_retry: #policy = #expr;
            let info = info.retry(__choreo_retry);
        }
    });
    let timeout = timeout_ms
        .map(|ms| quote!(let info = info.timeout(::core::time::Duration::from_millis(#ms));));
    let concurrency = concurrency.map(|n| quote!(let info = info.concurrency(#n);));

    let inner = {
        let mut inner = function.clone();
        inner.attrs = attrs.into_iter().cloned().collect();
        inner.vis = syn::Visibility::Inherited;
        inner
    };
    let event_assoc = quote_spanned! {event.span()=> type Event = #event; };
    let into_result = match &function.sig.output {
        ReturnType::Default => {
            quote!(#krate::__private::IntoHandlerResult::into_handler_result(future.await))
        }
        // Naming the type puts the check on all of it; `impl Trait` cannot be named so.
        ReturnType::Type(_, ty) if !matches!(**ty, syn::Type::ImplTrait(_)) => {
            let span = ty.span();
            let into = respan(quote!(#krate::__private::IntoHandlerResult), span);
            quote_spanned!(span=> <#ty as #into>::into_handler_result(future.await))
        }
        ReturnType::Type(_, ty) => {
            let span = ty.span();
            let into = respan(
                quote!(#krate::__private::IntoHandlerResult::into_handler_result),
                span,
            );
            quote_spanned!(span=> #into(future.await))
        }
    };
    let assert_send = {
        let span = function.sig.ident.span();
        let assert = respan(quote!(#krate::__private::handler_future_must_be_send), span);
        quote_spanned!(span=> #assert(&future);)
    };

    quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #ident;

        const _: () = {
            #inner

            #(#slot_defs)*

            #[automatically_derived]
            impl #krate::Handler for #ident {
                #event_assoc

                fn info(&self) -> #krate::HandlerInfo {
                    const EMITS: &[#krate::EventType] = &[#(#emitted),*];
                    const STATE: &[#krate::__private::StateRequirement] =
                        &[#(#slots.requirement),*];
                    let info = #krate::__private::handler_info::<Self>(#name, EMITS).state(STATE);
                    #retry
                    #timeout
                    #concurrency
                    info
                }

                #[allow(unused_variables)]
                fn call(
                    &self,
                    event: #event,
                    #ctx: #krate::Context,
                    #state: &#krate::__private::StateMap,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<(), #krate::HandlerError>,
                > + ::core::marker::Send + 'static {
                    let future = #ident(event #(, #arguments)*);
                    #assert_send
                    async move { #into_result }
                }
            }
        };
    }
}

/// The same tokens, all spanned on `span`, so that an error about them lands there.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = TokenTree::Group(inner);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}
