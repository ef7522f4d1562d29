"""Image guidance inside a generation: the steps `generation` calls, one per script hook.

- `process`: parse the guide images (`lib_omost.guides`), check their targets against the canvas, find (or
  download) the vision towers the model's text encoders pair with, write the infotext. Bad input refuses the job.
- `process_batch`: encode the guide images (cached by tower and image hash) and the concept prompts (with the
  host's own text encoder), before the host encodes the prompt.
- `process_before_every_sampling`: the host has encoded the bags; each guide changes the chunks of its target
  region in every cond of the pass (`c`, A1111's and Forge's MulticondLearnedConditioning: per prompt row, per
  schedule, a (tokens, width) tensor or SDXL's {'crossattn', 'vector'}). SDXL's crossattn is CLIP-L (768) then
  bigG (1280) side by side; each half is guided with its own tower.
- `restore` (from generation.cleanup): the host caches its conds between jobs (`p.cached_c`), so the replaced
  schedule entries are put back after the job, and before every pass (so a pass never guides twice).

A guide whose weights are all 0 changes nothing, so no entry is replaced: bit-identical to no guidance.
"""

from __future__ import annotations

import os

import torch

from lib_omost import guidance as core
from lib_omost import vision
from lib_omost.guides import check_targets, infotext, parse_guides
from lib_omost.prompts import CHUNK_TOKENS
from lib_omost.vision import DEFAULT_URLS, DOWNLOAD_NAMES

INFOTEXT_GUIDANCE = 'Omost guidance'
INFOTEXT_TOWERS = 'Omost guidance towers'
HALVES = {'sd1': ((0, 768),), 'sd2': ((0, 1024),), 'sdxl': ((0, 768), (768, 2048))}

_replaced = []        # (schedules list, index, original entry) of the running job
_token_cache = {}     # (tower path, mtime, image hash) -> image tokens
_TOKEN_CACHE_SIZE = 16


class GuidanceState:
    def __init__(self, guides, halves, towers):
        self.guides = guides   # [lib_omost.guides.Guide]
        self.halves = halves   # ((lo, hi), ...) of the cond width that get guidance
        self.towers = towers   # {width: tower path}
        self.tokens = {}       # (guide index, width) -> (n, width) image tokens
        self.concepts = {}     # guide index -> (77, cond width) concept chunk


def _state(p):
    return getattr(p, '_omost_guidance', None)


# ---------------------------------------------------------------------------------------------------------------
# Towers


def search_folders() -> list:
    """Where the hosts keep CLIP vision towers, then ours: Forge's ControlNet preprocessor folder
    (`modules_forge.shared.preprocessor_dir`, where its IP-Adapter/Revision preprocessors download
    CLIP-ViT-bigG.safetensors, and its clip_vision), sd-webui-controlnet's annotator downloads
    (`annotator/annotator_path.py`: the `control_net_modules_path` setting or annotator/downloads, /clip_vision),
    `models/clip_vision`, and `models/omost/clip_vision`. Only .safetensors files in them are used."""
    import glob
    from modules import paths, shared
    models = paths.models_path
    preprocessors = getattr(shared.cmd_opts, 'controlnet_preprocessor_models_dir', None) \
        or os.path.join(models, 'ControlNetPreprocessor')
    # the Forge families download CLIP-ViT-bigG.safetensors into the first; a folder a host lacks is left out below
    folders = [preprocessors, os.path.join(preprocessors, 'clip_vision')]
    cn_setting = getattr(shared.opts, 'data', {}).get('control_net_modules_path')
    if cn_setting:
        folders.append(os.path.join(cn_setting, 'clip_vision'))
    extensions = getattr(paths, 'extensions_dir', os.path.join(getattr(paths, 'data_path', models), 'extensions'))
    folders += sorted(glob.glob(os.path.join(extensions, '*', 'annotator', 'downloads', 'clip_vision')))
    folders += [os.path.join(models, 'clip_vision'), own_folder()]
    return [f for f in dict.fromkeys(folders) if os.path.isdir(f)]


def own_folder() -> str:
    from omost_webui import settings
    return os.path.join(settings.models_dir(), 'clip_vision')


def resolve_towers(widths, say=print) -> dict:
    """{width: path} for each width that has a tower: the user's file or folder (Settings > Omost), the hosts'
    folders, models/omost/clip_vision, then a download into the latter (when a URL is set)."""
    from omost_webui import settings
    user = settings.vision_path()
    found = {}
    for width in widths:
        path = vision.find_tower(width, ([user] if user else []) + search_folders())
        if path is None:
            url = (settings.get(f'omost_vision_url_{width}', DEFAULT_URLS.get(width, '')) or '').strip()
            if url:
                dest = os.path.join(own_folder(), DOWNLOAD_NAMES.get(width, f'clip-vision-{width}.safetensors'))
                say(f'no {vision.tower_name(width)} vision tower found; downloading {url} into {dest}')
                try:
                    path = vision.download(url, dest, progress=say)
                except vision.VisionError as e:
                    say(str(e))
                    path = None
                if path is not None and vision.find_tower(width, [path]) is None:
                    say(f'{path} is not a {vision.tower_name(width)} vision tower')
                    path = None
        if path is not None:
            found[width] = path
    return found


def towers_note(halves_wanted, towers) -> str:
    names = [vision.tower_name(hi - lo) for lo, hi in halves_wanted if (hi - lo) in towers]
    missing = [vision.tower_name(hi - lo) for lo, hi in halves_wanted if (hi - lo) not in towers]
    note = ' + '.join(names)
    if missing:
        note += f' only (no {", ".join(missing)} vision tower)'
    return note


# ---------------------------------------------------------------------------------------------------------------
# Hooks


def process(p, job, guidance_value, slot_images):
    """Parse and check the guides; None when there are none. Raises CanvasError / VisionError for bad input."""
    from lib_omost.canvas import CanvasError
    p._omost_guidance = None
    guides = parse_guides(guidance_value, list(slot_images))
    if not guides:
        return None
    check_targets(guides, len(job.canvas.regions))
    wanted = HALVES.get(job.arch)
    if wanted is None:
        raise CanvasError(f'Omost image guidance does not know the text encoders of this model ({job.arch})')
    towers = resolve_towers([hi - lo for lo, hi in wanted], say=lambda m: print(f'[Omost] {m}'))
    halves = tuple(h for h in wanted if (h[1] - h[0]) in towers)
    if not halves:
        names = ', '.join(vision.tower_name(hi - lo) for lo, hi in wanted)
        raise CanvasError(f'Omost image guidance needs a {names} CLIP vision tower (safetensors): choose a file '
                          'or folder in Settings > Omost, or put one into a clip_vision folder')
    state = GuidanceState(guides, halves, towers)
    note = towers_note(wanted, towers)
    if len(halves) < len(wanted):
        print(f'[Omost] image guidance: {note}')
    p.extra_generation_params[INFOTEXT_GUIDANCE] = infotext(guides)
    p.extra_generation_params[INFOTEXT_TOWERS] = note
    p._omost_guidance = state
    return state


def process_batch(p):
    """Encode what the guides need (once per job; the image tokens also across jobs)."""
    state = _state(p)
    if state is None or state.tokens:
        return
    from lib_omost.guides import image_hash
    for width in {hi - lo for lo, hi in state.halves}:
        path = state.towers[width]
        model = None
        for n, guide in enumerate(state.guides):
            key = (path, os.path.getmtime(vision.weights_file(path)), image_hash(guide.image))
            if key not in _token_cache:
                if model is None:
                    model = _load(path)
                if len(_token_cache) >= _TOKEN_CACHE_SIZE:
                    _token_cache.pop(next(iter(_token_cache)))
                _token_cache[key] = vision.image_tokens(model, guide.image)
            state.tokens[(n, width)] = _token_cache[key]
        del model  # a tower is only needed for new images; never kept beside the diffusion model
    for n, guide in enumerate(state.guides):
        if guide.params.concepts.strip():
            state.concepts[n] = encode_text(p, guide.params.concepts)


def _load(path):
    from modules import devices
    device = devices.device or devices.cpu
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    return vision.load_tower(path, device=device, dtype=dtype)


def encode_text(p, text: str) -> torch.Tensor:
    """The first 77-token chunk of `text` encoded by the host's text encoder: (77, cond width)."""
    from modules import devices, prompt_parser
    prompts = prompt_parser.SdConditioning([text], width=p.width, height=p.height)
    with torch.no_grad(), devices.autocast():
        cond = p.sd_model.get_learned_conditioning(prompts)
    cond = cond['crossattn'] if isinstance(cond, dict) else cond
    return cond[0, :CHUNK_TOKENS].detach().float().cpu()


def process_before_every_sampling(p, job, c, hr: bool):
    """Guide the target chunks of every cond in `c` (the conditioning this pass samples with)."""
    restore()
    state = _state(p)
    if state is None or c is None or not hasattr(c, 'batch'):
        return
    prompts = list(getattr(p, 'hr_prompts', None) or []) if hr else list(p.prompts or [])
    layouts = {hp.text: hp for hp in job.host_prompts.values()}
    done, skipped = set(), 0
    for row, entries in enumerate(c.batch):
        hp = layouts.get(prompts[row]) if row < len(prompts) else None
        for entry in entries:
            schedules = entry.schedules
            if id(schedules) in done:  # identical prompts share one schedule list
                continue
            done.add(id(schedules))
            for k, sched in enumerate(schedules):
                new = guide_cond(sched.cond, hp, state) if hp is not None else None
                if new is None:
                    skipped += 1
                elif new is not sched.cond:
                    _replaced.append((schedules, k, sched))
                    schedules[k] = sched._replace(cond=new)
    if skipped:
        message = 'image guidance skipped a prompt whose conditioning does not have the bags\' layout'
        print(f'[Omost] {message}')
        if hasattr(p, 'comment'):
            p.comment('Omost: ' + message)


def guide_cond(cond, hp, state):
    """`cond` with the guides applied (the same object when nothing changes), or None when its layout is not
    the host prompt's."""
    tensor = cond['crossattn'] if isinstance(cond, dict) else cond
    if tensor.dim() != 2 or tensor.shape[0] != hp.n_chunks * CHUNK_TOKENS:
        return None
    out = tensor
    for n, guide in enumerate(state.guides):
        index = guide.region_index()
        chunks = range(hp.n_chunks) if index is None else range(hp.regions[index].start, hp.regions[index].end)
        concept = state.concepts.get(n)
        for lo, hi in state.halves:
            if tensor.shape[1] < hi:
                continue
            image = state.tokens[(n, hi - lo)]
            for k in chunks:
                rows = slice(k * CHUNK_TOKENS, (k + 1) * CHUNK_TOKENS)
                chunk = out[rows, lo:hi]
                part = None if concept is None else concept[:, lo:hi].to(chunk.device)
                new = core.guide_chunk(chunk, image.to(chunk.device), guide.params, concept=part)
                if new is not chunk:
                    if out is tensor:
                        out = tensor.clone()
                    out[rows, lo:hi] = new
    if out is tensor:
        return cond
    if isinstance(cond, dict):
        import copy
        new_cond = copy.copy(cond)
        new_cond['crossattn'] = out
        return new_cond
    return out


def restore():
    """Put back every cond entry replaced for the running job (idempotent)."""
    while _replaced:
        schedules, k, original = _replaced.pop()
        schedules[k] = original
