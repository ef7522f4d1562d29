"""Vision towers (lib_omost.vision): safetensors only, the hosts' file layouts, pairing by projection width, the
download (against a loopback server only), the image tokens; and the `guide` CLI."""

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

from guidance_helpers import guide_image, save_tower, tiny_clip_folder, tiny_tower
import webui_helpers  # noqa: F401 - puts the fake `modules` package on the path
from lib_omost import vision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_single_file_folder_and_whole_clip_model_load_the_same_tower(tmp_path):
    model = tiny_tower(768, seed=4)
    image = guide_image(1)
    expected = vision.image_tokens(model, image)
    single = save_tower(model, str(tmp_path / 'clip_vision' / 'CLIP-ViT-L-14.safetensors'))
    folder = save_tower(model, str(tmp_path / 'hf'), folder_layout=True)
    for path in (single, folder):
        config = vision.tower_config(path)
        assert config['projection_dim'] == 768 and config['hidden_act'] == 'quick_gelu'
        assert config['num_hidden_layers'] == 2 and config['image_size'] == 32 and config['patch_size'] == 8
        assert torch.equal(vision.image_tokens(vision.load_tower(path), image), expected)
    assert expected.shape == (1 + (32 // 8) ** 2, 768)
    clip = tiny_clip_folder(str(tmp_path / 'clip'))  # text + vision keys (openai/clip-vit-large-patch14 layout)
    tower = vision.load_tower(clip)
    assert tower.config.projection_dim == 768 and vision.image_tokens(tower, image).shape == (17, 768)


def test_image_tokens_are_flexdiffuses_projected_hidden_states():
    """encode/clip.py CLIPEncoder.image: embeddings -> pre_layrnorm -> encoder -> post_layernorm on every token
    -> visual_projection."""
    model = tiny_tower(1280, seed=5)
    image = guide_image(2, size=(90, 50))
    pixels = vision.preprocess(image, 32)
    assert pixels.shape == (1, 3, 32, 32)
    vm = model.vision_model
    with torch.no_grad():
        h = vm.pre_layrnorm(vm.embeddings(pixels))
        h = vm.encoder(inputs_embeds=h, return_dict=True)[0]
        expected = model.visual_projection(vm.post_layernorm(h))[0]
    torch.testing.assert_close(vision.image_tokens(model, image), expected, rtol=0, atol=1e-5)


def test_preprocess_follows_flexdiffuse():
    """512 on the long side (short side floored to 64s), [-1, 1], centre crop, CLIP normalisation."""
    from PIL import Image
    image = Image.new('RGB', (300, 200), (255, 0, 0))
    x = vision.preprocess(image, 16)
    mean, std = torch.tensor(vision.CLIP_MEAN), torch.tensor(vision.CLIP_STD)
    expected = (torch.tensor([1.0, -1.0, -1.0]) - mean) / std  # red at 2x-1
    torch.testing.assert_close(x[0, :, 8, 8], expected, rtol=0, atol=1e-4)


def test_only_safetensors_and_only_vision_towers(tmp_path):
    bad = tmp_path / 'clip_vitl.pth'
    torch.save(tiny_tower(768).state_dict(), bad)
    with pytest.raises(vision.VisionError, match='pickled'):
        vision.load_tower(str(bad))
    from safetensors.torch import save_file
    save_file({'weight': torch.zeros(2)}, str(tmp_path / 'other.safetensors'))
    assert vision.tower_config(str(tmp_path / 'other.safetensors')) is None
    assert vision.find_tower(768, [str(tmp_path)]) is None


def test_find_tower_pairs_by_projection_width(tmp_path):
    for name, width in (('a-vit-h.safetensors', 1024), ('b-bigg.safetensors', 1280), ('c-vitl.safetensors', 768)):
        save_tower(tiny_tower(width), str(tmp_path / name))
    assert vision.find_tower(768, [str(tmp_path)]).endswith('c-vitl.safetensors')
    assert vision.find_tower(1280, ['', str(tmp_path / 'missing'), str(tmp_path)]).endswith('b-bigg.safetensors')
    assert vision.tower_name(1280) == 'ViT-bigG/14'


@pytest.fixture
def loopback(tmp_path):
    """A loopback HTTP server for the download test (the only server the tests reach)."""
    root = tmp_path / 'served'
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f'http://127.0.0.1:{server.server_port}'
    server.shutdown()


def test_download_into_models_omost_with_progress(loopback, tmp_path):
    from modules import paths, shared
    from omost_webui import guidance_step
    root, url = loopback
    save_tower(tiny_tower(1280, seed=7), str(root / 'model.safetensors'))
    (root / 'notatower.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}x')
    shared.opts.data.update(omost_vision_path='', omost_vision_url_1280=f'{url}/notatower.safetensors')
    lines = []
    old_models = paths.models_path
    paths.models_path = str(tmp_path / 'models')
    try:
        assert guidance_step.resolve_towers([1280], say=lines.append) == {}
        assert any('not a CLIP vision tower' in line for line in lines)
        shared.opts.data['omost_vision_url_1280'] = f'{url}/model.safetensors'
        found = guidance_step.resolve_towers([1280], say=lines.append)
        dest = str(tmp_path / 'models' / 'omost' / 'clip_vision' / 'clip-vit-bigG-14.safetensors')
        assert found == {1280: dest} and os.path.isfile(dest)
        assert any(line.startswith('Downloading clip-vit-bigG-14.safetensors') for line in lines)
        lines.clear()
        assert guidance_step.resolve_towers([1280], say=lines.append) == {1280: dest} and lines == []  # found now
    finally:
        paths.models_path = old_models
        for key in ('omost_vision_path', 'omost_vision_url_1280'):
            shared.opts.data.pop(key, None)


def test_cli_prints_the_per_token_weights(tmp_path):
    clip = tiny_clip_folder(str(tmp_path / 'clip'))
    image = tmp_path / 'guide.png'
    guide_image(3).save(image)

    def run(*extra):
        return subprocess.run([sys.executable, '-m', 'lib_omost', 'guide', '--image', str(image), '--prompt',
                               'a cat in a garden, oil painting', '--clip', clip, *extra],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)

    table = run()
    assert table.returncode == 0, table.stderr
    assert 'similarity' in table.stdout and ' cat ' in table.stdout
    out = run('--json', '--method', 'linear', '--linear-end', '1.0', '--max-guidance', '1.0')
    data = json.loads(out.stdout)
    assert len(data['tokens']) == 77 and data['params']['method'] == 'linear'
    weights = [t['weight'] for t in data['tokens']]
    assert weights[-1] == pytest.approx(1.0) and weights[0] == 0.0 and weights[38] == pytest.approx(0.5)
    zero = json.loads(run('--json', '--max-guidance', '0').stdout)
    assert all(t['moves'] == 0 for t in zero['tokens'])
    bad = run('--clip', str(tmp_path / 'nothing'))
    assert bad.returncode != 0 and bad.stderr.startswith('error:') and 'Traceback' not in bad.stderr
