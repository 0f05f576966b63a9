"""A small generated world for the demo: shape classes drawn in two styles.

The teacher's "original data" are flat, filled shapes on dark plain backgrounds (32x32). The
"web" shows the same classes in another style: larger photos-like images with textured
backgrounds, outlines or pastel fills, other scales, as JPEG/PNG/WebP; plus keyword-matching
distractors, re-encoded duplicates under several URLs, and a few copies of evaluation images
(which dedup must find). Everything is drawn with Pillow from a seed: no downloads.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["circle", "square", "triangle", "cross"]


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [
            (
                math.cos(angle + k * math.pi / 2 + math.pi / 4),
                math.sin(angle + k * math.pi / 2 + math.pi / 4),
            )
            for k in range(4)
        ]
    elif kind == "triangle":
        corners = [
            (
                math.cos(angle + k * 2 * math.pi / 3 - math.pi / 2),
                math.sin(angle + k * 2 * math.pi / 3 - math.pi / 2),
            )
            for k in range(3)
        ]
    else:  # cross: a 12-corner plus sign
        w = 0.33
        base = [
            (w, 1),
            (w, w),
            (1, w),
            (1, -w),
            (w, -w),
            (w, -1),
            (-w, -1),
            (-w, -w),
            (-1, -w),
            (-1, w),
            (-w, w),
            (-w, 1),
        ]
        corners = [
            (x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle))
            for x, y in base
        ]
    return [(cx + r * x, cy + r * y) for x, y in corners]


def draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, cx, cy, r, angle, fill, outline, width
) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    else:
        points = _polygon(kind, cx, cy, r, angle)
        draw.polygon(points, fill=fill, outline=outline, width=width)


def original_style(rng: np.random.Generator, label: int, size: int = 32) -> np.ndarray:
    """The teacher's domain: a filled shape on a plain background, clean edges."""
    background = tuple(int(v) for v in rng.integers(0, 140, 3))
    img = Image.new("RGB", (size, size), background)
    colour = tuple(int(v) for v in rng.integers(100, 256, 3))
    r = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    draw_shape(
        ImageDraw.Draw(img), CLASSES[label], cx, cy, r, rng.uniform(0, math.pi), colour, None, 1
    )
    return np.asarray(img)


def web_style(rng: np.random.Generator, label: int | None) -> Image.Image:
    """The web's style: larger images, noisy gradient backgrounds, shapes with a dark edge or
    drawn as thick outlines, other palettes. `label` None draws a distractor (scribbles that no
    teacher class describes)."""
    size = int(rng.integers(48, 97))
    x = np.linspace(0, 1, size)
    base = rng.uniform(30, 200, 3)
    tilt = rng.uniform(-50, 50, 3)
    gradient = base[None, None, :] + tilt[None, None, :] * x[None, :, None]
    noise = rng.normal(0, 14, (size, size, 3))
    img = Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1)
    )
    draw = ImageDraw.Draw(img)
    if label is None:
        for _ in range(int(rng.integers(3, 7))):
            pts = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(3)]
            draw.line(
                pts,
                fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                width=int(rng.integers(1, 4)),
            )
        return img
    r = rng.uniform(0.2, 0.45) * size
    cx, cy = rng.uniform(r, size - r, 2)
    edge = tuple(int(v) for v in rng.integers(0, 90, 3))
    angle = rng.uniform(0, math.pi)
    if rng.random() < 0.25:  # a thick outline drawing
        draw_shape(draw, CLASSES[label], cx, cy, r, angle, None, edge, max(3, size // 10))
    else:  # a fill in the web's own palette, with a dark edge
        fill = tuple(int(v) for v in rng.integers(90, 256, 3))
        draw_shape(draw, CLASSES[label], cx, cy, r, angle, fill, edge, max(1, size // 32))
    return img


def encode(img: Image.Image, fmt: str, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def original_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    x = np.stack([original_style(rng, int(label)) for label in y])
    return x, y.astype(np.int64)


@dataclass
class WebImage:
    path: str  # URL path on the local web
    data: bytes
    content_type: str
    alt: str
    truth: str  # class name, "distractor", "duplicate" or "eval-copy"


@dataclass
class Web:
    images: list[WebImage] = field(default_factory=list)
    pages: dict[str, str] = field(default_factory=dict)  # URL path -> HTML


def build_web(per_class: int, eval_x: np.ndarray, seed: int, distractor_share: float = 0.15,
              duplicate_share: float = 0.1, eval_copies: int = 12) -> Web:  # fmt: skip
    """Gallery pages per class: /gallery/<class>/<k>.html, each with up to 24 images."""
    rng = np.random.default_rng(seed)
    formats = [
        ("JPEG", "image/jpeg", "jpg"),
        ("PNG", "image/png", "png"),
        ("WEBP", "image/webp", "webp"),
    ]
    web = Web()
    by_class: dict[str, list[WebImage]] = {c: [] for c in CLASSES}
    counter = 0
    for label, name in enumerate(CLASSES):
        for _ in range(per_class):
            distractor = rng.random() < distractor_share
            img = web_style(rng, None if distractor else label)
            fmt, ctype, ext = formats[int(rng.integers(0, 3))]
            counter += 1
            alt = f"{name} pattern wallpaper" if distractor else f"a {name} drawing"
            entry = WebImage(f"/img/{counter:05d}.{ext}", encode(img, fmt), ctype, alt,
                             "distractor" if distractor else name)  # fmt: skip
            by_class[name].append(entry)
            if rng.random() < duplicate_share:  # the same picture elsewhere, resized and re-encoded
                counter += 1
                copy = img.resize(
                    (img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.BICUBIC
                )
                by_class[name].append(WebImage(f"/mirror/{counter:05d}.jpg", encode(copy, "JPEG", 70),
                                               "image/jpeg", f"{name} picture", "duplicate"))  # fmt: skip
    for i in rng.choice(len(eval_x), size=min(eval_copies, len(eval_x)), replace=False):
        name = CLASSES[int(rng.integers(0, len(CLASSES)))]
        counter += 1
        big = Image.fromarray(eval_x[i]).resize((64, 64), Image.Resampling.BICUBIC)
        by_class[name].append(WebImage(f"/img/{counter:05d}.png", encode(big, "PNG"), "image/png",
                                       f"{name} icon", "eval-copy"))  # fmt: skip
    links = []
    for name, items in by_class.items():
        order = rng.permutation(len(items))
        items = [items[i] for i in order]
        for k in range(0, len(items), 24):
            page = f"/gallery/{name}/{k // 24 + 1}.html"
            links.append(page)
            figures = "".join(
                f'<figure><img src="{it.path}" alt="{it.alt}"><figcaption>{it.alt}</figcaption></figure>'
                for it in items[k : k + 24]
            )
            web.pages[page] = (
                f"<html><body><h1>{name} gallery</h1>{figures}<a href='/'>home</a></body></html>"
            )
        web.images.extend(items)
    index = "".join(f'<li><a href="{p}">{p}</a></li>' for p in links)
    web.pages["/"] = f"<html><body><h1>Shapes of the web</h1><ul>{index}</ul></body></html>"
    return web
