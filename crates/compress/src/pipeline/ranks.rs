//! The components each target keeps: every pool's budget spent by the allocator, globally by
//! score for loss-aware methods, uniformly otherwise ([`crate::allocate`]).

use std::collections::BTreeMap;

use super::pools::Pool;
use crate::allocate::{Choice, Group, allocate_global, allocate_uniform};
use crate::error::Result;
use crate::lowrank::Method;
use crate::model::Target;

/// Each target's choice under its pool's budget.
pub fn choose(
    pools: &[Pool],
    scores: &BTreeMap<Target, Vec<f64>>,
    method: Method,
) -> Result<BTreeMap<Target, Choice>> {
    let mut choices: BTreeMap<Target, Choice> = BTreeMap::new();
    for pool in pools {
        let groups: Vec<Group> = pool
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| Group {
                scores: scores[t].clone(),
                unit_cost: pool.unit_cost[i],
                dense_cost: pool.dense_cost[i],
                min_rank: 1,
            })
            .collect();
        let chosen = if method.loss_aware() {
            allocate_global(&groups, pool.budget)?
        } else {
            allocate_uniform(&groups, pool.budget)?
        };
        for (t, c) in pool.targets.iter().zip(chosen) {
            choices.insert(*t, c);
        }
    }
    Ok(choices)
}
