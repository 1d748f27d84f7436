//! Procedural macros for choreo: `#[derive(Event)]` and `#[handler]`.
//!
//! Use them through the `choreo` crate, which documents them and pins this crate to its own
//! version. Generated code reaches the runtime only through `::choreo::__private`.

mod ast;
mod attr;
mod check;
mod ctxt;
mod expand;

use proc_macro::TokenStream;
use syn::{DeriveInput, ItemFn, parse_macro_input};

/// Derives `choreo::Event`. Documented on the re-export in `choreo`.
#[proc_macro_derive(Event, attributes(choreo))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::event::derive(&input).into()
}

/// Turns an `async fn` into a `choreo::Handler`. Documented on the re-export in `choreo`.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, input: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    let function = parse_macro_input!(input as ItemFn);
    expand::handler::expand(args, &function).into()
}
