//! Compile-time behaviour of `#[derive(Event)]` and `#[choreo::handler]`: what compiles, and
//! the exact error each mistake gives. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p choreo-tests --test ui`, then review them like code.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/*/pass/*.rs");
    cases.compile_fail("tests/ui/*/fail/*.rs");
}
