// Image inputs to straight-alpha RGBA bytes. Decoding goes through createImageBitmap with
// premultiplyAlpha: 'none' and colorSpaceConversion: 'none', so the pixels are the file's own,
// as Pillow decodes them (the reference the model's preprocessing follows), and with
// imageOrientation: 'from-image', so a photo with an EXIF orientation is upright, as the page
// shows it (Pillow's ImageOps.exif_transpose; `cargo xtask caption` does the same).

import { ImageDecodeError } from './errors.js';

const DECODE = { premultiplyAlpha: 'none', colorSpaceConversion: 'none', imageOrientation: 'from-image' };

/**
 * @param {Blob | ImageBitmap | ImageData | HTMLImageElement} image
 * @returns {Promise<{ rgba: Uint8Array, width: number, height: number }>}
 */
export async function toRGBA(image) {
  if (typeof ImageData !== 'undefined' && image instanceof ImageData) {
    return { rgba: new Uint8Array(image.data), width: image.width, height: image.height };
  }
  let bitmap;
  const ownBitmap = !(typeof ImageBitmap !== 'undefined' && image instanceof ImageBitmap);
  try {
    if (typeof HTMLImageElement !== 'undefined' && image instanceof HTMLImageElement && !image.complete) {
      await image.decode();
    }
    bitmap = ownBitmap ? await createImageBitmap(image, DECODE) : image;
  } catch (e) {
    throw new ImageDecodeError(`cannot decode the image: ${e?.message ?? e}`);
  }
  try {
    const { width, height } = bitmap;
    if (!width || !height) throw new ImageDecodeError(`the image is ${width}×${height}`);
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext('2d', { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    const data = context.getImageData(0, 0, width, height);
    return { rgba: new Uint8Array(data.data.buffer), width, height };
  } finally {
    if (ownBitmap) bitmap.close();
  }
}
