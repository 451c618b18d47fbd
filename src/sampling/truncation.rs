//! Top-k and top-p, with vLLM v0.4.3's `_apply_top_k_top_p` semantics but
//! without sorting the whole vocabulary.
//!
//! vLLM sorts the row ascending, masks every logit below the k-th largest (so
//! ties with the k-th are kept), then takes the softmax of what is left and masks
//! the tokens whose ascending cumulative probability is at most `1 - top_p`,
//! always keeping the most likely one. In descending order that is: a token is
//! kept while the probability mass from it downwards (itself included) exceeds
//! `1 - top_p`.
//!
//! Here top-k finds its threshold with a linear-time selection. Top-p needs the
//! order only as far as the cut: with top-k the survivors (k plus ties) are
//! sorted; without it the largest 64 are selected and sorted, and the window
//! grows four-fold until the cut falls inside it — O(vocab) per round, about
//! log4(vocab / 64) rounds at worst (top_p near 1 on a flat distribution), one
//! round in the usual case. Probabilities are accumulated in f64 (vLLM: f32), and
//! equal logits are ordered by token id (vLLM: whatever its sort produced), which
//! only matters for ties exactly at the cut.

use std::cmp::Ordering;

/// Descending logit, then ascending id: the order "more likely first".
fn more_likely(logits: &[f32], a: u32, b: u32) -> Ordering {
    logits[b as usize]
        .total_cmp(&logits[a as usize])
        .then(a.cmp(&b))
}

/// Masks (sets to -inf) what top-k then top-p exclude. `top_k` must be in
/// 1..vocab and `top_p` in (0, 1) to have an effect.
pub(crate) fn apply_top_k_top_p(logits: &mut [f32], top_k: Option<usize>, top_p: Option<f64>) {
    let vocab = logits.len();
    if vocab == 0 {
        return;
    }
    let mut survivors: Option<Vec<u32>> = None;
    if let Some(k) = top_k.filter(|&k| k >= 1 && k < vocab) {
        let mut values = logits.to_vec();
        let (_, kth, _) = values.select_nth_unstable_by(vocab - k, f32::total_cmp);
        let threshold = *kth;
        let mut kept = Vec::with_capacity(k);
        for (i, l) in logits.iter_mut().enumerate() {
            // IEEE comparison, as torch's `<`: -0.0 ties with 0.0.
            if *l < threshold {
                *l = f32::NEG_INFINITY;
            } else {
                kept.push(i as u32);
            }
        }
        survivors = Some(kept);
    }
    let Some(p) = top_p.filter(|&p| p > 0.0 && p < 1.0) else {
        return;
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let weight = |l: f32| ((l - max) as f64).exp();
    let total: f64 = logits
        .iter()
        .map(|&l| weight(l))
        .filter(|w| !w.is_nan())
        .sum();
    // A token is removed once the mass from it downwards is at most this.
    let limit = (1.0 - p) * total;
    let last_kept = match survivors {
        Some(mut kept) => {
            kept.sort_unstable_by(|&a, &b| more_likely(logits, a, b));
            cut(logits, &kept, total, limit, &weight)
        }
        None => {
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            let mut window = 64.min(vocab);
            loop {
                if window < vocab {
                    order.select_nth_unstable_by(window - 1, |&a, &b| more_likely(logits, a, b));
                }
                let head = &mut order[..window];
                head.sort_unstable_by(|&a, &b| more_likely(logits, a, b));
                let found = cut(logits, head, total, limit, &weight);
                if found.is_some() || window == vocab {
                    break found;
                }
                window = (window * 4).min(vocab);
            }
        }
    };
    if let Some(last) = last_kept {
        for i in 0..vocab as u32 {
            if more_likely(logits, last, i) == Ordering::Less {
                logits[i as usize] = f32::NEG_INFINITY;
            }
        }
    }
}

/// Walks `sorted` (most likely first) and returns the last token to keep, or
/// `None` if the cut is not inside `sorted` (everything in it is kept).
fn cut(
    logits: &[f32],
    sorted: &[u32],
    total: f64,
    limit: f64,
    weight: &dyn Fn(f32) -> f64,
) -> Option<u32> {
    let mut above = 0.0f64;
    for (rank, &id) in sorted.iter().enumerate() {
        let from_here_down = total - above;
        if rank > 0 && from_here_down <= limit {
            return Some(sorted[rank - 1]);
        }
        above += weight(logits[id as usize]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn kept(row: &[f32]) -> Vec<usize> {
        (0..row.len()).filter(|&i| row[i] > NEG).collect()
    }

    #[test]
    fn top_k_keeps_ties_with_the_kth() {
        let mut row = [1.0f32, 3.0, 2.0, 3.0, 2.0, 0.0];
        apply_top_k_top_p(&mut row, Some(3), None);
        assert_eq!(kept(&row), vec![1, 2, 3, 4]);
        assert_eq!(row[1], 3.0, "kept logits are untouched");
    }

    #[test]
    fn top_p_keeps_the_smallest_head_reaching_p() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (by construction of the logits).
        let ln = |x: f64| x.ln() as f32;
        let row = [ln(0.125), ln(0.5), ln(0.125), ln(0.25)];
        let run = |p| {
            let mut r = row;
            apply_top_k_top_p(&mut r, None, Some(p));
            kept(&r)
        };
        assert_eq!(run(0.4), vec![1]);
        assert_eq!(run(0.6), vec![1, 3]);
        assert_eq!(run(0.8), vec![0, 1, 3], "equal logits: lower id first");
        assert_eq!(run(0.95), vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_p_after_top_k_renormalises_over_the_survivors() {
        // After top-2 the survivors have probabilities 4/7 and 3/7: top_p = 0.5
        // keeps one (3/7 <= 1 - 0.5), 0.6 keeps both (3/7 > 0.4). Without
        // top-k, 0.5 keeps two: the mass from 0.3 down is 0.6 > 0.5.
        let ln = |x: f64| x.ln() as f32;
        let run = |p| {
            let mut row = [ln(0.1), ln(0.4), ln(0.2), ln(0.3)];
            apply_top_k_top_p(&mut row, Some(2), Some(p));
            kept(&row)
        };
        assert_eq!(run(0.5), vec![1]);
        assert_eq!(run(0.6), vec![1, 3]);
        let mut row = [ln(0.1), ln(0.4), ln(0.2), ln(0.3)];
        apply_top_k_top_p(&mut row, None, Some(0.5));
        assert_eq!(kept(&row), vec![1, 3]);
    }

    #[test]
    fn top_p_grows_its_window_on_flat_rows() {
        // 1000 equal logits: top_p 0.5 keeps the 500 lowest ids (ties by id).
        let mut row = vec![0.0f32; 1000];
        apply_top_k_top_p(&mut row, None, Some(0.5));
        assert_eq!(kept(&row), (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn top_p_removes_a_token_whose_mass_from_it_down_is_exactly_1_minus_p() {
        // vLLM masks where the ascending cumulative sum is <= 1 - p: with four
        // equal tokens and p = 0.5 the sums are 0.25, 0.5, 0.75, 1 (exact in
        // binary), so two are masked, not one.
        let mut row = [0.0f32; 4];
        apply_top_k_top_p(&mut row, None, Some(0.5));
        assert_eq!(kept(&row), vec![0, 1]);
    }
}
