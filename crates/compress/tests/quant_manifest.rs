//! The manifest's `quantization` section (format v3): packed weights need the section, the
//! section needs matching encodings and scale tensors, and older versions cannot carry it.

use std::path::PathBuf;

use pocketvlm_compress::{DenseOptions, Plan, compress};
use pocketvlm_format::manifest::QUANTIZATION_VERSION;
use pocketvlm_format::quant::{
    ActivationSpec, Construction, Quantization, QuantizedLayer, RotationSpec, scale_name,
};
use pocketvlm_format::{FormatError, Manifest, TensorEntry};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

const W: &str = "model.text_model.layers.0.mlp.down_proj.weight";

/// The dense tiny model's manifest with `down_proj` of layer 0 re-declared as packed `bits`
/// integers (its existing bytes reused: validation does not read shards) plus a scale tensor.
fn quantized(bits: u32, group: Option<usize>) -> Manifest {
    let out = tempfile::tempdir().unwrap();
    let mut m = compress(&fixture(), out.path(), &Plan::Dense(DenseOptions::default())).unwrap().manifest;
    let t = m.tensors.iter_mut().find(|t| t.name == W).unwrap();
    let (rows, cols) = (t.shape[0], t.shape[1]);
    t.encoding = if bits == 4 { "i4" } else { "i8" }.into();
    t.bytes = (rows * cols * bits as usize / 8) as u64;
    t.parts.truncate(1);
    t.parts[0].bytes = t.bytes;
    let mut scale = t.clone();
    scale.name = scale_name(W);
    scale.encoding = "f32".into();
    scale.shape = match group {
        Some(g) => vec![rows, cols / g],
        None => vec![rows],
    };
    scale.bytes = 4 * scale.shape.iter().product::<usize>() as u64;
    scale.parts[0].bytes = scale.bytes;
    m.tensors.push(scale);
    m.version = QUANTIZATION_VERSION;
    m.quantization = Some(Quantization {
        scheme: "w4a8".into(),
        residual_rotation: Some(RotationSpec {
            construction: Construction::Kronecker,
            size: 48,
            seed: Some(1),
        }),
        layers: vec![QuantizedLayer {
            weight: W.into(),
            weight_bits: bits,
            group,
            activation: ActivationSpec { bits: 8, clip_ratio: 0.9 },
            online: vec![RotationSpec { construction: Construction::Kronecker, size: cols, seed: Some(2) }],
        }],
        tables: vec![],
        gptq_damping: Some(0.01),
    });
    m
}

fn tensor<'a>(m: &'a mut Manifest, name: &str) -> &'a mut TensorEntry {
    m.tensors.iter_mut().find(|t| t.name == name).unwrap()
}

#[test]
fn quantized_manifest_validates_and_round_trips() {
    for (bits, group) in [(4, None), (4, Some(64)), (8, None)] {
        let m = quantized(bits, group);
        assert_eq!(m.version, QUANTIZATION_VERSION);
        m.validate().unwrap();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
    }
}

#[test]
fn malformed_quantization_sections_are_rejected() {
    // packed tensor without a section
    let mut m = quantized(4, None);
    m.quantization = None;
    tensor(&mut m, &scale_name(W)).name = "stray".into();
    assert!(m.validate().is_err());
    // a v2 manifest cannot carry the section
    let mut m = quantized(4, None);
    m.version = 2;
    assert!(matches!(m.validate(), Err(FormatError::InvalidManifest(e)) if e.contains("quantization")));
    // bits disagree with the encoding
    let mut m = quantized(4, None);
    m.quantization.as_mut().unwrap().layers[0].weight_bits = 8;
    assert!(matches!(m.validate(), Err(FormatError::BadTensorEntry { .. })));
    // scale shape disagrees with the grouping
    let mut m = quantized(4, Some(64));
    m.quantization.as_mut().unwrap().layers[0].group = None;
    m.quantization.as_mut().unwrap().layers[0].online.clear();
    assert!(matches!(m.validate(), Err(FormatError::ShapeMismatch { .. })));
    // unsupported group (INT4 activations or not, groups are 64 / 128 dividing the columns)
    let mut m = quantized(4, None);
    m.quantization.as_mut().unwrap().layers[0].group = Some(96);
    assert!(matches!(m.validate(), Err(FormatError::Quant(_))));
    // online transform of the wrong size
    let mut m = quantized(8, None);
    m.quantization.as_mut().unwrap().layers[0].online[0].size = 48;
    assert!(matches!(m.validate(), Err(FormatError::Quant(_))));
    // missing scales
    let mut m = quantized(8, None);
    m.tensors.retain(|t| t.name != scale_name(W));
    assert!(matches!(m.validate(), Err(FormatError::NoSuchTensor { .. })));
}
