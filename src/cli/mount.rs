//! `cairn mount`: every checkpoint as a read-only tree, served in the foreground until the
//! filesystem is unmounted (`fusermount3 -u`) or the process gets SIGINT/SIGTERM, on which it
//! unmounts cleanly and exits 0.

use super::GlobalArgs;
use anyhow::{Context, Result};
use cairn::mount::{MountOptions, MountedVfs};
use cairn::vfs::Vfs;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct MountArgs {
    /// An empty directory to mount on
    mountpoint: PathBuf,
    /// Let other users, and root, see the mount
    #[arg(long)]
    allow_other: bool,
    #[command(flatten)]
    filters: super::FilterArgs,
}

/// Chunk buffers at least this large are mapped and unmapped by malloc rather than carved
/// from its heaps, so memory freed after a read goes back to the system.
const MMAP_THRESHOLD_BYTES: libc::c_int = 256 * 1024;

pub fn run(global: &GlobalArgs, args: MountArgs) -> Result<ExitCode> {
    // A long-running mount serves chunks from many threads; with glibc's adaptive threshold
    // their buffers fragment its heaps and the process keeps ~100 MiB it no longer uses.
    // SAFETY: mallopt only changes a malloc tuning parameter; no allocation is in flight
    // on other threads yet.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
    // One heap per thread (glibc's default, up to 16 here) holds what other threads freed:
    // two keep a mount over S3 at 320 MiB rather than 425 on the kernel tree.
    // SAFETY: as above.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let repo = Arc::new(global.open()?);
    let vfs = Vfs::new(repo.clone(), args.filters.filter()?)?;
    let options = MountOptions {
        allow_other: args.allow_other,
        ..MountOptions::default()
    };
    let mut mounted = MountedVfs::mount(vfs, &args.mountpoint, &options)?;
    let mut unmounter = mounted.unmounter();
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some()
            && let Err(e) = unmounter.unmount()
        {
            errln!("error: {e:#}");
        }
    });
    errln!(
        "mounted at {}: browse checkpoints/, latest, tags/ and history/; unmount with `fusermount3 -u {}` or Ctrl-C",
        args.mountpoint.display(),
        args.mountpoint.display()
    );
    mounted.run()?;
    errln!("unmounted {}", args.mountpoint.display());
    Ok(ExitCode::SUCCESS)
}
