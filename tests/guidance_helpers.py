"""Tiny random-weight CLIP vision towers and text encoders (transformers, real classes, small configs) and guide
images, built offline for the image guidance tests."""

import base64
import io
import json
import os

import numpy as np
import torch

TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                   image_size=32, patch_size=8, layer_norm_eps=1e-5)


def tiny_tower(projection_dim: int, seed: int = 0, hidden_act=None):
    """CLIPVisionModelWithProjection with the projection of a real tower (768: ViT-L/14, 1280: ViT-bigG/14) and
    a tiny body; the activation the shape rule of lib_omost.vision infers for it."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(seed)
    act = hidden_act or ('quick_gelu' if projection_dim == 768 else 'gelu')
    config = CLIPVisionConfig(projection_dim=projection_dim, hidden_act=act, **TINY_VISION)
    return CLIPVisionModelWithProjection(config).eval()


def save_tower(model, path: str, folder_layout: bool = False) -> str:
    """As a single .safetensors file (the hosts' clip_vision layout) or a Hugging Face folder with config.json."""
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != 'vision_model.embeddings.position_ids'}
    if folder_layout:
        os.makedirs(path, exist_ok=True)
        save_file(state, os.path.join(path, 'model.safetensors'))
        with open(os.path.join(path, 'config.json'), 'w') as f:
            json.dump(model.config.to_dict(), f)
        return path
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    save_file(state, path)
    return path


def tiny_clip_folder(path: str, seed: int = 0) -> str:
    """A whole CLIPModel (text + vision, projection 768) in a Hugging Face folder, as openai/clip-vit-large-patch14
    is laid out, for the CLI."""
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=dict(hidden_size=768, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=12, max_position_embeddings=77, projection_dim=768),
                        vision_config=dict(projection_dim=768, hidden_act='quick_gelu', **TINY_VISION),
                        projection_dim=768)
    model = CLIPModel(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    return path


def guide_image(seed: int = 0, size=(48, 40)):
    from PIL import Image
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), 'RGB')


def b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode()
