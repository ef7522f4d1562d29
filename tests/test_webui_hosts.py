"""The host seam (omost_webui/hosts): each family is told by what its model has, generation code never asks, and
Forge Neo's clone() (dicts and lists copied, patch objects shared) never lets a job's patch reach the host's base
UnetPatcher, the next job or the other tab's job."""

import ast
import os
import types

import pytest
import torch
from torch import nn

from webui_helpers import (DRAGON, ROOT, SMALL, A1111Model, ForgeClassicModel, ForgeClassicSDXLModel, ForgeModel,
                           ForgeSDXLModel, ForgeTinySDXLUNet, ForgeTinyUNet, Rig, images_equal, omost)


def test_each_model_is_told_by_what_it_has():
    from omost_webui import hosts
    assert type(hosts.host_for(A1111Model(nn.Identity()))) is hosts.A1111Host
    for model in (ForgeModel(nn.Identity()), ForgeModel(nn.Identity(), neo=True),
                  ForgeSDXLModel(ForgeTinySDXLUNet(), neo=True)):
        assert type(hosts.host_for(model)) is hosts.ForgeHost
    for model in (ForgeClassicModel(nn.Identity()), ForgeClassicSDXLModel(ForgeTinySDXLUNet(family='forge-classic'))):
        assert type(hosts.host_for(model)) is hosts.ForgeClassicHost
    # a patcher from neither family (another fork's), or no model the extension knows: no host, never a guess
    stranger = ForgeModel(nn.Identity())
    stranger.forge_objects.unet = types.SimpleNamespace(model=stranger.kmodel)
    assert hosts.host_for(stranger) is None and hosts.host_for(types.SimpleNamespace()) is None


def test_each_family_finds_its_text_encoder():
    from omost_webui import hosts
    forge, classic = ForgeModel(nn.Identity()), ForgeClassicModel(nn.Identity())
    assert hosts.ForgeHost().tokenize_line(forge) == forge.text_processing_engine.tokenize_line
    assert hosts.ForgeClassicHost().tokenize_line(classic) == classic.cond_stage_model.tokenize_line
    xl = ForgeClassicSDXLModel(ForgeTinySDXLUNet(family='forge-classic'))
    assert hosts.ForgeClassicHost().tokenize_line(xl) == xl.conditioner.embedders[0].tokenize_line
    assert hosts.ForgeHost().tokenize_line(classic) is None and hosts.ForgeClassicHost().tokenize_line(forge) is None


def test_a_model_of_an_unknown_host_says_so_everywhere():
    """Never a silent plain image: the console, the job's info (comment) and the infotext say why."""
    class OtherPatcher:  # another fork's UnetPatcher: the sampler stub runs it like Forge's
        labels_rows_by_index = True

        def __init__(self, model):
            self.model, self.model_options = model, {'transformer_options': {}}

    OtherPatcher.__module__ = 'other_fork.patcher'
    rig = Rig(ForgeModel(ForgeTinyUNet()))
    for objects in (rig.model.forge_objects, rig.model.forge_objects_original,
                    rig.model.forge_objects_after_applying_lora):
        objects.unet = OtherPatcher(rig.model.kmodel)
    p, res = rig.generate(omost())
    assert 'Omost notes: "Omost is skipped: this WebUI\'s model (ForgeModel) is of a kind the extension does not ' \
           'know' in res.infotexts[0]
    assert any('does not know' in c for c in p.comments) and 'Omost canvas' not in res.infotexts[0]


def _source(name):
    with open(os.path.join(ROOT, 'omost_webui', name), encoding='utf-8') as f:
        return f.read()


def test_generation_never_asks_which_host_it_is_on():
    """The seam's promise: a new host is one new class in omost_webui/hosts, nothing in the generation steps."""
    for name in ('generation.py', 'prompt_rewrite.py', 'guidance_step.py', 'sketch_start.py'):
        tree = ast.parse(_source(name))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
                {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & {'is_forge', 'forge_objects', 'forge', 'ForgeHost', 'ForgeClassicHost', 'A1111Host'}, name
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
                   {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m and m.split('.')[0] in ('backend', 'ldm_patched', 'modules_forge',
                                                                    'ldm', 'sgm')}, name
        assert not {m for m in imported if m and m.startswith('omost_webui.hosts.')}, name


def test_no_import_circles_in_omost_webui():
    """Every module of omost_webui, and who it imports (at module level or inside a function): no two import
    each other, and no longer circle either."""
    package = os.path.join(ROOT, 'omost_webui')
    graph = {}
    for folder, _, files in os.walk(package):
        for file in files:
            if not file.endswith('.py'):
                continue
            path = os.path.join(folder, file)
            name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.').removesuffix('.__init__')
            with open(path, encoding='utf-8') as f:
                tree = ast.parse(f.read())
            deps = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('omost_webui'):
                    deps |= {f'{node.module}.{a.name}' for a in node.names} | {node.module}
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names if a.name.startswith('omost_webui')}
            graph[name] = deps
    graph = {name: {d for d in deps if d in graph and d != name} for name, deps in graph.items()}
    assert 'omost_webui.generation' in graph and 'omost_webui.hosts.patcher' in graph

    def reaches(start, goal, seen):
        return any(d == goal or (d not in seen and not seen.add(d) and reaches(d, goal, seen)) for d in graph[start])

    # a package importing its own submodules is how packages are made; any other path back is a circle
    circles = [n for n in graph if reaches(n, n, set()) and
               not all(d.startswith(n + '.') or n.startswith(d + '.') for d in graph[n] if reaches(d, n, set()))]
    assert circles == []


# ---------------------------------------------------------------------------------------------------------------
# Forge Neo: clone() shares patch objects


def test_the_neo_stub_shares_patch_objects_between_clones():
    """What the tests below rely on: Neo's ModelPatcher.clone() (backend/utils.py deepcopy_) copies the dicts, not
    the patch objects in them; Forge's deep-copies them."""
    from backend.patcher.unet import NeoUnetPatcher, UnetPatcher
    for cls, shared in ((NeoUnetPatcher, True), (UnetPatcher, False)):
        base = cls(None)
        patch = SharedPatch(1.0)
        base.set_model_attn2_replace(patch, 'input', 1, 0)
        clone = base.clone()
        attn2 = clone.model_options['transformer_options']['patches_replace']['attn2']
        assert attn2 is not base.model_options['transformer_options']['patches_replace']['attn2']
        assert (attn2[('input', 1, 0)] is patch) is shared


class SharedPatch:
    """An attn2 replace patch with state, like IP-Adapter's (lib_ipadapter/IPAdapterPlus.py CrossAttentionPatch):
    plain attention plus a term per condition; `set_new_condition` appends a condition to its lists."""

    def __init__(self, weight):
        self.weights = [weight]

    def set_new_condition(self, weight):
        self.weights.append(weight)

    def __call__(self, q, k, v, extra_options):
        from omost_webui.hosts.patcher import sdpa
        return sdpa(q, k, v, extra_options['n_heads']) + 0.1 * sum(self.weights) * q.tanh()


KEYS = (('input', 1, 0), ('middle', 0, 0), ('output', 1, 0))  # the tiny UNet's attn2 layers


def later_ip_unit(weight):
    """A second IP-Adapter unit that runs after Omost: IPAdapterPlus.py apply: `work_model = model.clone()`, then
    set_model_patch_replace, which extends the patch already at a key (`set_new_condition`) in place."""
    from modules import scripts

    class LaterIPAdapter(scripts.Script):
        def title(self):
            return 'ip-adapter unit 2'

        def process_before_every_sampling(self, p, *args, **kwargs):
            work_model = p.sd_model.forge_objects.unet.clone()
            to = work_model.model_options['transformer_options']
            attn2 = to.setdefault('patches_replace', {}).setdefault('attn2', {})
            for key in KEYS:
                if key in attn2:
                    attn2[key].set_new_condition(weight=weight)
                else:
                    attn2[key] = SharedPatch(weight)
            p.sd_model.forge_objects.unet = work_model

    return LaterIPAdapter()


def neo_rig(with_patch=False):
    """A Neo SD1.5 model; with_patch: the patcher every pass starts from already holds a SharedPatch (what an
    extension that patches the model at load time leaves there)."""
    rig = Rig(ForgeModel(ForgeTinyUNet(), neo=True))
    if with_patch:
        base = rig.model.forge_objects_after_applying_lora.unet.clone()
        for key in KEYS:
            base.set_model_attn2_replace(SharedPatch(0.5), *key)
        rig.model.forge_objects_after_applying_lora.unet = base
    return rig


def snapshot(patcher):
    to = patcher.model_options['transformer_options']
    attn2 = to.get('patches_replace', {}).get('attn2', {})
    return (id(to), dict(to), {k: (id(v), list(getattr(v, 'weights', []))) for k, v in attn2.items()})


def run_jobs(rig, jobs):
    """(results, base snapshots after each job) of `jobs`: (script args, extra p args, later IP-Adapter weight)."""
    from modules import processing, scripts
    results, after = [], []
    base = rig.model.forge_objects_after_applying_lora.unet
    for args, kwargs, ip_weight in jobs:
        p = rig.p(args, **kwargs)
        if ip_weight is not None:
            p.scripts = scripts.ScriptRunner([(rig.script, 7), (later_ip_unit(ip_weight), 0)])
        with __import__('contextlib').closing(p):
            results.append(processing.process_images(p))
        after.append(snapshot(base))
    return results, after


def sketch():
    import numpy as np
    from PIL import Image
    return Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))


@pytest.mark.parametrize('with_patch', [False, True], ids=['bare base', 'base holding a patch'])
def test_neo_jobs_in_a_row_are_each_as_when_run_alone(with_patch):
    """Two Omost jobs with different canvases (txt2img, then the img2img tab's, with a second IP-Adapter unit that
    extends the patches after Omost), then a plain job: each gives the image it gives alone on a fresh model, and
    the base UnetPatcher is as it was, down to the patch objects' lists."""
    jobs = [(omost(SMALL), {}, 0.25),
            (omost(DRAGON, strength=0.6), {'init_images': [sketch()], 'denoising_strength': 0.7}, 0.75),
            ([False, '', '', '[]', None, None, None], {}, None)]
    rig = neo_rig(with_patch)
    before = snapshot(rig.model.forge_objects_after_applying_lora.unet)
    in_a_row, after = run_jobs(rig, jobs)
    assert after == [before] * 3
    alone = [run_jobs(neo_rig(with_patch), [job])[0][0] for job in jobs]
    for n, (a, b) in enumerate(zip(in_a_row, alone)):
        assert images_equal(a, b), f'job {n} differs from the same job alone'
    assert not images_equal(in_a_row[0], in_a_row[2]) and 'Omost canvas' in in_a_row[1].infotexts[0]
    bare = neo_rig(with_patch).generate(bare=True)[1]
    assert images_equal(in_a_row[2], bare)  # the plain job is the WebUI's without the extension


def test_neo_patch_objects_of_the_base_are_never_extended():
    """The unit-level view of the above: a later IP-Adapter unit extends our patch at a key whose previous patch
    came from the base patcher (the same object in Neo): the base's object keeps its one condition, ours has two."""
    from lib_omost.attention import RegionalAttention
    from omost_webui.hosts.patcher import patch_unet
    from backend.patcher.unet import NeoUnetPatcher
    base = NeoUnetPatcher(None)
    theirs = SharedPatch(0.5)
    base.set_model_attn2_replace(theirs, 'input', 1, 0)
    regional = RegionalAttention([(0, 0, 1, 1)], torch.zeros(77, dtype=torch.long), None)
    ours = patch_unet(base, regional)
    work = ours.clone()
    work.model_options['transformer_options']['patches_replace']['attn2'][('input', 1, 0)].set_new_condition(weight=1.0)
    assert theirs.weights == [0.5]
    assert work.model_options['transformer_options']['patches_replace']['attn2'][('input', 1, 0)].previous.weights \
        == [0.5, 1.0]
    assert base.model_options['transformer_options']['patches_replace']['attn2'] == {('input', 1, 0): theirs}


def test_regions_that_cannot_be_put_on_the_model_are_said_to_be_missing():
    """A fork whose UnetPatcher is not what its family class expects (here clone() fails): the host swallows the
    hook's exception and samples on, so the console, the host's error report and the infotext say it."""
    from modules import errors

    class BrokenPatcher(type(ForgeModel(nn.Identity()).forge_objects.unet)):
        def clone(self):
            raise RuntimeError('this fork clones differently')

    rig = Rig(ForgeModel(ForgeTinyUNet()))
    for objects in (rig.model.forge_objects, rig.model.forge_objects_original,
                    rig.model.forge_objects_after_applying_lora):
        objects.unet = BrokenPatcher(rig.model.kmodel)
    errors.reported.clear()
    _, res = rig.generate(omost())
    assert "the regions could not be put on this WebUI's model (RuntimeError: this fork clones differently)" \
        in res.infotexts[0]
    assert any('process_before_every_sampling' in r for r in map(str, errors.reported))
    assert images_equal(res, rig.generate(omost(regions=False))[1])  # what it says: the bags, no regions
