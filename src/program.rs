//! How this program is named in the commands it prints (hints, fixes, "Try next" lines).

/// `nettool` when the shell finds this very binary under that name, else its absolute path
/// (a `cargo run` or target/release build that is not installed), so a printed command runs as
/// printed.
pub(crate) fn me() -> String {
    let exe = std::env::current_exe().ok();
    let on_path = crate::lab::apply::find_tool("nettool");
    match (&exe, on_path) {
        (Some(e), Some(p)) if std::fs::canonicalize(&p).ok().as_ref() == Some(e) => {
            "nettool".into()
        }
        (Some(e), _) => e.display().to_string(),
        (None, _) => "nettool".into(),
    }
}

/// Quote one argument for a POSIX shell line (only when it needs it): a printed command runs
/// as printed, whatever a name or path in it holds.
pub(crate) fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}
