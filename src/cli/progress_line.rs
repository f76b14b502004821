//! The one-line progress display of a backup, sync or restore on a terminal: bytes done of
//! the total (a `+` while the count ahead is still running), the rate, the ETA once it means
//! something (the total is known and the rate has had a few seconds to settle), files done
//! of the total, what was added, and the file being worked on, all cut to the terminal's
//! width so the line never wraps. Bytes and files count the same thing (what is done, of
//! what the run covers), so the two never disagree.

use cairn::progress::Progress;
use indicatif::{HumanBytes, HumanDuration};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How far back the rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// How long a run goes before an ETA is shown.
const ETA_AFTER: Duration = Duration::from_secs(3);
/// The fewest characters of the current file worth showing.
const FILE_MIN: usize = 12;

/// What the display has seen of a run: when it began and recent byte counts.
pub(super) struct ProgressLine {
    started: Instant,
    samples: VecDeque<(Instant, u64)>,
}

/// One reading of the counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Reading {
    pub bytes_done: u64,
    pub total_bytes: u64,
    pub files_done: u64,
    pub total_files: u64,
    pub counted: bool,
    pub added_bytes: u64,
    pub current: String,
}

impl Reading {
    pub(super) fn of(progress: &Progress) -> Self {
        Reading {
            bytes_done: progress.bytes_done.load(Relaxed),
            total_bytes: progress.total_bytes.load(Relaxed),
            files_done: progress.files_done.load(Relaxed),
            total_files: progress.total_files.load(Relaxed),
            counted: progress.counted.load(Relaxed),
            added_bytes: progress.added_bytes.load(Relaxed),
            current: progress.current(),
        }
    }
}

impl ProgressLine {
    pub(super) fn new() -> Self {
        ProgressLine {
            started: Instant::now(),
            samples: VecDeque::new(),
        }
    }

    /// The line for `reading` at `now`, at most `width` characters.
    pub(super) fn render(
        &mut self,
        name: &str,
        reading: &Reading,
        now: Instant,
        width: usize,
    ) -> String {
        self.samples.push_back((now, reading.bytes_done));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1.saturating_sub(*b0)) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let more = if reading.counted { "" } else { "+" };
        let total = reading.total_bytes.max(reading.bytes_done);
        let mut bytes = format!(
            "{}/{}{more}",
            HumanBytes(reading.bytes_done),
            HumanBytes(total)
        );
        if reading.counted && total > 0 {
            let percent = u128::from(reading.bytes_done) * 100 / u128::from(total);
            bytes.push_str(&format!(" {percent:>3}%"));
        }
        let eta = (reading.counted && now.duration_since(self.started) >= ETA_AFTER && rate > 0.0)
            .then(|| {
                let left = total.saturating_sub(reading.bytes_done) as f64 / rate;
                format!(
                    "ETA {}",
                    HumanDuration(Duration::from_secs_f64(left.min(1e7)))
                )
            });
        let files = format!(
            "{}/{}{more} files",
            reading.files_done,
            reading.total_files.max(reading.files_done)
        );
        let added =
            (reading.added_bytes > 0).then(|| format!("{} new", HumanBytes(reading.added_bytes)));
        let rate = (rate > 0.0).then(|| format!("{}/s", HumanBytes(rate as u64)));
        // Most important first; what does not fit is left out from the end.
        let parts: Vec<String> = [
            Some(name.to_owned()),
            Some(bytes),
            eta,
            rate,
            Some(files),
            added,
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut line = String::new();
        for part in parts {
            let needed = if line.is_empty() {
                part.chars().count()
            } else {
                part.chars().count() + 2
            };
            if line.chars().count() + needed > width {
                break;
            }
            if !line.is_empty() {
                line.push_str("  ");
            }
            line.push_str(&part);
        }
        let room = width.saturating_sub(line.chars().count() + 2);
        if room >= FILE_MIN && !reading.current.is_empty() {
            line.push_str("  ");
            line.push_str(&tail(&super::printable(&reading.current), room));
        }
        line
    }
}

/// `text` cut to `room` characters by dropping its start (a path's end says most).
fn tail(text: &str, room: usize) -> String {
    let length = text.chars().count();
    if length <= room {
        return text.to_owned();
    }
    let kept: String = text.chars().skip(length - room + 1).collect();
    format!("…{kept}")
}

/// The width of the terminal on stderr, in columns (80 when it cannot be told).
pub(super) fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ writes one winsize into the struct it is given.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) };
    match (rc, size.ws_col) {
        (0, columns) if columns > 0 => usize::from(columns),
        _ => 80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(done: u64, counted: bool) -> Reading {
        Reading {
            bytes_done: done,
            total_bytes: 10 << 30,
            files_done: 1234,
            total_files: 5000,
            counted,
            added_bytes: 300 << 20,
            current: "/home/someone/projects/linux/drivers/gpu/drm/amd/display/dc/core/dc.c".into(),
        }
    }

    #[test]
    fn the_line_fits_the_width_and_keeps_the_end_of_the_current_file() {
        for width in [20, 40, 60, 80, 120, 200] {
            let mut line = ProgressLine::new();
            let text = line.render("backup", &reading(1 << 30, true), Instant::now(), width);
            assert!(text.chars().count() <= width, "{width}: {text:?}");
            assert!(text.starts_with("backup"), "{text}");
            if width >= 120 {
                assert!(text.ends_with("dc/core/dc.c"), "{text}");
                assert!(text.contains("1234/5000 files"), "{text}");
            }
        }
    }

    #[test]
    fn the_eta_shows_only_once_the_total_is_known_and_the_rate_has_settled() {
        let start = Instant::now();
        let mut line = ProgressLine::new();
        line.started = start;
        let early = line.render("backup", &reading(0, true), start, 200);
        assert!(!early.contains("ETA"), "{early}");
        let counting = line.render(
            "backup",
            &reading(1 << 30, false),
            start + Duration::from_secs(4),
            200,
        );
        assert!(!counting.contains("ETA"), "{counting}");
        assert!(
            counting.contains("+ files"),
            "the total is still counted: {counting}"
        );
        let known = line.render(
            "backup",
            &reading(2 << 30, true),
            start + Duration::from_secs(5),
            200,
        );
        assert!(known.contains("ETA"), "{known}");
        assert!(known.contains(" 20%"), "{known}");
    }
}
