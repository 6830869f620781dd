//! Resolving URLs against a registry with a backend in it.

use plane_core::ErrorKind;

#[test]
fn unknown_scheme_lists_known() {
    let r = plane_mem::registry();
    let err = r
        .resolve("carrier-pigeon://x")
        .err()
        .expect("unknown scheme refused");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.message().contains("known schemes: mem"), "{err}");
    assert_eq!(
        r.resolve("not a url").err().map(|e| e.kind()),
        Some(ErrorKind::InvalidConfig)
    );
}
