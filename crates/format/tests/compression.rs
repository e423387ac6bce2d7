//! Format v2: the tensors a compression section implies, and its validation.

use std::collections::BTreeMap;

use pocketvlm_format::architecture::{dense_tensors, expected_tensors};
use pocketvlm_format::{
    CalibrationInfo, Compression, ConnectorConfig, FormatError, KvCacheInfo, LayerRanks, ModelConfig,
    TextConfig, VisionConfig,
};

fn config() -> ModelConfig {
    ModelConfig {
        architecture: "Idefics3ForConditionalGeneration".into(),
        vision: VisionConfig {
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_channels: 3,
            image_size: 8,
            patch_size: 2,
            layer_norm_eps: 1e-6,
            hidden_act: "gelu_pytorch_tanh".into(),
        },
        connector: ConnectorConfig { scale_factor: 2 },
        text: TextConfig {
            vocab_size: 300,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 3,
            num_key_value_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            hidden_act: "silu".into(),
        },
        image_token_id: 299,
    }
}

fn section(text_layers: Vec<LayerRanks>, vision_layers: Vec<LayerRanks>) -> Compression {
    Compression {
        recipe: "qsvd".into(),
        beta: 0.5,
        budgets: Default::default(),
        achieved: Default::default(),
        text_layers,
        vision_layers,
        sizes: Vec::new(),
        kv_cache: KvCacheInfo { element_bytes: 2, bytes_per_token: 0, dense_bytes_per_token: 0 },
        calibration: CalibrationInfo {
            mode: "images".into(),
            targets: "self-distillation".into(),
            samples: 1,
            loss_tokens: 1,
            tokens: 1,
            seed: 0,
            image_splitting: false,
        },
    }
}

#[test]
fn factors_replace_dense_weights_with_gqa_shapes() {
    let cfg = config();
    let layers = vec![
        LayerRanks { layer: 0, qkv: Some(5), mlp: BTreeMap::from([("down_proj".to_string(), 3)]) },
        LayerRanks { layer: 1, qkv: None, mlp: BTreeMap::new() },
    ];
    let vision = vec![LayerRanks { layer: 0, qkv: Some(4), mlp: BTreeMap::new() }];
    let c = section(layers, vision);
    c.validate(&cfg).unwrap();
    let t: BTreeMap<String, Vec<usize>> = expected_tensors(&cfg, Some(&c)).into_iter().collect();
    let p = "model.text_model.layers.0";
    // d_q = 3 heads x 4 = 12, d_kv = 1 head x 4 = 4: the latent feeds unequal blocks
    assert_eq!(t[&format!("{p}.self_attn.qkv_down.weight")], vec![5, 16]);
    assert_eq!(t[&format!("{p}.self_attn.q_up.weight")], vec![12, 5]);
    assert_eq!(t[&format!("{p}.self_attn.k_up.weight")], vec![4, 5]);
    assert_eq!(t[&format!("{p}.self_attn.v_up.weight")], vec![4, 5]);
    assert!(!t.contains_key(&format!("{p}.self_attn.q_proj.weight")));
    assert_eq!(t[&format!("{p}.mlp.down_proj.down.weight")], vec![3, 24]);
    assert_eq!(t[&format!("{p}.mlp.down_proj.up.weight")], vec![16, 3]);
    assert!(t.contains_key("model.text_model.layers.1.self_attn.q_proj.weight"));
    let v = "model.vision_model.encoder.layers.0.self_attn";
    assert_eq!(t[&format!("{v}.qkv_down.weight")], vec![4, 8]);
    assert_eq!(t[&format!("{v}.k_up.weight")], vec![8, 4]);
    assert_eq!(t[&format!("{v}.q_proj.bias")], vec![8], "biases stay");
    assert_eq!(expected_tensors(&cfg, None), dense_tensors(&cfg));
}

#[test]
fn bad_sections_are_rejected() {
    let cfg = config();
    let ok = |l: usize| LayerRanks { layer: l, qkv: Some(2), mlp: BTreeMap::new() };
    let too_few = section(vec![ok(0)], Vec::new());
    assert!(matches!(too_few.validate(&cfg), Err(FormatError::InvalidConfig { .. })));
    let rank_too_big =
        section(vec![ok(0), LayerRanks { layer: 1, qkv: Some(17), mlp: BTreeMap::new() }], vec![]);
    assert!(matches!(rank_too_big.validate(&cfg), Err(FormatError::InvalidConfig { .. })));
    let bad_name = section(
        vec![ok(0), LayerRanks { layer: 1, qkv: None, mlp: BTreeMap::from([("fc1".to_string(), 2)]) }],
        vec![],
    );
    assert!(matches!(bad_name.validate(&cfg), Err(FormatError::InvalidConfig { .. })));
}
