//! Writing a model and reading it back, and one typed error for every malformed case.

use pocketvlm_format::architecture::dense_tensors;
use pocketvlm_format::dir::{open, read_manifest, write_manifest};
use pocketvlm_format::manifest::{FORMAT_TAG, VERSION};
use pocketvlm_format::shards::{ShardPacker, shard_file_name};
use pocketvlm_format::{
    ALIGNMENT, ConnectorConfig, Encoding, FormatError, GenerationConfig, Manifest, ModelConfig,
    ProcessorConfig, ShardSet, SourceInfo, TextConfig, TokenizerInfo, VisionConfig,
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
            num_attention_heads: 4,
            num_key_value_heads: 2,
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

/// Deterministic bytes for tensor number `i`.
fn bytes_for(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 131 + j * 7 + (j >> 8)) as u8).collect()
}

fn encoding_for(i: usize) -> Encoding {
    [Encoding::F32, Encoding::F16, Encoding::BF16][i % 3]
}

/// Write a model with the synthetic config into `dir` with the given shard limit.
fn write_model(dir: &std::path::Path, max_shard_bytes: u64) -> Manifest {
    let cfg = config();
    let mut packer =
        ShardPacker::new(pocketvlm_format::dir::DirSink { dir: dir.to_path_buf() }, max_shard_bytes).unwrap();
    for (i, (name, shape)) in dense_tensors(&cfg).iter().enumerate() {
        let enc = encoding_for(i);
        packer.add(name, shape, enc, &bytes_for(i, enc.byte_len(shape))).unwrap();
    }
    let (_, shards, tensors) = packer.finish().unwrap();
    let tokenizer = b"{\"model\": {}}";
    std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
    let manifest = Manifest {
        format: FORMAT_TAG.into(),
        version: VERSION,
        model: cfg.clone(),
        processor: ProcessorConfig {
            do_convert_rgb: true,
            do_resize: true,
            longest_edge: 16,
            max_image_size: 8,
            do_image_splitting: true,
            resample: "lanczos".into(),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            do_pad: true,
            image_seq_len: cfg.image_seq_len(),
        },
        tokenizer: TokenizerInfo {
            file: "tokenizer.json".into(),
            sha256: pocketvlm_format::sha256_hex(tokenizer),
            chat_template: "{{ messages }}".into(),
            bos_token: None,
            eos_token: Some("<end_of_utterance>".into()),
            pad_token: None,
            image_token: "<image>".into(),
            fake_image_token: "<fake_token_around_image>".into(),
            global_image_token: "<global-img>".into(),
            end_of_utterance_token: "<end_of_utterance>".into(),
        },
        generation: GenerationConfig { bos_token_id: None, eos_token_ids: vec![298], pad_token_id: None },
        source: SourceInfo { recipe: "dense".into(), defaulted_keys: vec![] },
        compression: None,
        quantization: None,
        shards,
        tensors,
    };
    write_manifest(dir, &manifest).unwrap();
    manifest
}

#[test]
fn round_trip_is_bit_exact_with_split_tensors_and_aligned_parts() {
    let tmp = tempfile::tempdir().unwrap();
    // 2 KiB shards: the 300×16 embedding tables (f32: 19 200 bytes) must be split over shards.
    let manifest = write_model(tmp.path(), 2048);
    assert!(manifest.shards.len() > 5);
    assert!(manifest.shards.iter().all(|s| s.bytes <= 2048));
    assert!(manifest.tensors.iter().any(|t| t.parts.len() > 1), "some tensor should span shards");
    for t in &manifest.tensors {
        assert!(t.parts.iter().all(|p| p.offset % ALIGNMENT == 0));
    }
    let data = open(tmp.path()).unwrap();
    assert_eq!(data.manifest, manifest);
    for (i, (name, shape)) in dense_tensors(&config()).iter().enumerate() {
        let enc = encoding_for(i);
        let want = bytes_for(i, enc.byte_len(shape));
        assert_eq!(data.tensor_bytes(name).unwrap().as_ref(), want.as_slice(), "{name}");
    }
    // The default limit packs this small model into one shard.
    let tmp2 = tempfile::tempdir().unwrap();
    assert_eq!(write_model(tmp2.path(), pocketvlm_format::DEFAULT_SHARD_BYTES).shards.len(), 1);
}

/// Edit the manifest JSON of a freshly written model, then read it.
fn read_edited(edit: impl FnOnce(&mut serde_json::Value)) -> FormatError {
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), 4096);
    let path = tmp.path().join("manifest.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    match open(tmp.path()) {
        Ok(_) => panic!("edited manifest was accepted"),
        Err(e) => e,
    }
}

fn tensors_mut(json: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    json["tensors"].as_array_mut().unwrap()
}

#[test]
fn missing_tensor() {
    let err = read_edited(|j| {
        tensors_mut(j).retain(|t| t["name"] != "model.text_model.norm.weight");
    });
    assert!(
        matches!(&err, FormatError::MissingTensor { name } if name == "model.text_model.norm.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_vs_config() {
    // A shape whose size disagrees with the listed bytes is a bad entry.
    let err = read_edited(|j| {
        let t = tensors_mut(j)
            .iter_mut()
            .find(|t| t["name"] == "model.text_model.layers.0.self_attn.k_proj.weight");
        t.unwrap()["shape"] = serde_json::json!([4, 8]);
    });
    assert!(matches!(err, FormatError::BadTensorEntry { .. }), "{err}");
    // Transposed: same byte count, wrong shape.
    let err = read_edited(|j| {
        let t = tensors_mut(j)
            .iter_mut()
            .find(|t| t["name"] == "model.text_model.layers.0.self_attn.k_proj.weight");
        t.unwrap()["shape"] = serde_json::json!([16, 8]);
    });
    assert!(
        matches!(&err, FormatError::ShapeMismatch { expected, found, .. } if expected == &[8, 16] && found == &[16, 8]),
        "{err}"
    );
}

#[test]
fn unknown_version_and_tag() {
    let err = read_edited(|j| j["version"] = 99.into());
    assert!(matches!(err, FormatError::UnsupportedVersion { found: 99, .. }), "{err}");
    let err = read_edited(|j| j["format"] = "gguf".into());
    assert!(matches!(err, FormatError::NotAPocketVlmManifest { .. }), "{err}");
}

#[test]
fn unknown_encoding_is_named() {
    let err = read_edited(|j| tensors_mut(j)[3]["encoding"] = "int3_magic".into());
    assert!(
        matches!(&err, FormatError::UnknownEncoding { encoding, .. } if encoding == "int3_magic"),
        "{err}"
    );
}

#[test]
fn unexpected_and_duplicate_tensors() {
    let err = read_edited(|j| {
        let mut extra = tensors_mut(j)[0].clone();
        extra["name"] = "model.text_model.layers.9.extra.weight".into();
        tensors_mut(j).push(extra);
    });
    assert!(matches!(err, FormatError::UnexpectedTensor { .. }), "{err}");
    let err = read_edited(|j| {
        let dup = tensors_mut(j)[0].clone();
        tensors_mut(j).push(dup);
    });
    assert!(matches!(err, FormatError::DuplicateTensor { .. }), "{err}");
}

#[test]
fn misaligned_or_out_of_range_parts() {
    let err = read_edited(|j| tensors_mut(j)[1]["parts"][0]["offset"] = 4.into());
    assert!(matches!(err, FormatError::BadTensorEntry { .. }), "{err}");
    let err = read_edited(|j| tensors_mut(j)[1]["parts"][0]["shard"] = 1000.into());
    assert!(matches!(err, FormatError::NoSuchShard { index: 1000, .. }), "{err}");
}

#[test]
fn shard_and_tokenizer_files_must_be_plain_names() {
    for bad in ["../shard-00000.bin", "sub/shard.bin", "https:x", "a?b", "..", "", "a%2e"] {
        let err = read_edited(|j| j["shards"][0]["file"] = bad.into());
        assert!(
            matches!(&err, FormatError::InvalidManifest(m) if m.contains("plain file name")),
            "{bad}: {err}"
        );
    }
    let err = read_edited(|j| j["tokenizer"]["file"] = "../tokenizer.json".into());
    assert!(matches!(&err, FormatError::InvalidManifest(m) if m.contains("plain file name")), "{err}");
}

#[test]
fn missing_config_key_and_invalid_json() {
    let err = read_edited(|j| {
        j["model"]["text"].as_object_mut().unwrap().remove("rms_norm_eps");
    });
    assert!(matches!(&err, FormatError::InvalidManifest(m) if m.contains("rms_norm_eps")), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("manifest.json"), "{not json").unwrap();
    assert!(matches!(read_manifest(tmp.path()), Err(FormatError::InvalidManifest(_))));
    assert!(matches!(read_manifest(&tmp.path().join("nope")), Err(FormatError::Io { .. })));
}

#[test]
fn corrupt_and_truncated_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = write_model(tmp.path(), 4096);
    let shard = tmp.path().join(shard_file_name(1));
    let original = std::fs::read(&shard).unwrap();

    let mut flipped = original.clone();
    flipped[10] ^= 0x40;
    std::fs::write(&shard, &flipped).unwrap();
    match open(tmp.path()) {
        Err(FormatError::ChecksumMismatch { shard, expected, found }) => {
            assert_eq!(shard, manifest.shards[1].file);
            assert_eq!(expected, manifest.shards[1].sha256);
            assert_ne!(found, expected);
        }
        other => panic!("expected a checksum mismatch, got {:?}", other.err()),
    }

    std::fs::write(&shard, &original[..original.len() - 1]).unwrap();
    assert!(matches!(
        open(tmp.path()),
        Err(FormatError::ShardSizeMismatch { expected, found, .. }) if found + 1 == expected
    ));

    std::fs::remove_file(&shard).unwrap();
    assert!(matches!(open(tmp.path()), Err(FormatError::Io { .. })));
}

#[test]
fn shard_set_verifies_each_shard_in_any_order() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = write_model(tmp.path(), 4096);
    let read = |i: usize| std::fs::read(tmp.path().join(&manifest.shards[i].file)).unwrap();
    let n = manifest.shards.len();
    assert!(n >= 3);

    let mut set = ShardSet::new(manifest.clone());
    for i in (1..n).rev() {
        set.add(i, read(i)).unwrap();
    }
    let mut flipped = read(0);
    flipped[3] ^= 1;
    match set.add(0, flipped) {
        Err(FormatError::ChecksumMismatch { shard, expected, .. }) => {
            assert_eq!(
                (shard, expected),
                (manifest.shards[0].file.clone(), manifest.shards[0].sha256.clone())
            );
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert!(
        matches!(set.add(n, read(0)), Err(FormatError::NoSuchShard { index, count }) if index == n && count == n)
    );
    let err = ShardSet::new(manifest.clone()).finish().err().unwrap();
    assert!(
        matches!(&err, FormatError::MissingShard { shard } if *shard == manifest.shards[0].file),
        "{err}"
    );

    set.add(0, read(0)).unwrap();
    let data = set.finish().unwrap();
    let direct = open(tmp.path()).unwrap();
    for t in &manifest.tensors {
        assert_eq!(data.tensor_bytes(&t.name).unwrap(), direct.tensor_bytes(&t.name).unwrap(), "{}", t.name);
    }
}

#[test]
fn packer_rejects_inconsistent_input() {
    let mut packer = ShardPacker::new(pocketvlm_format::MemorySink::default(), 4096).unwrap();
    let err = packer.add("t", &[2, 3], Encoding::F32, &[0u8; 20]).unwrap_err();
    assert!(matches!(err, FormatError::BadTensorEntry { .. }));
    assert!(ShardPacker::new(pocketvlm_format::MemorySink::default(), 100).is_err());
}

#[test]
fn invalid_config_numbers_are_rejected() {
    let err = read_edited(|j| j["model"]["text"]["num_key_value_heads"] = 3.into());
    assert!(
        matches!(&err, FormatError::InvalidConfig { key, .. } if key == "text.num_key_value_heads"),
        "{err}"
    );
}

/// SmolVLM-Instruct's tiles: patch 14 does not divide 384; the grid floors to 27×27 patches as in
/// transformers (the last 6 pixel rows and columns are never read), 81 tokens per tile at scale 3.
#[test]
fn the_patch_grid_floors_when_the_patch_does_not_divide_the_tile() {
    let mut cfg = config();
    cfg.vision.image_size = 384;
    cfg.vision.patch_size = 14;
    cfg.connector.scale_factor = 3;
    cfg.validate().unwrap();
    assert_eq!(cfg.vision.patches_per_side(), 27);
    assert_eq!(cfg.vision.num_patches(), 729);
    assert_eq!(cfg.image_seq_len(), 81);

    cfg.connector.scale_factor = 2;
    let err = cfg.validate().unwrap_err();
    assert!(
        matches!(&err, FormatError::InvalidConfig { key, .. } if key == "connector.scale_factor"),
        "{err}"
    );
    cfg.connector.scale_factor = 1;
    cfg.vision.patch_size = 385;
    let err = cfg.validate().unwrap_err();
    assert!(matches!(&err, FormatError::InvalidConfig { key, .. } if key == "vision.patch_size"), "{err}");
}
