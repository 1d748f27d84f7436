//! `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::DeriveInput;
use syn::spanned::Spanned;

use crate::ast::{EventInput, literal_name, literal_version};
use crate::ctxt::Ctxt;

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let model = EventInput::from_ast(&cx, input);
    let ident = model.ident;

    let name = match &model.container.name {
        Some(lit) => literal_name(&cx, lit),
        None => {
            cx.error_spanned_by(
                ident,
                "missing event name: add `#[choreo(name = \"<domain>.<event>\", version = 1)]`, e.g. `name = \"orders.order-placed\"`",
            );
            None
        }
    };
    let version = match &model.container.version {
        Some(lit) => literal_version(&cx, lit),
        None => {
            if model.container.name.is_some() {
                cx.error_spanned_by(
                    ident,
                    "missing event version: add `version = 1` to `#[choreo(...)]`",
                );
            }
            None
        }
    };
    let krate = super::crate_path(model.container.krate.as_ref());
    let errors = cx.check();
    if !model.implementable {
        return errors.unwrap_or_default();
    }

    // With an error reported, a stub impl keeps the rest of the crate type-checking, so one
    // mistake shows as one error.
    let valid = errors.is_none();
    let (name, domain) = match &name {
        Some(n) if valid => (n.value.clone(), n.domain.clone()),
        _ => ("invalid.invalid".to_owned(), "invalid".to_owned()),
    };
    let version = version.filter(|_| valid).map_or(1, |v| v.0);
    let routing_key = format!("{name}.v{version}");

    let key = model.key.as_ref().map(|key| {
        let member = &key.member;
        let field = &key.name;
        let key_fn = quote_spanned! {key.ty.span()=>
            fn key(&self) -> ::core::option::Option<::std::string::String> {
                #krate::__private::EventKey::to_key(&self.#member)
            }
        };
        quote! {
            const KEY_FIELD: ::core::option::Option<&'static str> =
                ::core::option::Option::Some(#field);
            #key_fn
        }
    });

    let derive_checks = quote_spanned! {ident.span()=>
        const _: () = #krate::__private::assert_event_derives::<#ident>();
    };
    let register = valid.then(|| {
        quote! {
            #krate::__private::inventory::submit! {
                #krate::__private::EventDescriptor::of::<#ident>()
            }
        }
    });

    quote! {
        #errors
        #derive_checks
        const _: () = {
            #[automatically_derived]
            impl #krate::Event for #ident {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                const DOMAIN: &'static str = #domain;
                const ROUTING_KEY: &'static str = #routing_key;
                #key
            }
            #register
        };
    }
}
