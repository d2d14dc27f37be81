//! Link options for the release binary.

fn main() {
    // Only this file is an input. release/ runs it as `../build.rs`, and a
    // path that is missing would make Cargo rerun it, and relink, each time.
    let own_path = if std::path::Path::new("build.rs").exists() {
        "build.rs"
    } else {
        "../build.rs"
    };
    println!("cargo:rerun-if-changed={own_path}");
    let var = |name| std::env::var(name).unwrap_or_default();
    // Packed relative relocations (RELR): the position-independent binary's
    // 0.9 MiB of `.rela.dyn` becomes 10 KiB. glibc 2.36 (Debian 12, Raspberry
    // Pi OS 12) and lld 15 or binutils 2.38 understand them (binutils 2.40
    // ignores the option for aarch64, with a warning).
    if var("PROFILE") == "release" && var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
