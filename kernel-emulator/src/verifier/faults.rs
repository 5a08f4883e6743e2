//! Fault injection, as Driver Verifier's low-resources simulation does it: every fallible
//! kernel call the model implements asks [`FaultInjector::should_fail`] first. Systematic mode
//! fails exactly the k-th fallible call, or every call from the k-th on; random mode fails
//! each with a seeded probability.

/// Which calls to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPolicy {
    /// Never fail.
    Off,
    /// Fail exactly the k-th (1-based) fallible call.
    Nth(u64),
    /// Fail the k-th fallible call and every one after it (memory that never comes back).
    FromNth(u64),
    /// Fail each fallible call with probability `per_mille`/1000 (xorshift64, seeded).
    Random {
        /// Probability in thousandths.
        per_mille: u32,
        /// Generator state; must not be zero.
        seed: u64,
    },
}

/// The injector: policy plus the record of what it did.
#[derive(Debug)]
pub struct FaultInjector {
    /// Current policy.
    pub policy: FaultPolicy,
    /// Fallible calls seen since the last reset.
    pub calls: u64,
    /// Calls failed on purpose: `#k Routine during Operation`.
    pub injected: Vec<String>,
    /// Only allocations count (lookaside misses, pool) when set.
    pub pool_only: bool,
    /// Only this routine counts (and fails under the policy) when set.
    pub only: Option<&'static str>,
    /// Routines never failed (still counted).
    pub spare: &'static [&'static str],
}

impl Default for FaultInjector {
    fn default() -> Self {
        Self {
            policy: FaultPolicy::Off,
            calls: 0,
            injected: Vec::new(),
            pool_only: false,
            only: None,
            spare: &[],
        }
    }
}

impl FaultInjector {
    /// Asks whether the fallible call `routine` must fail now; `is_pool` marks allocations.
    pub fn should_fail(&mut self, routine: &str, is_pool: bool, operation: &str) -> bool {
        if self.pool_only && !is_pool || self.only.is_some_and(|r| r != routine) {
            return false;
        }
        self.calls += 1;
        let n = self.calls;
        if self.spare.contains(&routine) {
            return false;
        }
        let fail = match &mut self.policy {
            FaultPolicy::Off => false,
            FaultPolicy::Nth(k) => n == *k,
            FaultPolicy::FromNth(k) => n >= *k,
            FaultPolicy::Random { per_mille, seed } => {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed % 1000) < u64::from(*per_mille)
            }
        };
        if fail {
            self.injected
                .push(format!("#{n} {routine} during {operation}"));
        }
        fail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_nth_fails_every_call_from_k_on() {
        let mut f = FaultInjector {
            policy: FaultPolicy::FromNth(3),
            ..FaultInjector::default()
        };
        let failed: Vec<bool> = (0..6).map(|_| f.should_fail("X", true, "op")).collect();
        assert_eq!(failed, [false, false, true, true, true, true]);
        assert_eq!(f.injected.len(), 4);
    }

    #[test]
    fn nth_fails_exactly_once() {
        let mut f = FaultInjector {
            policy: FaultPolicy::Nth(3),
            ..FaultInjector::default()
        };
        let fails: Vec<bool> = (0..5).map(|_| f.should_fail("X", true, "op")).collect();
        assert_eq!(fails, [false, false, true, false, false]);
        assert_eq!(f.injected, ["#3 X during op"]);
    }

    #[test]
    fn random_rate_is_close_to_the_probability_and_reproducible() {
        let run = || {
            let mut f = FaultInjector {
                policy: FaultPolicy::Random {
                    per_mille: 250,
                    seed: 0x9E37_79B9_7F4A_7C15,
                },
                ..FaultInjector::default()
            };
            (0..10_000)
                .filter(|_| f.should_fail("X", true, "op"))
                .count()
        };
        let n = run();
        assert!((2_000..3_000).contains(&n), "{n} failures of 10000 at 25%");
        assert_eq!(n, run());
    }

    #[test]
    fn pool_only_ignores_other_calls() {
        let mut f = FaultInjector {
            policy: FaultPolicy::Nth(1),
            pool_only: true,
            ..FaultInjector::default()
        };
        assert!(!f.should_fail("IoCreateDevice", false, "op"));
        assert!(f.should_fail("ExAllocatePool2", true, "op"));
    }
}
