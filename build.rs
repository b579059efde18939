//! Link step tuning for the server binary.
//!
//! A position-independent binary carries a 24-byte relocation record for every pointer in its
//! read-only data (1.2 MB of them here), and the loader reads them all at start-up, so they
//! stay resident. glibc 2.36 and later can read them packed (`DT_RELR`, a few KB); the loader
//! of an older glibc refuses such a binary, so they are packed only when building for this
//! machine and its glibc is new enough.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target == host && target.ends_with("-linux-gnu") && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The running glibc's version, as `getconf GNU_LIBC_VERSION` prints it ("glibc 2.36").
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (major, minor)
}
