"""The edits the web makes to images, as the decontamination benchmark plants them.

Each family is `fn(img, rng) -> Image` on an RGB image (a 32x32 CIFAR-10 test image in
bench/dedup_quality.py); `apply(names, img, rng)` chains families in the order a repost would
apply them (geometry, then overlays, then colour and filters, then re-encoding), and `encode`
stores the result as the pool file (JPEG for the jpeg family, PNG otherwise).

Random choices come from `rng` (numpy Generator), so a seed fixes every copy.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

WORDS = ["stock", "photo", "kd3", "sale", "#nofilter", "repost", "free", "HD", "2026", "wow"]


def _colour(rng) -> tuple[int, int, int]:
    """Black, white or any colour, as plain borders and canvases come."""
    pick = rng.random()
    if pick < 0.3:
        return (0, 0, 0)
    if pick < 0.6:
        return (255, 255, 255)
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _upscale(img: Image.Image, rng, low: float = 1.5, high: float = 3.0) -> Image.Image:
    """Web copies are usually larger than a 32 px thumbnail; overlays are drawn at that size."""
    side = round(min(img.size) * rng.uniform(low, high))
    scale = side / min(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)


def _blurred_background(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The picture stretched over the canvas and blurred, as social-media reposts pad."""
    return img.resize(size, Image.BILINEAR).filter(ImageFilter.GaussianBlur(max(size) / 12))


def crop(img, rng):
    """Remove 5-20% of the width and of the height, at a random offset."""
    w, h = img.size
    fw, fh = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2)
    cw, ch = round(w * (1 - fw)), round(h * (1 - fh))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def zoom_out(img, rng):
    """The picture shrunk to 50-90% of the frame inside a plain border of any colour, centred
    or not (thumbnails, framed reposts)."""
    img = _upscale(img, rng, 1.0, 3.0)
    w, h = img.size
    scale = rng.uniform(0.5, 0.9)
    inner = img.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BICUBIC)
    canvas = Image.new("RGB", (w, h), _colour(rng))
    x = int(rng.integers(0, w - inner.width + 1))
    y = int(rng.integers(0, h - inner.height + 1))
    if rng.random() < 0.5:  # centred, as most frames are
        x, y = (w - inner.width) // 2, (h - inner.height) // 2
    canvas.paste(inner, (x, y))
    return canvas


def letterbox(img, rng):
    """Padded to another aspect ratio (4:3, 16:9, 2:1, 3:4, 9:16), with a plain or blurred fill."""
    img = _upscale(img, rng, 1.0, 3.0)
    w, h = img.size
    ratio = float(rng.choice([4 / 3, 16 / 9, 2.0, 3 / 4, 9 / 16]))
    size = (round(h * ratio), h) if ratio > 1 else (w, round(w / ratio))
    if rng.random() < 0.3:
        canvas = _blurred_background(img, size)
    else:
        canvas = Image.new("RGB", size, _colour(rng))
    canvas.paste(img, ((size[0] - w) // 2, (size[1] - h) // 2))
    return canvas


def rotate(img, rng):
    """Rotated by 1-10 degrees either way, the corners filled black, white or blurred."""
    img = _upscale(img, rng, 1.0, 3.0)
    angle = float(rng.uniform(1, 10) * rng.choice([-1, 1]))
    fill = rng.choice(["black", "white", "blur"])
    if fill == "blur":
        mask = Image.new("L", img.size, 255).rotate(angle, Image.BICUBIC)
        turned = img.rotate(angle, Image.BICUBIC)
        return Image.composite(turned, _blurred_background(img, img.size), mask)
    return img.rotate(angle, Image.BICUBIC, fillcolor=(0, 0, 0) if fill == "black" else "white")


def text(img, rng):
    """A line or two of caption text, white, black or yellow, outlined or not."""
    img = _upscale(img, rng, 2.0, 3.0)
    draw = ImageDraw.Draw(img)
    size = max(8, round(img.height * rng.uniform(0.08, 0.16)))
    colour = [(255, 255, 255), (0, 0, 0), (255, 230, 0)][int(rng.integers(0, 3))]
    for _ in range(int(rng.integers(1, 3))):
        words = " ".join(rng.choice(WORDS, int(rng.integers(1, 3))))
        xy = (int(rng.integers(0, img.width // 3)), int(rng.integers(0, img.height - size)))
        outline = int(rng.random() < 0.5)
        draw.text(xy, words, fill=colour, font_size=size, stroke_width=outline,
                  stroke_fill=(0, 0, 0) if colour != (0, 0, 0) else (255, 255, 255))  # fmt: skip
    return img


def watermark(img, rng):
    """Large semi-transparent text across the picture (opacity 25-50%), often diagonal."""
    img = _upscale(img, rng, 2.0, 3.0).convert("RGBA")
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    alpha = int(255 * rng.uniform(0.25, 0.5))
    colour = (255, 255, 255, alpha) if rng.random() < 0.7 else (0, 0, 0, alpha)
    size = round(img.height * rng.uniform(0.15, 0.25))
    label = str(rng.choice(["© stock", "SAMPLE", "kd3 photo", "preview"]))
    draw.text((img.width // 2, img.height // 2), label, fill=colour, font_size=size, anchor="mm")
    if rng.random() < 0.6:
        layer = layer.rotate(float(rng.uniform(20, 45)), Image.BICUBIC)
    return Image.alpha_composite(img, layer).convert("RGB")


def logo(img, rng):
    """An opaque badge (a disc or box with a letter) covering 12-22% of a side, in a corner."""
    img = _upscale(img, rng, 2.0, 3.0)
    side = round(min(img.size) * rng.uniform(0.12, 0.22))
    badge = Image.new("RGB", (side, side), _colour(rng))
    draw = ImageDraw.Draw(badge)
    if rng.random() < 0.5:
        badge = Image.new("RGB", (side, side), (255, 255, 255))
        draw = ImageDraw.Draw(badge)
        draw.ellipse((0, 0, side - 1, side - 1), fill=_colour(rng))
    draw.text((side // 2, side // 2), "K", fill=_colour(rng), font_size=side // 2, anchor="mm")
    margin = round(side * 0.2)
    x = margin if rng.random() < 0.5 else img.width - side - margin
    y = margin if rng.random() < 0.5 else img.height - side - margin
    img.paste(badge, (x, y))
    return img


def screenshot(img, rng):
    """The picture on a larger page: a canvas 1.4-2.2 times its size with a title bar, text
    lines and a button around it."""
    img = _upscale(img, rng, 1.5, 3.0)
    w, h = img.size
    scale = rng.uniform(1.4, 2.2)
    page = Image.new("RGB", (round(w * scale), round(h * scale)), _colour(rng))
    draw = ImageDraw.Draw(page)
    bar = max(4, round(page.height * 0.08))
    draw.rectangle((0, 0, page.width, bar), fill=_colour(rng))
    draw.text((4, 1), "kd3 gallery", fill=_colour(rng), font_size=max(6, bar - 2))
    x = int(rng.integers(0, page.width - w + 1))
    y = int(rng.integers(bar + 1, max(bar + 2, page.height - h + 1)))
    y = min(y, page.height - h)
    page.paste(img, (x, y))
    for k in range(int(rng.integers(1, 4))):  # caption lines where there is room
        line_y = y + h + 2 + 8 * k if y + h + 10 + 8 * k < page.height else bar + 2 + 8 * k
        draw.text((4, line_y), " ".join(rng.choice(WORDS, 3)), fill=_colour(rng), font_size=7)
    return page


def colour(img, rng):
    """Brightness, contrast and saturation each scaled by 0.6-1.4, and a hue turn up to 20
    degrees (filters, auto-enhance)."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(0.6, 1.4))
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.integers(-14, 15))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def grayscale(img, rng):
    return ImageOps.grayscale(img).convert("RGB")


def blur_sharpen(img, rng):
    """A Gaussian blur (radius 0.5-1.5 px at 32 px) or an unsharp mask."""
    if rng.random() < 0.5:
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5) * img.width / 32))
    return img.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.integers(100, 250))))


def jpeg(img, rng):
    """Re-encoded as JPEG at quality 20-95 (the pool file is that JPEG)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(20, 96)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def resize(img, rng):
    """Scaled to 0.6-4 times its size, with a random filter."""
    scale = rng.choice([rng.uniform(0.6, 0.9), rng.uniform(1.5, 4.0)])
    f = [Image.NEAREST, Image.BILINEAR, Image.BICUBIC, Image.LANCZOS][int(rng.integers(0, 4))]
    return img.resize((max(8, round(img.width * scale)), max(8, round(img.height * scale))), f)


def mirror(img, rng):
    return ImageOps.mirror(img)


# Application order of a chain: geometry, overlays, colour and filters, re-encoding.
FAMILIES = {
    "crop": crop,
    "zoom_out": zoom_out,
    "letterbox": letterbox,
    "rotate": rotate,
    "screenshot": screenshot,
    "mirror": mirror,
    "text": text,
    "watermark": watermark,
    "logo": logo,
    "colour": colour,
    "grayscale": grayscale,
    "blur_sharpen": blur_sharpen,
    "resize": resize,
    "jpeg": jpeg,
}


def apply(names, img: Image.Image, rng) -> Image.Image:
    """Chain the named families in FAMILIES order."""
    for name in sorted(names, key=list(FAMILIES).index):
        img = FAMILIES[name](img.convert("RGB"), rng)
    return img


def encode(names, img: Image.Image) -> bytes:
    """The pool file: a JPEG already carries its loss (the jpeg family); PNG keeps the rest."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def pairs() -> list[tuple[str, str]]:
    names = list(FAMILIES)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
