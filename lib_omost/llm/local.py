"""In-process transformers backend, the way Omost's `chat_fn` runs it: the tokenizer's chat template,
`generate()` in a thread feeding a token streamer (`lib_omost.llm.inprocess`), a stopping criterion watching the
stop event, and `torch.manual_seed(seed)` before sampling (temperature 0 = greedy).

The conversation's key/value cache is kept with the backend between replies (`reuse_prompt`, see
`lib_omost.llm.inprocess`): a `DynamicCache` cropped to the prefix the next prompt shares with it, or the tuple
cache of transformers < 4.36, sliced. Greedy replies decode in our own loop (the same forward passes as
`generate()`'s greedy search, plus prompt-lookup drafts verified in one pass, `draft`); sampled replies go through
`generate()` with the cropped cache, so a seed samples as in Omost. `logits_hook` (benchmarks and tests only) gets a
1-D float32 torch tensor.

Versions are checked from the model's config files before anything is loaded: an old transformers would load
Llama-3 and silently produce garbage (4.30.2 ignores `rope_theta`), and bitsandbytes is only touched (by
transformers) for the quantised checkpoints, after checking that it can work here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import json
import os
import re

from lib_omost.llm.conversation import CONTEXT_TOKENS, ChatError, ChatParams
from lib_omost.llm.inprocess import IncrementalDecoder, InProcessBackend, common_prefix, decode_greedy, new_stats
from lib_omost.llm.models import catalogue_entry, download_model, is_complete

ALTERNATIVES = ('Alternatives: run the model on an OpenAI-compatible server (llama.cpp `llama-server` or Ollama '
                'with a GGUF of it) and choose the Server backend, or use Forge (transformers 4.46).')
BNB_MIN = (0, 43, 1)  # loading pre-quantised 4-bit checkpoints


def package_version(name: str) -> tuple | None:
    try:
        text = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(x) for x in re.findall(r'\d+', text.split('+')[0])[:3])


def _fmt(version: tuple) -> str:
    return '.'.join(map(str, version))


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def needs(config: dict, family: str | None = None) -> list:
    """[(minimum transformers version, why)] for a model config (or a catalogue family before download)."""
    model_type = config.get('model_type') or {'llama3': 'llama', 'phi3': 'phi3'}.get(family or '')
    out = [((4, 34, 0), 'chat templates (apply_chat_template) arrived in transformers 4.34')]
    if model_type == 'llama' and (family == 'llama3' or float(config.get('rope_theta', 10000.0)) != 10000.0):
        out.append(((4, 40, 0), 'Llama-3 models (rope_theta 500000, their tokenizer) need transformers 4.40; '
                                'older versions ignore rope_theta and write garbage'))
    if model_type == 'phi3':
        out.append(((4, 40, 0), 'Phi-3 needs transformers 4.40 (older versions have no Phi3)'))
    if config.get('quantization_config'):
        out.append(((4, 37, 0), 'pre-quantised bitsandbytes checkpoints load from transformers 4.37'))
    return out


def check_versions(name: str, config: dict, family: str | None = None, transformers_version=None):
    have = transformers_version or package_version('transformers')
    if have is None:
        raise ChatError(f'{name} cannot run in-process: transformers is not installed. {ALTERNATIVES}')
    missing = [(minimum, why) for minimum, why in needs(config, family) if have < minimum]
    if missing:
        newest = max(minimum for minimum, _ in missing)
        raise ChatError(f'{name} cannot run in-process with transformers {_fmt(have)} (it needs {_fmt(newest)} or '
                        f'newer): ' + '; '.join(why for _, why in missing) + f'. {ALTERNATIVES}')


def check_bitsandbytes(name: str, quant: str, device: str):
    """Quantised checkpoints need bitsandbytes, accelerate and (with transformers 4.x) a CUDA GPU."""
    plain = 'choose the unquantised model, or a server backend (llama.cpp / Ollama with a GGUF)'
    if importlib.util.find_spec('bitsandbytes') is None:
        raise ChatError(f'{name} is a {quant} bitsandbytes model and bitsandbytes is not installed: install it '
                        f'(pip install "bitsandbytes>={_fmt(BNB_MIN)}", NVIDIA GPU needed) or {plain}.')
    bnb = package_version('bitsandbytes')
    if bnb is not None and bnb < BNB_MIN:
        raise ChatError(f'{name} needs bitsandbytes {_fmt(BNB_MIN)} or newer (installed: {_fmt(bnb)}); '
                        f'upgrade it or {plain}.')
    if importlib.util.find_spec('accelerate') is None:
        raise ChatError(f'{name} is a {quant} bitsandbytes model, which needs accelerate: pip install accelerate, '
                        f'or {plain}.')
    if not device.startswith('cuda') and package_version('transformers') < (5, 0, 0):
        # transformers 4.46 + bitsandbytes fail on CPU (CUDA required / 'frozenset' object has no attribute
        # 'discard'), see the project's test-substrate notes.
        raise ChatError(f'{name} is a {quant} bitsandbytes model; with this transformers it needs an NVIDIA GPU '
                        f'(device here: {device}). On CPU {plain}.')


def _pick_device(device: str) -> str:
    import torch
    if device and device != 'auto':
        return device
    if torch.cuda.is_available():
        return 'cuda'
    mps = getattr(torch.backends, 'mps', None)
    return 'mps' if mps is not None and mps.is_available() else 'cpu'


class LocalBackend(InProcessBackend):
    kind = 'local'

    def __init__(self, model_path_or_name: str, models_dir: str | None = None, keep_loaded: bool = True,
                 device: str = 'auto', context_tokens: int = CONTEXT_TOKENS, reuse_prompt: bool = True,
                 draft: str = 'auto'):
        super().__init__(model_path_or_name, models_dir, keep_loaded, context_tokens, reuse_prompt, draft)
        if not self.name:
            raise ChatError('No local model chosen: pick an Omost model or enter a model folder.')
        self.device = device or 'auto'
        self.model = None
        self.tokenizer = None
        self.folder = None
        self._kv = None      # the key/value cache of the last reply (DynamicCache, or tuples before 4.36)
        self._kv_ids = []    # the token ids it holds, in order

    # -- where the model is ----------------------------------------------------------------------------------

    def _info(self):
        return None if os.path.isdir(self.name) else catalogue_entry(self.name)

    def identity(self) -> dict:
        info = self._info()
        return {'kind': self.kind, 'model': info.repo_id if info else os.path.abspath(self.name)}

    def locate(self, progress=None) -> str:
        """The model folder; downloads a catalogue model that is not on disk (resuming)."""
        if os.path.isdir(self.name):
            if not os.path.isfile(os.path.join(self.name, 'config.json')):
                raise ChatError(f'{self.name} is not a transformers model folder (no config.json).')
            return self.name
        info = catalogue_entry(self.name)
        if info is None:
            raise ChatError(f'Model {self.name!r} not found: not a folder, and not one of the Omost models.')
        folder = os.path.join(self.models_dir, info.folder)
        return folder if is_complete(folder) else download_model(info.repo_id, self.models_dir, progress)

    def check(self, folder: str | None = None, device: str | None = None):
        """Refuse, with the reason and the alternatives, before loading anything that cannot work here."""
        info = self._info()
        config = _read_json(os.path.join(folder, 'config.json')) if folder else {}
        label = info.repo_id if info else self.name
        check_versions(label, config, info.family if info else None)
        quant = config.get('quantization_config') or ({'quant_method': 'bitsandbytes'} if info and info.quant else None)
        if quant:
            if quant.get('quant_method', 'bitsandbytes') != 'bitsandbytes':
                raise ChatError(f"{label} is quantised with {quant.get('quant_method')}, which this extension does "
                                'not load in-process; use a server backend.')
            bits = '8-bit' if quant.get('load_in_8bit') or (info and info.quant == '8bit') else '4-bit'
            check_bitsandbytes(label, bits, device or _pick_device(self.device))

    # -- loading -------------------------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def _load(self, progress=None):
        # Refuse before a 6 GB download (catalogue models) or any import of transformers (folders).
        self.check(self.name if os.path.isdir(self.name) else None)
        folder = self.locate(progress)
        device = _pick_device(self.device)
        self.check(folder, device)
        if progress is not None:
            progress(f'Loading {self.name} on {device}')
        self.tokenizer, self.model = self._from_pretrained(folder, device)
        self.folder = folder

    def _from_pretrained(self, folder: str, device: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        quantised = bool(_read_json(os.path.join(folder, 'config.json')).get('quantization_config'))
        if device.startswith('cuda'):
            # Omost computes in bfloat16 ("computation type, not load/memory type" for the bnb checkpoints)
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif device.startswith('mps'):
            dtype = torch.float16
        else:
            dtype = torch.float32  # CPUs are slow or unsupported in half precision
        # safetensors only: a pickled *.bin in a user's folder could run code when loaded (Omost ships safetensors)
        kwargs = {'torch_dtype': dtype, 'use_safetensors': True}
        direct = quantised or (device != 'cpu' and importlib.util.find_spec('accelerate') is not None)
        if direct:  # weights go straight to the device instead of through a full copy in RAM
            kwargs['device_map'] = {'': 0 if device == 'cuda' else device}
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            if not direct:
                model.to(device)
            model.eval()
        except Exception as e:  # noqa: BLE001 - one line for the user; the reason is in it
            reason = ' '.join(str(e).split())[:300] or type(e).__name__
            raise ChatError(f'Could not load {self.name}: {type(e).__name__}: {reason}') from None
        if not getattr(tokenizer, 'chat_template', None):
            raise ChatError(f'{self.name} has no chat template in its tokenizer files; Omost models ship one.')
        return tokenizer, model

    def _release(self) -> bool:
        had = self.model is not None
        self._kv, self._kv_ids = None, []
        self.model = None
        self.tokenizer = None
        return had

    def unload(self):
        if super().unload():
            try:
                import torch
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass

    # -- in-process backend hooks ----------------------------------------------------------------------------

    def _tokenize(self, messages: list) -> list:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return ids['input_ids'] if hasattr(ids, 'keys') else ids  # transformers 5 returns a BatchEncoding

    def encode(self, messages: list):
        """The chat template's prompt ids as a (1, n) tensor."""
        import torch
        return torch.tensor([self.prompt_ids(messages)], dtype=torch.long)

    def _handle(self):
        model, tokenizer = self.model, self.tokenizer
        return None if model is None or tokenizer is None else (model, tokenizer)

    def _decoder(self, handle):
        tokenizer = handle[1]
        return IncrementalDecoder(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

    def generate_kwargs(self, input_ids, params: ChatParams, streamer, criterion, processors=()) -> dict:
        from transformers.generation.logits_process import LogitsProcessorList
        from transformers.generation.stopping_criteria import StoppingCriteriaList
        import torch
        kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                      stopping_criteria=StoppingCriteriaList([criterion]), max_new_tokens=int(params.max_new_tokens))
        if processors:
            kwargs['logits_processor'] = LogitsProcessorList(processors)
        pad = self.tokenizer.pad_token_id
        kwargs['pad_token_id'] = pad if pad is not None else self.tokenizer.eos_token_id
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None)  # greedy, like Omost at temperature 0
        return kwargs

    def _end_ids(self, model) -> set:
        eos = getattr(getattr(model, 'generation_config', None), 'eos_token_id', None)  # what generate() stops at
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}

    def _job(self, handle, ids, params: ChatParams, streamer, criterion, stats):
        import torch
        model = handle[0]
        device = getattr(model, 'device', None)
        draft, hook = self.draft_mode(params), self.logits_hook
        keep_logits = _logits_arg(model)
        ends = self._end_ids(model)
        state = {}

        def forward(tokens, rows):
            """Evaluate `tokens` after the cache; the logits of the last `rows` positions, as float32."""
            past = cache_length(state['kv'])
            input_ids = torch.tensor([tokens], dtype=torch.long, device=device)
            mask = torch.ones((1, past + len(tokens)), dtype=torch.long, device=device)
            extra = {keep_logits: rows} if keep_logits else {}
            out = model(input_ids=input_ids, attention_mask=mask, past_key_values=state['kv'], use_cache=True,
                        **extra)
            state['kv'] = out.past_key_values
            return out.logits[0, -rows:].float()

        def step(tokens):
            state['ids'] += tokens
            return forward(tokens, len(tokens))

        def keep(n):
            state['kv'] = crop_cache(state['kv'], n)
            del state['ids'][n:]

        def job():
            shared = common_prefix(self._kv_ids, ids) if self.reuse_prompt and self._kv is not None else 0
            reused = min(shared, len(ids) - 1)
            kv, self._kv, self._kv_ids = self._kv, None, []  # unknown until this reply ends well
            state['kv'] = crop_cache(kv, reused) if reused else new_cache()
            state['ids'] = list(ids[:reused])
            stats.update(new_stats(len(ids), reused))
            # Omost's chat_fn seeds the global generator; fork it so the WebUI's RNG state is the same after the
            # chat as before
            cuda = [device.index or 0] if getattr(device, 'type', '') == 'cuda' else []
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                torch.manual_seed(int(params.seed))
                if params.temperature > 0:
                    sample()
                else:
                    first = forward(ids[reused:], 1)[-1]
                    state['ids'] = list(ids)
                    decode_greedy(list(ids), first, step, keep, lambda r: int(torch.argmax(r)), ends.__contains__,
                                  streamer.add, stats, limit=int(params.max_new_tokens),
                                  n_ctx=self.context_tokens, criterion=criterion, draft=draft, hook=hook)
            if self.reuse_prompt and state['kv'] is not None:
                self._kv, self._kv_ids = state['kv'], state['ids'][:cache_length(state['kv'])]

        def sample():
            counted = _Counter(hook, stats)
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            kwargs = self.generate_kwargs(input_ids, params, streamer, criterion, [counted])
            if not isinstance(state['kv'], tuple) and state['kv'] is not None:
                kwargs['past_key_values'] = state['kv']  # generate() evaluates the prompt after the cache
            else:  # transformers < 4.36: generate() takes no partial cache and returns none
                state['kv'] = None
            out = model.generate(**kwargs)
            state['ids'] = out[0].tolist()
            stats['reply_tokens'] = len(state['ids']) - len(ids) - int(state['ids'][-1] in ends)
        return job


class _Counter:
    """A logits processor for generate(): counts the forward passes and applies the logits hook."""

    def __init__(self, hook, stats):
        self.hook, self.stats, self.calls = hook, stats, 0

    def __call__(self, input_ids, scores):
        if self.calls:
            self.stats['model_calls'] += 1
        self.calls += 1
        if self.hook is not None:
            scores = scores.clone()
            scores[0] = self.hook(input_ids[0].tolist(), scores[0])
        return scores


def _logits_arg(model):
    """The forward argument that limits the logits to the last positions (a prompt's logits would take GBs)."""
    try:
        names = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((n for n in ('logits_to_keep', 'num_logits_to_keep') if n in names), None)


def new_cache():
    try:
        from transformers import DynamicCache
    except ImportError:
        return None  # transformers < 4.36: the model returns tuples
    return DynamicCache()


def cache_length(cache) -> int:
    if cache is None:
        return 0
    if hasattr(cache, 'get_seq_length'):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2])


def crop_cache(cache, n: int):
    """The cache holding only its first n positions (in place where the cache allows)."""
    if cache is None or cache_length(cache) <= n:
        return cache
    if hasattr(cache, 'crop'):
        cache.crop(n)
        return cache
    if isinstance(cache, tuple):
        return tuple(tuple(t[..., :n, :] for t in layer) for layer in cache)
    raise TypeError(f'cannot crop a {type(cache).__name__}')
