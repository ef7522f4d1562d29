"""CLIP vision towers for image guidance: finding, loading (safetensors only) and encoding a guide image.

A tower is paired with a text encoder by its projection width, which equals the text embedding width it maps onto:
768 = ViT-L/14 (SD1.x, SDXL's first half), 1024 = ViT-H/14 (SD2.x), 1280 = ViT-bigG/14 (SDXL's second half).

Accepted files: a `.safetensors` file, or a folder holding `model.safetensors` (Hugging Face layout, with or
without `config.json`), in transformers' key layout (`vision_model.*`, `visual_projection.weight`), as a vision
model alone (CLIPVisionModelWithProjection: IP-Adapter's image encoders, Forge's `clip_vision` files) or a whole
CLIPModel (openai/clip-vit-large-patch14's `model.safetensors`; the text half is not loaded). Without a
config.json the architecture is read from the tensor shapes. Pickled checkpoints (.bin, .pth) are refused.

The image tokens are FlexDiffuse's (`encode/clip.py` `CLIPEncoder.image`): every token of the last hidden state,
post-layernorm and projected; the image is preprocessed as there (see `preprocess`).
"""

from __future__ import annotations

import json
import os
import struct

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_SINGLE_DIM = 512  # FlexDiffuse resizes the long side to this before cropping
TOWER_NAMES = {768: 'ViT-L/14', 1024: 'ViT-H/14', 1280: 'ViT-bigG/14'}
# Where a missing tower is downloaded from unless the user changed the URL in the settings, and the file it becomes
DEFAULT_URLS = {
    768: 'https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/model.safetensors',
    1280: 'https://huggingface.co/h94/IP-Adapter/resolve/main/sdxl_models/image_encoder/model.safetensors',
}
DOWNLOAD_NAMES = {768: 'clip-vit-large-patch14.safetensors', 1024: 'clip-vit-huge-patch14.safetensors',
                  1280: 'clip-vit-bigG-14.safetensors'}
# Heads per hidden width of the released towers (head width 64, except bigG's 104); others: width / 64.
_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}


class VisionError(RuntimeError):
    pass


def tower_name(width: int) -> str:
    return TOWER_NAMES.get(int(width), f'CLIP vision ({width})')


# ---------------------------------------------------------------------------------------------------------------
# Files


def weights_file(path: str) -> str:
    """The safetensors file of a file or Hugging Face folder path."""
    if os.path.isdir(path):
        candidate = os.path.join(path, 'model.safetensors')
        if os.path.isfile(candidate):
            return candidate
        raise VisionError(f'{path} has no model.safetensors (only safetensors vision towers are loaded)')
    if not path.endswith('.safetensors'):
        raise VisionError(f'{path} is not a .safetensors file (pickled checkpoints are never loaded)')
    if not os.path.isfile(path):
        raise VisionError(f'{path} does not exist')
    return path


def read_header(path: str) -> dict:
    """Tensor name -> shape, from a safetensors header (nothing else is read)."""
    try:
        with open(path, 'rb') as f:
            size = struct.unpack('<Q', f.read(8))[0]
            if size > 100 * 1024 * 1024:
                raise ValueError('header too large')
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise VisionError(f'{path} is not a readable safetensors file: {e}') from None
    return {k: v['shape'] for k, v in header.items() if k != '__metadata__' and isinstance(v, dict)}


def _prefix(shapes: dict) -> str | None:
    """The key prefix before `vision_model.` / `visual_projection.weight` (usually ''), or None."""
    for key in shapes:
        if key.endswith('visual_projection.weight'):
            return key[:-len('visual_projection.weight')]
    return None


def tower_config(path: str) -> dict | None:
    """CLIPVisionConfig arguments of a tower file or folder, or None when it is not a CLIP vision tower."""
    try:
        shapes = read_header(weights_file(path))
    except VisionError:
        return None
    prefix = _prefix(shapes)
    if prefix is None:
        return None
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    config_file = os.path.join(folder, 'config.json') if os.path.isdir(path) else os.path.splitext(path)[0] + '.json'
    if os.path.isfile(config_file):
        try:
            with open(config_file, encoding='utf-8') as f:
                config = json.load(f)
            config = config.get('vision_config', config)
            keep = ('hidden_size', 'intermediate_size', 'projection_dim', 'num_hidden_layers',
                    'num_attention_heads', 'num_channels', 'image_size', 'patch_size', 'hidden_act', 'layer_norm_eps')
            return {k: config[k] for k in keep if k in config}
        except (OSError, ValueError, AttributeError):
            pass  # fall back to the shapes
    v = prefix + 'vision_model.'
    try:
        projection, hidden = shapes[prefix + 'visual_projection.weight']
        patch = shapes[v + 'embeddings.patch_embedding.weight']
        positions = shapes[v + 'embeddings.position_embedding.weight'][0]
        intermediate = shapes[v + 'encoder.layers.0.mlp.fc1.weight'][0]
    except (KeyError, ValueError, IndexError):
        return None
    layers = 1 + max(int(k[len(v + 'encoder.layers.'):].split('.')[0]) for k in shapes
                     if k.startswith(v + 'encoder.layers.'))
    grid = int(round((positions - 1) ** 0.5))
    return dict(hidden_size=hidden, intermediate_size=intermediate, projection_dim=projection,
                num_hidden_layers=layers, num_attention_heads=_HEADS.get(hidden, max(1, hidden // 64)),
                num_channels=patch[1], image_size=grid * patch[2], patch_size=patch[2],
                # OpenAI's towers (ViT-L/14) use quick_gelu, LAION's (ViT-H, ViT-bigG) gelu
                hidden_act='quick_gelu' if projection == 768 else 'gelu', layer_norm_eps=1e-5)


def find_tower(width: int, candidates) -> str | None:
    """The first candidate (file or folder; folders are searched for towers, sorted by name) whose projection
    width is `width`."""
    for path in candidates:
        if not path:
            continue
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, 'model.safetensors')):
            entries = sorted(os.listdir(path))
            inner = [os.path.join(path, e) for e in entries
                     if e.endswith('.safetensors') or os.path.isfile(os.path.join(path, e, 'model.safetensors'))]
            found = find_tower(width, inner)
            if found:
                return found
            continue
        config = tower_config(path)
        if config and config['projection_dim'] == width:
            return path
    return None


def download(url: str, dest: str, progress=None, chunk: int = 1 << 20) -> str:
    """Stream `url` to `dest` (via dest + '.part'); `progress(line)` every few percent. Returns dest."""
    import urllib.request
    os.makedirs(os.path.dirname(dest) or '.', exist_ok=True)
    part = dest + '.part'
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, 'wb') as out:
            total = int(response.headers.get('Content-Length') or 0)
            done, said = 0, -1
            while True:
                block = response.read(chunk)
                if not block:
                    break
                out.write(block)
                done += len(block)
                percent = int(100 * done / total) if total else -1
                if progress is not None and (percent // 5 != said // 5 or not total):
                    said = percent
                    size = f' of {total / 1e6:.0f} MB' if total else ''
                    progress(f'Downloading {os.path.basename(dest)}: {done / 1e6:.0f}{size}')
    except OSError as e:
        raise VisionError(f'could not download {url}: {e}') from None
    if total and done < total:  # the connection ended early without an error
        os.remove(part)
        raise VisionError(f'could not download {url}: it stopped at {done} of {total} bytes')
    if not _is_tower(part):
        os.remove(part)
        raise VisionError(f'{url} is not a CLIP vision tower in safetensors format')
    from lib_omost.atomic import replace_durably
    replace_durably(part, dest)
    return dest


def _is_tower(path: str) -> bool:
    try:
        with open(path, 'rb') as f:
            size = struct.unpack('<Q', f.read(8))[0]
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return False
    return any(k.endswith('visual_projection.weight') for k in header)


# ---------------------------------------------------------------------------------------------------------------
# Loading and encoding


def load_tower(path: str, device='cpu', dtype=torch.float32):
    """A transformers CLIPVisionModelWithProjection with the file's weights (strict: every vision key present)."""
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    weights = weights_file(path)  # refuses anything but safetensors
    config = tower_config(path)
    if config is None:
        raise VisionError(f'{path} is not a CLIP vision tower (no visual_projection.weight)')
    state = load_file(weights)
    prefix = _prefix({k: None for k in state})
    state = {k[len(prefix):]: t for k, t in state.items()
             if k.startswith(prefix + 'vision_model.') or k == prefix + 'visual_projection.weight'}
    state.pop('vision_model.embeddings.position_ids', None)  # a buffer in older transformers, not a weight
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    own = model.state_dict()
    own.pop('vision_model.embeddings.position_ids', None)
    missing = sorted(set(own) - set(state))
    if missing:
        raise VisionError(f'{path} lacks {len(missing)} vision tower weights, e.g. {missing[0]}')
    model.load_state_dict(state, strict=False)
    return model.to(device=device, dtype=dtype).eval()


def preprocess(image, size: int) -> torch.Tensor:
    """(1, 3, size, size) pixels as FlexDiffuse feeds CLIP (`encode/clip.py` preprocess + CLIPEncoder.image): the
    long side resized to 512 (LANCZOS, the short side floored to a multiple of 64), scaled to [-1, 1], centre
    cropped square, resized to `size` (bicubic, antialiased) and normalised with CLIP's mean and std. (The [-1, 1]
    scaling before CLIP's normalisation is FlexDiffuse's; kept so the embeddings are the ones its methods were
    tuned on.)"""
    import numpy as np
    from PIL import Image
    w, h = image.size
    if h > w:
        w, h = max(64, (int(w / (h / MAX_SINGLE_DIM)) // 64) * 64), MAX_SINGLE_DIM
    elif w > h:
        w, h = MAX_SINGLE_DIM, max(64, (int(h / (w / MAX_SINGLE_DIM)) // 64) * 64)
    else:
        w = h = MAX_SINGLE_DIM
    image = image.convert('RGB').resize((w, h), resample=Image.LANCZOS)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    x = 2.0 * x - 1.0
    side = min(x.shape[-2:])
    top, left = int(round((x.shape[-2] - side) / 2.0)), int(round((x.shape[-1] - side) / 2.0))
    x = x[..., top:top + side, left:left + side]
    x = F.interpolate(x, size=(size, size), mode='bicubic', align_corners=False, antialias=True)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def image_tokens(model, image) -> torch.Tensor:
    """(tokens, projection width) float32: every token of the last hidden state, post-layernorm, projected."""
    param = next(model.parameters())
    pixels = preprocess(image, int(model.config.image_size)).to(device=param.device, dtype=param.dtype)
    hidden = model.vision_model(pixel_values=pixels).last_hidden_state
    tokens = model.visual_projection(model.vision_model.post_layernorm(hidden))
    return tokens[0].float().cpu()
