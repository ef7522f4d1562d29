"""Every CFG layout of the hosts' real denoisers (tests/webui_stubs/modules/sd_samplers.py mirrors A1111's and
Forge's CFGDenoiser.forward and Forge's calc_cond_uncond_batch): every cond row gets regions, no uncond row does.

The truth comes from the contexts the UNet is called with: a row whose first 77 tokens are the bags' first chunk
is a cond row, any other row is an uncond row. The extension's decision comes from its own hooks (A1111: the rows
`_cond_row_count` hands to regional attention; Forge: the rows the patch hands to `RegionalAttention.regional`)."""

import pytest
import torch

from lib_omost import attention
from omost_webui.hosts import a1111
from webui_helpers import A1111Model, ForgeModel, ForgeTinyUNet, Rig, omost, tiny_ldm_unet


@pytest.fixture(scope='module')
def a1111_rig():
    return Rig(A1111Model(tiny_ldm_unet()))


@pytest.fixture(scope='module')
def forge_rig():
    return Rig(ForgeModel(ForgeTinyUNet()))


class Recorder:
    """UNet calls (their contexts) and, per attn2 call, the rows the extension made regional."""

    def __init__(self):
        self.calls = []  # [context (rows, T, C), [regional row sets of each attn2 call]]

    def unet_call(self, context):
        self.calls.append([context.detach().clone(), []])

    def regional_rows(self, rows):
        self.calls[-1][1].append(frozenset(rows))

    def check(self, bags_first_chunk):
        """Every attn2 call of every UNet call made exactly its cond rows regional; returns (cond, uncond) rows."""
        seen = [0, 0]
        for context, decisions in self.calls:
            is_cond = [torch.equal(row[:77], bags_first_chunk) for row in context]
            truth = frozenset(i for i, c in enumerate(is_cond) if c)
            assert decisions, 'no attn2 call reached the extension'
            assert all(d == truth for d in decisions), (truth, decisions)
            seen[0] += len(truth)
            seen[1] += len(is_cond) - len(truth)
        return tuple(seen)


def _options(**values):
    from modules import shared
    old = {k: getattr(shared.opts, k) for k in values}
    for k, v in values.items():
        setattr(shared.opts, k, v)
    return old


@pytest.fixture
def a1111_recorder(a1111_rig, monkeypatch):
    rec = Recorder()
    unet = a1111_rig.model.model.diffusion_model
    handle = unet.register_forward_pre_hook(lambda m, args, kwargs: rec.unet_call(kwargs['context']),
                                            with_kwargs=True)
    count = a1111.A1111RegionalHooks._cond_row_count

    def spy(self, x, context, mask, kwargs):
        n = count(self, x, context, mask, kwargs)
        rec.regional_rows(range(n))
        return n
    monkeypatch.setattr(a1111.A1111RegionalHooks, '_cond_row_count', spy)
    yield rec
    handle.remove()


@pytest.fixture
def forge_recorder(forge_rig, monkeypatch):
    """Every attn2 patch call counts as "no regional rows" unless it hands rows to RegionalAttention.regional."""
    from omost_webui.hosts import patcher as forge
    rec = Recorder()
    unet = forge_rig.model.kmodel.diffusion_model
    handle = unet.register_forward_pre_hook(lambda m, args: rec.unet_call(args[2]))
    patch_call, regional = forge.RegionalAttn2Patch.__call__, attention.RegionalAttention.regional

    def spy_patch(self, q, k, v, extra_options):
        rec.regional_rows([])
        return patch_call(self, q, k, v, extra_options)

    def spy_regional(self, q, k, v, cond_rows=None, tiled=True, **kwargs):
        rows = attention._row_selection(cond_rows, q.shape[0]) if self.active else None
        rec.calls[-1][1][-1] = frozenset([] if rows is None else range(q.shape[0])[rows]
                                         if isinstance(rows, slice) else rows.tolist())
        return regional(self, q, k, v, cond_rows, tiled, **kwargs)
    monkeypatch.setattr(forge.RegionalAttn2Patch, '__call__', spy_patch)
    monkeypatch.setattr(attention.RegionalAttention, 'regional', spy_regional)
    yield rec
    handle.remove()


def _first_chunk(rig, p):
    """The encoded first chunk of the job's bags (the global region's): what starts every cond row."""
    (bags,) = p._omost_job.host_prompts.values()
    return rig.model.get_learned_conditioning([bags.text])[0, :77]


A1111_LAYOUTS = {
    'default (lengths differ: cond chunks of 2B, then uncond)': ({}, {}),
    'batch cond/uncond off': ({'batch_cond_uncond': False}, {}),
    'pad cond/uncond (one joint call)': ({'pad_cond_uncond': True}, {}),
    'pad cond/uncond, batch off (B-row chunks)': ({'pad_cond_uncond': True, 'batch_cond_uncond': False}, {}),
    'pad cond/uncond v0': ({'pad_cond_uncond_v0': True}, {}),
    'skip early CFG (cond-only first step)': ({'skip_early_cond': 0.4, 'pad_cond_uncond': True}, {}),
    'NGMS (cond-only odd steps)': ({'pad_cond_uncond': True}, {'s_min_uncond': 100.0}),
    'AND in the prompt box': ({}, {'prompt': 'a cat AND a dog:1.2'}),
}


@pytest.mark.parametrize('name', A1111_LAYOUTS)
def test_a1111_every_cond_row_and_no_uncond_row_gets_regions(a1111_rig, a1111_recorder, name):
    options, job = A1111_LAYOUTS[name]
    old = _options(**options)
    try:
        p, _ = a1111_rig.generate(omost(), batch_size=2, steps=2, **job)
    finally:
        _options(**old)
    cond_rows, uncond_rows = a1111_recorder.check(_first_chunk(a1111_rig, p))
    assert cond_rows == 2 * 2  # both images, both steps (AND is lower-cased in the bags: one row per image)
    skipped = 'skip early' in name or 'NGMS' in name
    assert uncond_rows == (2 if skipped else 4)


def test_a1111_instruct_pix2pix_triple(a1111_rig, a1111_recorder, monkeypatch):
    """An edit model with image CFG scale != 1: x_in = [cond, uncond, uncond] in one call (equal lengths)."""
    monkeypatch.setattr(a1111_rig.model, 'cond_stage_key', 'edit', raising=False)
    old = _options(pad_cond_uncond=True)
    try:
        p, _ = a1111_rig.generate(omost(), batch_size=2, steps=2, image_cfg_scale=1.5)
    finally:
        _options(**old)
    assert [len(c) for c, _ in a1111_recorder.calls] == [6, 6]
    assert a1111_recorder.check(_first_chunk(a1111_rig, p)) == (4, 8)


FORGE_LAYOUTS = {  # settings, job, uncond rows over the 2 steps
    'joint [uncond, cond] call, LCM tiled': ({}, {}, 4),
    'memory split: separate uncond and cond calls': ({'free_memory': 3.0}, {}, 4),
    'cfg 1: no uncond at all': ({}, {'cfg_scale': 1.0}, 0),
    'skip early CFG: cond-only first step': ({'skip_early_cond': 0.4}, {}, 2),
}


@pytest.mark.parametrize('name', FORGE_LAYOUTS)
def test_forge_every_cond_row_and_no_uncond_row_gets_regions(forge_rig, forge_recorder, monkeypatch, name):
    from modules import sd_samplers
    settings, job, uncond_expected = FORGE_LAYOUTS[name]
    settings = dict(settings)
    if 'free_memory' in settings:  # room for 2 rows (one chunk of B=2) per call, not 4
        monkeypatch.setattr(sd_samplers.ForgeCFGDenoiser, 'free_memory', settings.pop('free_memory'))
    old = _options(**settings)
    try:
        p, _ = forge_rig.generate(omost(), batch_size=2, steps=2, **job)
    finally:
        _options(**old)
    cond_rows, uncond_rows = forge_recorder.check(_first_chunk(forge_rig, p))
    assert cond_rows == 4
    assert uncond_rows == uncond_expected
    if 'memory split' in name:
        assert [len(c) for c, _ in forge_recorder.calls] == [2, 2, 2, 2]
