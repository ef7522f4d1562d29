"""SDXL end to end through the script hooks of each host family's stub (A1111; Forge and Neo; Forge Classic /
reForge): dict conds ({'crossattn', 'vector'}) in the denoiser and the callbacks, the SDXL tokenizers (A1111's and
Classic's conditioner.embedders[0], Forge's and Neo's text_processing_engine_l), no attention at the first level,
and the UnetPatcher hosts' SDXL attn2 keys with block indices 0-9."""

import pytest

from omost_webui.hosts import patcher as forge
from webui_helpers import (DRAGON, A1111SDXLModel, ForgeClassicSDXLModel, ForgeSDXLModel, ForgeTinySDXLUNet, Rig,
                           check_step_window, forward_attributes, images_equal, omost, tiny_sdxl_ldm_unet)

MODELS = {
    'a1111': lambda: A1111SDXLModel(tiny_sdxl_ldm_unet()),
    'forge': lambda: ForgeSDXLModel(ForgeTinySDXLUNet()),
    'neo': lambda: ForgeSDXLModel(ForgeTinySDXLUNet(), neo=True),
    'forge-classic': lambda: ForgeClassicSDXLModel(ForgeTinySDXLUNet(family='forge-classic')),
}


@pytest.fixture(scope='module', params=list(MODELS))
def rig(request):
    return Rig(MODELS[request.param]())


def test_sdxl_regions_steer_and_leave_no_trace(rig):
    _, baseline = rig.generate(bare=True)
    p, res = rig.generate(omost(DRAGON))
    _, off = rig.generate(omost(DRAGON, regions=False))
    assert p._omost_job.arch == 'sdxl'
    assert all(isinstance(s['cond_len'], int) and s['cond_len'] > 77 for s in Rig.steps)
    assert not images_equal(res, off) and not images_equal(off, baseline)
    assert 'Omost: "' in res.info
    assert images_equal(rig.generate()[1], baseline)
    if not hasattr(rig.model, 'forge_objects'):
        assert forward_attributes(rig.model.model.diffusion_model) == []


def test_sdxl_step_window(rig):
    check_step_window(rig)


@pytest.mark.parametrize('host', ['forge', 'forge-classic'])
def test_forge_sdxl_every_block_index_is_patched(monkeypatch, host):
    """Every (block, id, block_index) the SDXL UNet of the UnetPatcher hosts looks up, indices 0-9 included, runs the
    regions."""
    rig = Rig(MODELS[host]())
    seen = set()
    call = forge.RegionalAttn2Patch.__call__

    def spy(self, q, k, v, extra_options):
        seen.add((*extra_options['block'], extra_options['block_index']))
        return call(self, q, k, v, extra_options)
    monkeypatch.setattr(forge.RegionalAttn2Patch, '__call__', spy)
    rig.generate(omost(), steps=1)
    expected = {(block, number, i) for block, number, depth, _ in ForgeTinySDXLUNet.LAYOUT for i in range(depth)}
    assert seen == expected and {i for *_, i in seen} == set(range(10))
