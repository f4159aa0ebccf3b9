//! A future that seldom completes, polled only once it has woken its task.
//!
//! A connection's task waits on its HTTP connection and, beside it, on signals that almost never
//! fire (the server draining). `select!` polls every branch each time the task wakes, that is
//! for every request; polling a `watch` receiver's `changed()` takes the lock of a list shared
//! by every connection of the server, so two threads serving requests took turns at one lock.
//! [`IfWoken`] polls its future with a waker of its own and again only after that waker was
//! woken: the other wakeups of the task cost an atomic swap.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The waker an [`IfWoken`] polls its future with: it notes that it was woken, then wakes the
/// task that polled the `IfWoken` last. One per connection, for all its `IfWoken`s in turn.
#[derive(Default)]
pub(crate) struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl WakeFlag {
    pub(crate) fn new() -> Arc<WakeFlag> {
        Arc::new(WakeFlag::default())
    }
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// `future`, polled at its first poll and then only after it has woken its task.
pub(crate) struct IfWoken<F> {
    flag: Arc<WakeFlag>,
    future: Pin<Box<F>>,
}

impl<F: Future> IfWoken<F> {
    /// `future`, its wakeups noted in `flag` (which it must not share with another `IfWoken`
    /// alive at the same time).
    pub(crate) fn new(flag: &Arc<WakeFlag>, future: F) -> IfWoken<F> {
        flag.woken.store(true, Ordering::Release);
        IfWoken {
            flag: flag.clone(),
            future: Box::pin(future),
        }
    }
}

impl<F: Future> Future for IfWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read: a wake after the read finds this task.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.flag.clone());
        self.future.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that counts its polls and is ready once `ready` is set (by then woken).
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
    }

    impl Future for Counted {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn polled_first_then_only_once_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let flag = WakeFlag::new();
        let mut waiting = IfWoken::new(
            &flag,
            Counted {
                polls: polls.clone(),
                ready: ready.clone(),
            },
        );
        let task = Arc::new(Counter::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // The task woken for something else: the future is not polled.
        for _ in 0..10 {
            assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // The future's own waker wakes the task, and the next poll reaches it.
        ready.store(true, Ordering::Relaxed);
        Waker::from(flag.clone()).wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}
