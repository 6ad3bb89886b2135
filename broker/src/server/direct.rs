//! The answering side of an in-process session, shared by the session (which hands
//! answers over) and the in-process transport (which opens and closes it): a leaf, so
//! neither imports the other for it.

use std::sync::Mutex;

use tokio::sync::Notify;
use weir_protocol::frame::ResponseFrame;

/// Takes each answer of an in-process session as soon as its request is finished (the
/// SDK hands it straight to the request's waiter, without a task of its own in
/// between). Returns false when the client has gone; the session then ends. Dropped
/// when the session ends. Called from the broker's request tasks, one call at a time.
pub type Deliver = Box<dyn FnMut(ResponseFrame) -> bool + Send>;

/// The answering side of an in-process session: the client's [`Deliver`], until the
/// session closes or the client refuses an answer (it has gone).
pub(super) struct Direct {
    pub(super) deliver: Mutex<Option<Deliver>>,
    pub(super) gone: Notify,
}

impl Direct {
    /// Hands `resp` to the client (dropped once the session is closed).
    pub(super) fn deliver(&self, resp: ResponseFrame) {
        let mut deliver = self.deliver.lock().expect("deliver lock");
        if let Some(f) = deliver.as_mut() {
            if !f(resp) {
                deliver.take();
                drop(deliver);
                self.gone.notify_waiters();
            }
        }
    }

    /// Nothing more is handed over; the client's end learns the session is over.
    pub(super) fn close(&self) {
        let taken = self.deliver.lock().expect("deliver lock").take();
        drop(taken);
        self.gone.notify_waiters();
    }

    /// Resolves once the session is closed or the client has gone.
    pub(super) async fn closed(&self) {
        loop {
            // Registered before the check: a close in between still wakes it.
            let woken = self.gone.notified();
            if self.deliver.lock().expect("deliver lock").is_none() {
                return;
            }
            woken.await;
        }
    }
}
