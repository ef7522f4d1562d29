"""The real CLIP BPE tokenizer, offline, for counting tokens outside the WebUI (CLI, tests).

`open_clip/tokenizer.py` (shipped with `open-clip-torch`, with its BPE vocabulary) is loaded by file path:
`import open_clip` would run the package `__init__`, which needs torchvision. `find_spec` only locates the
package without executing it. The ids are the standard CLIP ids that SD1.x and SDXL (both encoders) use.
Inside the WebUI, `omost_webui.host_tokenizer` counts with the host's own tokenizer instead.
"""

from __future__ import annotations

import functools
import importlib.util
import os

BOS_ID = 49406
EOS_ID = 49407


@functools.lru_cache(maxsize=1)
def _simple_tokenizer():
    spec = importlib.util.find_spec('open_clip')
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('counting CLIP tokens needs the open-clip-torch package (pip install --no-deps '
                           'open-clip-torch ftfy regex)')
    path = os.path.join(list(spec.submodule_search_locations)[0], 'tokenizer.py')
    module_spec = importlib.util.spec_from_file_location('_omost_open_clip_tokenizer', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def encode(text: str) -> list:
    """CLIP ids of `text`, without BOS/EOS (CLIP lower-cases and collapses whitespace)."""
    return list(_simple_tokenizer().encode(text))


@functools.lru_cache(maxsize=8192)
def count(text: str) -> int:
    """Number of CLIP tokens of `text`, without BOS/EOS."""
    return len(encode(text))


def decode(ids) -> str:
    """Text of CLIP ids (BOS/EOS show as <|startoftext|> / <|endoftext|>)."""
    return _simple_tokenizer().decode(list(ids)).strip()
