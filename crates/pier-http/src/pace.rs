//! How many fresh instances are live at once: a request starts its instance only while the
//! instances already live leave room for it.
//!
//! An instance that waits (on a key-value store, an origin, a client) keeps its memory while
//! others run; with many of them live, each comes back to a cold cache, and the memory reset
//! that ends it costs more: a componentize-py guest waiting on Redis for a `get` and a `set`
//! cost twice the CPU per request at 50 concurrent requests as at 2, 30-44 of its instances
//! live at once, most of them waiting (bench/RESULTS.md). A request is therefore admitted at
//! once only while there is room: fewer instances live than the threads need to stay busy, by
//! what the instances have done so far (see [`Pace::target`]), and never fewer than one per
//! thread; else it waits in a queue, in arrival order, until an instance ends, or until none
//! of the live ones has been runnable for [`IDLE_FOR`] (all wait: a thread would otherwise
//! have nothing to do), which lets one in; never longer than [`MAX_WAIT`]
//! (guests that compute for long do not hold up the others). Guests that wait long (a slow
//! origin) are not held back: the room grows with their waits as instances end, and idle spells
//! that follow each other with no instance woken let in 2, 4, ... 64 at a time.
//!
//! A live instance is runnable from its admission until its future returns `Pending`, and again
//! from the moment it is woken (or polled) until its next `Pending`; [`Paced`] tracks this with a
//! waker of its own around its polls.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How much one instance's times move the averages [`Pace::target`] is made of.
const WEIGHT: f64 = 1.0 / 32.0;

/// How long instances must live for each time they run (waits included) before a thread gets a
/// second one: waits at least half as long as the runs. Below that, a thread waits them out: a
/// second instance of a large guest (an interpreter) costs more in cold caches than the thread
/// would idle (a componentize-py app waiting on Redis for a `get` and a `set` lives ~1.3x its
/// run: with one live instance per thread instead of two, pier spends ~5% less CPU on each of
/// its requests and serves as many, or 5-20% more while other work contends for the caches,
/// bench/RESULTS.md), while a small guest waiting on an origin (~2.4x) keeps three.
const SECOND_INSTANCE_AT: f64 = 1.5;

/// How long a request waits for room at most: past it, it starts its instance anyway (the
/// live ones compute rather than wait, so the threads are shared with it as they would be).
const MAX_WAIT: Duration = Duration::from_millis(50);

/// How long no live instance may be runnable, with requests waiting, before one more is let in
/// past the target: a wait this short (a key-value round trip) is better waited out.
const IDLE_FOR: Duration = Duration::from_micros(1000);

/// The live instances of one serving thread and the requests waiting for room.
pub(crate) struct Pace {
    threads: usize,
    base: usize,
    epoch: Instant,
    state: Mutex<State>,
    live: metrics::Gauge,
    queued: metrics::Gauge,
}

#[derive(Default)]
struct State {
    live: usize,
    runnable: usize,
    queue: VecDeque<oneshot::Sender<Live>>,
    /// Moving averages over the instances that ended: seconds from admission to the end, and
    /// seconds of that spent runnable (running, or woken and waiting for a thread).
    lifetime: f64,
    ran: f64,
    /// Since when no live instance has been runnable ([`Pace::now`]), if none is.
    idle_since: Option<u64>,
    /// Whether a task is on its way to let a request in once the idle time is up.
    idle_timer: bool,
    /// Idle spells in a row with no instance woken in between.
    idle_streak: u32,
}

impl Pace {
    /// A pace for a runtime of `threads` worker threads (a server keeps one per serving thread,
    /// each for one).
    pub(crate) fn new(threads: usize) -> Pace {
        Pace {
            threads,
            base: threads.max(1),
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
            live: metrics::gauge!(crate::metrics::INSTANCES_LIVE),
            queued: metrics::gauge!(crate::metrics::INSTANCES_QUEUED),
        }
    }

    /// How many live instances keep the threads busy: each thread runs one instance while the
    /// others it has started wait, so `threads x lifetime / runnable time` (an instance that
    /// waits as long as it runs needs two per thread), rounded up; but one per thread while
    /// instances live less than [`SECOND_INSTANCE_AT`] times their run; at least
    /// [`Pace::base`].
    fn target(&self, state: &State) -> usize {
        if state.ran <= 0.0 {
            return self.base;
        }
        let per_thread = state.lifetime / state.ran;
        let per_thread = if per_thread < SECOND_INSTANCE_AT {
            1.0
        } else {
            per_thread
        };
        let target = (self.threads as f64 * per_thread).ceil();
        if target >= usize::MAX as f64 {
            usize::MAX
        } else {
            (target as usize).max(self.base)
        }
    }

    fn admits(&self, state: &State) -> bool {
        state.live < self.target(state)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Room for one more live instance: at once if there is room, else once there is.
    pub(crate) async fn enter(self: &Arc<Self>) -> Live {
        let waiting = {
            let mut state = self.state.lock().unwrap();
            // (Requests that left the queue are skipped.)
            while state.queue.front().is_some_and(oneshot::Sender::is_closed) {
                state.queue.pop_front();
                self.queued.decrement(1.0);
            }
            if state.queue.is_empty() && self.admits(&state) {
                self.count_in(&mut state);
                None
            } else {
                let (sender, receiver) = oneshot::channel();
                state.queue.push_back(sender);
                self.queued.increment(1.0);
                // Every live instance may be waiting already.
                self.arm_idle_timer(&mut state);
                Some(receiver)
            }
        };
        match waiting {
            None => Live::new(self.clone()),
            Some(mut receiver) => {
                metrics::counter!(crate::metrics::INSTANCES_PACED).increment(1);
                match tokio::time::timeout(MAX_WAIT, &mut receiver).await {
                    // A sender leaves the queue only to be sent on.
                    Ok(live) => live.expect("a waiting request is admitted"),
                    // Instances that compute (and so stay runnable) keep their threads; this
                    // request gets its share of them now. Its place in the queue is skipped
                    // (room sent there meanwhile is given back as the receiver drops).
                    Err(_) => {
                        drop(receiver);
                        self.count_in(&mut self.state.lock().unwrap());
                        Live::new(self.clone())
                    }
                }
            }
        }
    }

    /// Counts one more live instance, runnable.
    fn count_in(&self, state: &mut State) {
        state.live += 1;
        state.runnable += 1;
        state.idle_since = None;
        self.live.increment(1.0);
    }

    /// Admits waiting requests while there is room, or (`idle`) up to that many.
    fn admit_waiting(self: &Arc<Self>, idle: Option<usize>) {
        let mut admitted = 0;
        loop {
            let sender = {
                let mut state = self.state.lock().unwrap();
                let room = match idle {
                    // (Still idle when the first is let in.)
                    Some(n) => admitted < n && (admitted > 0 || state.idle_since.is_some()),
                    None => self.admits(&state),
                };
                if !room {
                    return;
                }
                let Some(sender) = state.queue.pop_front() else {
                    return;
                };
                self.count_in(&mut state);
                self.queued.decrement(1.0);
                sender
            };
            match sender.send(Live::new(self.clone())) {
                Ok(()) => admitted += 1,
                // That request is gone: its room goes to the next, in this loop.
                Err(mut live) => live.admits = false,
            }
        }
    }

    /// Counts a runnable instance as waiting.
    fn waits(self: &Arc<Self>, timing: &Timing) {
        {
            let mut state = self.state.lock().unwrap();
            if !timing.runnable.swap(false, Ordering::AcqRel) {
                return;
            }
            timing.pause(self);
            debug_assert!(state.runnable > 0);
            state.runnable = state.runnable.saturating_sub(1);
            self.maybe_idle(&mut state);
        }
        self.admit_waiting(None);
    }

    /// Notes that no instance is runnable, if so, and makes sure that requests waiting then
    /// are let in if it stays so for [`IDLE_FOR`].
    fn maybe_idle(self: &Arc<Self>, state: &mut State) {
        if state.runnable > 0 {
            return;
        }
        state.idle_since = Some(self.now());
        self.arm_idle_timer(state);
    }

    /// Starts the idle timer if requests wait while no instance is runnable, and none runs.
    fn arm_idle_timer(self: &Arc<Self>, state: &mut State) {
        if state.idle_since.is_some()
            && !state.queue.is_empty()
            && !state.idle_timer
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.idle_timer = true;
            runtime.spawn(self.clone().idle_timer());
        }
    }

    /// Lets a request in once no instance has been runnable for [`IDLE_FOR`] (a thread would
    /// otherwise have nothing to do); two if the last idle spell had no instance woken since,
    /// then four, and so on up to 64: a herd of requests whose guests all wait long gets in
    /// quickly, while waits that end soon (a key-value round trip) let one in at a time.
    async fn idle_timer(self: Arc<Self>) {
        loop {
            let mut streak = 0;
            let left = {
                let mut state = self.state.lock().unwrap();
                let left = match state.idle_since {
                    Some(since) if !state.queue.is_empty() => {
                        let idle = Duration::from_nanos(self.now().saturating_sub(since));
                        Some(IDLE_FOR.saturating_sub(idle))
                    }
                    _ => None,
                };
                if left.is_none_or(|left| left.is_zero()) {
                    // Done: a later idle spell gets a timer of its own.
                    state.idle_timer = false;
                }
                if left.is_some_and(|left| left.is_zero()) {
                    streak = state.idle_streak.min(6);
                    state.idle_streak += 1;
                }
                left
            };
            match left {
                Some(left) if !left.is_zero() => tokio::time::sleep(left).await,
                Some(_) => return self.admit_waiting(Some(1 << streak)),
                None => return,
            }
        }
    }

    /// Counts an instance runnable again (woken, or polled), unless it already is.
    fn resume(&self, timing: &Timing) {
        // Without the lock, for the usual case (polled while runnable: every request's first
        // poll): only its own poll turns the flag off, so a set flag stays set meanwhile. A wake
        // that reads it set just before that poll's `Pending` counts nothing; the poll that
        // wake brings does.
        if timing.runnable.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state.lock().unwrap();
        if timing.runnable.swap(true, Ordering::AcqRel) {
            return;
        }
        timing.since.store(self.now(), Ordering::Release);
        state.runnable += 1;
        state.idle_since = None;
        state.idle_streak = 0;
    }
}

/// When an instance was runnable, shared by its [`Live`] and the wakers of its polls. Its flag
/// changes only under the pace's lock, with the count of runnable instances.
struct Timing {
    /// Whether it counts as runnable (set by whichever comes first of a waker and its next poll).
    runnable: AtomicBool,
    /// When it last became runnable ([`Pace::now`]).
    since: AtomicU64,
    /// Nanoseconds it was runnable before that.
    ran: AtomicU64,
}

impl Timing {
    /// Adds the time since it last became runnable.
    fn pause(&self, pace: &Pace) {
        let ran = pace
            .now()
            .saturating_sub(self.since.load(Ordering::Acquire));
        self.ran.fetch_add(ran, Ordering::AcqRel);
    }
}

/// One live instance's room: given back when dropped.
pub(crate) struct Live {
    pace: Arc<Pace>,
    timing: Arc<Timing>,
    admitted: u64,
    /// Whether giving it back admits waiting requests (not when `admit_waiting` itself does).
    admits: bool,
    /// Whether an instance ran in it (its times go into the averages).
    measured: bool,
}

impl Live {
    fn new(pace: Arc<Pace>) -> Live {
        let admitted = pace.now();
        Live {
            pace,
            timing: Arc::new(Timing {
                runnable: AtomicBool::new(true),
                since: AtomicU64::new(admitted),
                ran: AtomicU64::new(0),
            }),
            admitted,
            admits: true,
            measured: false,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        {
            let mut state = self.pace.state.lock().unwrap();
            // A waker that fires after this finds the flag set and counts nothing.
            let runnable = self.timing.runnable.swap(true, Ordering::AcqRel);
            if runnable {
                self.timing.pause(&self.pace);
            }
            let lifetime = self.pace.now().saturating_sub(self.admitted) as f64 / 1e9;
            let ran = self.timing.ran.load(Ordering::Acquire) as f64 / 1e9;
            debug_assert!(state.live > 0 && (!runnable || state.runnable > 0));
            state.live = state.live.saturating_sub(1);
            if runnable {
                state.runnable = state.runnable.saturating_sub(1);
            }
            // (Only an instance that ran tells how long instances live.)
            if self.admits && self.measured {
                state.lifetime += (lifetime - state.lifetime) * WEIGHT;
                state.ran += (ran - state.ran) * WEIGHT;
            }
            self.pace.live.decrement(1.0);
            if runnable {
                self.pace.maybe_idle(&mut state);
            }
        }
        if self.admits {
            self.pace.admit_waiting(None);
        }
    }
}

/// A live instance's future, counted runnable or waiting as it runs.
pub(crate) struct Paced<F> {
    /// (Dropped first: the instance is gone before its room is given back.)
    future: F,
    /// The waker its polls pass on, kept while the task polling it stays the same.
    wakes: Option<Arc<Wakes>>,
    /// Given back as soon as the future ends.
    live: Option<Live>,
}

impl<F: Future + Unpin> Paced<F> {
    /// `future`, run in `live`'s room (or unpaced, with none).
    pub(crate) fn new(mut live: Option<Live>, future: F) -> Self {
        if let Some(live) = &mut live {
            live.measured = true;
        }
        Paced {
            future,
            wakes: None,
            live,
        }
    }
}

/// The waker of one poll: being woken counts the instance runnable again.
struct Wakes {
    timing: Arc<Timing>,
    pace: Arc<Pace>,
    waker: Waker,
}

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.pace.resume(&self.timing);
        self.waker.wake_by_ref();
    }
}

impl<F: Future + Unpin> Future for Paced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some(live) = &this.live else {
            return Pin::new(&mut this.future).poll(cx);
        };
        // Polled without having been woken (a spurious poll, or by a waker of its caller's).
        live.pace.resume(&live.timing);
        let wakes = match &this.wakes {
            Some(wakes) if wakes.waker.will_wake(cx.waker()) => wakes.clone(),
            _ => this
                .wakes
                .insert(Arc::new(Wakes {
                    timing: live.timing.clone(),
                    pace: live.pace.clone(),
                    waker: cx.waker().clone(),
                }))
                .clone(),
        };
        let waker = Waker::from(wakes);
        match Pin::new(&mut this.future).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(output) => {
                this.wakes = None;
                this.live = None;
                Poll::Ready(output)
            }
            Poll::Pending => {
                // From here its waker (or its next poll) counts it runnable again. (One woken
                // during the poll counts as waiting until it is polled again.)
                live.pace.waits(&live.timing);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn counts(pace: &Pace) -> (usize, usize, usize) {
        let state = pace.state.lock().unwrap();
        (state.live, state.runnable, state.queue.len())
    }

    /// A future that waits until `gate` is woken through the waker it last saw.
    struct Waits(Arc<Mutex<(bool, Option<Waker>)>>);

    impl Future for Waits {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut gate = self.0.lock().unwrap();
            if gate.0 {
                return Poll::Ready(());
            }
            gate.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn open(gate: &Arc<Mutex<(bool, Option<Waker>)>>) {
        let mut gate = gate.lock().unwrap();
        gate.0 = true;
        if let Some(waker) = gate.1.take() {
            waker.wake();
        }
    }

    #[tokio::test]
    async fn room_up_to_the_base_then_a_queue_in_arrival_order() {
        let pace = Arc::new(Pace::new(4));
        let mut live = Vec::new();
        for _ in 0..4 {
            live.push(pace.enter().now_or_never().expect("room"));
        }
        assert_eq!(counts(&pace), (4, 4, 0));
        let mut fifth = Box::pin(pace.enter());
        let mut sixth = Box::pin(pace.enter());
        assert!(fifth.as_mut().now_or_never().is_none());
        assert!(sixth.as_mut().now_or_never().is_none());
        assert_eq!(counts(&pace), (4, 4, 2));

        live.pop();
        let fifth = fifth
            .now_or_never()
            .expect("the first in the queue gets the room");
        assert!(sixth.as_mut().now_or_never().is_none());
        drop(fifth);
        let sixth = sixth.now_or_never().expect("then the next");
        drop((sixth, live));
        assert_eq!(counts(&pace), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_request_gone_from_the_queue_passes_its_turn() {
        let pace = Arc::new(Pace::new(4));
        let mut live: Vec<_> = (0..4)
            .map(|_| pace.enter().now_or_never().unwrap())
            .collect();
        let mut gone = Box::pin(pace.enter());
        let mut next = Box::pin(pace.enter());
        assert!(gone.as_mut().now_or_never().is_none());
        assert!(next.as_mut().now_or_never().is_none());
        drop(gone);
        live.pop();
        let next = next
            .now_or_never()
            .expect("the room skips the request that left");
        drop((next, live));
        assert_eq!(counts(&pace), (0, 0, 0));
    }

    #[tokio::test]
    async fn instances_count_runnable_until_they_wait_and_again_once_woken() {
        let pace = Arc::new(Pace::new(4));
        let gate = Arc::new(Mutex::new((false, None)));
        let live = pace.enter().await;
        let mut paced = Paced::new(Some(live), Box::pin(Waits(gate.clone())));
        assert!((&mut paced).now_or_never().is_none());
        assert_eq!(counts(&pace), (1, 0, 0));
        open(&gate);
        assert_eq!(
            counts(&pace),
            (1, 1, 0),
            "woken: runnable before it is polled"
        );
        // A second wake of the same waker counts nothing more.
        assert_eq!(counts(&pace), (1, 1, 0));
        (&mut paced).await;
        assert_eq!(
            counts(&pace),
            (0, 0, 0),
            "its room is given back as it ends"
        );
    }

    #[tokio::test]
    async fn a_poll_without_a_wake_counts_it_runnable_once() {
        let pace = Arc::new(Pace::new(4));
        let gate = Arc::new(Mutex::new((false, None)));
        let mut paced = Paced::new(Some(pace.enter().await), Box::pin(Waits(gate.clone())));
        for _ in 0..3 {
            assert!((&mut paced).now_or_never().is_none());
            assert_eq!(counts(&pace), (1, 0, 0));
        }
        // An old waker firing after the instance is gone counts nothing.
        let stale = gate.lock().unwrap().1.clone().unwrap();
        drop(paced);
        assert_eq!(counts(&pace), (0, 0, 0));
        stale.wake();
        assert_eq!(counts(&pace), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_queue_waits_out_short_waits_but_not_a_long_one() {
        let pace = Arc::new(Pace::new(4));
        let gates: Vec<_> = (0..4)
            .map(|_| Arc::new(Mutex::new((false, None))))
            .collect();
        let mut paced = Vec::new();
        for gate in &gates {
            let live = pace.enter().now_or_never().unwrap();
            paced.push(Paced::new(Some(live), Box::pin(Waits(gate.clone()))));
        }
        let mut next = Box::pin(pace.enter());
        assert!(next.as_mut().now_or_never().is_none());
        // Three wait, one runs: the queue waits.
        for p in &mut paced[..3] {
            assert!(p.now_or_never().is_none());
        }
        tokio::time::sleep(IDLE_FOR * 5).await;
        assert!(
            next.as_mut().now_or_never().is_none(),
            "one instance is runnable"
        );
        // All four wait: after IDLE_FOR, the next request is let in.
        assert!((&mut paced[3]).now_or_never().is_none());
        assert_eq!(counts(&pace), (4, 0, 1));
        let next = tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("let in once no instance was runnable for IDLE_FOR");
        assert_eq!(counts(&pace), (5, 1, 0));
        drop((next, paced));
        assert_eq!(counts(&pace), (0, 0, 0));
    }

    #[tokio::test]
    async fn no_request_waits_longer_than_max_wait() {
        let pace = Arc::new(Pace::new(4));
        // Four instances that compute: they stay runnable.
        let live: Vec<_> = (0..4)
            .map(|_| pace.enter().now_or_never().unwrap())
            .collect();
        let began = Instant::now();
        let mut next = Box::pin(pace.enter());
        assert!(next.as_mut().now_or_never().is_none());
        let next = tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("in after MAX_WAIT");
        assert!(began.elapsed() >= MAX_WAIT);
        assert_eq!(
            counts(&pace),
            (5, 5, 1),
            "its place in the queue is left dead"
        );
        drop(live);
        assert_eq!(counts(&pace), (1, 1, 0), "and skipped");
        drop(next);
        assert_eq!(counts(&pace), (0, 0, 0));
    }

    #[tokio::test]
    async fn idle_spells_in_a_row_let_more_in_each_time() {
        let pace = Arc::new(Pace::new(4));
        let gate = Arc::new(Mutex::new((false, None)));
        let mut paced = Vec::new();
        for _ in 0..4 {
            let live = pace.enter().now_or_never().unwrap();
            paced.push(Paced::new(Some(live), Box::pin(Waits(gate.clone()))));
        }
        for p in &mut paced[..3] {
            assert!(p.now_or_never().is_none());
        }
        let (sender, mut admitted) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..16 {
            let (pace, sender) = (pace.clone(), sender.clone());
            tokio::spawn(async move { sender.send(pace.enter().await) });
        }
        while counts(&pace).2 < 16 {
            tokio::task::yield_now().await;
        }
        // Each round: every live instance waits; after IDLE_FOR, 1, then 2, then 4 are let in
        // (they count runnable until polled, so no more come in meanwhile).
        let (mut live, mut fresh) = (4, 3);
        for batch in [1, 2, 4] {
            // (Only those not yet waiting: polling one again would count as a wake.)
            for p in &mut paced[fresh..] {
                assert!(p.now_or_never().is_none());
            }
            fresh = paced.len();
            assert_eq!(counts(&pace).1, 0);
            for _ in 0..batch {
                let entered = tokio::time::timeout(Duration::from_secs(10), admitted.recv())
                    .await
                    .expect("let in after IDLE_FOR")
                    .unwrap();
                paced.push(Paced::new(Some(entered), Box::pin(Waits(gate.clone()))));
            }
            live += batch;
            assert_eq!(counts(&pace), (live, batch, 16 + 4 - live));
        }
    }

    #[test]
    fn the_room_grows_with_the_time_instances_wait() {
        let one = Pace::new(1);
        assert_eq!(one.target(&State::default()), 1, "one thread: one");
        let pace = Pace::new(2);
        let mut state = State::default();
        assert_eq!(pace.target(&state), 2, "no history: one per thread");
        (state.lifetime, state.ran) = (0.001, 0.001);
        assert_eq!(
            pace.target(&state),
            2,
            "instances that never wait need no more"
        );
        (state.lifetime, state.ran) = (0.0013, 0.001);
        assert_eq!(
            pace.target(&state),
            2,
            "short waits (a key-value round trip) are waited out"
        );
        (state.lifetime, state.ran) = (0.0015, 0.001);
        assert_eq!(pace.target(&state), 3, "waits half as long as the runs");
        (state.lifetime, state.ran) = (0.0024, 0.001);
        assert_eq!(pace.target(&state), 5, "2.4 per thread, rounded up");
        (state.lifetime, state.ran) = (0.100, 0.001);
        assert_eq!(
            pace.target(&state),
            200,
            "two threads, each with 100 waiting per runner"
        );
        (state.lifetime, state.ran) = (f64::MAX, 1e-300);
        assert_eq!(pace.target(&state), usize::MAX);
    }

    #[tokio::test]
    async fn averages_learn_from_instances_that_ended() {
        let pace = Arc::new(Pace::new(4));
        let gate = Arc::new(Mutex::new((false, None)));
        for _ in 0..64 {
            let mut paced = Paced::new(Some(pace.enter().await), Box::pin(Waits(gate.clone())));
            gate.lock().unwrap().0 = false;
            assert!((&mut paced).now_or_never().is_none());
            tokio::time::sleep(Duration::from_millis(2)).await;
            open(&gate);
            (&mut paced).await;
        }
        let state = pace.state.lock().unwrap();
        assert!(
            state.lifetime > 4.0 * state.ran,
            "an instance waiting 2 ms and running a few microseconds: {} vs {}",
            state.lifetime,
            state.ran
        );
        assert!(pace.target(&state) > pace.base);
    }
}
