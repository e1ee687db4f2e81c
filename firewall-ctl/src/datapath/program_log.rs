//! The programs' diagnostic events (`firewall_common::diagnostics`): the
//! records they write with aya-log, forwarded into the daemon's `tracing`
//! log with the name of the program that wrote them.

use std::io;

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, error, info, trace, warn};

/// Hands aya-log's records to `tracing`. A record's target is the name of
/// the program that wrote it.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let (program, message) = (record.target(), record.args());
        match record.level() {
            log::Level::Error => error!(program, "{message}"),
            log::Level::Warn => warn!(program, "{message}"),
            log::Level::Info => info!(program, "{message}"),
            log::Level::Debug => debug!(program, "{message}"),
            log::Level::Trace => trace!(program, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The reader of the programs' records.
pub type ProgramLog = EbpfLogger<ToTracing>;

/// Starts reading the records of the programs in `ebpf`. Without them the
/// firewall works the same, so a failure is logged, not returned.
pub(super) fn open(ebpf: &mut Ebpf) -> Option<ProgramLog> {
    EbpfLogger::init_with_logger(ebpf, ToTracing)
        .inspect_err(|err| {
            warn!(error = %err, "reading the programs' diagnostic events failed; the log will not have them");
        })
        .ok()
}

/// Forwards the programs' records as they come, until the daemon stops.
pub async fn forward(log: ProgramLog) -> io::Result<()> {
    // SAFETY: the logger owns its ring buffer's descriptor, which stays
    // open and the same until the `AsyncFd` drops it.
    let mut log = unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)?;
    loop {
        let mut ready = log.readable_mut().await?;
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
