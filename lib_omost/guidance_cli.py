"""`python -m lib_omost guide`: FlexDiffuse's per-token weights for one prompt and guide image, without a WebUI.

The prompt is encoded as SD1's CLIP-L does it (BOS, at most 75 tokens, EOS, padded with EOS to 77; the last hidden
state after the final layer norm) by a transformers CLIP text model; the image by the CLIP vision tower paired with
it (lib_omost.vision). Each row is one of the chunk's 77 tokens: the image token it maps to, the similarity, the
weight from Linear/Clustered/Threshold (header cap applied) and what the token actually moves (after
max_guidance; 1 = replaced by the image token).
"""

from __future__ import annotations

import dataclasses
import json
import os

from lib_omost.guide_params import METHODS, ORDERS, GuideParams


def add_parser(sub):
    p = sub.add_parser('guide', help="print FlexDiffuse's per-token image guidance weights for a prompt and image")
    p.add_argument('--image', required=True, help='the guide image')
    p.add_argument('--prompt', required=True)
    p.add_argument('--clip', required=True, metavar='PATH',
                   help='a CLIP model folder with text and vision (e.g. openai/clip-vit-large-patch14), '
                        'safetensors only')
    p.add_argument('--vision', metavar='PATH', help='a separate vision tower file or folder (default: --clip)')
    d = GuideParams()
    p.add_argument('--method', choices=METHODS, default=d.method)
    for name in ('linear_start', 'linear_end', 'clustered', 'threshold_floor', 'threshold_mult', 'max_guidance',
                 'header_max'):
        p.add_argument('--' + name.replace('_', '-'), type=float, default=getattr(d, name))
    p.add_argument('--concepts', default='', help='concept-mapping prompt')
    p.add_argument('--order', choices=ORDERS, default=d.order)
    p.add_argument('--no-reuse', action='store_true', help='map every image token to one text token at most')
    p.add_argument('--json', action='store_true', help='print JSON instead of a table')
    p.set_defaults(func=cli_guide)


def encode_prompt(model, text: str):
    """(77, hidden) text embeddings of `text` as SD1 encodes one chunk, and the 77 token ids."""
    import torch
    from lib_omost import clip_tokenizer
    ids = clip_tokenizer.encode(text)[:75]
    ids = [clip_tokenizer.BOS_ID] + ids + [clip_tokenizer.EOS_ID] * (76 - len(ids))
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return hidden.float(), ids


def _text_model(path: str):
    from transformers import CLIPTextModel
    if not os.path.isfile(os.path.join(path, 'model.safetensors')):
        raise ValueError(f'{path} has no model.safetensors (only safetensors models are loaded)')
    return CLIPTextModel.from_pretrained(path, use_safetensors=True).eval()


def cli_guide(args) -> int:
    from PIL import Image
    from lib_omost import clip_tokenizer, guidance, vision
    params = GuideParams(method=args.method, linear_start=args.linear_start, linear_end=args.linear_end,
                         clustered=args.clustered, threshold_floor=args.threshold_floor,
                         threshold_mult=args.threshold_mult, max_guidance=args.max_guidance,
                         header_max=args.header_max, concepts=args.concepts, order=args.order,
                         reuse=not args.no_reuse)
    text_model = _text_model(args.clip)
    tower = vision.load_tower(args.vision or args.clip)
    width = text_model.config.hidden_size
    if tower.config.projection_dim != width:
        raise ValueError(f'the vision tower projects to {tower.config.projection_dim} but the text encoder is '
                         f'{width} wide: not a pair')
    text, ids = encode_prompt(text_model, args.prompt)
    tokens = vision.image_tokens(tower, Image.open(args.image))
    rows = guidance.chunk_report(text, tokens, params)
    concept_rows = {}
    if params.concepts.strip():
        concept, _ = encode_prompt(text_model, params.concepts)
        concept_rows = dict(guidance.concept_rows(tokens, concept, text))
    out = []
    for (i, image_i, s, w, mix), token in zip(rows, ids):
        name = clip_tokenizer.decode([token])
        entry = {'index': i, 'token': name, 'image_token': image_i, 'similarity': round(s, 6),
                 'weight': round(w, 6), 'moves': round(mix, 6)}
        if i in concept_rows:
            entry.update(moves=1.0, concept_image_token=concept_rows[i])
        out.append(entry)
    if args.json:
        print(json.dumps({'params': dataclasses.asdict(params), 'image_tokens': int(tokens.shape[0]),
                          'tokens': out}, indent=1))
        return 0
    print(f'# {tokens.shape[0]} image tokens; {dataclasses.asdict(params)}')
    print("# row i's image token and similarity are token i+1's match (guidance.py's shift; the last row has none)")
    print(f'{"#":>3} {"token":<16} {"image":>5} {"similarity":>10} {"weight":>8} {"moves":>7}')
    for e in out:
        mark = ' concept' if 'concept_image_token' in e else ''
        print(f'{e["index"]:>3} {e["token"][:16]:<16} {e["image_token"]:>5} {e["similarity"]:>10.4f} '
              f'{e["weight"]:>8.4f} {e["moves"]:>7.4f}{mark}')
    return 0
