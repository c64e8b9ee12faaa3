//! The bridge from the store's blocking calls to `object_store`'s futures: a runtime
//! owned by the backend, on which every request runs.
//!
//! A call spawns its future on the runtime and waits for the answer on a channel, so it
//! works from any thread: a plain one, a FUSE worker, or a blocking task of the server's
//! own runtime (where `block_on` would panic).

use std::future::Future;
use std::sync::mpsc;

use stasis_store::{Error, ErrorKind, Result};

/// A small runtime for the requests of one backend.
#[derive(Debug)]
pub(crate) struct Bridge {
    rt: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    pub(crate) fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stasis-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the object store's runtime", e))?;
        Ok(Bridge { rt: Some(rt) })
    }

    fn handle(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Io, "the object store's runtime is gone"))
    }

    /// Run `f` to completion and return its output.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle()?.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| Error::new(ErrorKind::Io, "an object store request was cancelled"))
    }

    /// Start `f` and return at once.
    pub(crate) fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        self.handle()?.spawn(f);
        Ok(())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime's worker (the
        // server may drop the last handle there): let its threads go in the background.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
