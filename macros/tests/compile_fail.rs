//! Compile-fail tests of the attributes: each case in tests/compile_fail/
//! must fail with exactly the checked-in .stderr.
#[test]
fn attribute_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
    t.pass("tests/pass/*.rs");
}
