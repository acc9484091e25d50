//! `nettool lab-daemon NAME` (hidden): the process setup starts to serve a lab's embedded DNS
//! and supervise its services.

use crate::cli::LabDaemonArgs;

/// Run until SIGTERM.
pub fn run(a: LabDaemonArgs) -> anyhow::Result<i32> {
    crate::lab::daemon::run(&a.name, a.ready_fd)?;
    Ok(0)
}
