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
    let container = &model.container;

    let name = match &container.name {
        Some(lit) => literal_name(&cx, lit),
        None => {
            if !container.name_attempted {
                let message = if container.has_attr {
                    "missing event name: add `name = \"<domain>.<event>\"` to `#[choreo(...)]`, e.g. `name = \"orders.order-placed\"`"
                } else {
                    "missing event name: add `#[choreo(name = \"<domain>.<event>\", version = 1)]`, e.g. `name = \"orders.order-placed\"`"
                };
                cx.error_spanned_by(ident, message);
            }
            None
        }
    };
    let version = match &container.version {
        Some(lit) => literal_version(&cx, lit),
        None => {
            // Without an attribute at all, the missing name's message asks for both.
            if container.has_attr && !container.version_attempted {
                cx.error_spanned_by(
                    ident,
                    "missing event version: add `version = 1` to `#[choreo(...)]`",
                );
            }
            None
        }
    };
    let krate = super::crate_path(container.krate.as_ref());
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
        let ty = key.ty;
        // The qualified path puts the `EventKey` check on the field's type, and only there.
        let to_key = quote_spanned! {ty.span()=>
            <#ty as #krate::__private::EventKey>::to_key
        };
        let write_key = quote_spanned! {ty.span()=>
            <#ty as #krate::__private::EventKey>::write_key
        };
        quote! {
            const KEY_FIELD: ::core::option::Option<&'static str> =
                ::core::option::Option::Some(#field);
            fn key(&self) -> ::core::option::Option<::std::string::String> {
                #to_key(&self.#member)
            }
            fn write_key(&self, out: &mut ::std::string::String) -> bool {
                #write_key(&self.#member, out)
            }
        }
    });

    let upcasts = (!container.upcast_from.is_empty()).then(|| {
        let older = &container.upcast_from;
        let checks = older.iter().map(|ty| {
            quote_spanned! {ty.span()=>
                ::core::assert!(
                    #krate::__private::same_str(<#ty as #krate::Event>::NAME, #name),
                    "`upcast_from` names an event of another name: an upcast reads an older version of the same event",
                );
                ::core::assert!(
                    <#ty as #krate::Event>::VERSION < #version,
                    "`upcast_from` names a version that is not older than this one",
                );
            }
        });
        let branches = older.iter().map(|ty| {
            quote_spanned! {ty.span()=>
                if <#ty as #krate::Event>::READS.contains(&version) {
                    return <#ty as #krate::Event>::decode(version, body)
                        .map(<Self as ::core::convert::From<#ty>>::from);
                }
            }
        });
        quote! {
            const READS: &'static [u32] = &[#version #(, <#older as #krate::Event>::VERSION)*];

            fn decode(
                version: u32,
                body: &[u8],
            ) -> ::core::result::Result<Self, #krate::DecodeError> {
                const _: () = { #(#checks)* };
                if version == #version {
                    return #krate::__private::decode_json(body);
                }
                #(#branches)*
                ::core::result::Result::Err(#krate::DecodeError::UnknownVersion {
                    name: #name,
                    version,
                })
            }
        }
    });

    // The serde and schemars derives are checked once, by `descriptor`, in choreo's words.
    // The impl states them as a where clause so that it does not report them again; the
    // `for<'__choreo>` keeps the bound from being rejected as trivially false on stable.
    let descriptor = quote_spanned! {ident.span()=>
        #krate::__private::descriptor::<#ident>()
    };
    // A stub is checked but not recorded in the catalog.
    let register = if valid {
        quote! {
            const DESCRIPTOR: #krate::__private::EventDescriptor = #descriptor;
            #krate::__private::inventory::submit! { DESCRIPTOR }
        }
    } else {
        quote! {
            const _: #krate::__private::EventDescriptor = #descriptor;
        }
    };

    quote! {
        #errors
        const _: () = {
            #[automatically_derived]
            #[diagnostic::do_not_recommend]
            impl #krate::Event for #ident
            where
                for<'__choreo> #ident: #krate::__private::EventSerialize
                    + #krate::__private::EventDeserialize
                    + #krate::__private::EventJsonSchema,
            {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                const DOMAIN: &'static str = #domain;
                const ROUTING_KEY: &'static str = #routing_key;
                #key
                #upcasts
            }

            #register
        };
    }
}
