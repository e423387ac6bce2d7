#!/usr/bin/env python3
"""Reference data for pocketvlm-processor's tests, computed with Pillow and transformers.

Run by developers (never by CI) whenever the reference versions change:

    python3 crates/processor/tests/reference.py            # rewrite tests/data/
    python3 crates/processor/tests/reference.py --rocket   # only dump Pillow's decode of skimage's
                                                           # rocket.jpg to /tmp (for a manual check)

Everything written is small: the synthetic input images are *generated* (the Rust tests build the
same pixels from the same formula, `pattern()` below), so only output hashes are stored, plus a
handful of tiny PNG/JPEG files for the decoder tests.

Outputs in crates/processor/tests/data/:
  reference.json        versions, resize cases, decode cases, processor cases (hashes), and
                        chat-template cases rendered by transformers' own Jinja setup
  *.png / *.jpg         tiny encoded inputs for the decoder tests
  *.pillow.rgb          Pillow's decoded RGB bytes of the JPEG inputs (to measure differences)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps

import transformers
from transformers.image_transforms import convert_to_rgb
from transformers.utils.chat_template_utils import render_jinja_template
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def mix(x: np.ndarray) -> np.ndarray:
    """A 32-bit integer hash (uint64 arithmetic masked to 32 bits); mirrored in the Rust tests."""
    m = np.uint64(0xFFFFFFFF)
    x = x & m
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & m
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & m
    x = x ^ (x >> np.uint64(16))
    return x


def pattern(w: int, h: int, seed: int) -> np.ndarray:
    """[h, w, 3] uint8 test picture: smooth gradients + an edge + hashed noise in patches.

    value = (grad + edge + noise) mod 256 clipped, where (all integer):
      grad  = (x * 255 // max(w - 1, 1) + y * 255 // max(h - 1, 1) * (c + 1)) // 2
      edge  = 120 if (x // 5 + y // 7 + seed) is odd else 0
      noise = hash(x, y, c, seed) & 0xFF when ((x // 4) + (y // 4) + c) % 3 == 0, else 0
    value = (grad + edge + noise) & 0xFF
    """
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    x = x.astype(np.uint64)
    y = y.astype(np.uint64)
    c = c.astype(np.uint64)
    grad = (x * np.uint64(255) // np.uint64(max(w - 1, 1)) + y * np.uint64(255) // np.uint64(max(h - 1, 1)) * (c + np.uint64(1))) // np.uint64(2)
    edge = np.where(((x // np.uint64(5)) + (y // np.uint64(7)) + np.uint64(seed)) % np.uint64(2) == 1, np.uint64(120), np.uint64(0))
    key = x * np.uint64(73856093) ^ y * np.uint64(19349663) ^ c * np.uint64(83492791) ^ np.uint64(seed * 2654435761)
    noise = np.where(((x // np.uint64(4)) + (y // np.uint64(4)) + c) % np.uint64(3) == 0, mix(key) & np.uint64(0xFF), np.uint64(0))
    return ((grad + edge + noise) & np.uint64(0xFF)).astype(np.uint8)


# (in_w, in_h, out_w, out_h): down/up, odd, 1-pixel, extreme ratios, SmolVLM-like steps.
RESIZE_CASES = [
    (1, 1, 1, 1), (1, 1, 5, 3), (1, 7, 1, 3), (7, 1, 3, 1), (5, 5, 1, 1), (2, 2, 1, 1),
    (3, 2, 7, 5), (16, 16, 8, 8), (16, 16, 32, 32), (17, 13, 9, 6), (9, 6, 17, 13),
    (10, 10, 3, 10), (10, 10, 10, 3), (10, 10, 23, 10), (10, 10, 10, 23),
    (64, 48, 63, 47), (63, 47, 64, 48), (100, 3, 7, 1), (3, 100, 1, 7), (250, 40, 7, 3),
    (40, 250, 3, 7), (45, 30, 384, 256), (30, 45, 256, 384), (97, 61, 128, 128), (128, 128, 127, 1),
    (451, 300, 384, 256), (240, 427, 216, 384), (384, 256, 128, 128), (256, 384, 128, 128),
    (600, 400, 384, 256), (216, 384, 256, 384), (33, 200, 128, 384), (200, 33, 384, 128),
    (1000, 7, 13, 2), (7, 1000, 2, 13), (512, 5, 100, 1), (31, 31, 31, 62), (31, 31, 62, 31),
]

# Processor settings: tiny fixture (L 384, M 128) and SmolVLM-256M/500M (L 2048, M 512; fewer cases).
TINY = dict(longest_edge=384, max_image_size=128)
SMOLVLM = dict(longest_edge=2048, max_image_size=512)
PROCESSOR_CASES = [
    # (name, w, h, seed, settings, split)
    ("square_small_split", 50, 50, 1, TINY, True),
    ("square_small_nosplit", 50, 50, 1, TINY, False),
    ("landscape_split", 451, 300, 2, TINY, True),
    ("portrait_split", 240, 427, 3, TINY, True),
    ("landscape_nosplit", 600, 400, 4, TINY, False),
    ("wide_strip_split", 500, 9, 5, TINY, True),
    ("tall_strip_split", 9, 500, 6, TINY, True),
    ("one_pixel_split", 1, 1, 7, TINY, True),
    ("one_pixel_nosplit", 1, 1, 7, TINY, False),
    ("line_split", 300, 1, 8, TINY, True),
    ("odd_split", 129, 127, 9, TINY, True),
    ("exact_tile_split", 384, 384, 10, TINY, True),
    ("single_tile_split", 100, 60, 13, dict(longest_edge=128, max_image_size=128), True),
    ("smolvlm_landscape_split", 640, 427, 11, SMOLVLM, True),
    ("smolvlm_portrait_nosplit", 300, 451, 12, SMOLVLM, False),
]


def processor(settings: dict, split: bool, raw: bool) -> Idefics3ImageProcessorPil:
    return Idefics3ImageProcessorPil(
        do_convert_rgb=True,
        do_resize=True,
        size={"longest_edge": settings["longest_edge"]},
        max_image_size={"longest_edge": settings["max_image_size"]},
        do_image_splitting=split,
        resample=Image.Resampling.LANCZOS,
        do_rescale=not raw,
        rescale_factor=1 / 255,
        do_normalize=not raw,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
    )


def random_resize_cases(n: int) -> list[tuple[int, int, int, int]]:
    """Random shapes (fixed seed), mostly mixed up/down scaling, to cover both pass orders."""
    rng = np.random.default_rng(2024)
    cases = []
    while len(cases) < n:
        iw, ih = (int(v) for v in rng.integers(1, 120, size=2))
        ow, oh = (int(v) for v in rng.integers(1, 160, size=2))
        if (iw, ih) != (ow, oh):
            cases.append((iw, ih, ow, oh))
    return cases


def resize_cases() -> list[dict]:
    out = []
    for i, (iw, ih, ow, oh) in enumerate(RESIZE_CASES + random_resize_cases(60)):
        seed = 100 + i
        src = pattern(iw, ih, seed)
        res = np.asarray(Image.fromarray(src, "RGB").resize((ow, oh), Image.Resampling.LANCZOS))
        out.append({"in": [iw, ih], "out": [ow, oh], "seed": seed, "sha256": sha256(res.tobytes())})
    return out


def processor_cases() -> list[dict]:
    out = []
    for name, w, h, seed, settings, split in PROCESSOR_CASES:
        img = Image.fromarray(pattern(w, h, seed), "RGB")
        enc = processor(settings, split, raw=False)([[img]], return_row_col_info=True, return_tensors="np")
        pv = np.asarray(enc["pixel_values"])[0].astype("<f4")
        raw = np.asarray(processor(settings, split, raw=True)([[img]], return_tensors="np")["pixel_values"])[0]
        assert np.array_equal(raw, np.round(raw))
        tiles = np.ascontiguousarray(raw.astype(np.uint8).transpose(0, 2, 3, 1))
        out.append(
            {
                "name": name,
                "size": [w, h],
                "seed": seed,
                "longest_edge": settings["longest_edge"],
                "max_image_size": settings["max_image_size"],
                "split": split,
                "rows": int(enc["rows"][0][0]),
                "cols": int(enc["cols"][0][0]),
                "tiles_shape": list(tiles.shape),
                "tiles_sha256": sha256(tiles.tobytes()),
                "pixel_values_sha256": sha256(np.ascontiguousarray(pv).tobytes()),
            }
        )
    return out


def decode_cases() -> list[dict]:
    """Tiny PNGs in every colour type + JPEGs; expected RGB is what the image processor sees."""
    w, h = 23, 17
    rgb = pattern(w, h, 42)
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = ((xx * 255) // (w - 1)).astype(np.uint8)
    alpha[::4, :] = 0
    alpha[1::4, :] = 255
    grey = rgb[..., 1]
    cases = []

    def add(name: str, im: Image.Image, fmt: str, exact: bool, load_image: bool = False, **save):
        """`load_image`: the expected RGB is transformers' `load_image` (EXIF orientation applied,
        alpha dropped) instead of the processor's view of `Image.open`."""
        buf = io.BytesIO()
        im.save(buf, format=fmt, **save)
        (DATA / name).write_bytes(buf.getvalue())
        with Image.open(DATA / name) as loaded:
            loaded.load()
            mode = loaded.mode
            if load_image:
                got = np.asarray(ImageOps.exif_transpose(loaded).convert("RGB"))
            else:
                got = convert_to_rgb(loaded, return_numpy=True)
        got = np.ascontiguousarray(got)
        size = [got.shape[1], got.shape[0]]
        rec = {"file": name, "mode": mode, "size": size, "exact": exact, "rgb_sha256": sha256(got.tobytes())}
        if load_image:
            rec["options"] = "load_image"
        if not exact:
            pillow_raw = name + ".pillow.rgb"
            (DATA / pillow_raw).write_bytes(got.tobytes())
            rec["pillow_rgb"] = pillow_raw
        cases.append(rec)

    add("rgb.png", Image.fromarray(rgb, "RGB"), "PNG", True)
    add("rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG", True)
    add("grey.png", Image.fromarray(grey, "L"), "PNG", True)
    add("grey_alpha.png", Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG", True)
    pal = Image.fromarray(rgb, "RGB").quantize(colors=16, dither=Image.Dither.NONE)
    add("palette.png", pal, "PNG", True)
    add("palette_trns.png", pal, "PNG", True, transparency=3)
    add("rgb_trns.png", Image.fromarray(rgb, "RGB"), "PNG", True, transparency=tuple(int(v) for v in rgb[0, 0]))
    add("bilevel.png", Image.fromarray(grey > 128).convert("1"), "PNG", True)
    rgb16 = rgb.astype(np.uint16) * 257 + np.uint16(77)
    # Pillow has no 16-bit RGB mode in memory; write that PNG by hand.
    write_png16(DATA / "rgb16.png", rgb16)
    with Image.open(DATA / "rgb16.png") as loaded:
        loaded.load()
        mode = loaded.mode
        got = np.ascontiguousarray(convert_to_rgb(loaded, return_numpy=True))
    cases.append({"file": "rgb16.png", "mode": mode, "size": [w, h], "exact": True, "rgb_sha256": sha256(got.tobytes())})
    grey16 = (grey.astype(np.uint16) * 3).astype(np.uint16)
    add("grey16.png", Image.fromarray(grey16), "PNG", True)
    add("q90_420.jpg", Image.fromarray(rgb, "RGB"), "JPEG", False, quality=90, subsampling=2)
    add("q90_444.jpg", Image.fromarray(rgb, "RGB"), "JPEG", False, quality=90, subsampling=0)
    add("grey.jpg", Image.fromarray(grey, "L"), "JPEG", False, quality=90)
    # CMYK JPEG (Pillow writes Adobe-inverted CMYK), opened by the processor as CMYK → RGB
    add("cmyk.jpg", Image.fromarray(rgb, "RGB").convert("CMYK"), "JPEG", False, quality=90)
    # EXIF orientation 6 (the camera was turned: rotate 90° clockwise to view), in both formats:
    # Image.open keeps the stored pixels, load_image turns them upright
    exif = Image.Exif()
    exif[0x0112] = 6
    for load_image in (False, True):
        suffix = "_upright" if load_image else ""
        add(f"exif6{suffix}.png", Image.fromarray(rgb, "RGB"), "PNG", True, load_image, exif=exif)
        add(f"exif6{suffix}.jpg", Image.fromarray(rgb, "RGB"), "JPEG", False, load_image, quality=90, exif=exif)
    return cases


def write_png16(path: Path, rgb16: np.ndarray) -> None:
    """Minimal 16-bit RGB PNG writer (Pillow has no in-memory 16-bit RGB mode)."""
    import struct
    import zlib

    h, w, _ = rgb16.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + rgb16[r].astype(">u2").tobytes() for r in range(h))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


# Templates exercising what transformers' Jinja environment adds or configures: trim_blocks,
# lstrip_blocks, loop controls, namespace, tojson (json.dumps, ensure_ascii=False), Python string
# methods, the special-token variables, raise_exception (in a branch not taken).
TEMPLATES = {
    "whitespace": (
        "{% for message in messages %}\n"
        "  {% if loop.first %}<|im_start|>{% endif %}\n"
        "{{ message['role'] | capitalize }}:{% for part in message['content'] %}\n"
        "    {% if part['type'] == 'text' %} {{ part['text'] | trim }}{% else %}<image>{% endif %}\n"
        "{% endfor %}\n"
        "<end_of_utterance>\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}Assistant:{% endif %}\n"
    ),
    "features": (
        "{{ bos_token }}{% set ns = namespace(n=0, images=0) %}"
        "{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% if m.role not in ['user', 'assistant', 'system'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}"
        "[{{ ns.n }}/{{ messages | length }}] {{ m.role.upper() }} {{ m.content | tojson }}"
        "{% for part in m.content %}{% if part.type == 'image' %}{% set ns.images = ns.images + 1 %}{% continue %}{% endif %}"
        " <{{ part.text.strip().lower() }}>{% if part.text.strip().endswith('?') %}(q){% endif %}{% break %}{% endfor %}\n"
        "{% endfor %}images={{ ns.images }} {{ messages[-1].content | tojson(indent=2) }}"
        "{% if add_generation_prompt %}{{ eos_token }}|{{ pad_token }}{% endif %}"
    ),
}
TEMPLATE_MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  What is this?  "}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat.\tIt's \"orange\"."}]},
    {"role": "user", "content": [{"type": "text", "text": "Ünïcödé — 東京 🚀 </end> \\ ok?"}, {"type": "image"}]},
]
SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>"}


def template_cases() -> list[dict]:
    out = []
    for name, template in TEMPLATES.items():
        for agp in (True, False):
            rendered, _ = render_jinja_template(
                conversations=[TEMPLATE_MESSAGES], chat_template=template, add_generation_prompt=agp, **SPECIAL
            )
            out.append({"name": name, "template": template, "messages": TEMPLATE_MESSAGES,
                        "add_generation_prompt": agp, "special_tokens": SPECIAL, "expected": rendered[0]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rocket", action="store_true", help="dump Pillow's decode of skimage rocket.jpg to /tmp")
    args = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    if args.rocket:
        import skimage

        src = Path(skimage.__file__).parent / "data" / "rocket.jpg"
        with Image.open(src) as im:
            rgb = np.asarray(im.convert("RGB"))
        Path("/tmp/rocket.pillow.rgb").write_bytes(rgb.tobytes())
        print(f"{src}: {rgb.shape[1]}x{rgb.shape[0]} -> /tmp/rocket.pillow.rgb ({sha256(rgb.tobytes())})")
        return 0
    ref = {
        "generator": "crates/processor/tests/reference.py",
        "pillow_version": PIL.__version__,
        "transformers_version": transformers.__version__,
        "numpy_version": np.__version__,
        "pattern_check": sha256(pattern(13, 7, 5).tobytes()),
        "resize": resize_cases(),
        "decode": decode_cases(),
        "processor": processor_cases(),
        "templates": template_cases(),
    }
    (DATA / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {DATA / 'reference.json'}: {len(ref['resize'])} resize, {len(ref['decode'])} decode, "
          f"{len(ref['processor'])} processor, {len(ref['templates'])} template cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
