#!/usr/bin/env python3
"""Build an offline Hugging Face hub cache holding openai/clip-vit-large-patch14's config and tokenizer.

A1111's ldm and sgm FrozenCLIPEmbedder call CLIPTokenizer/CLIPTextModel.from_pretrained on that name; with this cache
and HF_HOME=DIR HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nothing is downloaded (the weights come from the checkpoint).
The files are the ones Forge vendors for SD1.5 (the same CLIP ViT-L/14 text encoder and tokenizer), read from a Forge
git repository without checking it out.
Usage: hf_cache.py HF_HOME FORGE_GIT_DIR [COMMIT]    (idempotent)
"""
import os
import subprocess
import sys

home, forge = sys.argv[1], sys.argv[2]
commit = sys.argv[3] if len(sys.argv) > 3 else 'HEAD'
src = 'backend/huggingface/runwayml/stable-diffusion-v1-5'
files = {'config.json': f'{src}/text_encoder/config.json', 'vocab.json': f'{src}/tokenizer/vocab.json',
         'merges.txt': f'{src}/tokenizer/merges.txt', 'tokenizer_config.json': f'{src}/tokenizer/tokenizer_config.json',
         'special_tokens_map.json': f'{src}/tokenizer/special_tokens_map.json'}
rev = '0' * 40
root = os.path.join(home, 'hub', 'models--openai--clip-vit-large-patch14')
snap = os.path.join(root, 'snapshots', rev)
os.makedirs(snap, exist_ok=True)
os.makedirs(os.path.join(root, 'refs'), exist_ok=True)
with open(os.path.join(root, 'refs', 'main'), 'w') as f:
    f.write(rev)
for name, path in files.items():
    data = subprocess.run(['git', f'--git-dir={forge}', 'show', f'{commit}:{path}'], check=True, capture_output=True).stdout
    with open(os.path.join(snap, name), 'wb') as f:
        f.write(data)
print('   hf cache:', snap, sorted(os.listdir(snap)))
