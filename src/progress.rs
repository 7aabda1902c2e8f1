//! Progress: one labeled display per operation on a terminal, periodic `progress` events
//! otherwise.
//!
//! The core only bumps atomic counters through a [`Progress`] handle (carried by its
//! cancellation token, whose `enter(phase)` names the phase here too). A [`Display`]
//! thread reads them on a timer, so the archive and download loops never format, lock or
//! write anything for it.
//!
//! - On a terminal with text logs: one indicatif line, redrawn every [`REDRAW`], such as
//!   `archive and upload · 2/4 files · 383.60 MiB of 800.00 MiB (47%) · ETA 2 seconds`.
//!   Log lines are written around it (see [`LogWriter`]).
//! - Otherwise (JSON logs, a pipe, a container): a `progress` event every
//!   `--progress-every` (10 s), the first only after one interval, so short operations
//!   log none.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the terminal line is redrawn.
const REDRAW: Duration = Duration::from_millis(200);

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
    phase: Mutex<&'static str>,
    phase_started: Mutex<Option<Instant>>,
}

/// The core's handle: cheap to clone, every update one relaxed atomic add.
#[derive(Clone, Default)]
pub struct Progress(Arc<Counters>);

impl Progress {
    /// A new phase starts from nothing: called by `Cancel::enter`.
    pub(crate) fn enter(&self, phase: &'static str) {
        let c = &self.0;
        *c.phase.lock().unwrap() = phase;
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

    /// The phase the work is in.
    pub fn phase(&self) -> &'static str {
        *self.0.phase.lock().unwrap()
    }

    fn sample(&self) -> Sample {
        let c = &self.0;
        Sample {
            phase: self.phase(),
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
            (done, None) => parts.push(HumanBytes(done).to_string()),
            (done, Some(percent)) => parts.push(format!(
                "{} of {} ({percent}%)",
                HumanBytes(done),
                HumanBytes(self.bytes_total)
            )),
        }
        let eta = self
            .elapsed
            .and_then(|elapsed| eta(elapsed, self.bytes, self.bytes_total));
        if let Some(eta) = eta {
            parts.push(format!("ETA {}", HumanDuration(eta)));
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

/// The bar on the terminal now, if any: log lines are written around it (see
/// [`LogWriter`]).
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Decides the mode: a line only for text logs on a terminal (a person is watching);
/// a `progress` event every `every` for everything else. Call once, when logging is set
/// up.
pub fn init(json_logs: bool, every: Duration) {
    let mode = if !json_logs && io::stderr().is_terminal() {
        Mode::Terminal
    } else {
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
    /// Starts showing `progress`, the counters of the work it belongs to.
    pub fn start(progress: &Progress) -> Self {
        let Some(&mode) = MODE.get() else {
            return Self {
                stop: None,
                thread: None,
            };
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let progress = progress.clone();
        let thread = std::thread::Builder::new()
            .name("ghostwire-progress".into())
            .spawn(move || match mode {
                Mode::Terminal => show_bar(&progress, &stopped),
                Mode::Events(every) => log_events(&progress, &stopped, every),
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

/// One line on the terminal, cut to its width by indicatif and redrawn every [`REDRAW`]
/// until `stopped`; nothing before the first tick, so a short operation shows nothing.
fn show_bar(progress: &Progress, stopped: &mpsc::Receiver<()>) {
    let mut bar = None;
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(REDRAW) {
        let bar = bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{wide_msg}").expect("a valid template"));
            *BAR.lock().unwrap() = Some(bar.clone());
            bar
        });
        bar.set_message(progress.sample().line());
    }
    if let Some(bar) = BAR.lock().unwrap().take() {
        bar.finish_and_clear();
    }
}

/// A `progress` event every `every` until `stopped`.
fn log_events(progress: &Progress, stopped: &mpsc::Receiver<()>, every: Duration) {
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
        let sample = progress.sample();
        // A phase that has done nothing yet may not know its totals yet either: its
        // first event waits for its first byte or file.
        if sample.bytes > 0 || sample.files > 0 {
            sample.log();
        }
    }
}

/// Text logs' writer: a log line is written with the progress bar out of the way, so the
/// two never mix.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = BAR.lock().unwrap().clone();
        match bar {
            Some(bar) => bar.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
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
    fn the_line_shows_only_what_the_phase_knows() {
        let progress = Progress::default();
        progress.enter("walk");
        assert_eq!(progress.sample().line(), "walk");
        progress.add_files(3);
        assert_eq!(progress.sample().line(), "walk · 3 files");
        progress.enter("download and unpack");
        progress.set_totals(0, 4 << 20);
        progress.set_archive(1, 2);
        std::io::copy(
            &mut progress.reader(&vec![0u8; 1 << 20][..]),
            &mut io::sink(),
        )
        .unwrap();
        assert_eq!(
            progress.sample().line(),
            "download and unpack · archive 1/2 · 1.00 MiB of 4.00 MiB (25%)"
        );
    }
}
