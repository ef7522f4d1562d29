"""The Omost models (from Omost's README) and their download into a models folder (`models/omost/` in the WebUI).

Downloads use huggingface_hub's `snapshot_download` into `<models_dir>/<repo name>`; an interrupted download resumes
(the hub keeps partial files under `<folder>/.cache/huggingface/`). Nothing here runs unless the user picks a
catalogue model that is not on disk yet.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading

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
