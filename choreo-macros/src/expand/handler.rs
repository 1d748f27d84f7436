//! `#[handler]`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType};

use crate::ast::{Extra, HandlerInput};
use crate::attr::HandlerArgs;
use crate::check;
use crate::ctxt::Ctxt;

pub(crate) fn expand(args: TokenStream, function: ItemFn) -> TokenStream {
    let cx = Ctxt::new();
    let args = HandlerArgs::parse(&cx, args);
    let model = HandlerInput::from_ast(&cx, args, &function);

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
        None => check::kebab_case(&function.sig.ident.to_string()),
    };
    let timeout_ms = model.args.timeout.as_ref().and_then(|lit| {
        match check::duration(&lit.value()) {
            Ok(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(why) => {
                cx.error_spanned_by(
                    lit,
                    format!("invalid timeout: {why}; write a whole number with `ms`, `s`, `m` or `h`, e.g. `timeout = \"30s\"`"),
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
                    cx.error_spanned_by(lit, "concurrency must be from 1 to 65535");
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
    let states: Vec<_> = model
        .extras
        .iter()
        .filter_map(|e| match e {
            Extra::State(ty) => Some(*ty),
            Extra::Context => None,
        })
        .collect();
    let state_reqs = states.iter().map(|ty| {
        quote_spanned! {ty.span()=> #krate::__private::StateRequirement::of::<#ty>() }
    });
    let ctx = format_ident!("__choreo_ctx");
    let state = format_ident!("__choreo_state");
    let arguments = model.extras.iter().map(|e| match e {
        Extra::Context => quote!(#ctx),
        Extra::State(ty) => quote!(#krate::__private::state::<#ty>(#state)),
    });
    let retry = retry
        .as_ref()
        .map(|expr| quote!(let info = info.retry(#expr);));
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
    let output_span = match &function.sig.output {
        ReturnType::Default => function.sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let into_result = quote_spanned! {output_span=>
        #krate::__private::IntoHandlerResult::into_handler_result(future.await)
    };
    let assert_send = quote_spanned! {function.sig.ident.span()=>
        #krate::__private::assert_send(&future);
    };

    quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #ident;

        const _: () = {
            #inner

            #[automatically_derived]
            impl #krate::Handler for #ident {
                #event_assoc

                fn info(&self) -> #krate::HandlerInfo {
                    const EMITS: &[#krate::EventType] = &[#(#emitted),*];
                    const STATE: &[#krate::__private::StateRequirement] = &[#(#state_reqs),*];
                    let info = #krate::HandlerInfo::new::<#event>(#name, EMITS).state(STATE);
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
