//! Image → tiles → pixel values, as `Idefics3ImageProcessor` (the PIL backend) computes them.
//!
//! With `L = longest_edge`, `M = max_image_size` (the tile side) and all resizes Pillow-exact
//! Lanczos on 8-bit RGB:
//!
//! 1. **Resize to the longest edge** (`do_resize`). For an `h × w` image with `r = w / h`:
//!    if `w ≥ h` the new size is `w' = L`, `h' = trunc(L / r)`, else `h' = L`, `w' = trunc(L · r)`;
//!    an odd computed side gets `+1`; both sides are at least 1. If a side then exceeds 4096
//!    (`MAX_IMAGE_SIZE`) the image is scaled down once more, keeping `r` the same way (no even rule).
//! 2. **Splitting on** (`do_image_splitting`): resize up to multiples of `M`. If `w ≥ h`:
//!    `w'' = ⌈w'/M⌉·M`, `h'' = ⌈trunc(w''/r')/M⌉·M` (with `r' = w'/h'`), and symmetrically
//!    otherwise. If `h'' > M` or `w'' > M` the image is cut into `rows = h''/M` × `cols = w''/M`
//!    tiles, row-major, followed by a *global* tile: the `h'' × w''` image resized to `M × M`.
//!    Otherwise the single `M × M` image is used and rows = cols = 0.
//! 3. **Splitting off:** the step-1 image is squashed to `M × M` (aspect ratio not kept);
//!    rows = cols = 0.
//! 4. **Rescale and normalize**, per channel `c`, exactly as transformers' numpy code:
//!    `x = f32(f64(u8) · rescale_factor)`, then `(x − f32(mean_c)) / f32(std_c)` in f32.
//!
//! Padding (`do_pad`) only matters for batches of several images with different tile counts;
//! a single image needs none, so it is left to the caller.

use pocketvlm_format::config::ProcessorConfig;

use crate::error::ProcessorError;
use crate::image::RgbImage;

/// Largest side transformers lets an image keep after the first resize (`MAX_IMAGE_SIZE`).
pub const MAX_IMAGE_SIZE: usize = 4096;

/// Image tiling and normalization for one checkpoint's processor settings.
#[derive(Clone, Debug)]
pub struct Preprocessor {
    config: ProcessorConfig,
}

/// Tile grid of one image: the processor's `rows`/`cols` (both 0 for a single unsplit tile).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageGrid {
    pub rows: usize,
    pub cols: usize,
}

impl ImageGrid {
    /// Tiles this grid produces: `rows · cols + 1` (the global tile), or 1 when not split.
    pub fn n_tiles(&self) -> usize {
        if self.rows == 0 && self.cols == 0 { 1 } else { self.rows * self.cols + 1 }
    }
}

/// One preprocessed image.
#[derive(Clone, Debug)]
pub struct PreparedImage {
    /// Tile rows (0 when the image was not split).
    pub rows: usize,
    /// Tile columns (0 when the image was not split).
    pub cols: usize,
    /// Number of tiles: `rows · cols + 1` when split (global tile last), else 1.
    pub n_tiles: usize,
    /// Tile side in pixels (`max_image_size`).
    pub tile_size: usize,
    /// Resized 8-bit tiles, `[n_tiles, tile_size, tile_size, 3]`.
    pub tiles_u8: Vec<u8>,
    /// Model input, `[n_tiles, 3, tile_size, tile_size]` (channel-first), rescaled and normalized.
    pub pixel_values: Vec<f32>,
}

impl PreparedImage {
    pub fn grid(&self) -> ImageGrid {
        ImageGrid { rows: self.rows, cols: self.cols }
    }
}

impl Preprocessor {
    /// Check the settings (only Lanczos resampling and RGB conversion are supported).
    pub fn new(config: &ProcessorConfig) -> Result<Self, ProcessorError> {
        let unsupported = |what: String| Err(ProcessorError::UnsupportedConfig(what));
        if !config.resample.eq_ignore_ascii_case("lanczos") {
            return unsupported(format!("resample {:?} (only \"lanczos\")", config.resample));
        }
        if !config.do_convert_rgb {
            return unsupported("do_convert_rgb = false (inputs are always RGB)".into());
        }
        if config.max_image_size == 0 || (config.do_resize && config.longest_edge == 0) {
            return unsupported("zero longest_edge / max_image_size".into());
        }
        if config.image_std.contains(&0.0) {
            return unsupported("image_std contains 0".into());
        }
        Ok(Self { config: config.clone() })
    }

    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    /// Tile side `M`.
    pub fn tile_size(&self) -> usize {
        self.config.max_image_size
    }

    /// The checkpoint's default for `do_image_splitting`.
    pub fn default_split(&self) -> bool {
        self.config.do_image_splitting
    }

    /// The grid [`Self::preprocess`] will produce for a `width × height` image, without resampling.
    pub fn grid_for(&self, width: usize, height: usize, split: bool) -> Result<ImageGrid, ProcessorError> {
        if !split {
            return Ok(ImageGrid::default());
        }
        let (w, h) = self.resized_size(width, height)?;
        let (w, h) = split_size(w, h, self.config.max_image_size)?;
        let m = self.config.max_image_size;
        Ok(if w > m || h > m { ImageGrid { rows: h / m, cols: w / m } } else { ImageGrid::default() })
    }

    /// Size after step 1 (the longest-edge resize), `(width, height)`.
    fn resized_size(&self, width: usize, height: usize) -> Result<(usize, usize), ProcessorError> {
        if width == 0 || height == 0 {
            return Err(ProcessorError::InvalidImage(format!("empty image ({width}x{height})")));
        }
        if !self.config.do_resize {
            return Ok((width, height));
        }
        let (w, h) = rescale_to_max_len(width, height, self.config.longest_edge);
        Ok(scale_below_upper_bound(w, h, MAX_IMAGE_SIZE))
    }

    /// Resize, split and normalize one image. `split` overrides `do_image_splitting`.
    pub fn preprocess(&self, image: &RgbImage, split: bool) -> Result<PreparedImage, ProcessorError> {
        let m = self.config.max_image_size;
        let (w, h) = self.resized_size(image.width(), image.height())?;
        let resized = image.resize_lanczos(w, h)?;

        let (tiles, rows, cols) = if split {
            let (sw, sh) = split_size(w, h, m)?;
            let big = resized.resize_lanczos(sw, sh)?;
            if sw > m || sh > m {
                let (rows, cols) = (sh / m, sw / m);
                let mut tiles = Vec::with_capacity(rows * cols + 1);
                for r in 0..rows {
                    for c in 0..cols {
                        tiles.push(big.crop(c * m, r * m, m, m));
                    }
                }
                tiles.push(big.resize_lanczos(m, m)?);
                (tiles, rows, cols)
            } else {
                (vec![big], 0, 0)
            }
        } else {
            (vec![resized.resize_lanczos(m, m)?], 0, 0)
        };

        let n_tiles = tiles.len();
        let mut tiles_u8 = Vec::with_capacity(n_tiles * m * m * 3);
        for t in &tiles {
            tiles_u8.extend_from_slice(t.as_bytes());
        }
        let pixel_values = self.normalize(&tiles_u8, n_tiles, m);
        Ok(PreparedImage { rows, cols, n_tiles, tile_size: m, tiles_u8, pixel_values })
    }

    /// `[n, m, m, 3]` u8 → `[n, 3, m, m]` f32 with transformers' rescale/normalize arithmetic.
    fn normalize(&self, tiles_u8: &[u8], n_tiles: usize, m: usize) -> Vec<f32> {
        let cfg = &self.config;
        let lut: Vec<[f32; 256]> = (0..3)
            .map(|c| {
                let mean = cfg.image_mean[c] as f32;
                let std = cfg.image_std[c] as f32;
                std::array::from_fn(|v| {
                    // `rescale`: upcast to f64, multiply, downcast to f32.
                    let x = if cfg.do_rescale { (v as f64 * cfg.rescale_factor) as f32 } else { v as f32 };
                    // `normalize`: float32 arithmetic with mean/std cast to float32.
                    if cfg.do_normalize { (x - mean) / std } else { x }
                })
            })
            .collect();
        let plane = m * m;
        let mut out = vec![0f32; n_tiles * 3 * plane];
        for t in 0..n_tiles {
            let src = &tiles_u8[t * plane * 3..(t + 1) * plane * 3];
            for (c, table) in lut.iter().enumerate() {
                let dst = &mut out[(t * 3 + c) * plane..(t * 3 + c + 1) * plane];
                for (p, d) in dst.iter_mut().enumerate() {
                    *d = table[src[p * 3 + c] as usize];
                }
            }
        }
        out
    }
}

/// `_resize_output_size_rescale_to_max_len` (min_len 1): longest side to `max_len`, aspect kept
/// with truncation, odd computed side + 1.
fn rescale_to_max_len(width: usize, height: usize, max_len: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let even_up = |v: usize| if v.is_multiple_of(2) { v } else { v + 1 };
    let (w, h) = if width >= height {
        (max_len, even_up((max_len as f64 / aspect) as usize))
    } else {
        (even_up((max_len as f64 * aspect) as usize), max_len)
    };
    (w.max(1), h.max(1))
}

/// `_resize_output_size_scale_below_upper_bound`: shrink so no side exceeds `max_len`.
fn scale_below_upper_bound(width: usize, height: usize, max_len: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let (mut w, mut h) = (width, height);
    if width >= height && width > max_len {
        w = max_len;
        h = (w as f64 / aspect) as usize;
    } else if height > width && height > max_len {
        h = max_len;
        w = (h as f64 * aspect) as usize;
    }
    (w.max(1), h.max(1))
}

/// `resize_for_vision_encoder`: both sides up to multiples of `m`, `(width, height)`.
fn split_size(width: usize, height: usize, m: usize) -> Result<(usize, usize), ProcessorError> {
    let aspect = width as f64 / height as f64;
    let ceil_m = |v: usize| v.div_ceil(m) * m;
    let (w, h) = if width >= height {
        let w = ceil_m(width);
        (w, ceil_m((w as f64 / aspect) as usize))
    } else {
        let h = ceil_m(height);
        (ceil_m((h as f64 * aspect) as usize), h)
    };
    if w == 0 || h == 0 {
        return Err(ProcessorError::InvalidImage(format!(
            "{width}x{height} is too elongated to tile (a side rounds to 0)"
        )));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_edge_sizes() {
        // (w, h) -> (w', h') with L = 384, checked by hand against the Python formulas.
        assert_eq!(rescale_to_max_len(451, 300, 384), (384, 256)); // 255.4 -> 255 -> odd -> 256
        assert_eq!(rescale_to_max_len(240, 427, 384), (216, 384)); // 215.8 -> 215 -> 216
        assert_eq!(rescale_to_max_len(600, 400, 384), (384, 256));
        assert_eq!(rescale_to_max_len(1000, 1, 384), (384, 1)); // 0 -> even -> max(.,1)
        assert_eq!(rescale_to_max_len(10, 10, 384), (384, 384)); // upscaling too
        assert_eq!(scale_below_upper_bound(8000, 3000, 4096), (4096, 1536));
    }

    #[test]
    fn split_sizes() {
        assert_eq!(split_size(384, 256, 128).unwrap(), (384, 256));
        assert_eq!(split_size(216, 384, 128).unwrap(), (256, 384));
        assert_eq!(split_size(100, 100, 128).unwrap(), (128, 128));
        assert_eq!(split_size(384, 1, 128).unwrap(), (384, 128));
    }
}
