//! Build libzmq from `zeromq-src` with CURVE, against the libsodium that
//! `libsodium-sys-stable` built (it is a `links = "sodium"` crate, so its
//! `cargo:lib`/`cargo:include` reach this script as `DEP_SODIUM_*`).

fn main() {
    let lib = std::env::var("DEP_SODIUM_LIB")
        .expect("libsodium-sys-stable did not export DEP_SODIUM_LIB");
    let include = std::env::var("DEP_SODIUM_INCLUDE")
        .expect("libsodium-sys-stable did not export DEP_SODIUM_INCLUDE");
    println!("cargo:rerun-if-changed=build.rs");
    // libzmq's sources warn under cc's -Wall -Wextra; as a workspace crate
    // every warning would be shown on every clean build. `-w` silences the
    // compiler (it is vendored code plane does not change).
    let flags = std::env::var("CXXFLAGS").unwrap_or_default();
    std::env::set_var("CXXFLAGS", format!("{flags} -w"));
    // As a workspace member this crate is not covered by the workspace's
    // `[profile.dev.package."*"] opt-level = 1`, so a dev build would compile
    // libzmq at -O0; build it at least as optimised as a dependency.
    if std::env::var("OPT_LEVEL").as_deref() == Ok("0") {
        std::env::set_var("OPT_LEVEL", "1");
    }
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}
