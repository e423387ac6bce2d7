//! 8-bit RGB images: decoding PNG/JPEG bytes, and converting RGBA buffers the way Hugging Face does.
//!
//! The reference is what `Idefics3ImageProcessor` receives from Pillow. Its `convert_to_rgb`
//! composites any image with an alpha channel (RGBA, LA, or a palette/grey/RGB image with a
//! `tRNS` transparency entry) onto an opaque white background with Pillow's integer
//! `alpha_composite`, then drops alpha; images without alpha are converted with
//! `Image.convert("RGB")` (grey is replicated to three channels).
//!
//! Transformers' `load_image()` helper (used when a path or URL is passed) differs: it first
//! applies the EXIF orientation (`ImageOps.exif_transpose`) and converts with
//! `Image.convert("RGB")`, which *drops* alpha instead of compositing. [`DecodeOptions`] selects
//! either behaviour.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::error::ProcessorError;

/// The most pixels an image file may declare: Pillow's `DecompressionBombError` threshold
/// (twice `Image.MAX_IMAGE_PIXELS`), so whatever Pillow opens, this opens too. Larger files —
/// e.g. a few hundred bytes claiming 60 000 × 60 000 — are refused from the header
/// ([`ProcessorError::ImageTooLarge`]) before any pixel memory is allocated.
pub const MAX_IMAGE_PIXELS: u64 = 2 * 89_478_485;

/// An 8-bit RGB image, rows top to bottom, pixels `[r, g, b]` interleaved (`[H, W, 3]`).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

/// What to do with an alpha channel when converting to RGB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlphaHandling {
    /// Composite onto opaque white, as the image processor's `convert_to_rgb` does for a
    /// `PIL.Image` with transparency.
    CompositeOnWhite,
    /// Ignore alpha, as `PIL.Image.convert("RGB")` (and so transformers' `load_image`) does.
    Drop,
}

/// How [`decode_image_with`] turns file bytes into RGB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Rotate/flip according to the EXIF orientation tag (`ImageOps.exif_transpose`).
    pub apply_exif_orientation: bool,
    pub alpha: AlphaHandling,
    /// Files declaring more pixels than this are refused from their header
    /// ([`ProcessorError::ImageTooLarge`]); Pillow's limit, [`MAX_IMAGE_PIXELS`], by default.
    pub max_pixels: u64,
}

impl DecodeOptions {
    /// `processor(images=PIL.Image.open(f))`: pixels as stored, alpha composited onto white.
    pub const PIL_OPEN: Self = Self {
        apply_exif_orientation: false,
        alpha: AlphaHandling::CompositeOnWhite,
        max_pixels: MAX_IMAGE_PIXELS,
    };
    /// `processor(images=PIL.ImageOps.exif_transpose(PIL.Image.open(f)))`: the picture upright,
    /// as a browser shows it (and as the npm package's `createImageBitmap` decodes it), alpha
    /// composited onto white.
    pub const UPRIGHT: Self = Self {
        apply_exif_orientation: true,
        alpha: AlphaHandling::CompositeOnWhite,
        max_pixels: MAX_IMAGE_PIXELS,
    };
    /// `processor(images=transformers.image_utils.load_image(f))`: EXIF orientation applied,
    /// alpha dropped.
    pub const LOAD_IMAGE: Self =
        Self { apply_exif_orientation: true, alpha: AlphaHandling::Drop, max_pixels: MAX_IMAGE_PIXELS };
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self::PIL_OPEN
    }
}

impl RgbImage {
    /// Wrap packed RGB bytes (`width · height · 3` of them).
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, ProcessorError> {
        check_size(width, height, data.len(), 3)?;
        Ok(Self { width, height, data })
    }

    /// From packed RGBA bytes, e.g. `ImageData.data` of a canvas the browser decoded the file into.
    ///
    /// The bytes must be straight (not premultiplied) alpha; in the browser use
    /// `createImageBitmap(blob, {premultiplyAlpha: "none", colorSpaceConversion: "none"})`.
    /// With [`AlphaHandling::CompositeOnWhite`] each pixel is Pillow's
    /// `alpha_composite(white, px)`: with `a` the source alpha,
    /// `c1 = a·255·255·128 / (a·255 + 255·(255−a))` (integer division, 7 fraction bits),
    /// `c2 = 255·128 − c1`, `out = div255(src·c1 + 255·c2 + 128·128) >> 7` where
    /// `div255(x) = ((x >> 8) + x) >> 8`; fully transparent pixels become white.
    pub fn from_rgba(
        width: usize,
        height: usize,
        rgba: &[u8],
        alpha: AlphaHandling,
    ) -> Result<Self, ProcessorError> {
        check_size(width, height, rgba.len(), 4)?;
        let mut data = Vec::with_capacity(width * height * 3);
        for px in rgba.chunks_exact(4) {
            match alpha {
                AlphaHandling::CompositeOnWhite => data.extend_from_slice(&composite_on_white(px)),
                AlphaHandling::Drop => data.extend_from_slice(&px[..3]),
            }
        }
        Ok(Self { width, height, data })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// Packed RGB bytes, `[H, W, 3]`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// Pillow-exact Lanczos resize (see [`crate::resize`]).
    pub fn resize_lanczos(&self, width: usize, height: usize) -> Result<Self, ProcessorError> {
        if width == 0 || height == 0 {
            return Err(ProcessorError::InvalidImage(format!("cannot resize to {width}x{height}")));
        }
        let data = crate::resize::resize_lanczos(&self.data, self.width, self.height, 3, width, height);
        Ok(Self { width, height, data })
    }

    /// The `w × h` region whose top-left corner is `(x, y)`; it must lie inside the image.
    pub(crate) fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Self {
        debug_assert!(x + w <= self.width && y + h <= self.height);
        let mut data = Vec::with_capacity(w * h * 3);
        for row in y..y + h {
            let start = (row * self.width + x) * 3;
            data.extend_from_slice(&self.data[start..start + w * 3]);
        }
        Self { width: w, height: h, data }
    }
}

fn check_size(width: usize, height: usize, len: usize, channels: usize) -> Result<(), ProcessorError> {
    if width == 0 || height == 0 {
        return Err(ProcessorError::InvalidImage(format!("empty image ({width}x{height})")));
    }
    let want = width.checked_mul(height).and_then(|n| n.checked_mul(channels));
    if want != Some(len) {
        return Err(ProcessorError::InvalidImage(format!(
            "{len} bytes for a {width}x{height} image with {channels} channels"
        )));
    }
    Ok(())
}

/// Pillow's `ImagingAlphaComposite` with an opaque white destination (7 fraction bits).
fn composite_on_white(px: &[u8]) -> [u8; 3] {
    let a = px[3] as u32;
    if a == 0 {
        return [255; 3];
    }
    const BITS: u32 = 7;
    let shift_div255 = |x: u32| ((x >> 8) + x) >> 8;
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << BITS) / outa255;
    let coef2 = 255 * (1 << BITS) - coef1;
    let ch = |c: u8| (shift_div255(c as u32 * coef1 + 255 * coef2 + (0x80 << BITS)) >> BITS) as u8;
    [ch(px[0]), ch(px[1]), ch(px[2])]
}

/// Decode PNG or JPEG bytes like `PIL.Image.open(f)` handed to the processor
/// ([`DecodeOptions::PIL_OPEN`]).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ProcessorError> {
    decode_image_with(bytes, DecodeOptions::PIL_OPEN)
}

/// Decode PNG or JPEG bytes to 8-bit RGB.
///
/// Sample conversions follow Pillow: grey is replicated; 16-bit RGB(A) and grey+alpha keep the
/// high byte (Pillow's `;16B` unpackers); 16-bit grey (Pillow mode `I;16`) is clipped to 255.
/// Palette and `tRNS` transparency are expanded to alpha first.
///
/// JPEG is decoded by `zune-jpeg`, not libjpeg-turbo, so colour JPEG pixels can differ from
/// Pillow's by a few levels (chroma upsampling and IDCT rounding); PNG is exact. A file declaring
/// more than `options.max_pixels` is refused from its header.
pub fn decode_image_with(bytes: &[u8], options: DecodeOptions) -> Result<RgbImage, ProcessorError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ProcessorError::ImageDecode(e.to_string()))?;
    // The pixel count below is the guard (Pillow's); the decoder's own 512 MiB allocation cap
    // would refuse 16-bit images Pillow opens.
    reader.no_limits();
    match reader.format() {
        Some(ImageFormat::Png) => check_png_palette(bytes)?,
        Some(ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(ProcessorError::ImageDecode(format!("unsupported image format {other:?}")));
        }
        None => return Err(ProcessorError::ImageDecode("not a PNG or JPEG file".into())),
    }
    let mut decoder = reader.into_decoder().map_err(|e| ProcessorError::ImageDecode(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let (width, height) = (u64::from(width), u64::from(height));
    if width * height > options.max_pixels {
        return Err(ProcessorError::ImageTooLarge { width, height, limit: options.max_pixels });
    }
    let orientation = if options.apply_exif_orientation {
        decoder.orientation().map_err(|e| ProcessorError::ImageDecode(e.to_string()))?
    } else {
        image::metadata::Orientation::NoTransforms
    };
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| ProcessorError::ImageDecode(e.to_string()))?;
    img.apply_orientation(orientation);
    dynamic_to_rgb(img, options.alpha)
}

/// PNG's palette rules, checked before the decoder sees the file (the `png` crate panics on a
/// `PLTE` chunk whose length is not whole RGB triples, and on a palette image's `tRNS` longer than
/// its palette — both found by fuzzing): a `PLTE` holds 1 to 256 triples (3 to 768 bytes, a
/// multiple of 3), and a palette image (IHDR colour type 3) has at most one alpha per entry.
/// Chunks are walked by their lengths up to `IDAT` (the palette and `tRNS` come before it); a
/// file cut short is left to the decoder, which reports it.
fn check_png_palette(bytes: &[u8]) -> Result<(), ProcessorError> {
    let bad = |what: String| Err(ProcessorError::ImageDecode(format!("invalid PNG: {what}")));
    let (mut at, mut palette_image) = (8usize, false);
    let (mut entries, mut alphas): (Option<usize>, Option<usize>) = (None, None);
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        let data = bytes.get(at + 8..).map(|rest| &rest[..len.min(rest.len())]).unwrap_or_default();
        match kind {
            b"IHDR" => palette_image = data.get(9) == Some(&3),
            b"PLTE" => {
                if len == 0 || len > 768 || !len.is_multiple_of(3) {
                    return bad(format!("a palette (PLTE) of {len} bytes, not 1 to 256 RGB triples"));
                }
                entries = Some(len / 3);
            }
            b"tRNS" if palette_image => alphas = Some(len),
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        if let (Some(n), Some(a)) = (entries, alphas)
            && a > n
        {
            return bad(format!("{a} palette alphas (tRNS) for {n} palette entries"));
        }
        at = at.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

fn dynamic_to_rgb(img: DynamicImage, alpha: AlphaHandling) -> Result<RgbImage, ProcessorError> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let hi = |v: u16| (v >> 8) as u8;
    let rgba_to_rgb = |rgba: Vec<u8>| RgbImage::from_rgba(w, h, &rgba, alpha);
    match img {
        DynamicImage::ImageRgb8(b) => RgbImage::new(w, h, b.into_raw()),
        DynamicImage::ImageRgba8(b) => rgba_to_rgb(b.into_raw()),
        DynamicImage::ImageLuma8(b) => {
            RgbImage::new(w, h, b.into_raw().iter().flat_map(|&l| [l; 3]).collect())
        }
        DynamicImage::ImageLumaA8(b) => {
            rgba_to_rgb(b.into_raw().chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect())
        }
        DynamicImage::ImageRgb16(b) => RgbImage::new(w, h, b.into_raw().into_iter().map(hi).collect()),
        DynamicImage::ImageRgba16(b) => rgba_to_rgb(b.into_raw().into_iter().map(hi).collect()),
        DynamicImage::ImageLuma16(b) => {
            RgbImage::new(w, h, b.into_raw().into_iter().flat_map(|l| [l.min(255) as u8; 3]).collect())
        }
        DynamicImage::ImageLumaA16(b) => rgba_to_rgb(
            b.into_raw().chunks_exact(2).flat_map(|p| [hi(p[0]), hi(p[0]), hi(p[0]), hi(p[1])]).collect(),
        ),
        other => RgbImage::new(w, h, other.to_rgb8().into_raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_matches_pillow_endpoints() {
        assert_eq!(composite_on_white(&[10, 20, 30, 255]), [10, 20, 30]);
        assert_eq!(composite_on_white(&[10, 20, 30, 0]), [255, 255, 255]);
        for a in 0..=255u8 {
            for c in [0u8, 1, 127, 128, 254, 255] {
                let v = composite_on_white(&[c, c, c, a])[0];
                let exact = (c as f64 * a as f64 + 255.0 * (255 - a) as f64) / 255.0;
                assert!((v as f64 - exact).abs() <= 1.0, "c={c} a={a} v={v} exact={exact}");
            }
        }
    }

    #[test]
    fn size_checks() {
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
        assert!(RgbImage::new(0, 2, vec![]).is_err());
        assert!(RgbImage::from_rgba(1, 1, &[1, 2, 3], AlphaHandling::Drop).is_err());
        assert_eq!(
            RgbImage::from_rgba(1, 1, &[1, 2, 3, 0], AlphaHandling::Drop).unwrap().as_bytes(),
            &[1, 2, 3]
        );
    }
}
