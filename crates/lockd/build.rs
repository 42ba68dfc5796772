// The build script of lockd and lockctl (lockctl's Cargo.toml points here): tells the crate
// which commit it was built from, for `--version`. A build outside a git checkout (from a
// source tarball, say) says `unknown`.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|text| !text.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LOCKD_COMMIT={commit}");
    // Built again when HEAD moves: a new commit, a checkout, a branch switch. Only paths that
    // exist: cargo runs the script again on every build for one that does not (a repository
    // without packed refs has no `packed-refs`), and rebuilds the crate each time.
    for path in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", path]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
