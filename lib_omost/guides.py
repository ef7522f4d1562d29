"""Guide images as named options: the JSON the API takes, the UI writes and the infotext records.

    [{"target": 2, "image": "<base64 PNG/JPEG>", "method": "combined", "linear_end": 0.5, ...}, ...]

- `target`: "canvas" (every chunk of the prompt), "background" (the global region's chunks) or N, region N as
  numbered in the region preview (1 = farthest), i.e. canvas.regions[N]; "off" skips the entry.
- `image`: the guide image as base64 (a data: URL prefix is allowed). The UI sends its images as separate script
  values and marks its entries with `slot` instead.
- the `lib_omost.guidance.GuideParams` fields, each optional (defaults: guidance.py's).
- `image_hash`: written into the infotext instead of the image (sha256 of the decoded RGB pixels and size, 12 hex
  digits). An entry that has a hash but no image (a pasted infotext) is refused until the image is supplied again.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json

from lib_omost.canvas import CanvasError
from lib_omost.guidance import METHODS, ORDERS, GuideParams
from lib_omost.options import check_value

MAX_GUIDES = 8
MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 40 * 10**6  # an 8K photo fits (33 MP); its RGB copy is at most 120 MB
_RANGES = {'linear_start': (-1.0, 1.0), 'linear_end': (-1.0, 1.0), 'clustered': (-1.0, 1.0),
           'threshold_floor': (0.0, 1.0), 'threshold_mult': (-1.0, 1.0), 'max_guidance': (0.0, 1.0),
           'header_max': (0.0, 1.0)}
_CHOICES = {'method': METHODS, 'order': ORDERS}
PARAM_NAMES = tuple(f.name for f in dataclasses.fields(GuideParams))


@dataclasses.dataclass(frozen=True)
class Guide:
    target: object                 # 'canvas', 'background', 'off' or a region number >= 1
    params: GuideParams
    image: object = None           # PIL image (decoded) or None
    slot: int | None = None        # UI: index of the image component that holds the image
    image_hash: str | None = None  # from a pasted infotext

    def region_index(self):
        """canvas.regions index, or None for the whole canvas."""
        if self.target == 'canvas':
            return None
        return 0 if self.target == 'background' else int(self.target)

    def to_infotext(self) -> dict:
        """The entry as recorded: target, every parameter, the image's hash (never the image)."""
        out = {'target': self.target, **dataclasses.asdict(self.params)}
        out['image_hash'] = image_hash(self.image) if self.image is not None else self.image_hash
        return out


def image_hash(image) -> str:
    """Short sha256 of an image's RGB pixels and size (the same for the same picture in any file format)."""
    rgb = image.convert('RGB')
    h = hashlib.sha256(f'{rgb.width}x{rgb.height}:'.encode())
    h.update(rgb.tobytes())
    return h.hexdigest()[:12]


def decode_image(value: str, where: str):
    """A PIL image from base64 (optionally a data: URL)."""
    from PIL import Image, UnidentifiedImageError
    text = value.split(',', 1)[1] if value.startswith('data:') else value
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise CanvasError(f'{where}: the image is over {MAX_IMAGE_BYTES // 2**20} MB')
    try:
        data = base64.b64decode(text, validate=False)
        image = Image.open(io.BytesIO(data))  # reads the header only: the size is known before any pixel
        if image.width * image.height > MAX_IMAGE_PIXELS:  # a few KB of PNG can claim gigabytes of pixels
            raise CanvasError(f'{where}: the image is {image.width}x{image.height} pixels; the limit is '
                              f'{MAX_IMAGE_PIXELS // 10**6} megapixels')
        image.load()
    except Image.DecompressionBombError as e:  # PIL's own refusal at open, of more than 2 x its warning size
        raise CanvasError(f'{where}: the image is too large ({e})') from None
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as e:
        if isinstance(e, CanvasError):
            raise
        raise CanvasError(f'{where}: the image is not a base64 PNG/JPEG/WebP ({e})') from None
    return image.convert('RGB')


def _target(value, where: str):
    if isinstance(value, str) and value in ('canvas', 'background', 'off'):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise CanvasError(f'{where}: target must be "canvas", "background", "off" or a region number (1 = the '
                      f'farthest region in the preview), got {value!r}')


def _params(entry: dict, where: str) -> GuideParams:
    defaults = GuideParams()
    return GuideParams(**{key: check_value(f'{where}: {key!r}', entry[key], getattr(defaults, key),
                                           _RANGES.get(key), _CHOICES.get(key))
                          for key in PARAM_NAMES if key in entry})


def check_entry(entry: dict, where: str) -> tuple:
    """(target, GuideParams) of one entry; CanvasError naming the problem."""
    known = set(PARAM_NAMES) | {'target', 'image', 'slot', 'image_hash'}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise CanvasError(f'{where}: unknown option(s) {", ".join(unknown)}; known: {", ".join(sorted(known))}')
    return _target(entry.get('target', 'canvas'), where), _params(entry, where)


def parse_guides(value, slot_images=()) -> list:
    """[Guide] of the entries that apply (target not "off", an image or a pasted hash), from a list, a JSON string,
    None or ''. `slot_images` are the UI's images (PIL or None); an entry with `slot` takes its image from there,
    and a slot without an image and without a pasted hash is an empty UI slot (skipped)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise CanvasError(f'Omost guidance is not valid JSON: {e}') from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise CanvasError(f'Omost guidance must be a list of guide images, got {type(value).__name__}')
    guides = []
    for n, entry in enumerate(value, 1):
        where = f'Omost guide image {n}'
        if not isinstance(entry, dict):
            raise CanvasError(f'{where}: must be an object of named options, got {type(entry).__name__}')
        target, params = check_entry(entry, where)
        slot = entry.get('slot')
        hashed = entry.get('image_hash') or None
        if target == 'off':
            continue
        if entry.get('image') is not None:
            if not isinstance(entry['image'], str):
                raise CanvasError(f'{where}: image must be a base64 string')
            image = decode_image(entry['image'], where)
        elif slot is not None:
            if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < len(slot_images):
                raise CanvasError(f'{where}: no image slot {slot!r}')
            image = slot_images[slot]
            if image is None and not hashed:
                continue  # an empty UI slot
        elif hashed:
            image = None
        else:
            raise CanvasError(f'{where}: no image (give it as base64 in "image")')
        if image is None:
            raise CanvasError(f'{where}: the infotext keeps only the hash of its image ({hashed}); upload the image '
                              f'again, or set its target to off')
        guides.append(Guide(target=target, params=params, image=image, slot=slot, image_hash=hashed))
    if len(guides) > MAX_GUIDES:
        raise CanvasError(f'Omost guidance: at most {MAX_GUIDES} guide images, got {len(guides)}')
    return guides


def check_targets(guides: list, n_regions: int):
    """Every region target exists on the canvas (regions 1..n_regions - 1; 0 is the background)."""
    for n, g in enumerate(guides, 1):
        index = g.region_index()
        if index is not None and index >= n_regions:
            raise CanvasError(f'Omost guide image {n}: the canvas has no region {index} (it has '
                              f'{n_regions - 1} regions besides the background)')


def infotext(guides: list) -> str:
    return json.dumps([g.to_infotext() for g in guides], separators=(',', ':'))
