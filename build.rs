//! Link options for the release binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name| std::env::var(name).unwrap_or_default();
    // Packed relative relocations (RELR): the position-independent binary's
    // 0.9 MiB of `.rela.dyn` becomes 10 KiB. glibc 2.36 (Debian 12, Raspberry
    // Pi OS 12) and binutils 2.38 or lld 15 understand them.
    if var("PROFILE") == "release" && var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
