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
        LayerRanks { layer: 0, qkv: Some(5), kv: None, mlp: BTreeMap::from([("down_proj".to_string(), 3)]) },
        LayerRanks { layer: 1, qkv: None, kv: None, mlp: BTreeMap::new() },
    ];
    let vision = vec![LayerRanks { layer: 0, qkv: Some(4), kv: None, mlp: BTreeMap::new() }];
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
    let ok = |l: usize| LayerRanks { layer: l, qkv: Some(2), kv: None, mlp: BTreeMap::new() };
    let too_few = section(vec![ok(0)], Vec::new());
    assert!(matches!(too_few.validate(&cfg), Err(FormatError::InvalidConfig { .. })));
    let rank_too_big =
        section(vec![ok(0), LayerRanks { layer: 1, qkv: Some(17), kv: None, mlp: BTreeMap::new() }], vec![]);
    assert!(matches!(rank_too_big.validate(&cfg), Err(FormatError::InvalidConfig { .. })));
    let bad_name = section(
        vec![
            ok(0),
            LayerRanks { layer: 1, qkv: None, kv: None, mlp: BTreeMap::from([("fc1".to_string(), 2)]) },
        ],
        vec![],
    );
    assert!(matches!(bad_name.validate(&cfg), Err(FormatError::InvalidConfig { .. })));
}

/// A K/V latent replaces `k_proj` and `v_proj` by its factors and keeps `q_proj`; it is for text
/// layers without a joint QKV latent, with a rank up to `min(d, 2·d_kv)`; manifests without it
/// read and write as before.
#[test]
fn a_kv_latent_keeps_q_dense_and_is_checked() {
    let cfg = config();
    let kv = |l: usize, r: usize| LayerRanks { layer: l, qkv: None, kv: Some(r), mlp: BTreeMap::new() };
    let plain = |l: usize| LayerRanks { layer: l, ..Default::default() };
    let c = section(vec![kv(0, 3), plain(1)], vec![]);
    c.validate(&cfg).unwrap();
    let t: BTreeMap<String, Vec<usize>> = expected_tensors(&cfg, Some(&c)).into_iter().collect();
    let p = "model.text_model.layers.0.self_attn";
    assert_eq!(t[&format!("{p}.q_proj.weight")], vec![12, 16], "q stays dense");
    assert_eq!(t[&format!("{p}.kv_down.weight")], vec![3, 16]);
    assert_eq!(t[&format!("{p}.k_up.weight")], vec![4, 3]);
    assert_eq!(t[&format!("{p}.v_up.weight")], vec![4, 3]);
    for gone in ["k_proj", "v_proj", "qkv_down", "q_up"] {
        assert!(!t.contains_key(&format!("{p}.{gone}.weight")), "{gone}");
    }
    // d_kv = 4: a K/V latent has at most 2·d_kv = 8 components
    let bad = [
        section(vec![kv(0, 9), plain(1)], vec![]),
        section(vec![kv(0, 0), plain(1)], vec![]),
        section(vec![LayerRanks { qkv: Some(2), ..kv(0, 2) }, plain(1)], vec![]),
        section(vec![plain(0), plain(1)], vec![kv(0, 2)]),
    ];
    for c in bad {
        assert!(matches!(c.validate(&cfg), Err(FormatError::InvalidConfig { .. })), "{c:?}");
    }
    let json = serde_json::to_string(&plain(0)).unwrap();
    assert!(!json.contains("\"kv\""), "{json}");
    let read: LayerRanks = serde_json::from_str(r#"{"layer": 0, "qkv": 2, "mlp": {}}"#).unwrap();
    assert_eq!((read.qkv, read.kv), (Some(2), None));
    assert_eq!(
        serde_json::from_str::<LayerRanks>(&serde_json::to_string(&kv(0, 3)).unwrap()).unwrap(),
        kv(0, 3)
    );
}
