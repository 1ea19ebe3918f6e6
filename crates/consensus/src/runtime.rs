//! The async runtime openraft runs on: tokio, with one difference — the random numbers
//! openraft draws (election timeouts) come from a generator a simulation can seed per thread.
//! Unseeded threads use the operating system's entropy, as openraft's own tokio runtime does.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend};
use openraft_rt_tokio::TokioRuntime;
use rand010::rngs::StdRng;
use rand010::{SeedableRng, TryRng};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Makes openraft's random draws on this thread follow `seed` (`None`: entropy again).
pub fn seed_thread_rng(seed: Option<u64>) {
    SEEDED.with_borrow_mut(|s| *s = seed.map(StdRng::seed_from_u64));
}

/// openraft's handle to this thread's generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RaftRng;

impl RaftRng {
    fn with<T>(f: impl FnOnce(&mut dyn rand010::Rng) -> T) -> T {
        SEEDED.with_borrow_mut(|s| match s {
            Some(rng) => f(rng),
            None => f(&mut rand010::rng()),
        })
    }
}

impl TryRng for RaftRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(Self::with(|r| r.next_u32()))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(Self::with(|r| r.next_u64()))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        Self::with(|r| r.fill_bytes(dst));
        Ok(())
    }
}

/// Tokio, with [`RaftRng`] as the random number generator.
#[derive(Debug)]
pub struct BerthRuntime(TokioRuntime);

type Tokio = TokioRuntime;

impl AsyncRuntime for BerthRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = RaftRng;
    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = <Tokio as AsyncRuntime>::Watch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        RaftRng
    }

    fn new(threads: usize) -> Self {
        BerthRuntime(Tokio::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand010::Rng;

    #[test]
    fn seeded_draws_repeat_and_unseeded_do_not_panic() {
        seed_thread_rng(Some(7));
        let a: Vec<u64> = (0..4).map(|_| RaftRng.next_u64()).collect();
        seed_thread_rng(Some(7));
        let b: Vec<u64> = (0..4).map(|_| RaftRng.next_u64()).collect();
        assert_eq!(a, b);
        seed_thread_rng(Some(8));
        let c: Vec<u64> = (0..4).map(|_| RaftRng.next_u64()).collect();
        assert_ne!(a, c);
        seed_thread_rng(None);
        let _ = RaftRng.next_u32();
    }
}
