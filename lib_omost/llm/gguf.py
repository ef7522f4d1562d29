"""In-process llama.cpp backend (`llama-cpp-python`, an optional dependency) for GGUF files: Omost's models on
A1111 or Forge, on the GPU or the CPU, without a server and without transformers.

The prompt is the GGUF's own chat template (Omost's Llama-3 template) rendered like transformers renders it, then
tokenized with special tokens parsed and no BOS added (the template writes it), so the ids equal those the
transformers backend builds. Sampling follows Omost's `generate()` call: temperature and top-p, top-k 50
(transformers' default), no min-p and no repetition penalty; temperature 0 is greedy (the argmax, like llama.cpp's
greedy sampler).

The context is kept between replies (`reuse_prompt`, see `lib_omost.llm.inprocess`): the next reply trims it to the
prefix its prompt shares with what was evaluated and evaluates the rest. Greedy replies decode in our own loop over
llama.cpp's batch API, so drafted tokens are verified in one `llama_decode` with logits for every position
(`draft`); sampled replies use `Llama.generate(reset=False)` after the same trim. `logits_hook` (benchmarks and
tests only) gets a 1-D float32 numpy row of the vocabulary's size.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys

import numpy as np

from lib_omost.llm.conversation import CONTEXT_TOKENS, ChatError, ChatParams
from lib_omost.llm.inprocess import (IncrementalDecoder, InProcessBackend, common_prefix, decode_greedy, new_stats,
                                     one_line)
from lib_omost.llm.models import GGUF_MODELS, download_gguf
from lib_omost.llm.tiny import LLAMA3_TEMPLATE

GGUF_MAGIC = b'GGUF'
TOP_K = 50  # transformers' default, which Omost's chat_fn sampled with


def install_hint() -> str:
    py = sys.executable or 'python'
    pip = f'{py} -m pip install llama-cpp-python'
    return (f'The GGUF backend needs llama-cpp-python, which is not installed in this Python ({py}). Install it '
            f'there, then restart: CPU: {pip} ; NVIDIA GPU: CMAKE_ARGS="-DGGML_CUDA=on" {pip} ; Apple GPU: '
            f'CMAKE_ARGS="-DGGML_METAL=on" {pip} . Or use the Server backend.')


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ChatError(install_hint()) from None
    except OSError as e:  # the package is there but its shared library cannot load (wrong CUDA, missing libs)
        raise ChatError(f'llama-cpp-python is installed but cannot load its library ({one_line(e)}); reinstall it '
                        f'for this machine. {install_hint().split(". ", 1)[1]}') from None
    return llama_cpp


def check_gguf_file(path: str):
    """Refuse, with the reason, what llama.cpp would fail on with a bare 'Failed to load model'."""
    if not os.path.exists(path):
        raise ChatError(f'GGUF file not found: {path}')
    if os.path.isdir(path):
        raise ChatError(f'{path} is a folder; the GGUF backend needs a .gguf file (for a transformers model folder '
                        'choose the Local backend).')
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
    except OSError as e:
        raise ChatError(f'Cannot read {path}: {e.strerror or e}.') from None
    if head != GGUF_MAGIC:
        raise ChatError(f'{path} is not a GGUF file (it does not start with the GGUF signature); choose a .gguf '
                        'model file.')


class _LogTap:
    """llama.cpp's log lines while a model loads (the reason for a failure is only there); process-wide, so it is
    installed only around loading and the library's own callback is put back."""

    def __init__(self, llama_cpp):
        self.llama_cpp = llama_cpp
        self.lines = collections.deque(maxlen=200)

        @llama_cpp.llama_log_callback
        def tap(level, text, user_data):
            self.lines.append(text.decode('utf-8', 'replace'))
        self.callback = tap  # a reference, or ctypes frees the callback under llama.cpp's feet

    def __enter__(self):
        self.llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        try:
            from llama_cpp import _logger
            self.llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        except (ImportError, AttributeError):
            pass

    def reason(self) -> str:
        text = ''.join(self.lines)
        lines = [' '.join(line.split()) for line in text.splitlines()]
        bad = [line for line in lines if any(w in line.lower() for w in ('fail', 'error', 'unable', 'out of memory',
                                                                         'cannot', 'invalid'))]
        return '; '.join(bad[-3:])[:400]


def _is_oom(text: str) -> bool:
    text = text.lower()
    return 'out of memory' in text or 'alloc' in text or 'mmap' in text or 'memoryerror' in text


def gguf_file(name: str, models_dir: str) -> str:
    """The file a GGUF model stands for: a known model's in `models_dir`, else the path as given (`~` expanded), or
    a relative path that exists only inside `models_dir` there."""
    if name in GGUF_MODELS:
        return os.path.join(models_dir, GGUF_MODELS[name].filename)
    path = os.path.expanduser(name)
    in_models = os.path.join(models_dir, path)
    return in_models if not os.path.isabs(path) and not os.path.exists(path) and os.path.exists(in_models) else path


class GGUFBackend(InProcessBackend):
    kind = 'gguf'

    def __init__(self, model: str, models_dir: str | None = None, keep_loaded: bool = True,
                 n_gpu_layers: int | None = None, threads: int | None = None, context_tokens: int = CONTEXT_TOKENS,
                 reuse_prompt: bool = True, draft: str = 'auto'):
        super().__init__(model, models_dir, keep_loaded, context_tokens, reuse_prompt, draft)
        if not self.name:
            raise ChatError('No GGUF model chosen: pick one of the known GGUF models or enter the path of a .gguf '
                            'file.')
        self.n_gpu_layers = None if n_gpu_layers is None or int(n_gpu_layers) < 0 else int(n_gpu_layers)
        self.threads = int(threads) if threads and int(threads) > 0 else None
        self.llm = None
        self.path = None

    # -- where the model is ----------------------------------------------------------------------------------

    def _file(self) -> str:
        return gguf_file(self.name, self.models_dir)

    def identity(self) -> dict:
        path = self._file()
        try:
            size = os.path.getsize(path)
        except OSError:
            size = None
        return {'kind': self.kind, 'model': self.name if self.name in GGUF_MODELS else os.path.abspath(path),
                'size': size}

    def locate(self, progress=None) -> str:
        if self.name in GGUF_MODELS:
            return download_gguf(self.name, self.models_dir, progress)
        path = self._file()
        if not path.lower().endswith('.gguf') and not os.path.exists(path):
            raise ChatError(f'GGUF model {self.name!r} not found: not a file, and not one of the known GGUF models ('
                            + ', '.join(GGUF_MODELS) + ').')
        return path

    # -- loading ---------------------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.llm is not None

    def _load(self, progress=None):
        llama_cpp = import_llama_cpp()  # before any download: without it nothing could run the file
        path = self.locate(progress)
        check_gguf_file(path)
        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        layers = self.n_gpu_layers if self.n_gpu_layers is not None else (-1 if gpu else 0)
        where = (f'the GPU ({"all" if layers < 0 else layers} layers)' if gpu and layers else 'the CPU')
        if progress is not None:
            progress(f'Loading {os.path.basename(path)} with llama.cpp on {where}')
        tap = _LogTap(llama_cpp)
        try:
            with tap:
                llm = llama_cpp.Llama(model_path=path, n_ctx=self.context_tokens, n_gpu_layers=layers,
                                      n_threads=self.threads, n_threads_batch=self.threads, verbose=False)
        except (ValueError, RuntimeError, MemoryError, OSError) as e:
            raise self._load_error(path, e, tap.reason(), layers if gpu else 0) from None
        self.llm, self.path = llm, path

    def _load_error(self, path: str, e: Exception, log: str, layers: int) -> ChatError:
        said = f'{type(e).__name__}: {one_line(e)}' + (f'; llama.cpp: {log}' if log else '')
        if isinstance(e, MemoryError) or _is_oom(log) or 'llama_context' in str(e):
            size = os.path.getsize(path) / 1e9
            gpu = f', {"all" if layers < 0 else layers} layers on the GPU' if layers else ''
            return ChatError(f'Out of memory loading {os.path.basename(path)} ({size:.1f} GB, context '
                             f'{self.context_tokens} tokens{gpu}): {said}. Free memory (unload the image model, close '
                             'other programs), or choose a smaller quant, fewer GPU layers or a smaller context.')
        return ChatError(f'llama.cpp could not load {path} ({said}). A download cut short or a GGUF made for a newer '
                         'llama.cpp fails like this: download it again, or update llama-cpp-python.')

    def _release(self) -> bool:
        llm, self.llm = self.llm, None
        if llm is None:
            return False
        llm.close()  # frees the weights, the context and the KV cache now, not whenever the GC runs
        return True

    # -- in-process backend hooks ----------------------------------------------------------------------------

    def chat_template(self, llm=None) -> str:
        llm = llm or self.llm
        template = llm.metadata.get('tokenizer.chat_template')
        if template:
            return template
        if len(llm.tokenize(b'<|start_header_id|>', add_bos=False, special=True)) == 1:
            return LLAMA3_TEMPLATE  # a Llama-3 (Omost) GGUF converted without its template
        raise ChatError(f'{self.name} has no chat template in its GGUF metadata; Omost GGUFs carry one.')

    def _tokenize(self, messages: list) -> list:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # sandboxed jinja, transformers' settings
        llm = self.llm
        model = llm._model
        formatter = Jinja2ChatFormatter(self.chat_template(llm), eos_token=model.token_get_text(llm.token_eos()),
                                        bos_token=model.token_get_text(llm.token_bos()), add_generation_prompt=True)
        try:
            prompt = formatter(messages=messages).prompt
        except Exception as e:  # noqa: BLE001 - a template that rejects the messages
            raise ChatError(f"The GGUF's chat template failed on this conversation: {one_line(e)}") from None
        return llm.tokenize(prompt.encode('utf-8'), add_bos=False, special=True)

    def _handle(self):
        return self.llm

    def _decoder(self, llm):
        return IncrementalDecoder(lambda ids: llm.detokenize(ids).decode('utf-8', 'replace'))

    def _job(self, llm, ids, params: ChatParams, streamer, criterion, stats):
        import llama_cpp
        vocab = llm._model.vocab
        limit = int(params.max_new_tokens)
        n_ctx = min(llm.n_ctx(), self.context_tokens)  # llama.cpp rounds its context up to a multiple of 256
        draft, hook = self.draft_mode(params), self.logits_hook
        n_vocab = llm.n_vocab()

        def is_end(token):
            return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

        def row(i):
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i), shape=(n_vocab,)).copy()

        def keep(n):
            """Trim the context to its first n tokens (False: this memory cannot trim; start afresh)."""
            if n <= 0 or not llm._ctx.kv_cache_seq_rm(-1, n, -1):
                llm.reset()
                return False
            llm.n_tokens = n
            llm._requires_eval = True
            return True

        def step(tokens):
            n_past = llm.n_tokens
            llm._batch.set_batch(batch=tokens, n_past=n_past, logits_all=True)
            llm._ctx.decode(llm._batch)
            llm.input_ids[n_past:n_past + len(tokens)] = tokens
            llm.n_tokens += len(tokens)
            llm._requires_eval = False
            return [row(i) for i in range(len(tokens))]

        def job():
            # the longest prefix shared with what the context holds, less one token (its logits are needed)
            shared = common_prefix(llm.input_ids[:llm.n_tokens].tolist(), ids) if self.reuse_prompt else 0
            reused = min(shared, len(ids) - 1)
            if not keep(reused):
                reused = 0
            stats.update(new_stats(len(ids), reused))
            try:
                if params.temperature > 0:
                    sample()
                else:
                    llm.eval(ids[reused:])
                    decode_greedy(list(ids), row(-1), step, keep, lambda r: int(np.argmax(r)), is_end, streamer.add,
                                  stats, limit=limit, n_ctx=n_ctx, criterion=criterion, draft=draft, hook=hook)
            except BaseException:
                llm.reset()  # a failure mid-evaluation leaves the context unknown
                raise
            if not self.reuse_prompt:
                llm.reset()

        def sample():
            llm.set_seed(int(params.seed) % 0xFFFFFFFF)  # 0xFFFFFFFF would mean "random" to llama.cpp
            processors = None
            if hook is not None:
                processors = [lambda input_ids, scores: hook([int(t) for t in input_ids], scores)]
            n = 0
            tokens = ids[stats['prompt_reused']:]
            for token in llm.generate(tokens, reset=False, temp=float(params.temperature), top_p=float(params.top_p),
                                      top_k=TOP_K, min_p=0.0, repeat_penalty=1.0, logits_processor=processors):
                if n:
                    stats['model_calls'] += 1
                if is_end(token):
                    return
                streamer.add([token])
                n += 1
                stats['reply_tokens'] = n
                if n >= limit or criterion():
                    return  # checked before the next token is evaluated: Stop costs no further forward pass
                if len(ids) + n >= n_ctx:
                    raise ChatError(f"The reply filled the model's context ({n_ctx} tokens) after {n} new tokens; "
                                    'the partial reply is kept. Start a new chat, or edit an earlier message.')
        return job

    def _failure(self, e: Exception) -> ChatError:
        if isinstance(e, RuntimeError) and 'llama_decode' in str(e):
            return ChatError(f'llama.cpp failed while writing ({one_line(e)}); the GPU or the machine may be out of '
                             'memory. The partial reply is kept.')
        return super()._failure(e)
