//! How a run keeps out of the way of the people using the machine: the lowest CPU and I/O
//! priority for the process (`--low-priority`), and one byte-rate cap shared by every thread
//! (`--limit-rate`), with the parsing of rates such as `20M`.

use crate::error::{Error, Result};
use crate::fs::uncached::{DIRECT_IO_ALIGN, whole_pages};
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much unused time a limiter lets a reader catch up on in one burst.
const BURST: Duration = Duration::from_millis(100);

/// Gives the calling thread, and every thread it starts afterwards, nice 19 and the idle
/// I/O class: the scheduler runs it only when nothing else wants the CPU or the disk. Call
/// it before any thread is started so the whole run inherits it.
pub fn lower_priority() -> Result<()> {
    // SAFETY: setpriority only changes the calling task's nice value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        return Err(Error::io(
            "lowering the CPU priority (nice 19)",
            std::io::Error::last_os_error(),
        ));
    }
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: u32 = 13;
    // SAFETY: ioprio_set takes three integers and only changes the calling task's I/O class.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "lowering the I/O priority (idle class)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A cap on bytes per second, shared by all the threads that hold it.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_second: u64,
    /// When every byte granted so far will have been paid for at the rate.
    paid_until: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(bytes_per_second: u64) -> Self {
        RateLimiter {
            bytes_per_second: bytes_per_second.max(1),
            paid_until: Mutex::new(Instant::now()),
        }
    }

    /// Accounts for `bytes` just moved and sleeps as long as the rate requires.
    pub fn take(&self, bytes: u64) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let delay = {
            let mut paid_until = self.paid_until.lock().expect("not poisoned");
            let now = Instant::now();
            let credit_floor = now.checked_sub(BURST).unwrap_or(now);
            *paid_until = (*paid_until).max(credit_floor) + cost;
            paid_until.saturating_duration_since(now)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
}

/// A reader whose bytes are counted against an optional limiter.
pub struct Throttled<'a, R> {
    inner: R,
    limiter: Option<&'a RateLimiter>,
}

impl<'a, R> Throttled<'a, R> {
    pub fn new(inner: R, limiter: Option<&'a RateLimiter>) -> Self {
        Throttled { inner, limiter }
    }
}

impl<R: Read> Read for Throttled<'_, R> {
    /// Reads at most what the limiter allows in a burst (in whole pages, so reads around the
    /// page cache stay aligned): one read never sleeps long, and a reader asked to stop
    /// stops within a burst. Under 40 KiB/s a burst is less than a page and a read still
    /// takes one page, sleeping up to a page's time (4 s at 1 KiB/s).
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(limiter) = self.limiter else {
            return self.inner.read(buf);
        };
        let allowed = (limiter.bytes_per_second as f64 * BURST.as_secs_f64()) as usize;
        let allowed = whole_pages(allowed).max(DIRECT_IO_ALIGN);
        let len = buf.len().min(allowed);
        let read = self.inner.read(&mut buf[..len])?;
        limiter.take(read as u64);
        Ok(read)
    }
}

/// Parses a rate in bytes per second: a number with an optional binary suffix `K`, `M`,
/// `G` or `T` (also written `KiB`, `MB`, ...; all powers of 1024), e.g. `20M` or `512K`.
pub fn parse_rate(text: &str) -> Result<u64> {
    let invalid = || {
        Error::InvalidInput(format!(
            "{text:?} is not a rate: give bytes per second such as 500K, 20M or 1G"
        ))
    };
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits_end);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let unit: u64 = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(invalid()),
    };
    let rate = (number * unit as f64).round();
    if !(1.0..=u64::MAX as f64).contains(&rate) {
        return Err(invalid());
    }
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_binary_suffixes() {
        assert_eq!(parse_rate("20M").unwrap(), 20 << 20);
        assert_eq!(parse_rate("512k").unwrap(), 512 << 10);
        assert_eq!(parse_rate("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_rate("4096").unwrap(), 4096);
        for bad in ["", "fast", "10X", "-5M", "0", "M"] {
            let error = parse_rate(bad).unwrap_err().to_string();
            assert!(error.contains("is not a rate"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_limiter_holds_threads_to_its_rate() {
        // 1 MiB/s shared by two threads moving 300 KiB between them: at least 0.3 s minus the
        // one burst of credit, however fast the machine is.
        let limiter = RateLimiter::new(1 << 20);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    let mut reader = Throttled::new(&[0u8; 150 << 10][..], Some(&limiter));
                    std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
                });
            }
        });
        assert!(started.elapsed() >= Duration::from_millis(290) - BURST);
    }

    #[test]
    fn low_priority_is_nice_19_and_idle_io() {
        // Priorities are per thread on Linux, so the test lowers only a thread of its own.
        std::thread::spawn(|| {
            lower_priority().unwrap();
            // SAFETY: getpriority and ioprio_get only read the calling task's settings.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1 as libc::c_long, 0) };
            assert_eq!(nice, 19);
            assert_eq!(ioprio >> 13, 3, "I/O class is idle");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_throttled_read_takes_at_most_a_bursts_worth_in_whole_pages() {
        let limiter = RateLimiter::new(1 << 20);
        let data = vec![7u8; 1 << 20];
        let mut reader = Throttled::new(&data[..], Some(&limiter));
        let mut buf = vec![0u8; 1 << 20];
        let read = reader.read(&mut buf).unwrap();
        assert_eq!(read, 25 * 4096, "a tenth of a second at 1 MiB/s, in pages");
        let mut unlimited = Throttled::new(&data[..], None);
        assert_eq!(unlimited.read(&mut buf).unwrap(), 1 << 20);
    }
}
