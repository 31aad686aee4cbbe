//! `[fault]`: delays and failures injected into requests, for testing
//! applications against a slow or failing filesystem.
//!
//! Random draws come from a generator seeded by the policy (never the OS),
//! so the same seed and the same sequence of requests give the same faults.
//! A delayed request is held by the engine until its time and then goes to
//! the backend; a failed one is answered with its errno without reaching it.

use fuseproxy_protocol::Opcode;

use crate::config::FaultSection;
use crate::rules::{op_index, OPS};
use crate::Duration;

/// One opcode's fault.
#[derive(Debug, Clone, Copy, Default)]
struct Fault {
    delay: u64,
    jitter: u64,
    /// Fails when a draw is below this (probability × 2^64, saturated).
    threshold: u64,
    always: bool,
    errno: i32,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDecision {
    /// Nothing.
    Pass,
    /// Answer it with this errno.
    Fail(i32),
    /// Send it this much later.
    Delay(Duration),
}

/// `[fault]` compiled.
#[derive(Debug, Clone, Copy)]
pub struct FaultRule {
    ops: [Fault; OPS],
    any: bool,
}

impl FaultRule {
    /// No faults.
    pub const OFF: FaultRule = FaultRule {
        ops: [Fault {
            delay: 0,
            jitter: 0,
            threshold: 0,
            always: false,
            errno: 5,
        }; OPS],
        any: false,
    };

    /// Compiles the section.
    pub fn compile(s: &FaultSection) -> FaultRule {
        let mut r = FaultRule::OFF;
        for (op, f) in &s.ops {
            if let Some(i) = op_index(op.0) {
                r.ops[i] = Fault {
                    delay: f.delay.0.as_nanos(),
                    jitter: f.jitter.0.as_nanos(),
                    threshold: (f.probability * 18_446_744_073_709_551_616.0) as u64,
                    always: f.probability >= 1.0,
                    errno: f.errno.0,
                };
                r.any = true;
            }
        }
        r
    }

    /// Decides the fate of a request with opcode `op`, drawing from `rng`
    /// only for opcodes that have a fault.
    pub fn decide(&self, op: Opcode, rng: &mut Rng) -> FaultDecision {
        if !self.any {
            return FaultDecision::Pass;
        }
        let Some(f) = op_index(op).map(|i| self.ops[i]) else {
            return FaultDecision::Pass;
        };
        if f.always || (f.threshold > 0 && rng.next_u64() < f.threshold) {
            return FaultDecision::Fail(f.errno);
        }
        let extra = if f.jitter > 0 {
            rng.next_u64() % (f.jitter + 1)
        } else {
            0
        };
        match f.delay + extra {
            0 => FaultDecision::Pass,
            d => FaultDecision::Delay(Duration::from_nanos(d)),
        }
    }
}

/// splitmix64: small, fast, and the same everywhere.
#[derive(Debug, Clone, Copy)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;

    fn rule(text: &str) -> FaultRule {
        FaultRule::compile(Policy::parse("t", text).unwrap().fault.as_ref().unwrap())
    }

    #[test]
    fn a_fixed_delay_and_nothing_else() {
        let r = rule("[fault.GETATTR]\ndelay = \"200ms\"\n");
        let mut rng = Rng::new(1);
        assert_eq!(
            r.decide(Opcode::Getattr, &mut rng),
            FaultDecision::Delay(Duration::from_millis(200))
        );
        assert_eq!(r.decide(Opcode::Lookup, &mut rng), FaultDecision::Pass);
    }

    #[test]
    fn failures_follow_the_probability_and_repeat_with_the_seed() {
        let r = rule("[fault]\nseed = 42\n[fault.READ]\nprobability = 0.25\nerrno = \"EIO\"\n");
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..4000)
                .map(|_| r.decide(Opcode::Read, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = run(42);
        assert_eq!(a, run(42));
        assert_ne!(a, run(43));
        let failed = a.iter().filter(|d| **d == FaultDecision::Fail(5)).count();
        assert!((850..1150).contains(&failed), "{failed} of 4000");
        let always = rule("[fault.WRITE]\nprobability = 1.0\nerrno = \"ENOSPC\"\n");
        assert_eq!(
            always.decide(Opcode::Write, &mut Rng::new(0)),
            FaultDecision::Fail(28)
        );
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let r = rule("[fault.READ]\ndelay = \"10ms\"\njitter = \"5ms\"\n");
        let mut rng = Rng::new(9);
        for _ in 0..1000 {
            let FaultDecision::Delay(d) = r.decide(Opcode::Read, &mut rng) else {
                panic!("no delay");
            };
            assert!((10_000_000..=15_000_000).contains(&d.as_nanos()));
        }
    }
}
