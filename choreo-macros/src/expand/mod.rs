//! Code generation.

pub(crate) mod event;
pub(crate) mod handler;

use syn::{Path, parse_quote};

/// The path generated code uses for the runtime: `::choreo` unless `crate = "..."` says.
pub(crate) fn crate_path(custom: Option<&Path>) -> Path {
    custom.cloned().unwrap_or_else(|| parse_quote!(::choreo))
}
