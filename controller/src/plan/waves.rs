//! Cutting a rollout's ordered devices into waves.
//!
//! The order is DESIGN's: devices matching a wave's selector (canaries) are claimed first,
//! wave by wave; the waves without a selector then take the remaining devices in the
//! policy's `rollout.order`. Sizes: `count` devices, or `percent` of the devices the
//! policy has to update (rounded up, at least one), or — for the last wave when it has
//! neither — every device still unassigned. A selector wave without a size takes every
//! matching device. Devices still unassigned after the defined waves join the last wave,
//! so a rollout always covers every device it has to update.

use crate::model::{LabelSelector, WaveSpec};

/// How many devices a wave may hold, given the number of devices the rollout updates.
/// `None` means "no limit" (a wave without `count` and `percent`).
pub fn wave_capacity(wave: &WaveSpec, total: usize) -> Option<usize> {
    if let Some(count) = wave.count {
        return Some(usize::try_from(count).unwrap_or(usize::MAX));
    }
    wave.percent.map(|percent| percent_of(total, percent))
}

/// `percent` of `total`, rounded up, and at least one when `percent` is above zero, so
/// that a small rollout's `percent: 1` pilot wave still holds a device.
pub fn percent_of(total: usize, percent: f64) -> usize {
    if percent <= 0.0 || total == 0 {
        return 0;
    }
    // The small epsilon keeps exact products (10% of 250 = 25) from rounding up to the
    // next integer through floating-point noise.
    let exact = total as f64 * percent / 100.0;
    let n = (exact - 1e-9).ceil().max(1.0) as usize;
    n.min(total)
}

/// Splits `ordered` (the devices to update, already in the rollout order) into one list
/// per wave of `waves`. `matches(selector, device)` says whether a device satisfies a wave
/// selector. With no waves defined, every device goes into a single wave.
///
/// Each returned wave keeps the rollout order. The result is a pure function of its
/// inputs: the same devices in the same order always give the same waves.
pub fn cut_waves<D: Copy>(
    waves: &[WaveSpec],
    ordered: &[D],
    matches: impl Fn(&LabelSelector, D) -> bool,
) -> Vec<Vec<D>> {
    if waves.is_empty() {
        return vec![ordered.to_vec()];
    }
    let total = ordered.len();
    let mut taken = vec![false; total];
    // Waves hold positions in `ordered`, so any wave can be put back in rollout order.
    let mut cut: Vec<Vec<usize>> = vec![Vec::new(); waves.len()];

    // Selector waves first, in wave order: each claims matching devices in rollout order.
    for (index, wave) in waves.iter().enumerate() {
        let Some(selector) = &wave.selector else { continue };
        let capacity = wave_capacity(wave, total).unwrap_or(usize::MAX);
        for (position, &device) in ordered.iter().enumerate() {
            if cut[index].len() >= capacity {
                break;
            }
            if !taken[position] && matches(selector, device) {
                taken[position] = true;
                cut[index].push(position);
            }
        }
    }

    // Then the waves without a selector take what is left, in rollout order.
    let mut cursor = 0;
    for (index, wave) in waves.iter().enumerate() {
        if wave.selector.is_some() {
            continue;
        }
        let capacity = wave_capacity(wave, total).unwrap_or(usize::MAX);
        while cut[index].len() < capacity && cursor < total {
            if !taken[cursor] {
                taken[cursor] = true;
                cut[index].push(cursor);
            }
            cursor += 1;
        }
    }

    // Whatever the defined sizes left over joins the last wave, in rollout order.
    let last = cut.last_mut().expect("at least one wave");
    let before = last.len();
    last.extend((0..total).filter(|&position| !taken[position]));
    if last.len() != before {
        last.sort_unstable();
    }
    cut.into_iter().map(|positions| positions.into_iter().map(|p| ordered[p]).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(count: Option<u64>, percent: Option<f64>, canary: bool) -> WaveSpec {
        let selector = canary.then(|| LabelSelector {
            match_labels: [("tier".to_string(), "canary".to_string())].into(),
            match_expressions: Vec::new(),
        });
        WaveSpec { name: None, count, percent, selector, bake: None }
    }

    /// Devices are numbers in rollout order; multiples of 10 are canaries.
    fn cut(waves: &[WaveSpec], n: u32) -> Vec<Vec<u32>> {
        let ordered: Vec<u32> = (0..n).collect();
        cut_waves(waves, &ordered, |_, d| d % 10 == 0)
    }

    #[test]
    fn percent_rounds_up_and_is_at_least_one() {
        assert_eq!(percent_of(250, 10.0), 25);
        assert_eq!(percent_of(101, 10.0), 11);
        assert_eq!(percent_of(3, 1.0), 1);
        assert_eq!(percent_of(0, 50.0), 0);
        assert_eq!(percent_of(7, 0.0), 0);
        assert_eq!(percent_of(7, 100.0), 7);
        assert_eq!(percent_of(1000, 0.1), 1);
        assert_eq!(percent_of(1000, 33.3), 333);
    }

    #[test]
    fn no_waves_means_one_wave_with_everything() {
        assert_eq!(cut(&[], 4), vec![vec![0, 1, 2, 3]]);
    }

    #[test]
    fn selector_waves_claim_their_devices_first() {
        // The canary wave comes second but still gets the canaries; the first wave takes
        // the first non-canary devices in order.
        let waves = [wave(Some(3), None, false), wave(Some(2), None, true), wave(None, None, false)];
        let got = cut(&waves, 25);
        assert_eq!(got[0], [1, 2, 3]);
        assert_eq!(got[1], [0, 10]);
        assert_eq!(got[2].first(), Some(&4));
        assert!(got[2].contains(&20), "the third canary, over the canary count, goes with the rest");
        assert_eq!(got.iter().map(Vec::len).sum::<usize>(), 25);
    }

    #[test]
    fn selector_wave_without_size_takes_every_match() {
        let got = cut(&[wave(None, None, true), wave(None, None, false)], 35);
        assert_eq!(got[0], [0, 10, 20, 30]);
        assert_eq!(got[1].len(), 31);
    }

    #[test]
    fn percent_is_of_all_devices_to_update_and_last_wave_takes_the_rest() {
        let waves = [wave(Some(2), None, true), wave(None, Some(10.0), false), wave(None, None, false)];
        let got = cut(&waves, 101);
        assert_eq!(got[0], [0, 10]);
        assert_eq!(got[1].len(), 11, "10% of 101 rounds up");
        assert_eq!(got[1][0], 1);
        assert_eq!(got[2].len(), 101 - 2 - 11);
    }

    #[test]
    fn leftovers_join_the_last_wave_in_order() {
        // Two sized waves that together hold less than everything.
        let waves = [wave(Some(2), None, true), wave(None, Some(10.0), false)];
        let got = cut(&waves, 30);
        assert_eq!(got[0], [0, 10]);
        assert_eq!(got[1].len(), 28);
        assert!(got[1].windows(2).all(|w| w[0] < w[1]), "last wave stays in rollout order");
        assert!(got[1].contains(&20));
    }

    #[test]
    fn waves_never_exceed_the_devices_there_are() {
        let waves = [wave(Some(50), None, false), wave(Some(50), None, false), wave(None, None, false)];
        let got = cut(&waves, 60);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [50, 10, 0]);
    }

    #[test]
    fn cutting_is_deterministic() {
        let waves = [wave(Some(3), None, true), wave(None, Some(25.0), false), wave(None, None, false)];
        assert_eq!(cut(&waves, 97), cut(&waves, 97));
    }

    #[test]
    fn default_names_count_from_one() {
        assert_eq!(wave(None, None, false).display_name(1), "wave-2");
    }
}
