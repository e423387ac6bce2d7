//! Choosing which singular components to keep in every layer under a parameter (or KV-cache)
//! budget.
//!
//! A *pool* is a set of groups sharing one budget (all text-decoder QKV blocks, all decoder MLP
//! matrices, all vision QKV blocks). Each group offers components with a score (the loss they
//! protect; higher = keep first) and a cost per kept component; a group may also offer a dense
//! option (keep the matrix as it is) at a fixed cost.
//!
//! * [`allocate_global`] (loss-aware recipes): start every group at its minimum rank, then
//!   repeatedly take the move with the best score per unit cost that still fits: the group's
//!   next-best component, or (where offered) switching the group to dense, which gains every
//!   component not yet kept. A low-rank group never grows past the rank where it would cost as
//!   much as dense. The result never exceeds the budget, and stops only when no move fits, so
//!   the leftover is smaller than one component (or every group is full).
//! * [`allocate_uniform`] (plain recipes): the same rank everywhere, added round-robin one
//!   component per group while it fits, each group keeping its largest singular values.

use crate::error::{CompressError, Result};

/// One group's offer.
#[derive(Clone, Debug)]
pub struct Group {
    /// Score of each component (index = singular component).
    pub scores: Vec<f64>,
    /// Cost of one kept component (parameters, or cached values per token).
    pub unit_cost: u64,
    /// Cost of keeping the group dense, when that is allowed.
    pub dense_cost: Option<u64>,
    /// Fewest components a low-rank group keeps.
    pub min_rank: usize,
}

/// What the allocator decided for one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Keep these components (indices into the group's scores), best first.
    Keep(Vec<usize>),
    Dense,
}

impl Choice {
    pub fn cost(&self, g: &Group) -> u64 {
        match self {
            Choice::Keep(k) => k.len() as u64 * g.unit_cost,
            Choice::Dense => g.dense_cost.unwrap_or(u64::MAX),
        }
    }
}

fn order(g: &Group) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..g.scores.len()).collect();
    idx.sort_by(|&a, &b| g.scores[b].total_cmp(&g.scores[a]).then(a.cmp(&b)));
    idx
}

fn floor_cost(groups: &[Group], budget: u64) -> Result<u64> {
    let need: u64 = groups.iter().map(|g| g.min_rank.min(g.scores.len()) as u64 * g.unit_cost).sum();
    if need > budget {
        return Err(CompressError::Calibration(format!(
            "the budget ({budget}) is below the minimum rank of every layer ({need})"
        )));
    }
    Ok(need)
}

/// Loss-aware allocation (see the module documentation).
pub fn allocate_global(groups: &[Group], budget: u64) -> Result<Vec<Choice>> {
    let mut spent = floor_cost(groups, budget)?;
    let orders: Vec<Vec<usize>> = groups.iter().map(order).collect();
    let mut rank: Vec<usize> = groups.iter().map(|g| g.min_rank.min(g.scores.len())).collect();
    let mut dense = vec![false; groups.len()];
    // cap of a low-rank group: full rank, or the rank costing as much as dense
    let cap: Vec<usize> = groups
        .iter()
        .map(|g| match g.dense_cost {
            Some(d) => ((d / g.unit_cost) as usize).min(g.scores.len()),
            None => g.scores.len(),
        })
        .collect();
    loop {
        let left = budget - spent;
        let mut best: Option<(f64, usize, bool, u64)> = None; // (ratio, group, densify, cost)
        for (i, g) in groups.iter().enumerate() {
            if dense[i] {
                continue;
            }
            let mut consider = |gain: f64, cost: u64, densify: bool| {
                if cost <= left {
                    let ratio = gain / cost.max(1) as f64;
                    if best.is_none_or(|b| ratio > b.0) {
                        best = Some((ratio, i, densify, cost));
                    }
                }
            };
            if rank[i] < cap[i] {
                consider(g.scores[orders[i][rank[i]]], g.unit_cost, false);
            }
            if let Some(d) = g.dense_cost {
                let rest: f64 = orders[i][rank[i]..].iter().map(|&k| g.scores[k]).sum();
                consider(rest, d.saturating_sub(rank[i] as u64 * g.unit_cost), true);
            }
        }
        let Some((_, i, densify, cost)) = best else { break };
        spent += cost;
        if densify {
            dense[i] = true;
        } else {
            rank[i] += 1;
        }
    }
    Ok((0..groups.len())
        .map(|i| if dense[i] { Choice::Dense } else { Choice::Keep(orders[i][..rank[i]].to_vec()) })
        .collect())
}

/// Uniform allocation (see the module documentation); components are taken in score order.
pub fn allocate_uniform(groups: &[Group], budget: u64) -> Result<Vec<Choice>> {
    let mut spent = floor_cost(groups, budget)?;
    let mut rank: Vec<usize> = groups.iter().map(|g| g.min_rank.min(g.scores.len())).collect();
    loop {
        let mut grew = false;
        for (i, g) in groups.iter().enumerate() {
            if rank[i] < g.scores.len() && spent + g.unit_cost <= budget {
                rank[i] += 1;
                spent += g.unit_cost;
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    Ok(groups.iter().zip(rank).map(|(g, r)| Choice::Keep(order(g)[..r].to_vec())).collect())
}
