//! Cross-crate tests; see `tests/`.
