//! Image tests against Pillow/transformers outputs precomputed by `reference.py`
//! (stored in `tests/data/reference.json`; inputs are regenerated from `common::pattern`).

mod common;

use common::*;
use pocketvlm_processor::{
    DecodeOptions, MAX_IMAGE_PIXELS, Preprocessor, ProcessorError, RgbImage, decode_image, decode_image_with,
    resize::resize_lanczos,
};

fn reference() -> serde_json::Value {
    read_json(&data_dir().join("reference.json"))
}

fn usize_at(v: &serde_json::Value, i: usize) -> usize {
    v[i].as_u64().unwrap() as usize
}

#[test]
fn pattern_matches_python() {
    assert_eq!(sha256_hex(&pattern(13, 7, 5)), reference()["pattern_check"].as_str().unwrap());
}

#[test]
fn lanczos_resize_is_bit_exact_with_pillow() {
    let r = reference();
    let cases = r["resize"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let (iw, ih) = (usize_at(&case["in"], 0), usize_at(&case["in"], 1));
        let (ow, oh) = (usize_at(&case["out"], 0), usize_at(&case["out"], 1));
        let src = pattern(iw, ih, case["seed"].as_u64().unwrap());
        let out = resize_lanczos(&src, iw, ih, 3, ow, oh);
        if sha256_hex(&out) != case["sha256"].as_str().unwrap() {
            failures.push(format!("{iw}x{ih} -> {ow}x{oh}"));
        }
    }
    assert!(failures.is_empty(), "differs from Pillow {}: {failures:?}", r["pillow_version"]);
    assert!(cases.len() >= 30);
}

/// Per-sample comparison of our decode with Pillow's: (max |difference|, differing samples).
fn compare(ours: &[u8], pillow: &[u8]) -> (i32, usize) {
    assert_eq!(ours.len(), pillow.len());
    let max = ours.iter().zip(pillow).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap_or(0);
    (max, ours.iter().zip(pillow).filter(|(a, b)| a != b).count())
}

#[test]
fn png_decoding_matches_pillow_and_jpeg_difference_is_bounded() {
    let r = reference();
    let mut jpeg_report = Vec::new();
    for case in r["decode"].as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let bytes = std::fs::read(data_dir().join(file)).unwrap();
        let options = match case["options"].as_str() {
            None => DecodeOptions::PIL_OPEN,
            Some("load_image") => DecodeOptions::LOAD_IMAGE,
            Some(other) => panic!("{file}: unknown decode options {other}"),
        };
        let img = decode_image_with(&bytes, options).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (w, h) = (usize_at(&case["size"], 0), usize_at(&case["size"], 1));
        assert_eq!((img.width(), img.height()), (w, h), "{file}");
        if case["exact"].as_bool().unwrap() {
            assert_eq!(
                sha256_hex(img.as_bytes()),
                case["rgb_sha256"].as_str().unwrap(),
                "{file} (Pillow mode {}) decodes differently from Pillow",
                case["mode"]
            );
        } else {
            let pillow = std::fs::read(data_dir().join(case["pillow_rgb"].as_str().unwrap())).unwrap();
            let (max, n) = compare(img.as_bytes(), &pillow);
            eprintln!("{file}: max |ours - Pillow| = {max}, {n} of {} samples differ", pillow.len());
            jpeg_report.push((file.to_owned(), max));
        }
    }
    // zune-jpeg (image 0.25) vs libjpeg-turbo (Pillow): not bit-exact for colour JPEGs (IDCT and
    // colour-conversion rounding, chroma upsampling), but within a couple of levels here.
    for (file, max) in &jpeg_report {
        assert!(*max <= 3, "{file}: JPEG decode differs from Pillow by {max} levels");
    }
    // q90_420, q90_444, grey, cmyk, exif6 and exif6_upright
    assert_eq!(jpeg_report.len(), 6);
}

/// Developer check on a real photo (not run by default):
/// `python3 crates/processor/tests/reference.py --rocket` writes Pillow's decode to
/// /tmp/rocket.pillow.rgb, then
/// `POCKETVLM_ROCKET_JPG=.../skimage/data/rocket.jpg cargo test -p pocketvlm-processor --test pillow -- --ignored`.
#[test]
#[ignore]
fn rocket_jpeg_vs_pillow() {
    let jpg = std::env::var("POCKETVLM_ROCKET_JPG").expect("set POCKETVLM_ROCKET_JPG");
    let pillow = std::fs::read("/tmp/rocket.pillow.rgb").expect("run reference.py --rocket first");
    let img = decode_image(&std::fs::read(jpg).unwrap()).unwrap();
    let (max, n) = compare(img.as_bytes(), &pillow);
    let mut hist = [0usize; 8];
    for (&a, &b) in img.as_bytes().iter().zip(&pillow) {
        hist[((a as i32 - b as i32).unsigned_abs() as usize).min(7)] += 1;
    }
    eprintln!(
        "rocket.jpg {}x{}: max |ours - Pillow| = {max}, {n} of {} samples differ; |diff| histogram 0..7+: {hist:?}",
        img.width(),
        img.height(),
        pillow.len()
    );
}

#[test]
fn undecodable_bytes_are_an_error_not_a_panic() {
    let png = std::fs::read(data_dir().join("rgb.png")).unwrap();
    let jpg = std::fs::read(data_dir().join("q90_420.jpg")).unwrap();
    let mut broken: Vec<Vec<u8>> = vec![vec![], b"not an image".to_vec(), b"GIF89a....".to_vec()];
    for cut in [8, 20, 40, png.len() / 2] {
        broken.push(png[..cut].to_vec());
    }
    for cut in [3, 20, 200, jpg.len() / 2] {
        broken.push(jpg[..cut].to_vec());
    }
    let mut corrupt = png.clone();
    for b in corrupt.iter_mut().skip(60).step_by(7) {
        *b ^= 0x5A;
    }
    broken.push(corrupt);
    for (i, bytes) in broken.iter().enumerate() {
        assert!(decode_image(bytes).is_err(), "input {i} decoded");
    }
    // Damage that a decoder may tolerate (missing IEND/EOI, flipped bits in the entropy-coded
    // data) must still come back as a value, never a panic.
    let mut tolerated = vec![png[..png.len() - 1].to_vec(), jpg[..jpg.len() - 2].to_vec()];
    for step in [5, 11, 17] {
        let mut j = jpg.clone();
        let n = j.len();
        for b in j.iter_mut().take(n - 2).skip(n / 2).step_by(step) {
            *b ^= 0x21;
        }
        tolerated.push(j);
    }
    for bytes in &tolerated {
        let _ = decode_image(bytes);
    }
}

/// `png` with the data of its first chunk of type `kind` replaced (length and CRC made true).
fn with_chunk(png: &[u8], kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut at = 8;
    loop {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        if &png[at + 4..at + 8] == kind {
            let mut chunk = kind.to_vec();
            chunk.extend_from_slice(data);
            let mut out = png[..at].to_vec();
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(&chunk);
            out.extend_from_slice(&crc32(&chunk).to_be_bytes());
            out.extend_from_slice(&png[at + 12 + len..]);
            return out;
        }
        at += 12 + len;
    }
}

/// Palettes the PNG decoder crate panics on (found by `cargo xtask fuzz`, the input kept in
/// `crates/fuzz/regressions/image`) are a typed error: a `PLTE` that is not whole RGB triples,
/// and a palette image's `tRNS` with more alphas than palette entries.
#[test]
fn malformed_palettes_are_an_error_not_a_panic() {
    let png = std::fs::read(data_dir().join("palette_trns.png")).unwrap();
    let plte = |png: &[u8]| -> Vec<u8> {
        let at = png.windows(4).position(|w| w == b"PLTE").unwrap();
        let len = u32::from_be_bytes(png[at - 4..at].try_into().unwrap()) as usize;
        png[at + 4..at + 4 + len].to_vec()
    };
    let palette = plte(&png);
    assert!(decode_image(&png).is_ok());
    let cases = [
        with_chunk(&png, b"PLTE", &palette[..palette.len() - 2]),
        with_chunk(&png, b"PLTE", &[]),
        with_chunk(&png, b"tRNS", &vec![0x80; palette.len() / 3 + 1]),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        match decode_image(bytes) {
            Err(ProcessorError::ImageDecode(m)) => assert!(m.contains("PNG"), "case {i}: {m}"),
            other => panic!("case {i}: {other:?}"),
        }
    }
}

/// CRC-32 (ISO-HDLC, PNG's chunk checksum), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG or JPEG of a few kilobytes whose header declares 60 000 × 60 000 pixels (3.6 · 10⁹, ten
/// gigabytes of RGB) is refused from the header with `ImageTooLarge`, as Pillow refuses it with
/// `DecompressionBombError`; a declared size within the limit still decodes (or fails on the
/// missing pixels) as a plain decode error.
#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let side = 60_000u32;
    // PNG: IHDR's width and height follow the signature and the chunk's length and type; its
    // CRC covers type and data.
    let mut png = std::fs::read(data_dir().join("rgb.png")).unwrap();
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&side.to_be_bytes());
    png[20..24].copy_from_slice(&side.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    // JPEG: the start-of-frame segment (baseline or progressive) holds height, then width.
    let mut jpg = std::fs::read(data_dir().join("q90_420.jpg")).unwrap();
    let sof =
        jpg.windows(2).position(|w| w[0] == 0xFF && (w[1] == 0xC0 || w[1] == 0xC2)).expect("a SOF marker");
    jpg[sof + 5..sof + 7].copy_from_slice(&(side as u16).to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&(side as u16).to_be_bytes());
    for (what, bytes) in [("PNG", &png), ("JPEG", &jpg)] {
        match decode_image(bytes) {
            Err(ProcessorError::ImageTooLarge { width, height, limit }) => {
                assert_eq!((width, height, limit), (side.into(), side.into(), MAX_IMAGE_PIXELS), "{what}");
            }
            other => panic!("{what} declaring {side}×{side}: {other:?}"),
        }
    }
    // Within the limit (Pillow opens up to twice its MAX_IMAGE_PIXELS): not refused as a bomb.
    let within = 2_000u32;
    jpg[sof + 5..sof + 7].copy_from_slice(&(within as u16).to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&(within as u16).to_be_bytes());
    assert!(!matches!(decode_image(&jpg), Err(ProcessorError::ImageTooLarge { .. })));
}

#[test]
fn processor_matches_transformers_on_synthetic_images() {
    let r = reference();
    for case in r["processor"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (w, h) = (usize_at(&case["size"], 0), usize_at(&case["size"], 1));
        let split = case["split"].as_bool().unwrap();
        let cfg = smolvlm_processor_config(
            case["longest_edge"].as_u64().unwrap() as usize,
            case["max_image_size"].as_u64().unwrap() as usize,
            split,
        );
        let pre = Preprocessor::new(&cfg).unwrap();
        let img = RgbImage::new(w, h, pattern(w, h, case["seed"].as_u64().unwrap())).unwrap();
        let out = pre.preprocess(&img, split).unwrap();
        assert_eq!(
            (out.rows, out.cols),
            (case["rows"].as_u64().unwrap() as usize, case["cols"].as_u64().unwrap() as usize),
            "{name}"
        );
        assert_eq!(pre.grid_for(w, h, split).unwrap(), out.grid(), "{name}");
        let shape: Vec<usize> =
            case["tiles_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(vec![out.n_tiles, out.tile_size, out.tile_size, 3], shape, "{name}");
        assert_eq!(out.grid().n_tiles(), out.n_tiles, "{name}");
        assert_eq!(sha256_hex(&out.tiles_u8), case["tiles_sha256"].as_str().unwrap(), "{name}: tiles");
        assert_eq!(
            sha256_hex(&f32_le_bytes(&out.pixel_values)),
            case["pixel_values_sha256"].as_str().unwrap(),
            "{name}: pixel values"
        );
    }
}
