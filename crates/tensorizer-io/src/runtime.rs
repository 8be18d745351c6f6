//! The private tokio runtime that drives every network source and sink
//! (HTTP, S3, GCS, Azure), and the bridge that lets synchronous callers on
//! any thread wait for it.

use std::sync::OnceLock;

use crate::error::{IoError, Result};

/// The runtime every network request runs on; a few workers suffice
/// because they only drive sockets, the bytes are copied by the calling
/// threads.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .thread_name("tensorizer-io")
                .enable_all()
                .build()
        })
        .as_ref()
        .map_err(|e| IoError::Unsupported {
            uri: "network I/O".into(),
            message: format!("cannot start the I/O runtime: {e}"),
        })
}

/// Runs `fut` on the runtime; the receiver yields its output. Waiting on a
/// std channel rather than `Runtime::block_on` works from any thread,
/// including one that belongs to the caller's own tokio runtime (where
/// `block_on` would panic); there it blocks that thread, so async callers
/// should still go through `spawn_blocking`.
pub(crate) fn spawn<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<std::sync::mpsc::Receiver<T>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    Ok(rx)
}

/// Waits for a request started with [`spawn`].
pub(crate) fn wait<T>(rx: std::sync::mpsc::Receiver<T>, uri: &str) -> Result<T> {
    rx.recv().map_err(|_| IoError::Protocol {
        uri: uri.to_owned(),
        message: "the I/O runtime dropped a request (a task panicked)".into(),
    })
}

/// Runs `fut` on the runtime and waits for it.
pub(crate) fn block<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
    uri: &str,
) -> Result<T> {
    wait(spawn(fut)?, uri)
}

/// Waits for `fut` on this thread, whatever the thread: unlike tokio's
/// `blocking_recv`, this does not panic on a thread of the caller's own
/// tokio runtime (it blocks that thread, as every synchronous read does).
/// Used for futures that need no runtime to make progress, such as a
/// channel's `recv`.
pub(crate) fn wait_on<F: Future>(fut: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
