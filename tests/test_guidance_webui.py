"""Image guidance through the script's own hooks, in both hosts' paths (tests/webui_stubs: the conds are the hosts'
MulticondLearnedConditioning, cached between jobs as processing.get_conds_with_caching does): the A1111 rig with
the real ldm UNet, the Forge rig with its patcher, both with 768-wide text embeddings (SD1's CLIP-L) and tiny
random-weight vision towers of the real projection widths; SDXL's two halves on dict conds."""

import json
import pathlib
import tempfile

import pytest
import torch

from guidance_helpers import b64, guide_image, save_tower, tiny_tower
from webui_helpers import (SMALL, A1111Model, ForgeClassicModel, ForgeModel, ForgeTinyUNet, Rig, images_equal, omost,
                           tiny_ldm_unet)

CHUNK = 77


def _in_data_folder(prefix):
    """A new folder inside the WebUI's data folder, where a tower folder setting must be (settings.confined)."""
    from modules import paths
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=paths.data_path))


@pytest.fixture(scope='module')
def towers():
    folder = _in_data_folder('clip_vision')
    save_tower(tiny_tower(768, seed=1), str(folder / 'CLIP-ViT-L-14.safetensors'))
    save_tower(tiny_tower(1280, seed=2), str(folder / 'CLIP-ViT-bigG.safetensors'))
    save_tower(tiny_tower(1024, seed=3), str(folder / 'CLIP-ViT-H-14.safetensors'))  # pairs with neither
    return folder


@pytest.fixture(autouse=True)
def vision_settings(towers):
    from modules import errors, shared
    errors.reported.clear()
    shared.opts.data.update(omost_vision_path=str(towers), omost_vision_url_768='', omost_vision_url_1280='')
    yield
    for key in ('omost_vision_path', 'omost_vision_url_768', 'omost_vision_url_1280'):
        shared.opts.data.pop(key, None)


@pytest.fixture
def conds():
    """The stacked cond of every denoiser step (what the UNet is given)."""
    from modules import script_callbacks
    seen = []

    def record(params):
        seen.append(params.text_cond.detach().clone())

    script_callbacks.callbacks['cfg_denoiser'].append(record)
    yield seen
    script_callbacks.callbacks['cfg_denoiser'].remove(record)


RIGS = {
    'a1111': lambda: Rig(A1111Model(tiny_ldm_unet(context_dim=768), text_dim=768)),
    'forge': lambda: Rig(ForgeModel(ForgeTinyUNet(context_dim=768), text_dim=768)),
    'forge-classic': lambda: Rig(ForgeClassicModel(ForgeTinyUNet(context_dim=768, family='forge-classic'),
                                                   text_dim=768)),
}


@pytest.fixture(scope='module', params=list(RIGS))
def rig(request):
    return RIGS[request.param]()


def guided(guides, canvas=SMALL, **options):
    args = omost(canvas, **options)
    return args + [json.dumps(guides), None, None, None]


def _layout(p):
    return next(iter(p._omost_job.host_prompts.values()))


def test_guide_on_one_region_changes_only_its_chunks(rig, conds):
    image = guide_image(0)
    p0, plain = rig.generate(guided([]))
    plain_conds = list(conds)
    conds.clear()
    p1, res = rig.generate(guided([{'target': 1, 'image': b64(image)}]))
    assert not images_equal(res, plain)
    hp = _layout(p1)
    start, end = hp.regions[1].start * CHUNK, hp.regions[1].end * CHUNK
    for before, after in zip(plain_conds, conds):
        assert before.shape == after.shape == (1, hp.n_chunks * CHUNK, 768)
        assert not torch.equal(before[:, start:end], after[:, start:end])
        assert torch.equal(before[:, :start], after[:, :start]) and torch.equal(before[:, end:], after[:, end:])
    from modules import errors
    assert errors.reported == []
    info = res.infotexts[0]
    assert 'Omost guidance towers: ViT-L/14' in info and 'image_hash' in info


def test_guidance_zero_is_bit_identical_to_none(rig, conds):
    _, plain = rig.generate(guided([]))
    plain_conds = list(conds)
    conds.clear()
    _, zero = rig.generate(guided([{'target': 'canvas', 'image': b64(guide_image(0)), 'max_guidance': 0.0}]))
    assert images_equal(zero, plain)
    assert all(torch.equal(a, b) for a, b in zip(plain_conds, conds))


def test_the_hosts_cond_cache_is_untouched_after_a_guided_job(rig):
    """The host keeps the conds of the last prompt for the next job (cached_c): guidance must not leak into it."""
    from modules import processing
    _, plain = rig.generate(guided([]))
    cached = processing.StableDiffusionProcessing.cached_c[1]
    before = [s.cond.clone() for row in cached.batch for e in row for s in e.schedules]
    _, res = rig.generate(guided([{'target': 'canvas', 'image': b64(guide_image(1)), 'max_guidance': 1.0}]))
    assert processing.StableDiffusionProcessing.cached_c[1] is cached  # the host reused its cache ...
    after = [s.cond for row in cached.batch for e in row for s in e.schedules]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # ... and it holds the unguided conds again
    assert not images_equal(res, plain)
    _, again = rig.generate(guided([]))
    assert images_equal(again, plain)


def test_batch_count_hires_and_identical_rows_guide_once(rig, conds):
    image = b64(guide_image(2))
    rig.generate(guided([{'target': 'background', 'image': image}]), batch_size=2, n_iter=2, enable_hr=True,
                 hr_scale=1.5)
    batch = list(conds)
    conds.clear()
    rig.generate(guided([{'target': 'background', 'image': image}]))
    # Two rows of one prompt share one schedule list: guided once per pass (not once per row), in both batches
    # and in the hires pass, so every row of every step is the cond of a guided batch of one.
    assert len(batch) == 2 * 2 * 2 and all(c.shape[0] == 2 for c in batch)
    assert all(torch.equal(row, conds[0][0]) for c in batch for row in c)


def test_infotext_round_trips_the_parameters_and_asks_for_the_image(rig):
    from lib_omost.guides import image_hash
    from modules import infotext_utils, script_callbacks
    from omost_webui import ui_guidance
    image = guide_image(3)
    entry = {'target': 2, 'image': b64(image), 'method': 'threshold', 'threshold_floor': 0.2,
             'threshold_mult': 1.0, 'max_guidance': 0.8, 'concepts': 'a black dog', 'order': 'text_order',
             'reuse': False}
    p, res = rig.generate(guided([entry]))
    params = infotext_utils.parse_generation_parameters(res.infotexts[0])
    script_callbacks.infotext_pasted_callback(res.infotexts[0], params)
    pasted = json.loads(params['Omost guidance'])
    assert len(pasted) == 1 and pasted[0]['image_hash'] == image_hash(image)
    assert {k: pasted[0][k] for k in entry if k != 'image'} == {k: v for k, v in entry.items() if k != 'image'}
    # The UI's controls take the parameters and the status asks for the image again.
    n = len(ui_guidance.CONTROL_NAMES)
    current = [None] * (ui_guidance.SLOTS * n)
    updates = ui_guidance.controls_from_guidance(params['Omost guidance'], *current)
    values = {name: updates[j]['value'] for j, name in enumerate(ui_guidance.CONTROL_NAMES)}
    assert values['target'] == '2' and values['method'] == 'threshold' and values['concepts'] == 'a black dog'
    assert image_hash(image) in updates[-1] and 'upload the image again' in updates[-1]
    # Generating from the pasted parameters without the image is refused with that message ...
    from omost_webui.generation import OmostInputError
    with pytest.raises(OmostInputError, match='upload the image'):
        rig.generate(guided(pasted))
    # ... and with the image supplied again it reproduces the image.
    again = dict(pasted[0], image=b64(image))
    _, res2 = rig.generate(guided([again]))
    assert images_equal(res2, res)


def test_an_image_without_guidance_pastes_guidance_off():
    from modules import script_callbacks
    params = {'Steps': '20', 'Omost': 'True'}
    script_callbacks.infotext_pasted_callback('', params)
    assert params['Omost guidance'] == '[]'


@pytest.mark.parametrize('entry, message', [
    ({'target': 9}, 'no region 9'),
    ({'target': 1, 'strenght': 1}, 'unknown option'),
    ({'target': 1, 'max_guidance': 3}, 'between 0.0 and 1.0'),
    ({'target': 1, 'image': 'not base64!'}, 'not a base64'),
    ({'target': 1}, 'no image'),
])
def test_bad_guides_refuse_the_job_with_the_reason(rig, entry, message):
    from omost_webui.generation import OmostInputError
    entry = dict(entry)
    if 'image' not in entry and message != 'no image':
        entry['image'] = b64(guide_image(0))
    with pytest.raises(OmostInputError, match=message):
        rig.generate(guided([entry]))


def test_no_paired_tower_refuses(rig):
    from modules import shared
    from omost_webui.generation import OmostInputError
    folder = _in_data_folder('h')
    save_tower(tiny_tower(1024), str(folder / 'h.safetensors'))
    shared.opts.data['omost_vision_path'] = str(folder)
    import omost_webui.guidance_step as step
    real = step.search_folders
    step.search_folders = lambda: []
    try:
        with pytest.raises(OmostInputError, match='ViT-L/14 CLIP vision tower'):
            rig.generate(guided([{'target': 1, 'image': b64(guide_image(0))}]))
    finally:
        step.search_folders = real


def test_ui_slots_use_their_images(rig):
    from omost_webui import ui_guidance
    n = len(ui_guidance.CONTROL_NAMES)
    values = []
    for slot in range(ui_guidance.SLOTS):
        values += [('1' if slot == 0 else 'canvas')] + [getattr(__import__('lib_omost.guidance').guidance
                                                                .GuideParams(), k) for k in ui_guidance.PARAM_NAMES]
    text = ui_guidance.guidance_from_controls('[]', *values)
    image = guide_image(4)
    args = omost(SMALL) + [text, image, None, None]
    _, res = rig.generate(args)
    _, api = rig.generate(guided([{'target': 1, 'image': b64(image)}]))
    assert images_equal(res, api)  # slot 1's image on region 1; the empty slots are skipped
    assert len(json.loads(text)) == ui_guidance.SLOTS and json.loads(text)[0]['slot'] == 0 and n


# ---------------------------------------------------------------------------------------------------------------
# SDXL: the crossattn halves


class _HP:
    def __init__(self, n_chunks, regions):
        self.n_chunks, self.regions = n_chunks, regions


class _Region:
    def __init__(self, start, end):
        self.start, self.end = start, end


def _sdxl_cond(n_chunks, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {'crossattn': torch.randn(n_chunks * CHUNK, 2048, generator=g), 'vector': torch.randn(2816, generator=g)}


@pytest.mark.parametrize('with_bigg', [True, False])
def test_sdxl_each_half_with_its_own_tower_or_clip_l_only(towers, tmp_path, with_bigg):
    from lib_omost import vision
    from lib_omost.guides import parse_guides
    from omost_webui import guidance_step as step
    folder = towers if with_bigg else tmp_path
    if not with_bigg:
        save_tower(tiny_tower(768, seed=1), str(tmp_path / 'l.safetensors'))
    found = {w: vision.find_tower(w, [str(folder)]) for w in (768, 1280)}
    found = {w: p for w, p in found.items() if p}
    wanted = step.HALVES['sdxl']
    assert step.towers_note(wanted, found) == ('ViT-L/14 + ViT-bigG/14' if with_bigg else
                                               'ViT-L/14 only (no ViT-bigG/14 vision tower)')
    guides = parse_guides([{'target': 1, 'image': b64(guide_image(5)), 'max_guidance': 1.0}])
    state = step.GuidanceState(guides, tuple(h for h in wanted if (h[1] - h[0]) in found), found)
    for width, path in found.items():
        state.tokens[(0, width)] = vision.image_tokens(vision.load_tower(path), guides[0].image)
    assert state.tokens[(0, 768)].shape == (17, 768)
    hp = _HP(3, [_Region(0, 1), _Region(1, 2), _Region(2, 3)])
    cond = _sdxl_cond(3)
    new = step.guide_cond(cond, hp, state)
    assert new is not cond and torch.equal(new['vector'], cond['vector'])
    a, b = cond['crossattn'], new['crossattn']
    target = slice(CHUNK, 2 * CHUNK)
    assert torch.equal(a[:CHUNK], b[:CHUNK]) and torch.equal(a[2 * CHUNK:], b[2 * CHUNK:])
    assert not torch.equal(a[target, :768], b[target, :768])
    assert torch.equal(a[target, 768:], b[target, 768:]) != with_bigg
    # Each half is the core method on that half with that tower's tokens.
    from lib_omost.guidance import guide_chunk
    assert torch.equal(b[target, :768], guide_chunk(a[target, :768], state.tokens[(0, 768)], guides[0].params))
    if with_bigg:
        assert torch.equal(b[target, 768:], guide_chunk(a[target, 768:], state.tokens[(0, 1280)],
                                                        guides[0].params))
    assert step.guide_cond(_sdxl_cond(2), hp, state) is None  # a cond without the bags' layout: not touched
