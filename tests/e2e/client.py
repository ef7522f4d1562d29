"""The end-to-end suite's client: the few WebUI HTTP API calls the tests make, stdlib plus Pillow (pixel hashes:
the PNGs embed the infotext, so tests compare decoded pixels). Configuration comes from the environment (see
conftest.py)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.request

URL = os.environ.get('OMOST_E2E_URL', '').rstrip('/')
HOST = os.environ.get('OMOST_E2E_HOST', '')
CKPT = os.environ.get('OMOST_E2E_CKPT', 'random-sd15.safetensors')
SIZE = int(os.environ.get('OMOST_E2E_SIZE', '64'))
LOG = os.environ.get('OMOST_E2E_LOG', '')

class HTTPFailure(AssertionError):
    pass


@dataclasses.dataclass
class Result:
    """One /sdapi/v1/txt2img or img2img answer."""
    status: int
    seconds: float
    body: object                          # the decoded JSON answer (or the raw text of an error page)
    images: list = dataclasses.field(default_factory=list)   # PNG bytes
    pixels: list = dataclasses.field(default_factory=list)   # sha1 of the decoded RGB pixels, per image

    @property
    def info(self) -> dict:
        """The answer's `info` (a JSON string in both hosts), decoded."""
        try:
            return json.loads(self.body['info'])
        except (KeyError, TypeError, ValueError):
            return {}

    @property
    def infotexts(self) -> list:
        return self.info.get('infotexts') or []

    @property
    def detail(self) -> str:
        """An error answer's message (FastAPI's `detail`, or the hosts' `{error, detail, ...}`)."""
        body = self.body
        if isinstance(body, dict):
            return str(body.get('detail') or body.get('errors') or body.get('error') or body)
        return str(body)

    def ok(self) -> 'Result':
        if self.status != 200:
            raise HTTPFailure(f'HTTP {self.status}: {self.detail[:2000]}')
        return self


def pixel_hash(png: bytes) -> str:
    from PIL import Image
    with Image.open(io.BytesIO(png)) as im:
        return hashlib.sha1(im.convert('RGB').tobytes()).hexdigest()


def b64_png(image) -> str:
    """A PIL image as the base64 PNG the API takes (init_images, ControlNet inputs)."""
    buf = io.BytesIO()
    image.save(buf, format='PNG')
    return base64.b64encode(buf.getvalue()).decode()


class WebUI:
    """The handful of API calls the tests need. Loopback only: never through a proxy."""

    def __init__(self, url: str, timeout: float = 3600):
        self.url = url.rstrip('/')
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, payload=None, timeout=None):
        """(status, decoded JSON or text)."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={'Content-Type': 'application/json'})
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode('utf-8', errors='replace')
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def get(self, path: str):
        return self.request('GET', path)

    def post(self, path: str, payload=None, timeout=None):
        return self.request('POST', path, {} if payload is None else payload, timeout)

    # generation

    def generate(self, endpoint: str, payload: dict) -> Result:
        t = time.monotonic()
        status, body = self.post(f'/sdapi/v1/{endpoint}', payload)
        result = Result(status, round(time.monotonic() - t, 2), body)
        if status == 200 and isinstance(body, dict):
            for im in body.get('images') or []:
                raw = base64.b64decode(im.split(',', 1)[-1])
                result.images.append(raw)
                result.pixels.append(pixel_hash(raw))
        _log(endpoint=endpoint, status=status, seconds=result.seconds, pixels=[p[:12] for p in result.pixels],
             omost='alwayson_scripts' in payload and 'Omost' in payload['alwayson_scripts'])
        return result

    def txt2img(self, payload: dict) -> Result:
        return self.generate('txt2img', payload)

    def img2img(self, payload: dict) -> Result:
        return self.generate('img2img', payload)

    def interrupt(self):
        return self.post('/sdapi/v1/interrupt')

    def txt2img_takes(self, field: str) -> bool:
        """Whether the host's txt2img API model has `field` (its OpenAPI schema): what the host offers, asked of the
        host rather than told by its name."""
        if not hasattr(self, '_txt2img_fields'):
            status, schema = self.get('/openapi.json')
            assert status == 200, (status, str(schema)[:300])
            models = schema.get('components', {}).get('schemas', {})
            self._txt2img_fields = set()
            for name, model in models.items():
                if 'txt2img' in name.lower():
                    self._txt2img_fields |= set(model.get('properties', {}))
        return field in self._txt2img_fields

    def hires_extras(self) -> dict:
        """The upscaler and what else a hires job needs besides enable_hr. The upscaler: 'Latent' where the host has
        latent upscaling, else 'None' (a plain resize: Neo has no latent modes, shared.latent_upscale_modes = {}, and
        downloads its ESRGAN). Forge and Neo refuse a hires job through the API without `hr_additional_modules`
        (processing.py: sample), with or without Omost; the other hosts lack the field."""
        status, modes = self.get('/sdapi/v1/latent-upscale-modes')
        latent = status == 200 and any(m.get('name') == 'Latent' for m in modes or [])
        extras = {'hr_upscaler': 'Latent' if latent else 'None'}
        if self.txt2img_takes('hr_additional_modules'):
            extras['hr_additional_modules'] = ['Use same choices']
        return extras

    def controlnet_modules(self) -> list:
        """/controlnet/module_list of the host's ControlNet (Forge's built-in one or sd-webui-controlnet)."""
        status, body = self.get('/controlnet/module_list')
        return body.get('module_list', []) if status == 200 and isinstance(body, dict) else []

    # settings and models

    def options(self) -> dict:
        status, body = self.get('/sdapi/v1/options')
        assert status == 200, (status, body)
        return body

    def set_options(self, values: dict):
        """(status, body) of POST /sdapi/v1/options: the test decides what a refusal means."""
        return self.post('/sdapi/v1/options', values)

    def png_info(self, png: bytes) -> dict:
        status, body = self.post('/sdapi/v1/png-info', {'image': base64.b64encode(png).decode()})
        assert status == 200, (status, body)
        return body

    def model_title(self, filename: str) -> str:
        """The title the API takes in `sd_model_checkpoint` for a checkpoint file (e.g. 'random-sdxl')."""
        status, models = self.get('/sdapi/v1/sd-models')
        assert status == 200, (status, models)
        stem = os.path.splitext(os.path.basename(filename))[0]
        for m in models:
            if m.get('filename', '').endswith(os.path.basename(filename)) or m.get('model_name') == stem:
                return m['title']
        raise AssertionError(f'no checkpoint {filename!r} in {[m.get("title") for m in models]}')

    def switch_checkpoint(self, filename: str) -> str:
        """Load another checkpoint as the WebUI's current one (both hosts load it when the option is set);
        returns its title."""
        title = self.model_title(filename)
        if self.options().get('sd_model_checkpoint') != title:
            status, body = self.set_options({'sd_model_checkpoint': title})
            assert status == 200, (status, body)
        return title


def _log(**record):
    if LOG:
        with open(LOG, 'a', encoding='utf-8') as f:
            f.write(json.dumps({'host': HOST, 'ckpt': CKPT, 'test': os.environ.get('PYTEST_CURRENT_TEST', ''),
                                **record}) + '\n')


def omost_args(canvas_code, options=None, enabled=True) -> dict:
    """The `alwayson_scripts` entry that runs Omost: args [enabled, canvas, options]."""
    args = [enabled, canvas_code]
    if options is not None:
        args.append(options if isinstance(options, str) else json.dumps(options))
    return {'Omost': {'args': args}}
