//! Records whether this is an optimized build, which `loads-relay --version` tells
//! (the broker puts only an optimized relay in the relay image).

fn main() {
    let profile = if std::env::var("OPT_LEVEL").is_ok_and(|level| level != "0") { "optimized" } else { "debug" };
    println!("cargo:rustc-env=LOADS_RELAY_PROFILE={profile}");
}
