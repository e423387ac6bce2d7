//! The tensors an `Idefics3ForConditionalGeneration` checkpoint holds, named as Hugging Face
//! names them, with the shapes the config implies.

use crate::config::ModelConfig;

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
    push(format!("{tp}.embed_tokens.weight"), vec![t.vocab_size, d]);
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
        push("lm_head.weight".into(), vec![t.vocab_size, d]);
    }
    out
}
