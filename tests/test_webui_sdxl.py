"""SDXL end to end through both hosts' script hooks: dict conds ({'crossattn', 'vector'}) in the denoiser and the
callbacks, the SDXL tokenizers (A1111 conditioner.embedders[0], Forge text_processing_engine_l), no attention at
the first level, and Forge's SDXL attn2 keys with block indices 0-9."""

import pytest

from omost_webui import forge
from webui_helpers import (DRAGON, A1111SDXLModel, ForgeSDXLModel, ForgeTinySDXLUNet, Rig, check_step_window,
                           forward_attributes, images_equal, omost, tiny_sdxl_ldm_unet)


@pytest.fixture(scope='module', params=['a1111', 'forge'])
def rig(request):
    if request.param == 'a1111':
        return Rig(A1111SDXLModel(tiny_sdxl_ldm_unet()))
    return Rig(ForgeSDXLModel(ForgeTinySDXLUNet()))


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


def test_forge_sdxl_every_block_index_is_patched(monkeypatch):
    """Every (block, id, block_index) Forge's SDXL UNet looks up, indices 0-9 included, runs the regions."""
    rig = Rig(ForgeSDXLModel(ForgeTinySDXLUNet()))
    seen = set()
    call = forge.RegionalAttn2Patch.__call__

    def spy(self, q, k, v, extra_options):
        seen.add((*extra_options['block'], extra_options['block_index']))
        return call(self, q, k, v, extra_options)
    monkeypatch.setattr(forge.RegionalAttn2Patch, '__call__', spy)
    rig.generate(omost(), steps=1)
    expected = {(block, number, i) for block, number, depth, _ in ForgeTinySDXLUNet.LAYOUT for i in range(depth)}
    assert seen == expected and {i for *_, i in seen} == set(range(10))
