//! A non-blocking log writer: log lines go to a bounded queue and one thread writes them (buffered)
//! to standard output, so a slow terminal or pipe never stalls a request. When the queue is full,
//! only access-log lines (target [`ACCESS_TARGET`], below WARN) are shed — counted in
//! `log_lines_dropped_total` — while every other line (errors, security events, anything an
//! operator must see) waits for room: it is never dropped.
use std::{
    io::Write,
    sync::{
        OnceLock,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The target of access-log lines: the only ones that may be shed.
pub const ACCESS_TARGET: &str = "thali::access";

/// Lines waiting to be written before access lines are shed.
pub const QUEUE_LINES: usize = 16 * 1024;

enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The writer the log subscriber writes through (cheap to clone).
#[derive(Clone)]
pub struct NonBlocking {
    queue: SyncSender<Message>,
}

impl NonBlocking {
    /// Starts the writing thread over `out`, with room for `capacity` lines.
    pub fn spawn(out: Box<dyn Write + Send>, capacity: usize) -> Self {
        let (queue, lines) = sync_channel(capacity);
        std::thread::Builder::new()
            .name("thali-log".into())
            .spawn(move || write_all(lines, out))
            .expect("the log thread starts");
        metrics::counter!("log_lines_dropped_total").increment(0);
        Self { queue }
    }

    /// Waits (at most `timeout`) until every line queued before the call is written.
    pub fn flush(&self, timeout: Duration) {
        let (done, wait) = sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

fn write_all(lines: Receiver<Message>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        // Write what is queued, then flush once the queue is empty.
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = lines.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// One line being formatted; queued when the formatter drops it.
pub struct Line {
    buffer: Vec<u8>,
    queue: SyncSender<Message>,
    sheddable: bool,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let line = Message::Line(std::mem::take(&mut self.buffer));
        if self.sheddable {
            if let Err(TrySendError::Full(_)) = self.queue.try_send(line) {
                metrics::counter!("log_lines_dropped_total").increment(1);
            }
        } else {
            // Waits for room: an error or a security event is never dropped.
            let _ = self.queue.send(line);
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buffer: Vec::with_capacity(256),
            queue: self.queue.clone(),
            sheddable: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            buffer: Vec::with_capacity(256),
            queue: self.queue.clone(),
            sheddable: meta.target() == ACCESS_TARGET && *meta.level() > Level::WARN,
        }
    }
}

static PROCESS: OnceLock<NonBlocking> = OnceLock::new();

/// The process's writer to standard output (started on first use).
pub fn stdout() -> NonBlocking {
    PROCESS
        .get_or_init(|| NonBlocking::spawn(Box::new(std::io::stdout()), QUEUE_LINES))
        .clone()
}

/// Writes out what the process's writer holds (at shutdown).
pub fn flush_stdout() {
    if let Some(writer) = PROCESS.get() {
        writer.flush(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// An output that holds every write until it is opened.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Gate {
        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.write(&[]).map(|_| ())
        }
    }

    #[test]
    fn a_stalled_output_sheds_access_lines_but_never_an_error() {
        let gate = Gate::default();
        let writer = NonBlocking::spawn(Box::new(gate.clone()), 4);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_writer(writer.clone()),
        );
        let dispatch = tracing::Dispatch::new(subscriber);
        // The output is stuck: the thread's buffer (64 KiB) and then the queue fill, and access
        // lines are shed.
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..5000 {
                tracing::info!(target: "thali::access", i, "request");
            }
        });
        // An error waits for room instead of being dropped: it is queued once the output moves.
        let logger = {
            let dispatch = dispatch.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    tracing::error!(target: "thali::security", "must not be lost");
                    tracing::warn!(target: "thali::access", "a failing request is kept too");
                })
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!logger.is_finished(), "the error waits for room, it is not dropped");
        gate.open();
        logger.join().unwrap();
        writer.flush(Duration::from_secs(5));
        let text = gate.text();
        assert!(text.contains("must not be lost"), "{text}");
        assert!(text.contains("a failing request is kept too"), "{text}");
        let kept = text.matches("request i=").count();
        assert!((1..5000).contains(&kept), "some access lines shed, some kept: {kept}");
        // In order: what was kept is the first ones.
        assert!(text.contains("request i=0"), "{text}");
    }
}
