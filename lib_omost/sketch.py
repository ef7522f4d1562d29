"""The colour sketch of a canvas, its blurred variant (an initial image for img2img) and a region overlay preview.

Omost paints the sketch on the 90x90 grid: the global colour, then every region far to near as
`0.7 * colour + 0.3 * below`, truncated to uint8 once at the end. It then resizes with `nearest` to the image size;
the blurred variant is a reflect-padded box blur (radius 40 in Omost) on the 90 grid before that resize.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lib_omost.canvas import GRID, Canvas


def sketch_grid(canvas: Canvas) -> np.ndarray:
    """Omost's 90x90 `initial_latent` image, uint8 (90, 90, 3)."""
    image = np.zeros((GRID, GRID, 3), dtype=np.float32) + np.array(canvas.global_region.color, dtype=np.float32)
    for region in canvas.local_regions:
        top, bottom, left, right = region.rect
        image[top:bottom, left:right] = 0.7 * np.array(region.color, dtype=np.float32) \
            + 0.3 * image[top:bottom, left:right]
    return image.clip(0, 255).astype(np.uint8)


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Reflect pad + mean over a (2r+1)^2 window, as Omost's `avg_pool2d(pad(x, r, 'reflect'), 2r+1, stride=1)`."""
    if radius <= 0:
        return image.astype(np.float32)
    radius = min(radius, GRID - 1)  # reflect padding needs radius < size
    padded = np.pad(image.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode='reflect')
    k = 2 * radius + 1
    c = np.cumsum(np.cumsum(padded, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0), (0, 0)))
    total = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return (total / (k * k)).astype(np.float32)


def _nearest_index(out_size: int, in_size: int = GRID) -> np.ndarray:
    # torch `interpolate(mode='nearest')`: src = floor(dst * in / out)
    return np.minimum((np.arange(out_size) * (in_size / out_size)).astype(np.int64), in_size - 1)


def sketch_array(canvas: Canvas, width: int, height: int, blur: int = 0) -> np.ndarray:
    """The sketch at width x height as float32 (H, W, 3) in 0..255; `blur` is Omost's box radius on the 90 grid."""
    if width < 1 or height < 1:
        raise ValueError(f'sketch size must be positive, got {width}x{height}')
    grid = _box_blur(sketch_grid(canvas), int(blur))
    return grid[_nearest_index(height)][:, _nearest_index(width)]


def sketch_image(canvas: Canvas, width: int, height: int, blur: int = 0) -> Image.Image:
    return Image.fromarray(np.round(sketch_array(canvas, width, height, blur)).clip(0, 255).astype(np.uint8))


def _contrast(color) -> tuple:
    r, g, b = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


@functools.lru_cache(maxsize=8)
def _font(size: int):
    # Pillow 9.5 (both hosts pin it) has only a tiny bitmap default font; matplotlib, a gradio dependency, ships
    # DejaVu Sans. Locate it without importing matplotlib.
    spec = importlib.util.find_spec('matplotlib')
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, 'mpl-data', 'fonts', 'ttf', 'DejaVuSans-Bold.ttf')
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def _printable(text: str, font) -> str:
    # Pillow's built-in bitmap font (Pillow < 10.1) only encodes latin-1.
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode('latin-1', 'replace').decode('latin-1')


def _line_height(draw, font) -> int:
    box = draw.textbbox((0, 0), 'Ag', font=font)
    return box[3] - box[1] + 4


def overlay_preview(canvas: Canvas, width: int, height: int, max_side: int = 512) -> Image.Image:
    """The sketch with each region's box, depth number and a short label, readable at a glance.

    Regions are numbered far to near (1 = farthest); the global region is the background. Boxes are drawn in
    the region's colour with a contrasting outline so overlapping boxes stay distinguishable.
    """
    scale = min(1.0, max_side / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    base = sketch_image(canvas, w, h).convert('RGBA')
    layer = Image.new('RGBA', (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = _font(max(11, min(w, h) // 26))
    line = max(2, min(w, h) // 160)
    for number, region in enumerate(canvas.local_regions, 1):
        top, bottom, left, right = region.rect
        box = (round(left * w / GRID), round(top * h / GRID), round(right * w / GRID) - 1, round(bottom * h / GRID) - 1)
        outline = _contrast(region.color)
        draw.rectangle(box, outline=outline + (255,), width=line + 2)
        draw.rectangle(box, outline=tuple(region.color) + (255,), width=line)
        words = region.label.rstrip('.').split()
        label = _printable(f'{number} {" ".join(words[:4])}' + ('...' if len(words) > 4 else ''), font)
        tx, ty = box[0] + line + 3, box[1] + line + 2 + (number - 1) % 3 * _line_height(draw, font)
        bbox = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle((bbox[0] - 2, bbox[1] - 1, bbox[2] + 2, bbox[3] + 1), fill=tuple(region.color) + (220,))
        draw.text((tx, ty), label, fill=outline + (255,), font=font)
    g = canvas.global_region
    footer = _printable(f'background: {" ".join(g.label.rstrip(".").split()[:6])}  -  1 = farthest', font)
    y = h - _line_height(draw, font) - 2
    bbox = draw.textbbox((4, y), footer, font=font)
    draw.rectangle((0, bbox[1] - 2, w, h), fill=(0, 0, 0, 160))
    draw.text((4, y), footer, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(base, layer).convert('RGB')
