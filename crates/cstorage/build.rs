//! Records the git commit the binary is built from (for `--version`), when built from a git
//! checkout; a build from a packaged crate has none.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    match &commit {
        Some(c) => println!("cargo:rustc-env=CSTORAGE_VERSION={version} (commit {c})"),
        None => println!("cargo:rustc-env=CSTORAGE_VERSION={version}"),
    }
    if commit.is_some() {
        // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs.
        for path in ["HEAD", "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        if let Some(p) = branch.and_then(|r| git(&["rev-parse", "--git-path", &r])) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
