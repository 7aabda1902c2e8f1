//! Progress: one labeled display per operation on a terminal, periodic `progress` events
//! otherwise.
//!
//! The core only bumps atomic counters through a [`Progress`] handle carried by its
//! [`Cancel`] token; the phase is the one the token's `enter(phase)` names. A [`Display`]
//! thread reads both on a timer, so the archive and download loops never format, lock or
//! write anything for it.
//!
//! - On a terminal with text logs: one line, redrawn every [`REDRAW`], such as
//!   `archive and upload · 2/4 files · 383.6 MiB of 800.0 MiB (47%) · ETA 2 seconds`.
//!   Log lines clear it first (see [`LogWriter`]) and it is drawn again on the next tick.
//! - Otherwise (JSON logs, a pipe, a container): a `progress` event every
//!   `GWB_PROGRESS_EVERY` (10 s), the first only after one interval, so short operations
//!   log none.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cancel::Cancel;
use crate::fsutil::human_bytes;

/// How often the terminal line is redrawn.
const REDRAW: Duration = Duration::from_millis(200);

/// Hidden: how often `progress` events are logged off a terminal (tests use a few ms).
const EVERY_ENV: &str = "GWB_PROGRESS_EVERY";
const DEFAULT_EVERY: Duration = Duration::from_secs(10);

/// An ETA before this much of a phase has passed is a guess from a cold start.
const ETA_AFTER: Duration = Duration::from_secs(2);
/// …and before this share of it is done, too.
const ETA_AFTER_PERCENT: u64 = 5;

/// How far the current phase is. Totals of 0 are unknown.
#[derive(Default)]
struct Counters {
    files: AtomicU64,
    files_total: AtomicU64,
    bytes: AtomicU64,
    bytes_total: AtomicU64,
    /// 1-based archive of a chain being read, and how many there are.
    archive: AtomicU64,
    archives: AtomicU64,
    phase_started: Mutex<Option<Instant>>,
}

/// The core's handle: cheap to clone, every update one relaxed atomic add.
#[derive(Clone, Default)]
pub struct Progress(Arc<Counters>);

impl Progress {
    /// A new phase starts from nothing: called by [`Cancel::enter`].
    pub(crate) fn restart(&self) {
        let c = &self.0;
        let counters = [&c.files, &c.files_total, &c.bytes, &c.bytes_total];
        for counter in counters.into_iter().chain([&c.archive, &c.archives]) {
            counter.store(0, Relaxed);
        }
        *c.phase_started.lock().unwrap() = Some(Instant::now());
    }

    /// What the phase will do, where known.
    pub fn set_totals(&self, files: u64, bytes: u64) {
        self.0.files_total.store(files, Relaxed);
        self.0.bytes_total.store(bytes, Relaxed);
    }

    /// Reading archive `k` (1-based) of a chain of `n`.
    pub fn set_archive(&self, k: usize, n: usize) {
        self.0.archive.store(k as u64, Relaxed);
        self.0.archives.store(n as u64, Relaxed);
    }

    pub fn add_files(&self, n: u64) {
        self.0.files.fetch_add(n, Relaxed);
    }

    pub fn add_bytes(&self, n: u64) {
        self.0.bytes.fetch_add(n, Relaxed);
    }

    /// Wraps a reader so that every byte read counts as done.
    pub fn reader<R: io::Read>(&self, inner: R) -> Counted<R> {
        Counted {
            inner,
            progress: self.clone(),
        }
    }

    fn sample(&self, phase: &'static str) -> Sample {
        let c = &self.0;
        Sample {
            phase,
            files: c.files.load(Relaxed),
            files_total: c.files_total.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            bytes_total: c.bytes_total.load(Relaxed),
            archive: c.archive.load(Relaxed),
            archives: c.archives.load(Relaxed),
            elapsed: c.phase_started.lock().unwrap().map(|t| t.elapsed()),
        }
    }
}

/// A reader whose bytes count as progress.
pub struct Counted<R> {
    inner: R,
    progress: Progress,
}

impl<R: io::Read> io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }
}

/// The time left, once it means something: after [`ETA_AFTER`] of the phase and
/// [`ETA_AFTER_PERCENT`] of its work, assuming the rest goes at the pace so far.
pub fn eta(elapsed: Duration, done: u64, total: u64) -> Option<Duration> {
    if total == 0 || done >= total || elapsed < ETA_AFTER || done * 100 < total * ETA_AFTER_PERCENT
    {
        return None;
    }
    Some(elapsed.mul_f64((total - done) as f64 / done as f64))
}

/// One reading of the counters.
struct Sample {
    phase: &'static str,
    files: u64,
    files_total: u64,
    bytes: u64,
    bytes_total: u64,
    archive: u64,
    archives: u64,
    elapsed: Option<Duration>,
}

impl Sample {
    fn percent(&self) -> Option<u64> {
        (self.bytes_total > 0).then(|| (self.bytes * 100 / self.bytes_total).min(100))
    }

    /// The terminal line: only the parts this phase knows.
    fn line(&self) -> String {
        let mut parts = vec![self.phase.to_string()];
        if self.archives > 1 {
            parts.push(format!("archive {}/{}", self.archive, self.archives));
        }
        match (self.files, self.files_total) {
            (0, 0) => {}
            (done, 0) => parts.push(format!("{done} files")),
            (done, total) => parts.push(format!("{done}/{total} files")),
        }
        match (self.bytes, self.percent()) {
            (0, _) => {}
            (done, None) => parts.push(human_bytes(done)),
            (done, Some(percent)) => parts.push(format!(
                "{} of {} ({percent}%)",
                human_bytes(done),
                human_bytes(self.bytes_total)
            )),
        }
        let eta = self
            .elapsed
            .and_then(|elapsed| eta(elapsed, self.bytes, self.bytes_total));
        if let Some(eta) = eta {
            parts.push(format!("ETA {}", indicatif::HumanDuration(eta)));
        }
        parts.join(" · ")
    }

    fn log(&self) {
        tracing::info!(
            phase = self.phase,
            files = self.files,
            files_total = (self.files_total > 0).then_some(self.files_total),
            bytes = self.bytes,
            bytes_total = (self.bytes_total > 0).then_some(self.bytes_total),
            percent = self.percent(),
            archive = (self.archives > 0).then_some(self.archive),
            archives = (self.archives > 0).then_some(self.archives),
            "progress"
        );
    }
}

/// How progress is shown, decided once with the log format.
#[derive(Clone, Copy)]
enum Mode {
    Terminal,
    Events(Duration),
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Whether a progress line is on the terminal now; the lock also keeps a log line and
/// a redraw from interleaving.
static LINE_DRAWN: Mutex<bool> = Mutex::new(false);

/// Decides the mode: a line only for text logs on a terminal (a person is watching);
/// events for everything else. Call once, when logging is set up.
pub fn init(json_logs: bool) {
    let mode = if !json_logs && io::stderr().is_terminal() {
        Mode::Terminal
    } else {
        let every = std::env::var(EVERY_ENV)
            .ok()
            .and_then(|value| humantime::parse_duration(&value).ok())
            .unwrap_or(DEFAULT_EVERY);
        Mode::Events(every)
    };
    let _ = MODE.set(mode);
}

/// The display of one operation; stops (and clears its line) when dropped.
pub struct Display {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Display {
    /// Starts showing the progress of the work `cancel` belongs to.
    pub fn start(cancel: &Cancel) -> Self {
        let Some(&mode) = MODE.get() else {
            return Self {
                stop: None,
                thread: None,
            };
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let cancel = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("ghostwire-progress".into())
            .spawn(move || {
                let tick = match mode {
                    Mode::Terminal => REDRAW,
                    Mode::Events(every) => every,
                };
                // Nothing before the first tick: a short operation shows nothing.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    let sample = cancel.progress().sample(cancel.phase());
                    match mode {
                        Mode::Terminal => draw(&sample.line()),
                        // A phase that has done nothing yet may not know its totals
                        // yet either: its first event waits for its first byte or file.
                        Mode::Events(_) if sample.bytes == 0 && sample.files == 0 => {}
                        Mode::Events(_) => sample.log(),
                    }
                }
                if let Mode::Terminal = mode {
                    clear();
                }
            })
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn draw(line: &str) {
    let line = fit(line, terminal_width());
    let mut drawn = LINE_DRAWN.lock().unwrap();
    let mut stderr = io::stderr().lock();
    let _ = write!(stderr, "\r\x1b[2K{line}");
    let _ = stderr.flush();
    *drawn = true;
}

/// The line cut to the terminal's width: a line that wraps cannot be cleared with `\r`,
/// and every redraw would leave one more behind.
fn fit(line: &str, width: usize) -> &str {
    // One column spare: some terminals wrap when the last one is written.
    match line.char_indices().nth(width.saturating_sub(1)) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

fn terminal_width() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only writes one `winsize` into the struct it is given.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        size.ws_col as usize
    } else {
        80
    }
}

fn clear() {
    let mut drawn = LINE_DRAWN.lock().unwrap();
    if *drawn {
        let _ = write!(io::stderr().lock(), "\r\x1b[2K");
        *drawn = false;
    }
}

/// Text logs' writer: clears the progress line before a log line, so the two never mix.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut drawn = LINE_DRAWN.lock().unwrap();
        let mut stderr = io::stderr().lock();
        if *drawn {
            stderr.write_all(b"\r\x1b[2K")?;
            *drawn = false;
        }
        stderr.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_eta_waits_for_two_seconds_and_five_percent() {
        // Too early, however far along.
        assert_eq!(eta(S, 50, 100), None);
        // Long enough, but too little done to extrapolate from.
        assert_eq!(eta(10 * S, 4, 100), None);
        // Both: the rest at the pace so far.
        assert_eq!(eta(2 * S, 5, 100), Some(38 * S));
        assert_eq!(eta(4 * S, 50, 100), Some(4 * S));
        // Unknown total, or done.
        assert_eq!(eta(10 * S, 50, 0), None);
        assert_eq!(eta(10 * S, 100, 100), None);
    }

    #[test]
    fn a_line_wider_than_the_terminal_is_cut_to_fit() {
        let line = "download and unpack · archive 1/2";
        assert_eq!(fit(line, 80), line);
        assert_eq!(fit(line, 23), "download and unpack · ");
    }

    #[test]
    fn the_line_shows_only_what_the_phase_knows() {
        let progress = Progress::default();
        progress.restart();
        assert_eq!(progress.sample("walk").line(), "walk");
        progress.add_files(3);
        assert_eq!(progress.sample("walk").line(), "walk · 3 files");
        progress.restart();
        progress.set_totals(0, 4 << 20);
        progress.set_archive(1, 2);
        std::io::copy(
            &mut progress.reader(&vec![0u8; 1 << 20][..]),
            &mut io::sink(),
        )
        .unwrap();
        assert_eq!(
            progress.sample("download and unpack").line(),
            "download and unpack · archive 1/2 · 1.0 MiB of 4.0 MiB (25%)"
        );
    }
}
