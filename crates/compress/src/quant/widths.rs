//! Choosing the weight width of each part of the model under a byte budget for the whole model.
//!
//! A *unit* ([`Unit`]) is one decoder sublayer — a layer's attention (Q/K/V and `o_proj`, or the
//! joint-QKV factors and `o_proj`) or its MLP (gate/up/down, dense or factored) — or the token
//! embeddings (with a tied `lm_head`, the same integers), or an untied `lm_head`. Every matrix of
//! a unit takes the same width, one of [`Width`]: INT4 weights with one scale per output channel
//! or one per group of input columns (a matrix whose input width the group does not divide keeps
//! one per channel; a table always one per row), INT8 weights (both with the scheme's INT8
//! activations), or the rotated float weights in their source encoding (no online rotation,
//! float activations). A layer whose joint-QKV latent is its K/V cache keeps its attention
//! integer (the cache is INT8). With `--group-size G` the allocation offers each unit but the
//! table both INT4 forms — per channel and in groups of `G` — so the group scales' bytes
//! (`4 / G` more per weight) go only where they buy the most loss; without it, per channel only.
//! The parts outside the units (vision tower, connector) then keep one scale per output channel:
//! nothing prices their groups here, and on the 256M checkpoint grouping them took bytes the
//! decoder's units used better (BENCHMARKS.md, "INT4 grouping chosen unit by unit").
//!
//! **Cost of a candidate.** Each matrix is quantized at the candidate width exactly as the model
//! will be (online rotation, clip-searched scales, GPTQ for the decoder when asked), and its error
//! `ΔW = W − Ŵ` is charged the K-FAC estimate of the loss it adds, `½ tr(G ΔW H ΔWᵀ)` with the
//! calibration moments `H = E[x xᵀ]` of its (rotated) input and `G = E[g gᵀ]` of its output
//! gradient ([`crate::quant::moments`]). The embedding table is a linear layer whose input is
//! the one-hot token, so `H = diag(n_v) / N` (`n_v` occurrences of token `v` among the `N`
//! calibration rows) and its cost is `½ Σ_v (n_v / N) Δe_vᵀ G Δe_v` with `G` the moments of the
//! gradient reaching the embeddings at the text positions (image positions do not read the
//! table, and their gradients differ); a tied table adds its `lm_head` cost on the same integers.
//! A unit's cost is the sum over its matrices; float costs 0. The INT8 activation error is the
//! same for both integer widths and is not charged, so the estimate favours float over INT8 only
//! by the weight error.
//!
//! **Bytes.** What the model's tensor files will hold: packed integers (padded rows, see
//! [`pocketvlm_format::quant::pack`]) plus f32 scales, or the float values in their encoding.
//! The budget covers every tensor of the model; the parts outside the units (vision tower,
//! connector, norms, and whatever the recipe keeps float) take their scheme's widths and are
//! counted first.
//!
//! **Allocation** ([`allocate`]): a multiple-choice knapsack solved greedily on the marginal
//! rate. Every unit starts at its cheapest option; then, while some move fits, the move with
//! the largest loss decrease per added byte is taken — any option of a unit that costs more bytes
//! and less loss than its current one. The result never exceeds the budget and stops only when no
//! move fits. Allocating the budget of a uniform scheme can therefore only lower the estimated
//! loss from the cheapest start: it is a swap of widths between units wherever the estimate says
//! one unit's bytes buy more than another's.

use pocketvlm_format::quant::Bits;
use pocketvlm_format::quant::linear::check_group;

use crate::error::{CompressError, Result};

/// One decoder sublayer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sublayer {
    Attention,
    Mlp,
}

/// A part of the model whose width is chosen (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    /// One sublayer of decoder layer `.0`.
    Decoder(usize, Sublayer),
    /// The token embedding table (and a tied `lm_head`).
    Embeddings,
    /// An untied `lm_head`.
    LmHead,
}

impl Unit {
    /// The unit as `--widths` names it: `decoder.N.attention`, `decoder.N.mlp`, `embeddings` or
    /// `lm_head`.
    pub fn name(self) -> String {
        match self {
            Unit::Decoder(layer, Sublayer::Attention) => format!("decoder.{layer}.attention"),
            Unit::Decoder(layer, Sublayer::Mlp) => format!("decoder.{layer}.mlp"),
            Unit::Embeddings => "embeddings".into(),
            Unit::LmHead => "lm_head".into(),
        }
    }
}

/// The width of one unit's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Width {
    /// INT4 weights, one scale per output channel (`None`) or per `group` input columns.
    Int4 {
        group: Option<usize>,
    },
    Int8,
    Float,
}

impl Width {
    pub const INT4: Width = Width::Int4 { group: None };

    /// The widths a unit may take: INT4 per channel and, with `group`, in groups of it; INT8;
    /// float.
    pub fn options(group: Option<usize>) -> Vec<Width> {
        let grouped = group.map(|g| Width::Int4 { group: Some(g) });
        [Some(Self::INT4), grouped, Some(Width::Int8), Some(Width::Float)].into_iter().flatten().collect()
    }

    /// `int4`, `int4g64`, `int4g128`, `int8` or `float`.
    pub fn name(self) -> String {
        match self {
            Width::Int4 { group: None } => "int4".into(),
            Width::Int4 { group: Some(g) } => format!("int4g{g}"),
            Width::Int8 => "int8".into(),
            Width::Float => "float".into(),
        }
    }

    /// The width whose [`Width::name`] is `s`; a typed error for any other name, or a group the
    /// format does not store.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || CompressError::BadOptions {
            recipe: format!("width {s}"),
            what: "int4, int4g64, int4g128, int8 or float".into(),
        };
        let group = s.strip_prefix("int4g").and_then(|g| g.parse().ok());
        match Width::options(group).into_iter().find(|w| w.name() == s) {
            Some(Width::Int4 { group: Some(g) }) if check_group(Bits::Int4, Some(g), g).is_err() => {
                Err(bad())
            }
            Some(width) => Ok(width),
            None => Err(bad()),
        }
    }

    /// The weight bits and group of an integer width; `None` for float.
    pub fn integer(self) -> Option<(Bits, Option<usize>)> {
        match self {
            Width::Int4 { group } => Some((Bits::Int4, group)),
            Width::Int8 => Some((Bits::Int8, None)),
            Width::Float => None,
        }
    }
}

/// One option of a unit: what it would store and the loss it is estimated to add.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub width: Width,
    pub bytes: u64,
    pub cost: f64,
}

/// What an allocation chose and what it estimated, for the report written beside the model
/// ([`crate::report::widths`]).
#[derive(Clone, Debug, PartialEq)]
pub struct WidthAllocation {
    pub budget: u64,
    /// Bytes of every tensor outside the units.
    pub fixed: u64,
    /// Each unit, its options and the index of the one it took.
    pub units: Vec<(Unit, Vec<Candidate>, usize)>,
    /// The [`front`] of these options.
    pub front: Vec<(u64, f64)>,
}

impl WidthAllocation {
    /// The model's bytes and summed estimated cost as chosen.
    pub fn chosen(&self) -> (u64, f64) {
        self.units.iter().fold((self.fixed, 0.0), |(b, c), (_, o, k)| (b + o[*k].bytes, c + o[*k].cost))
    }

    /// The bytes and summed cost of every unit at `width`; `None` when some unit lacks it.
    pub fn uniform(&self, width: Width) -> Option<(u64, f64)> {
        self.units.iter().try_fold((self.fixed, 0.0), |(b, c), (_, options, _)| {
            let o = options.iter().find(|o| o.width == width)?;
            Some((b + o.bytes, c + o.cost))
        })
    }
}

/// The index of the option every unit takes (see the module documentation); `fixed` bytes are
/// spent before any unit. A typed error when even the cheapest options exceed `budget`.
pub fn allocate(units: &[Vec<Candidate>], fixed: u64, budget: u64) -> Result<Vec<usize>> {
    greedy(units, fixed, budget, |_, _| {})
}

/// The estimated front of the allocation: the model's bytes and summed cost at the cheapest
/// options, then after each move the greedy allocation takes with no budget, up to the least
/// loss. [`allocate`] under a budget follows it until its next move no longer fits.
pub fn front(units: &[Vec<Candidate>], fixed: u64) -> Result<Vec<(u64, f64)>> {
    let mut points = Vec::new();
    greedy(units, fixed, u64::MAX, |bytes, cost| points.push((bytes, cost)))?;
    Ok(points)
}

/// The greedy multiple-choice knapsack: from every unit's cheapest option, take the move with the
/// largest loss saved per added byte while one fits; `step` sees the bytes and summed cost at the
/// start and after each move.
fn greedy(
    units: &[Vec<Candidate>],
    fixed: u64,
    budget: u64,
    mut step: impl FnMut(u64, f64),
) -> Result<Vec<usize>> {
    let cheapest = |opts: &[Candidate]| {
        (0..opts.len())
            .min_by(|&a, &b| opts[a].bytes.cmp(&opts[b].bytes).then(opts[a].cost.total_cmp(&opts[b].cost)))
    };
    let mut chosen = Vec::with_capacity(units.len());
    for (i, opts) in units.iter().enumerate() {
        chosen.push(
            cheapest(opts).ok_or_else(|| CompressError::Calibration(format!("unit {i} has no width")))?,
        );
    }
    let mut spent: u64 = fixed + units.iter().zip(&chosen).map(|(o, &c)| o[c].bytes).sum::<u64>();
    if spent > budget {
        return Err(CompressError::BudgetTooSmall { budget, need: spent });
    }
    let cost = |chosen: &[usize]| units.iter().zip(chosen).map(|(o, &c)| o[c].cost).sum::<f64>();
    step(spent, cost(&chosen));
    loop {
        let mut best: Option<(f64, usize, usize)> = None; // (loss saved per byte, unit, option)
        for (u, opts) in units.iter().enumerate() {
            let now = opts[chosen[u]];
            for (k, o) in opts.iter().enumerate() {
                let (more, saved) = (o.bytes.saturating_sub(now.bytes), now.cost - o.cost);
                if o.bytes <= now.bytes || saved <= 0.0 || spent + more > budget {
                    continue;
                }
                let rate = saved / more as f64;
                if best.is_none_or(|b| rate > b.0) {
                    best = Some((rate, u, k));
                }
            }
        }
        let Some((_, u, k)) = best else { break };
        spent += units[u][k].bytes - units[u][chosen[u]].bytes;
        chosen[u] = k;
        step(spent, cost(&chosen));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(options: &[(Width, u64, f64)]) -> Vec<Candidate> {
        options.iter().map(|&(width, bytes, cost)| Candidate { width, bytes, cost }).collect()
    }

    /// A sensitive unit (INT4 costs a lot), a robust one, and one in between.
    fn three_units() -> Vec<Vec<Candidate>> {
        use Width::*;
        vec![
            unit(&[(Width::INT4, 100, 9.0), (Int8, 200, 0.5), (Float, 400, 0.0)]),
            unit(&[(Width::INT4, 100, 0.2), (Int8, 200, 0.05), (Float, 400, 0.0)]),
            unit(&[(Width::INT4, 100, 2.0), (Int8, 200, 0.3), (Float, 400, 0.0)]),
        ]
    }

    /// Exhaustive search over every combination: the least total cost within the budget.
    fn best_possible(units: &[Vec<Candidate>], fixed: u64, budget: u64) -> f64 {
        let mut best = f64::INFINITY;
        let total: usize = units.iter().map(Vec::len).product();
        for mut code in 0..total {
            let (mut bytes, mut cost) = (fixed, 0.0);
            for u in units {
                let o = u[code % u.len()];
                code /= u.len();
                bytes += o.bytes;
                cost += o.cost;
            }
            if bytes <= budget {
                best = best.min(cost);
            }
        }
        best
    }

    #[test]
    fn bytes_go_where_they_save_the_most_loss_and_never_past_the_budget() {
        let units = three_units();
        let fixed = 1000;
        // the floor: every unit INT4
        assert_eq!(allocate(&units, fixed, 1300).unwrap(), vec![0, 0, 0]);
        // one INT8 upgrade's worth: the sensitive unit takes it
        assert_eq!(allocate(&units, fixed, 1450).unwrap(), vec![1, 0, 0]);
        // two: the sensitive unit and the one in between, the robust one stays INT4
        assert_eq!(allocate(&units, fixed, 1500).unwrap(), vec![1, 0, 1]);
        // everything fits: all float
        assert_eq!(allocate(&units, fixed, 2200).unwrap(), vec![2, 2, 2]);
        for budget in (1300..=2300).step_by(25) {
            let chosen = allocate(&units, fixed, budget).unwrap();
            let bytes: u64 = fixed + units.iter().zip(&chosen).map(|(u, &c)| u[c].bytes).sum::<u64>();
            let cost: f64 = units.iter().zip(&chosen).map(|(u, &c)| u[c].cost).sum();
            assert!(bytes <= budget, "{budget}: {bytes}");
            // no single move that lowers the loss still fits
            for (u, opts) in units.iter().enumerate() {
                for o in opts {
                    let fits = bytes - opts[chosen[u]].bytes + o.bytes <= budget;
                    assert!(!(fits && o.cost < opts[chosen[u]].cost), "{budget}: unit {u} could take {o:?}");
                }
            }
            // greedy on the marginal rate is within the best option's cost here
            // never worse than the best uniform width that fits, and at most one move's saving
            // (0.15 here) above the exhaustive optimum
            let uniform = (0..3)
                .filter(|&k| fixed + units.iter().map(|u| u[k].bytes).sum::<u64>() <= budget)
                .map(|k| units.iter().map(|u| u[k].cost).sum::<f64>())
                .fold(f64::INFINITY, f64::min);
            assert!(cost <= uniform, "{budget}: {cost} vs uniform {uniform}");
            let optimum = best_possible(&units, fixed, budget);
            assert!(cost <= optimum + 0.15 + 1e-12, "{budget}: {cost} vs optimum {optimum}");
        }
        // the cheapest options do not fit: a typed error saying what they need
        let err = allocate(&units, fixed, 1299).unwrap_err();
        assert!(matches!(err, CompressError::BudgetTooSmall { budget: 1299, need: 1300 }), "{err:?}");
    }

    #[test]
    fn the_front_runs_from_the_cheapest_options_to_the_least_loss_and_bounds_every_budget() {
        let units = three_units();
        let fixed = 1000;
        let points = front(&units, fixed).unwrap();
        assert_eq!(points[0], (1300, 11.2));
        assert_eq!(*points.last().unwrap(), (2200, 0.0));
        for w in points.windows(2) {
            assert!(w[1].0 > w[0].0 && w[1].1 < w[0].1, "{w:?}");
        }
        for budget in (1300..=2300).step_by(10) {
            let chosen = allocate(&units, fixed, budget).unwrap();
            let cost: f64 = units.iter().zip(&chosen).map(|(u, &c)| u[c].cost).sum();
            let on_front = points.iter().filter(|p| p.0 <= budget).map(|p| p.1).fold(f64::INFINITY, f64::min);
            assert!(cost <= on_front + 1e-12, "{budget}: {cost} vs the front's {on_front}");
        }
    }

    #[test]
    fn widths_parse_from_their_names_only() {
        for w in [64, 128].into_iter().flat_map(|g| Width::options(Some(g))) {
            assert_eq!(Width::parse(&w.name()).unwrap(), w);
        }
        for bad in ["int4g32", "int4g064", "int4g", "int2", "int8g64", "INT8", ""] {
            assert!(matches!(Width::parse(bad), Err(CompressError::BadOptions { .. })), "{bad}");
        }
    }
}
