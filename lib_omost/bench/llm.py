"""`python -m lib_omost bench llm`: the in-process chat engine against raw `model.generate`, same model, same
prompt, same (greedy) tokens, plus the response-cache hit time; and, when llama-cpp-python and gguf are installed,
the engine's gguf backend against llama-cpp-python's own generation loop (`Llama.generate`) on the same tiny model
converted to GGUF. Prints a table per backend and one summary line each.

`bench llm --turns` is another benchmark: Omost's two-turn chat with and without the conversation cache and
prompt-lookup drafting, on a real-size replay model (`lib_omost.bench.llm_turns`).

The engine adds the chat template, a generate() thread feeding a token streamer, the stop criterion, incremental
decoding and the updates; the goal is >= 0.95x raw throughput. Runs alternate (raw, engine, raw, ...) and the best
of each is kept. Throughput is given twice: per second of process CPU time (all threads; what each side costs,
steady on a shared machine) and per second of wall-clock time (what a user waits; noisy when other work shares the
cores). The goal is judged on CPU time.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time

GOAL = 0.95


def _shapes(quick: bool) -> list:
    # (layers, hidden, new tokens): the substrate's tiny model, and one where compute dominates the overheads
    return [(2, 64, 256)] if quick else [(2, 64, 512), (8, 256, 256)]


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _alternate(raw, engine, repeats: int):
    """Warm both up, then run them alternately; ({'raw': [(wall, cpu)], 'engine': [...]}, raw's, engine's last)."""
    raw(), engine()  # warm-up: allocator, kernels, tokenizer caches
    runs = {'raw': [], 'engine': []}
    for _ in range(repeats):
        wall, cpu, out = _timed(raw)
        runs['raw'].append((wall, cpu))
        wall, cpu, last = _timed(engine)
        runs['engine'].append((wall, cpu))
    return runs, out, last


def _rates(row: dict, runs: dict, tokens: int) -> dict:
    for side, times in runs.items():  # best of the runs, per wall and per CPU second
        row[f'{side}_wall'] = tokens / min(t[0] for t in times)
        row[f'{side}_cpu'] = tokens / min(t[1] for t in times)
    return row


def _engine_reply(backend, message: str, params, cache=None):
    from lib_omost.llm import Conversation, stream_reply
    last = None
    for last in stream_reply(backend, Conversation(), message, params, threading.Event(), cache=cache):
        pass
    return last


def _measure(layers: int, hidden: int, new_tokens: int, repeats: int, workdir: str) -> dict:
    import torch
    from lib_omost.llm import ChatParams, Conversation, LocalBackend, ResponseCache
    from lib_omost.llm.tiny import build_tiny_llama

    folder = build_tiny_llama(f'{workdir}/tiny-{layers}x{hidden}', layers=layers, hidden=hidden, eos=False)
    backend = LocalBackend(folder)
    backend.load()
    model, tok = backend.model, backend.tokenizer
    params = ChatParams(temperature=0, max_new_tokens=new_tokens)
    message = 'a cat on a sofa'
    messages = Conversation([(message, '')]).messages()
    ids = backend.encode(messages)

    def raw():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=tok.pad_token_id)

    def engine(cache=None):
        return _engine_reply(backend, message, params, cache)

    runs, out, last = _alternate(raw, engine, repeats)
    raw_tokens = int(out.shape[1] - ids.shape[1])
    raw_text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        # A reply cut at max_new_tokens is never cached, so store this one as if it had finished.
        cache = ResponseCache(cache_dir)
        cache.put(cache.key(backend.identity(), messages, params.cache_fields()), last.text)
        hits = [_timed(lambda: engine(cache)) for _ in range(repeats)]
    backend.unload()
    row = {'shape': f'{layers}L h{hidden}', 'tokens': raw_tokens,
           'same': last.text == raw_text and last.tokens == raw_tokens,
           'hit_ms': statistics.median(h[0] for h in hits) * 1000, 'cached': all(h[2].cached for h in hits)}
    return _rates(row, runs, raw_tokens)


def _measure_gguf(layers: int, hidden: int, new_tokens: int, repeats: int, workdir: str) -> dict:
    import llama_cpp
    from lib_omost.llm import ChatParams, Conversation
    from lib_omost.llm.gguf import TOP_K, GGUFBackend
    from lib_omost.llm.tiny import build_tiny_gguf, build_tiny_llama

    folder = build_tiny_llama(f'{workdir}/tiny-{layers}x{hidden}', layers=layers, hidden=hidden, eos=False)
    backend = GGUFBackend(build_tiny_gguf(folder, f'{folder}.gguf'), threads=1)
    backend.load()
    llm = backend.llm
    params = ChatParams(temperature=0, max_new_tokens=new_tokens)
    message = 'a cat on a sofa'
    ids = backend.prompt_ids(Conversation([(message, '')]).messages())

    def bare():  # llama-cpp-python's loop as its README shows it, with the sampling the backend asks for
        llm.reset()
        out = []
        for token in llm.generate(ids, temp=0.0, top_k=TOP_K, top_p=params.top_p, min_p=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                break
            out.append(token)
            if len(out) == new_tokens:
                break
        return out

    runs, out, last = _alternate(bare, lambda: _engine_reply(backend, message, params), repeats)
    bare_text = llm.detokenize(out).decode('utf-8', 'replace')
    backend.unload()
    row = {'shape': f'{layers}L h{hidden}', 'tokens': len(out),
           'same': last.error is None and last.tokens == len(out) and last.text == bare_text}
    return _rates(row, runs, len(out))


def _report(title: str, raw: str, rows: list, cache: bool) -> bool:
    """Print one backend's table and summary line; True when the goal is met."""
    print(title)
    hit = f' | {"cache hit ms":>12}' if cache else ''
    print(f'{"model":<8} {"tokens":>6} {"same":>4} | {raw + " cpu":>9} {"engine cpu":>10} {"ratio":>6} | '
          f'{raw + " wall":>9} {"engine wall":>11} {"ratio":>6}{hit}')
    for r in rows:
        r['ratio_cpu'] = r['engine_cpu'] / r['raw_cpu']
        r['ratio_wall'] = r['engine_wall'] / r['raw_wall']
        hit = f' | {r["hit_ms"]:>12.2f}' if cache else ''
        print(f'{r["shape"]:<8} {r["tokens"]:>6} {"yes" if r["same"] else "NO":>4} | {r["raw_cpu"]:>9.1f} '
              f'{r["engine_cpu"]:>10.1f} {r["ratio_cpu"]:>5.2f}x | {r["raw_wall"]:>9.1f} {r["engine_wall"]:>11.1f} '
              f'{r["ratio_wall"]:>5.2f}x{hit}')
    worst = min(r['ratio_cpu'] for r in rows)
    same = all(r['same'] for r in rows)
    ok = worst >= GOAL and same and (not cache or all(r['cached'] for r in rows))
    hit = f'; cache hit {max(r["hit_ms"] for r in rows):.1f} ms' if cache else ''
    print(f'summary: engine/{raw} throughput {worst:.2f}x (CPU time, worst shape; wall '
          f'{min(r["ratio_wall"] for r in rows):.2f}x), goal >= {GOAL}x; identical tokens: {"yes" if same else "NO"}'
          f'{hit} -> {"OK" if ok else "BELOW GOAL"}')
    return ok


def main(args) -> int:
    if getattr(args, 'turns', False):
        from lib_omost.bench import llm_turns
        return llm_turns.main(args)
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        print(f'error: the LLM benchmark needs torch and transformers ({e})')
        return 1
    # One intra-op thread: on a shared 2-core machine, OpenMP teams on matrices this small spend their time
    # spinning, which swamps what is being compared (the engine's overhead). Both sides run with it (llama.cpp too).
    torch.set_num_threads(1)
    quick = getattr(args, 'quick', False)
    repeats = 5 if quick else 9
    with tempfile.TemporaryDirectory() as workdir:
        rows = [_measure(layers, hidden, new_tokens, repeats, workdir)
                for layers, hidden, new_tokens in _shapes(quick)]
        print(f'greedy, best of {repeats} alternating runs, 1 thread; tok/s per CPU second (all threads) and per '
              'wall second')
        _report('transformers: engine vs model.generate', 'raw', rows, cache=True)
        try:
            import gguf  # noqa: F401
            import llama_cpp  # noqa: F401
        except ImportError as e:
            print(f'gguf: skipped ({e}; pip install llama-cpp-python gguf)')
            return 0
        rows = [_measure_gguf(layers, hidden, new_tokens, repeats, workdir)
                for layers, hidden, new_tokens in _shapes(quick)]
        _report('gguf (llama.cpp): engine vs Llama.generate', 'bare', rows, cache=False)
    return 0
