//! Which targets are factored, grouped into pools that share one budget: the text decoder's
//! QKV or K/V (latent components, under the QKV-parameter and K/V budgets), its MLP projections
//! (parameters) and the vision tower's QKV (latent components); see [`crate::budget`].

use pocketvlm_format::ModelConfig;
use pocketvlm_format::compression::text_mlp_linears;

use pocketvlm_format::compression::Latent;

use super::LowRankOptions;
use crate::budget;
use crate::model::{Proj, Target, Tower};

/// A pool of groups sharing one budget.
pub struct Pool {
    pub targets: Vec<Target>,
    /// Budget in the groups' cost unit.
    pub budget: u64,
    /// Cost of one component of each group.
    pub unit_cost: Vec<u64>,
    pub dense_cost: Vec<Option<u64>>,
}

/// The pools the budgets of `opts` ask for.
pub fn pools(cfg: &ModelConfig, opts: &LowRankOptions) -> Vec<Pool> {
    let t = &cfg.text;
    let mut pools: Vec<Pool> = Vec::new();
    let b = &opts.budgets;
    let kv_only = opts.latent == Latent::Kv;
    if let Some(components) = budget::text_qkv_components(cfg, b, opts.quant.is_some(), kv_only) {
        let proj = if kv_only { Proj::Kv } else { Proj::Qkv };
        pools.push(Pool {
            targets: (0..t.num_hidden_layers)
                .map(|l| Target { tower: Tower::Text, layer: l, proj })
                .collect(),
            budget: components,
            unit_cost: vec![1; t.num_hidden_layers],
            dense_cost: vec![None; t.num_hidden_layers],
        });
    }
    if let Some(r) = b.ffn_params {
        let mut targets = Vec::new();
        let (mut unit, mut dense, mut total) = (Vec::new(), Vec::new(), 0u64);
        for l in 0..t.num_hidden_layers {
            for (i, (_, out, inp)) in text_mlp_linears(cfg).iter().enumerate() {
                targets.push(Target { tower: Tower::Text, layer: l, proj: Proj::Mlp(i) });
                unit.push((out + inp) as u64);
                dense.push(opts.method.loss_aware().then_some((out * inp) as u64));
                total += (out * inp) as u64;
            }
        }
        pools.push(Pool { targets, budget: budget::share(r, total), unit_cost: unit, dense_cost: dense });
    }
    if let Some(r) = b.vision_qkv_params {
        let n = cfg.vision.num_hidden_layers;
        pools.push(Pool {
            targets: (0..n).map(|l| Target { tower: Tower::Vision, layer: l, proj: Proj::Qkv }).collect(),
            budget: budget::vision_qkv_components(cfg, r),
            unit_cost: vec![1; n],
            dense_cost: vec![None; n],
        });
    }
    pools
}

/// Every target of the pools, in order.
pub fn targets(pools: &[Pool]) -> Vec<Target> {
    pools.iter().flat_map(|p| p.targets.iter().copied()).collect()
}
