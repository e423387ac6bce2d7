//! The tensors an `Idefics3ForConditionalGeneration` checkpoint holds, named as Hugging Face
//! names them, with the shapes the config implies.

use std::collections::HashMap;

use crate::compression::{
    Compression, kv_factor_names, linear_factor_names, qkv_factor_names, text_layer_prefix, text_mlp_linears,
    vision_layer_prefix, vision_mlp_linears,
};
use crate::config::ModelConfig;

/// The text decoder's token embedding table.
pub const EMBED_TOKENS: &str = "model.text_model.embed_tokens.weight";
/// The output projection; absent when the config ties it to [`EMBED_TOKENS`].
pub const LM_HEAD: &str = "lm_head.weight";

/// Names and shapes of every tensor a dense model with this config must have, in a stable order
/// (vision, connector, text, lm_head). Weights keep Hugging Face's `[out, in]` layout.
pub fn dense_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));

    let v = &cfg.vision;
    let dv = v.hidden_size;
    let vp = "model.vision_model";
    push(
        format!("{vp}.embeddings.patch_embedding.weight"),
        vec![dv, v.num_channels, v.patch_size, v.patch_size],
    );
    push(format!("{vp}.embeddings.patch_embedding.bias"), vec![dv]);
    push(format!("{vp}.embeddings.position_embedding.weight"), vec![v.num_patches(), dv]);
    for i in 0..v.num_hidden_layers {
        let l = format!("{vp}.encoder.layers.{i}");
        for norm in ["layer_norm1", "layer_norm2"] {
            push(format!("{l}.{norm}.weight"), vec![dv]);
            push(format!("{l}.{norm}.bias"), vec![dv]);
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            push(format!("{l}.self_attn.{proj}.weight"), vec![dv, dv]);
            push(format!("{l}.self_attn.{proj}.bias"), vec![dv]);
        }
        push(format!("{l}.mlp.fc1.weight"), vec![v.intermediate_size, dv]);
        push(format!("{l}.mlp.fc1.bias"), vec![v.intermediate_size]);
        push(format!("{l}.mlp.fc2.weight"), vec![dv, v.intermediate_size]);
        push(format!("{l}.mlp.fc2.bias"), vec![dv]);
    }
    push(format!("{vp}.post_layernorm.weight"), vec![dv]);
    push(format!("{vp}.post_layernorm.bias"), vec![dv]);

    let t = &cfg.text;
    let s2 = cfg.connector.scale_factor * cfg.connector.scale_factor;
    push("model.connector.modality_projection.proj.weight".into(), vec![t.hidden_size, dv * s2]);

    let d = t.hidden_size;
    let dq = t.num_attention_heads * t.head_dim;
    let dkv = t.num_key_value_heads * t.head_dim;
    let tp = "model.text_model";
    push(EMBED_TOKENS.into(), vec![t.vocab_size, d]);
    for i in 0..t.num_hidden_layers {
        let l = format!("{tp}.layers.{i}");
        push(format!("{l}.input_layernorm.weight"), vec![d]);
        push(format!("{l}.self_attn.q_proj.weight"), vec![dq, d]);
        push(format!("{l}.self_attn.k_proj.weight"), vec![dkv, d]);
        push(format!("{l}.self_attn.v_proj.weight"), vec![dkv, d]);
        push(format!("{l}.self_attn.o_proj.weight"), vec![d, dq]);
        push(format!("{l}.post_attention_layernorm.weight"), vec![d]);
        push(format!("{l}.mlp.gate_proj.weight"), vec![t.intermediate_size, d]);
        push(format!("{l}.mlp.up_proj.weight"), vec![t.intermediate_size, d]);
        push(format!("{l}.mlp.down_proj.weight"), vec![d, t.intermediate_size]);
    }
    push(format!("{tp}.norm.weight"), vec![d]);
    if !t.tie_word_embeddings {
        push(LM_HEAD.into(), vec![t.vocab_size, d]);
    }
    out
}

/// Names and shapes of every tensor a model with this config and (v2) compression section must
/// have. Without a section this is [`dense_tensors`]; with one, each factored weight is replaced,
/// in place, by its factors (see [`crate::compression`]); biases and everything else stay.
pub fn expected_tensors(cfg: &ModelConfig, compression: Option<&Compression>) -> Vec<(String, Vec<usize>)> {
    let dense = dense_tensors(cfg);
    let Some(c) = compression else { return dense };
    // dense weight name -> replacement tensors
    let mut replace: HashMap<String, Vec<(String, Vec<usize>)>> = HashMap::new();
    let t = &cfg.text;
    let (dq, dkv) = (t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim);
    let towers = [
        (&c.text_layers, t.hidden_size, dq, dkv, true),
        (&c.vision_layers, cfg.vision.hidden_size, cfg.vision.hidden_size, cfg.vision.hidden_size, false),
    ];
    for (layers, d, dq, dkv, text) in towers {
        for l in layers {
            let prefix = if text { text_layer_prefix(l.layer) } else { vision_layer_prefix(l.layer) };
            let attn = format!("{prefix}.self_attn");
            if let Some(r) = l.qkv {
                let [down, q, k, v] = qkv_factor_names(&attn);
                replace.insert(
                    format!("{attn}.q_proj.weight"),
                    vec![(down, vec![r, d]), (q, vec![dq, r]), (k, vec![dkv, r]), (v, vec![dkv, r])],
                );
                replace.insert(format!("{attn}.k_proj.weight"), vec![]);
                replace.insert(format!("{attn}.v_proj.weight"), vec![]);
            }
            if let Some(r) = l.kv {
                let [down, k, v] = kv_factor_names(&attn);
                replace.insert(
                    format!("{attn}.k_proj.weight"),
                    vec![(down, vec![r, d]), (k, vec![dkv, r]), (v, vec![dkv, r])],
                );
                replace.insert(format!("{attn}.v_proj.weight"), vec![]);
            }
            let linears: Vec<(&str, usize, usize)> =
                if text { text_mlp_linears(cfg).to_vec() } else { vision_mlp_linears(cfg).to_vec() };
            for (name, out, inp) in linears {
                if let Some(&r) = l.mlp.get(name) {
                    let base = format!("{prefix}.mlp.{name}");
                    let (down, up) = linear_factor_names(&base);
                    replace.insert(format!("{base}.weight"), vec![(down, vec![r, inp]), (up, vec![out, r])]);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(dense.len() + replace.len());
    for (name, shape) in dense {
        match replace.remove(&name) {
            Some(factors) => out.extend(factors),
            None => out.push((name, shape)),
        }
    }
    out
}
