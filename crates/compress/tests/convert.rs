//! Converting the transformers-built tiny SmolVLM fixture: lossless round trips from every
//! supported source layout and dtype, and typed errors for bad checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pocketvlm_compress::{CompressError, DenseOptions, Plan, compress};
use pocketvlm_format::{FormatError, dir};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

/// name → (dtype, shape, bytes) of the fixture's safetensors.
fn source_tensors(dir: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect()
}

/// Copy the fixture's JSON/tokenizer files (everything but weights) into `to`.
fn copy_metadata(to: &Path) {
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if entry.file_type().unwrap().is_file() && !name.ends_with(".safetensors") {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// Widen bf16 bytes to `dtype` (f32 exactly; f16 exactly for the fixture's value range).
fn convert_bytes(bytes: &[u8], dtype: Dtype) -> Vec<u8> {
    let values = bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32());
    match dtype {
        Dtype::F32 => values.flat_map(f32::to_le_bytes).collect(),
        Dtype::F16 => values.flat_map(|v| half::f16::from_f32(v).to_le_bytes()).collect(),
        _ => bytes.to_vec(),
    }
}

/// Write the fixture's tensors in `dtype`, split over `files` safetensors files with an index.
fn write_sharded(to: &Path, dtype: Dtype, files: usize) -> BTreeMap<String, Vec<u8>> {
    copy_metadata(to);
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = source_tensors(&fixture())
        .into_iter()
        .map(|(n, (d, s, b))| {
            assert_eq!(d, Dtype::BF16, "the fixture is stored in bf16");
            (n, s, convert_bytes(&b, dtype))
        })
        .collect();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in tensors.chunks(tensors.len().div_ceil(files)).enumerate() {
        let file = format!("model-{:05}-of-{files:05}.safetensors", i + 1);
        let views: Vec<(String, TensorView<'_>)> = chunk
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(to.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for (n, _, _) in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(to.join("model.safetensors.index.json"), index.to_string()).unwrap();
    tensors.into_iter().map(|(n, _, b)| (n, b)).collect()
}

fn assert_bit_identical(out: &Path, expected: &BTreeMap<String, Vec<u8>>, encoding: &str) {
    let data = dir::open(out).unwrap();
    assert_eq!(data.manifest.tensors.len(), expected.len());
    for (name, bytes) in expected {
        let entry = data.manifest.tensor(name).unwrap();
        assert_eq!(entry.encoding, encoding, "{name}");
        assert!(
            data.tensor_bytes(name).unwrap().as_ref() == bytes.as_slice(),
            "{name} differs from its source"
        );
    }
    dir::read_tokenizer(out, &data.manifest).unwrap();
}

#[test]
fn single_file_bf16_round_trips_bit_for_bit() {
    let out = tempfile::tempdir().unwrap();
    // 1 MiB shards: the 49280×48 bf16 embedding and lm_head (4.5 MiB each) span several shards.
    let plan = Plan::Dense(DenseOptions { max_shard_bytes: 1 << 20, ..Default::default() });
    let summary = compress(&fixture(), out.path(), &plan).unwrap();
    assert!(summary.manifest.shards.iter().all(|s| s.bytes <= 1 << 20));
    assert!(summary.manifest.tensors.iter().any(|t| t.parts.len() > 1));
    let expected = source_tensors(&fixture()).into_iter().map(|(n, (_, _, b))| (n, b)).collect();
    assert_bit_identical(out.path(), &expected, "bf16");
    // What the config says is what transformers built the fixture with.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    let m = &summary.manifest.model;
    assert_eq!(
        m.text.num_key_value_heads as u64,
        cfg["text_config"]["num_key_value_heads"].as_u64().unwrap()
    );
    assert_eq!(m.text.vocab_size, 49280);
    assert_eq!(m.image_token_id, 49190);
    assert_eq!(summary.manifest.generation.eos_token_ids, vec![49279]);
    assert_eq!(summary.manifest.processor.image_seq_len, m.image_seq_len());
}

/// A folder written again with fewer shards keeps only the new model's (the earlier model's
/// extra shards are removed, any other file stays) and reads back bit for bit.
#[test]
fn a_folder_written_again_holds_only_the_new_models_shards() {
    let out = tempfile::tempdir().unwrap();
    let small = Plan::Dense(DenseOptions { max_shard_bytes: 1 << 20, ..Default::default() });
    let many = compress(&fixture(), out.path(), &small).unwrap().manifest.shards.len();
    assert!(many > 2, "{many} shards");
    std::fs::write(out.path().join("notes.txt"), b"kept").unwrap();
    let summary = compress(&fixture(), out.path(), &Plan::Dense(DenseOptions::default())).unwrap();
    let few = summary.manifest.shards.len();
    assert!(few < many, "{few} of {many} shards");
    let mut shards: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("shard-"))
        .collect();
    shards.sort();
    let listed: Vec<String> = summary.manifest.shards.iter().map(|s| s.file.clone()).collect();
    assert_eq!(shards, listed);
    assert_eq!(std::fs::read(out.path().join("notes.txt")).unwrap(), b"kept");
    let expected = source_tensors(&fixture()).into_iter().map(|(n, (_, _, b))| (n, b)).collect();
    assert_bit_identical(out.path(), &expected, "bf16");
}

#[test]
fn sharded_f32_and_f16_round_trip_bit_for_bit() {
    for (dtype, tag) in [(Dtype::F32, "f32"), (Dtype::F16, "f16")] {
        let src = tempfile::tempdir().unwrap();
        let expected = write_sharded(src.path(), dtype, 3);
        let out = tempfile::tempdir().unwrap();
        compress(src.path(), out.path(), &Plan::Dense(DenseOptions::default())).unwrap();
        assert_bit_identical(out.path(), &expected, tag);
    }
}

/// A copy of the fixture whose `config.json` is edited.
fn with_config(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dirt = tempfile::tempdir().unwrap();
    copy_metadata(dirt.path());
    std::fs::copy(fixture().join("model.safetensors"), dirt.path().join("model.safetensors")).unwrap();
    let path = dirt.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
    dirt
}

fn convert_err(src: &Path) -> CompressError {
    let out = tempfile::tempdir().unwrap();
    compress(src, out.path(), &Plan::Dense(DenseOptions::default())).unwrap_err()
}

#[test]
fn other_architecture_is_rejected() {
    let src = with_config(|c| c["architectures"] = serde_json::json!(["LlamaForCausalLM"]));
    let err = convert_err(src.path());
    assert!(
        matches!(err, CompressError::Format(FormatError::Unsupported(ref m)) if m.contains("LlamaForCausalLM")),
        "{err}"
    );
}

#[test]
fn absent_text_key_is_resolved_explicitly_and_reported() {
    let src = with_config(|c| {
        c["text_config"].as_object_mut().unwrap().remove("max_position_embeddings");
    });
    let out = tempfile::tempdir().unwrap();
    let summary = compress(src.path(), out.path(), &Plan::Dense(DenseOptions::default())).unwrap();
    assert_eq!(summary.manifest.model.text.max_position_embeddings, 2048);
    assert!(
        summary
            .manifest
            .source
            .defaulted_keys
            .iter()
            .any(|k| k.starts_with("text_config.max_position_embeddings"))
    );
}

#[test]
fn shape_disagreeing_with_config_is_rejected() {
    let src = with_config(|c| c["text_config"]["intermediate_size"] = 96.into());
    let err = convert_err(src.path());
    assert!(
        matches!(err, CompressError::Format(FormatError::ShapeMismatch { ref name, .. }) if name.contains("mlp")),
        "{err}"
    );
}

#[test]
fn missing_tensor_bad_dtype_and_corrupt_file_are_rejected() {
    let src = tempfile::tempdir().unwrap();
    copy_metadata(src.path());
    let tensors = source_tensors(&fixture());
    let write = |skip: Option<&str>, int_name: Option<&str>| {
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (n, (d, s, b)) in &tensors {
            if Some(n.as_str()) == skip {
                continue;
            }
            if Some(n.as_str()) == int_name {
                owned.push((n.clone(), Dtype::I16, s.clone(), b.clone()));
            } else {
                owned.push((n.clone(), *d, s.clone(), b.clone()));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = owned
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(src.path().join("model.safetensors"), safetensors::serialize(views, None).unwrap())
            .unwrap();
    };
    write(Some("model.text_model.norm.weight"), None);
    assert!(matches!(
        convert_err(src.path()),
        CompressError::Format(FormatError::MissingTensor { ref name }) if name == "model.text_model.norm.weight"
    ));
    write(None, Some("model.text_model.norm.weight"));
    assert!(matches!(convert_err(src.path()), CompressError::UnsupportedDtype { .. }));
    std::fs::write(src.path().join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
        .unwrap();
    assert!(matches!(convert_err(src.path()), CompressError::BadSafetensors { .. }));
    // A header that claims 2⁶⁴ − 1 bytes: refused against the file's length, nothing allocated.
    std::fs::write(src.path().join("model.safetensors"), [[0xFF; 8].as_slice(), b"{}"].concat()).unwrap();
    assert!(matches!(convert_err(src.path()), CompressError::BadSafetensors { .. }));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(convert_err(empty.path()), CompressError::NotACheckpoint { .. }));
    assert!(matches!(Plan::method_of("magic"), Err(CompressError::UnknownRecipe(_))));
}
