//! Image bytes from a user: PNG or JPEG decoding (with and without EXIF orientation, alpha
//! composited or dropped), the browser's already-decoded RGBA path, then the processor's
//! resize, tiling and normalization under the tiny fixture's settings.

use pocketvlm_processor::{AlphaHandling, DecodeOptions, RgbImage};

use crate::fixture;

/// Pixels the fuzzer may make an image declare (a megapixel keeps one run in milliseconds; the
/// product's limit, `MAX_IMAGE_PIXELS`, is the same check with a larger number).
const MAX_PIXELS: u64 = 1 << 20;

pub fn run(data: &[u8]) {
    // the input's length picks the decode options, so both are fuzzed from one corpus
    let options =
        if data.len().is_multiple_of(2) { DecodeOptions::PIL_OPEN } else { DecodeOptions::LOAD_IMAGE };
    if let Ok(image) =
        pocketvlm_processor::decode_image_with(data, DecodeOptions { max_pixels: MAX_PIXELS, ..options })
    {
        check_decoded(&image);
        preprocess(&image);
    }
    if let Some(image) = from_rgba(data) {
        check_decoded(&image);
        preprocess(&image);
    }
}

/// The page's path: width and height (two little-endian `u16`), then RGBA bytes.
fn from_rgba(data: &[u8]) -> Option<RgbImage> {
    let [w0, w1, h0, h1, rgba @ ..] = data else { return None };
    let (w, h) = (u16::from_le_bytes([*w0, *w1]) as usize, u16::from_le_bytes([*h0, *h1]) as usize);
    let alpha =
        if data.len().is_multiple_of(2) { AlphaHandling::CompositeOnWhite } else { AlphaHandling::Drop };
    RgbImage::from_rgba(w, h, rgba, alpha).ok()
}

fn check_decoded(image: &RgbImage) {
    assert!(image.width() > 0 && image.height() > 0, "an empty image decoded");
    assert_eq!(image.as_bytes().len(), image.width() * image.height() * 3, "decoded bytes differ from w·h·3");
}

/// Both splitting modes; what is produced must match the grid announced for the image's size.
fn preprocess(image: &RgbImage) {
    let pre = &fixture().preprocessor;
    let tile = pre.tile_size();
    for split in [false, true] {
        let Ok(prepared) = pre.preprocess(image, split) else { continue };
        let grid =
            pre.grid_for(image.width(), image.height(), split).expect("the grid of a preprocessed image");
        assert_eq!(prepared.grid(), grid, "tiles differ from the announced grid");
        assert_eq!(prepared.n_tiles, grid.n_tiles());
        assert_eq!(prepared.tiles_u8.len(), prepared.n_tiles * tile * tile * 3);
        assert_eq!(prepared.pixel_values.len(), prepared.n_tiles * 3 * tile * tile);
        assert!(prepared.pixel_values.iter().all(|v| v.is_finite()), "a non-finite pixel value");
    }
}
