//! The sampling schedule: ticks on an absolute timeline (`start + k * period`), each moved
//! by a random jitter so the sampler cannot lock onto the target's own periodic work, and
//! ticks that fell behind skipped (and counted) rather than bunched. Pure: the caller passes
//! the clock readings and the random source.

/// How many periods the sampler may fall behind before ticks are skipped.
pub const MAX_BEHIND: u64 = 4;

/// An absolute, jittered schedule in nanoseconds of a monotonic clock.
#[derive(Debug)]
pub struct Schedule {
    start: u64,
    period: u64,
    jitter: f64,
    k: u64,
    rng: fastrand::Rng,
    skipped: u64,
}

impl Schedule {
    /// A schedule of `frequency` ticks per second from `start_ns`, each tick moved by up to
    /// `jitter` periods (0.0..0.5) either way.
    pub fn new(start_ns: u64, frequency: f64, jitter: f64, seed: u64) -> Schedule {
        let period = (1e9 / frequency).round().max(1.0) as u64;
        Schedule {
            start: start_ns,
            period,
            jitter: jitter.clamp(0.0, 0.49),
            k: 0,
            rng: fastrand::Rng::with_seed(seed),
            skipped: 0,
        }
    }

    /// The period in nanoseconds.
    pub fn period_ns(&self) -> u64 {
        self.period
    }

    /// Ticks skipped because the sampler fell more than a period behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The deadline of the next tick, given the clock now. A late tick runs at once, so a
    /// short delay (the sampler waiting for a CPU) is caught up; ticks more than
    /// `MAX_BEHIND` periods in the past are skipped rather than run in a burst.
    pub fn next(&mut self, now_ns: u64) -> u64 {
        self.k += 1;
        let nominal = self.start + self.k * self.period;
        if now_ns > nominal + MAX_BEHIND * self.period {
            let behind = (now_ns - self.start) / self.period + 1;
            self.skipped += behind - self.k;
            self.k = behind;
        }
        let nominal = self.start + self.k * self.period;
        let offset = (self.rng.f64() * 2.0 - 1.0) * self.jitter * self.period as f64;
        (nominal as i64 + offset as i64).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_rate_is_exact_and_ticks_jitter() {
        let mut s = Schedule::new(1_000, 100.0, 0.2, 7);
        let mut last = 0;
        let mut gaps = Vec::new();
        let mut deadline = 0;
        for _ in 0..1000 {
            deadline = s.next(deadline);
            if last != 0 {
                gaps.push(deadline - last);
            }
            last = deadline;
        }
        // 1000 ticks of 10 ms: the last deadline is within a jitter of 10 s.
        let expected = 1_000 + 1000 * 10_000_000u64;
        assert!(deadline.abs_diff(expected) <= 2_000_000, "{deadline}");
        assert!(gaps.iter().any(|&g| g < 9_500_000));
        assert!(gaps.iter().any(|&g| g > 10_500_000));
        assert!(gaps.iter().all(|&g| (6_000_000..=14_000_000).contains(&g)));
        assert_eq!(s.skipped(), 0);
    }

    #[test]
    fn skips_ticks_when_late() {
        let mut s = Schedule::new(0, 1000.0, 0.0, 1);
        assert_eq!(s.next(0), 1_000_000);
        // A little late: the next tick is due already and is not skipped.
        assert_eq!(s.next(2_500_000), 2_000_000);
        assert_eq!(s.skipped(), 0);
        // The sampler was stuck for 10 ms: the missed ticks are skipped, not bunched.
        let d = s.next(12_500_000);
        assert_eq!(d, 13_000_000);
        assert_eq!(s.skipped(), 10);
        assert_eq!(s.next(13_000_000), 14_000_000);
    }
}
