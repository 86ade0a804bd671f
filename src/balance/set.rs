//! The published endpoint set and the choice of one endpoint from it.

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngExt};

use super::load::Load;
use crate::discover::Endpoint;

/// One endpoint: its metadata, its service and its load.
#[derive(Debug)]
pub(crate) struct Slot<S> {
    pub(crate) endpoint: Endpoint,
    pub(crate) service: S,
    pub(crate) load: Arc<Load>,
}

/// An immutable snapshot of the endpoints; replaced whole on every change.
#[derive(Debug)]
pub(crate) struct EndpointSet<S> {
    pub(crate) slots: Vec<Arc<Slot<S>>>,
    sampler: Sampler,
}

/// Draws an index with probability proportional to weight, in O(1).
#[derive(Debug)]
enum Sampler {
    /// All weights equal.
    Uniform,
    /// Vose's alias method: `prob[i]` is the chance to keep column `i`,
    /// otherwise take `alias[i]`.
    Alias { prob: Vec<f64>, alias: Vec<u32> },
}

impl Sampler {
    fn new(weights: &[f64]) -> Sampler {
        let n = weights.len();
        if n == 0 || weights.iter().all(|w| *w == weights[0]) {
            return Sampler::Uniform;
        }
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers (from rounding) keep their own column.
        Sampler::Alias { prob, alias }
    }

    fn sample(&self, n: usize, rng: &mut impl Rng) -> usize {
        match self {
            Sampler::Uniform => rng.random_range(0..n),
            Sampler::Alias { prob, alias } => {
                let i = rng.random_range(0..n);
                if rng.random::<f64>() < prob[i] {
                    i
                } else {
                    alias[i] as usize
                }
            }
        }
    }
}

impl<S> EndpointSet<S> {
    /// The set of `slots`; `uniform` says that their weights are all equal,
    /// which spares reading every one.
    pub(crate) fn new(slots: Vec<Arc<Slot<S>>>, uniform: bool) -> Self {
        let sampler = if uniform {
            Sampler::Uniform
        } else {
            let weights: Vec<f64> = slots.iter().map(|s| s.endpoint.weight()).collect();
            Sampler::new(&weights)
        };
        EndpointSet { sampler, slots }
    }

    pub(crate) fn empty() -> Self {
        EndpointSet {
            slots: Vec::new(),
            sampler: Sampler::Uniform,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Draws one index, weighted.
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> usize {
        self.sampler.sample(self.slots.len(), rng)
    }

    /// Draws two distinct indices, each weighted. Requires `len() >= 2`.
    pub(crate) fn sample_pair(&self, rng: &mut impl Rng) -> (usize, usize) {
        let n = self.slots.len();
        debug_assert!(n >= 2);
        let a = self.sample(rng);
        if let Sampler::Alias { .. } = self.sampler {
            // A few weighted tries; heavy endpoints may be drawn twice.
            for _ in 0..4 {
                let b = self.sample(rng);
                if b != a {
                    return (a, b);
                }
            }
        }
        let b = (a + 1 + rng.random_range(0..n - 1)) % n;
        (a, b)
    }
}

/// What the balancer needs to compare two endpoints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CostModel {
    pub(crate) decay: Duration,
    pub(crate) failure_penalty: Duration,
    pub(crate) min_rtt_ns: f64,
}

impl CostModel {
    /// `max(latency + penalty, floor) × (in_flight / weight + 1)`.
    pub(crate) fn cost<S>(&self, slot: &Slot<S>, now: tokio::time::Instant) -> f64 {
        let rtt = slot
            .load
            .ewma
            .estimate_ns(now, self.decay, self.failure_penalty)
            .max(self.min_rtt_ns);
        rtt * (slot.load.in_flight() as f64 / slot.endpoint.weight() + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn alias_sampler_matches_weights() {
        let weights = [1.0, 2.0, 3.0, 4.0];
        let s = Sampler::new(&weights);
        assert!(matches!(s, Sampler::Alias { .. }));
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0usize; 4];
        let draws = 200_000;
        for _ in 0..draws {
            counts[s.sample(4, &mut rng)] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            let share = counts[i] as f64 / draws as f64;
            let want = w / 10.0;
            assert!((share - want).abs() < 0.01, "{i}: {share} vs {want}");
        }
    }

    #[test]
    fn equal_weights_are_uniform() {
        assert!(matches!(Sampler::new(&[2.0, 2.0, 2.0]), Sampler::Uniform));
        assert!(matches!(Sampler::new(&[]), Sampler::Uniform));
    }
}
