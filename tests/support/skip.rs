//! Shared by the test suites' `common` modules (included with `#[path]`): how a test that cannot
//! run says so where CI's log shows it, and the reference python of the interop checks.

/// Says that the running test did not run (all or part of it) and why, as
/// `SKIPPED: <test>: <why>` on the process's real stderr: libtest captures only the
/// `print!`/`eprint!` macros, so this line shows in `cargo test`'s log even when the test passes.
pub fn skipped(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = std::io::stderr().write_all(format!("SKIPPED: {test}: {why}\n").as_bytes());
}

/// The reference python (`$AFINAR_PYTHON`, the venv `scripts/reference-venv.sh` makes), or `None`
/// after a `SKIPPED` line naming `check` when it is not set (`scripts/test.sh` sets it unless
/// `AFINAR_SKIP_PYTHON=1`). A set but missing python fails the test.
pub fn reference_python(check: &str) -> Option<std::ffi::OsString> {
    match std::env::var_os("AFINAR_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => {
            assert!(
                std::path::Path::new(&p).is_file(),
                "AFINAR_PYTHON={} is not a file (create the venv with scripts/reference-venv.sh)",
                std::path::Path::new(&p).display()
            );
            Some(p)
        }
        None => {
            skipped(&format!(
                "{check} not run: AFINAR_PYTHON is not set (the reference venv's python, from \
                 scripts/reference-venv.sh; ./scripts/test.sh sets it)"
            ));
            None
        }
    }
}
