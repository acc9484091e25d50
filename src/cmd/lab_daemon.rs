//! `nettool lab-daemon NAME` (hidden): the process setup starts to serve a lab's embedded DNS
//! and supervise its services.

use clap::Args;

/// Arguments of the hidden `lab-daemon`.
#[derive(Debug, Args)]
pub(crate) struct LabDaemonArgs {
    /// The lab name.
    pub name: String,
    /// Write "0\n" here when ready (or "1\n<error>").
    #[arg(long)]
    pub ready_fd: Option<i32>,
}

/// Run until SIGTERM.
pub(crate) fn run(a: LabDaemonArgs) -> anyhow::Result<i32> {
    crate::lab::daemon::run(&a.name, a.ready_fd)?;
    Ok(0)
}
