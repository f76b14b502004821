//! Stopping a run that writes (backup, pull, copy) cleanly on SIGINT or SIGTERM. The first
//! signal sets a flag that the workers check between files and chunks: they stop reading,
//! the packer finishes the pack in hand and writes its index file, the lock is released, and
//! the command says what was kept for the next run (exit 130). A second signal ends the
//! process at once. Everything already packed is indexed, so the next run reuses it.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

/// Set by the signal handlers installed with [`install`].
static REQUESTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// The exit status of a run stopped by a signal, as shells report SIGINT.
pub const EXIT_CODE: u8 = 130;

/// Installs the handlers: the first SIGINT or SIGTERM asks the run to stop, a second one
/// exits with [`EXIT_CODE`] at once.
pub fn install() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        let installed = signal_hook::flag::register_conditional_shutdown(
            signal,
            i32::from(EXIT_CODE),
            Arc::clone(&REQUESTED),
        )
        .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&REQUESTED)));
        installed.map_err(|e| Error::io("installing signal handlers", e))?;
    }
    Ok(())
}

/// Whether a signal asked the run to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Error::Interrupted)` once a signal asked the run to stop.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
