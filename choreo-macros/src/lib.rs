//! Procedural macros for choreo. Use them through the `choreo` crate.
use proc_macro::TokenStream;

/// See `choreo::Event`.
#[proc_macro_derive(Event, attributes(choreo))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let _ = input;
    TokenStream::new()
}

/// See `choreo::handler`.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    input
}
