"""The Omost models (from Omost's README), the known GGUF conversions of them, and their download into a models
folder (`models/omost/` in the WebUI).

Downloads use huggingface_hub's `snapshot_download` into `<models_dir>/<repo name>`; an interrupted download resumes
(the hub keeps partial files under `<folder>/.cache/huggingface/`). A GGUF is one file, fetched over
HTTPS with a resumable, size- and hash-checked download (`download_file`). Nothing here runs unless the user picks
a catalogue model that is not on disk yet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request

from lib_omost.atomic import replace_durably
from lib_omost.llm.conversation import ChatError


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    repo_id: str
    family: str           # 'llama3' or 'phi3': decides the transformers version needed
    quant: str | None     # None, '4bit' or '8bit' (bitsandbytes, baked into the checkpoint's config)
    size_gb: float        # download size, approximate
    note: str

    @property
    def folder(self) -> str:
        return self.repo_id.split('/')[-1]


OMOST_MODELS = {m.repo_id: m for m in (
    ModelInfo('lllyasviel/omost-llama-3-8b-4bits', 'llama3', '4bit', 5.7,
              "Omost's default and best; fits 8 GB VRAM; needs bitsandbytes and an NVIDIA GPU"),
    ModelInfo('lllyasviel/omost-llama-3-8b', 'llama3', None, 16.1, 'unquantised; 16 GB of VRAM'),
    ModelInfo('lllyasviel/omost-dolphin-2.9-llama3-8b-4bits', 'llama3', '4bit', 5.7,
              'unfiltered (NSFW-capable: apply your own safety alignment); needs bitsandbytes'),
    ModelInfo('lllyasviel/omost-dolphin-2.9-llama3-8b', 'llama3', None, 16.1, 'unfiltered, unquantised'),
    ModelInfo('lllyasviel/omost-phi-3-mini-128k-8bits', 'phi3', '8bit', 4.1,
              'smallest; weaker than llama-3; needs bitsandbytes'),
    ModelInfo('lllyasviel/omost-phi-3-mini-128k', 'phi3', None, 7.7, 'unquantised phi-3'),
)}
DEFAULT_MODEL = 'lllyasviel/omost-llama-3-8b-4bits'

WEIGHT_PATTERNS = ['*.json', '*.safetensors', '*.model', '*.txt', '*.jinja']  # no code: remote code never runs


def catalogue_entry(name: str) -> ModelInfo | None:
    """'lllyasviel/omost-llama-3-8b-4bits' or just 'omost-llama-3-8b-4bits'."""
    name = (name or '').strip().rstrip('/')
    if name in OMOST_MODELS:
        return OMOST_MODELS[name]
    for info in OMOST_MODELS.values():
        if info.folder == name:
            return info
    return None


def is_complete(folder: str) -> bool:
    """A model folder with its config, its tokenizer and every weight file the index names."""
    if not os.path.isfile(os.path.join(folder, 'config.json')):
        return False
    if not any(os.path.isfile(os.path.join(folder, f)) for f in ('tokenizer.json', 'tokenizer.model')):
        return False
    for index_name in ('model.safetensors.index.json', 'pytorch_model.bin.index.json'):
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            try:
                with open(index, encoding='utf-8') as f:
                    shards = set(json.load(f)['weight_map'].values())
            except (OSError, ValueError, KeyError, TypeError):
                return False
            return all(os.path.isfile(os.path.join(folder, s)) for s in shards)
    return any(os.path.isfile(os.path.join(folder, f)) for f in ('model.safetensors', 'pytorch_model.bin'))


def folder_bytes(folder: str) -> int:
    """Bytes on disk under `folder`, partial downloads (the hub's .incomplete files) included."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


class _BytePoller:
    """Reports 'x of y GB' every few seconds while snapshot_download runs (it reports whole files only)."""

    def __init__(self, folder: str, info: ModelInfo, progress, interval: float = 2.0):
        self.done = threading.Event()
        self.folder, self.info, self.progress, self.interval = folder, info, progress, interval
        threading.Thread(target=self._run, name='omost-llm-download-progress', daemon=True).start()

    def _run(self):
        while not self.done.wait(self.interval):
            got = folder_bytes(self.folder) / 1e9
            self.progress(f'Downloading {self.info.repo_id}: {got:.1f} of about {self.info.size_gb:g} GB')

    def close(self):
        self.done.set()


def _progress_tqdm(progress):
    """A tqdm class for snapshot_download that reports 'k of n files' to `progress(line)`."""
    from tqdm.auto import tqdm

    class ProgressTqdm(tqdm):
        def update(self, n=1):
            result = super().update(n)
            if progress is not None:
                progress(f'Downloading: {int(self.n)} of {int(self.total or 0)} files done')
            return result

    return ProgressTqdm


def download_model(name: str, models_dir: str, progress=None) -> str:
    """Download a catalogue model into `models_dir` (resuming a partial download); returns its folder."""
    info = catalogue_entry(name)
    if info is None:
        raise ChatError(f'{name!r} is neither a model folder nor one of the Omost models: '
                        + ', '.join(OMOST_MODELS))
    folder = os.path.join(models_dir, info.folder)
    if is_complete(folder):
        return folder
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ChatError('huggingface_hub is not installed, so models cannot be downloaded; '
                        f'put {info.repo_id} into {folder} by hand') from None
    if progress is not None:
        progress(f'Downloading {info.repo_id} (about {info.size_gb:g} GB) into {folder}')
    poller = _BytePoller(folder, info, progress) if progress is not None else None
    try:
        os.makedirs(folder, exist_ok=True)
        snapshot_download(info.repo_id, local_dir=folder, allow_patterns=WEIGHT_PATTERNS,
                          tqdm_class=_progress_tqdm(progress))
    except Exception as e:  # noqa: BLE001 - network, disk and hub errors all end the same way for the user
        reason = ' '.join(str(e).split()).split('. ')[0][:200].rstrip('.') or type(e).__name__
        raise ChatError(f'Could not download {info.repo_id} into {folder}: {reason}. Run it again to resume, '
                        f'or download it by hand (huggingface-cli download {info.repo_id} --local-dir {folder}).') \
            from None
    finally:
        if poller is not None:
            poller.close()
    if not is_complete(folder):
        raise ChatError(f'The download of {info.repo_id} into {folder} is incomplete; run it again to resume.')
    return folder


# ---------------------------------------------------------------------------------------------------------------
# GGUF conversions of Omost's models (community uploads on the Hugging Face hub), for the llama.cpp backend


@dataclasses.dataclass(frozen=True)
class GGUFInfo:
    name: str             # what the user picks
    repo_id: str
    filename: str
    quant: str
    size_gb: float        # as the hub lists it
    sha256: str | None    # the hub's LFS hash where we have it; otherwise the one the hub publishes is checked
    note: str

    @property
    def url(self) -> str:
        # HF_ENDPOINT: a hub mirror, as huggingface_hub itself honours it
        endpoint = os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')
        return f'{endpoint}/{self.repo_id}/resolve/main/{self.filename}'


GGUF_MODELS = {m.name: m for m in (
    GGUFInfo('omost-llama-3-8b-Q8_0', 'zhaijunxiao/omost-llama-3-8b-Q8_0-GGUF', 'omost-llama-3-8b-q8_0.gguf', 'Q8_0',
             8.54, '5cdfaf26736bcc16cf494cc6a1bbb66a3cd316d961ad585c3ee40d5d9b31ff6c',
             'near-lossless; ~9 GB of VRAM (or RAM on CPU)'),
    GGUFInfo('omost-llama-3-8b-Q5_K_M', 'itayl/omost-llama-3-8b-Q5_K_M-GGUF', 'omost-llama-3-8b-q5_k_m.gguf', 'Q5_K_M',
             5.73, None, '~6.5 GB'),
    GGUFInfo('omost-llama-3-8b-Q4_K_M', 'gbueno86/Meta-LLama-3-lllyasviel_omost-llama-3-8b-GGUF',
             'lllyasviel_omost-llama-3-8b.Q4_K_M.gguf', 'Q4_K_M', 4.92, None, 'smallest; ~6 GB'),
)}
DEFAULT_GGUF = 'omost-llama-3-8b-Q8_0'


class _NoteRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a download's redirects (the hub sends files on to its CDN), noting the size and hash the hub
    publishes on the way (`X-Linked-Size`, `X-Linked-Etag`: the LFS sha256)."""

    def __init__(self):
        self.published = {}

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        for name in ('X-Linked-Size', 'X-Linked-Etag'):
            if headers.get(name):
                self.published[name.lower()] = headers[name].strip().strip('"')
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _total_size(response, have: int) -> int | None:
    if response.status == 206:  # Content-Range: bytes 100-999/1000
        total = (response.headers.get('Content-Range') or '').rpartition('/')[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get('Content-Length')
    return int(length) if length and length.isdigit() else None


def _blocks(response, size: int = 1 << 20):
    """The body in blocks; a connection cut mid-block still hands over what arrived (so a resume loses nothing)."""
    while True:
        try:
            block = response.read(size)
        except http.client.IncompleteRead as e:
            if e.partial:
                yield e.partial
            raise
        if not block:
            return
        yield block


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: str, progress=None, sha256: str | None = None, label: str | None = None,
                  timeout: float = 60.0) -> str:
    """Download `url` to `dest` through `dest.part`, resuming a partial file (HTTP Range). The size and the sha256
    (ours, else the one the source publishes) are checked before the file gets its name; a corrupt part is
    deleted. Every failure is a ChatError saying whether running it again resumes."""
    label = label or os.path.basename(dest)
    part = dest + '.part'
    os.makedirs(os.path.dirname(dest) or '.', exist_ok=True)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {'User-Agent': 'sd-webui-omost', 'Accept-Encoding': 'identity'}
    if have:
        headers['Range'] = f'bytes={have}-'
    redirects = _NoteRedirects()
    again = 'Run it again to resume.'
    try:
        response = urllib.request.build_opener(redirects).open(urllib.request.Request(url, headers=headers),
                                                               timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part is whole, check it
            response = None
        else:
            raise ChatError(f'Could not download {label} from {url}: HTTP {e.code} {e.reason}.') from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, 'reason', None) or e
        raise ChatError(f'Could not download {label} from {url}: {reason}. {again}') from None
    published = redirects.published
    expected = int(published['x-linked-size']) if published.get('x-linked-size', '').isdigit() else None
    if response is not None:
        with response:
            if response.status != 206:
                have = 0  # the server ignored the range: start over
            total = _total_size(response, have)
            expected = expected or total
            if progress is not None:
                progress(f'Downloading {label}' + (f' ({expected / 1e9:.2f} GB)' if expected else '')
                         + f' into {os.path.dirname(dest) or "."}' + (' (resuming)' if have else ''))
            got, shown = have, time.monotonic()
            try:
                with open(part, 'ab' if have else 'wb') as f:
                    for block in _blocks(response):
                        f.write(block)
                        got += len(block)
                        if progress is not None and time.monotonic() - shown >= 1.0:
                            shown = time.monotonic()
                            progress(f'Downloading {label}: {got / 1e9:.2f}'
                                     + (f' of {expected / 1e9:.2f}' if expected else '') + ' GB')
            except (OSError, http.client.HTTPException) as e:
                raise ChatError(f'The download of {label} stopped at {got / 1e9:.2f} GB '
                                f'({getattr(e, "strerror", None) or type(e).__name__}). {again}') from None
    got = os.path.getsize(part)
    if expected is not None and got < expected:
        raise ChatError(f'The download of {label} is incomplete ({got} of {expected} bytes). {again}')
    corrupt = 'larger than the source says' if expected is not None and got > expected else None
    want = (sha256 or published.get('x-linked-etag') or '').lower()
    if corrupt is None and len(want) == 64:  # an ETag that is not a sha256 (small, non-LFS files) is not checked
        if progress is not None:
            progress(f'Checking {label} (sha256)')
        if _sha256(part) != want:
            corrupt = 'its sha256 differs from the one the source publishes'
    if corrupt:
        os.remove(part)
        raise ChatError(f'The download of {label} is corrupt ({corrupt}); it was deleted. Run it again to '
                        'download it anew.')
    replace_durably(part, dest)
    return dest


def download_gguf(name: str, models_dir: str, progress=None) -> str:
    """The known GGUF `name` in `models_dir`, downloaded (resuming) if it is not there yet."""
    info = GGUF_MODELS[name]
    dest = os.path.join(models_dir, info.filename)
    if os.path.isfile(dest):
        return dest
    return download_file(info.url, dest, progress, info.sha256, label=f'{info.filename} ({info.repo_id})')
