//! A wake-up for one waiting task (pure: no runtime, no clock).
//!
//! [`Signal::notify`] leaves a permit, as `tokio::sync::Notify::notify_one`
//! does; [`Signal::wait`] takes it, or waits for the next one. Waiting
//! registers the task's waker in an [`AtomicWaker`]: a few atomic operations,
//! and none at all when the same task registers again. A `Notify` waiter is
//! instead linked into a mutex-protected list when first polled and unlinked
//! when dropped, and a session's `select!` creates and drops its waits on
//! every turn: that was a tenth of a session task's CPU in the fleet
//! benchmark's churn (ADR 0011, addendum of stop 13).
//!
//! Only one task may wait on a signal at a time (the last one to poll is
//! the one woken): a mailbox has one reader, a session one task.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// A one-waiter wake-up (see the module documentation).
#[derive(Debug, Default)]
pub struct Signal {
    waker: AtomicWaker,
    set: AtomicBool,
}

impl Signal {
    /// A signal without a permit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves a permit and wakes the waiting task, if any.
    pub fn notify(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Takes the permit, or registers `cx`'s task to be woken by the next
    /// [`Signal::notify`].
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.set.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A notify between the check and the registration woke nobody:
        // look again now that the waker is in place.
        if self.set.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes when there is a permit (taking it). Cancel safe: dropping
    /// the future takes nothing.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_wait(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, std::task::Waker) {
        let count = Arc::new(Count(Default::default()));
        (count.clone(), count.into())
    }

    #[test]
    fn a_permit_is_kept_until_taken_once() {
        let signal = Signal::new();
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        signal.notify();
        signal.notify();
        assert!(signal.poll_wait(&mut cx).is_ready());
        assert!(
            signal.poll_wait(&mut cx).is_pending(),
            "two notifies, one permit"
        );
    }

    #[test]
    fn a_waiting_task_is_woken_by_notify() {
        let signal = Signal::new();
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(signal.poll_wait(&mut cx).is_pending());
        // Polling again with the same task registers nothing new.
        assert!(signal.poll_wait(&mut cx).is_pending());
        signal.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(signal.poll_wait(&mut cx).is_ready());
    }

    #[test]
    fn notify_from_another_thread_wakes_the_waiter() {
        let signal = Arc::new(Signal::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let s = signal.clone();
        let notifier = std::thread::spawn(move || s.notify());
        rt.block_on(signal.wait());
        notifier.join().unwrap();
    }
}
