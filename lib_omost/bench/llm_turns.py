"""`python -m lib_omost bench llm --turns`: Omost's real two-turn chat (the dragon battle, then "change the dragon
to a dinosaur") through the chat engine and an in-process backend, with and without the conversation cache and
prompt-lookup drafting, side by side in one run.

The model is `lib_omost.llm.replay`'s: Llama-3's architecture and 128k vocabulary with random weights at a size
where compute is real (16 layers x 1024, ~0.5B parameters, F32), whose logits are raised, at each position, for
the transcript's next token. The forward passes cost what a real model's cost, and the tokens drafted and accepted
are those Omost's own model would get writing the same replies greedily.

Four variants, each on a freshly loaded model (so that none starts from another's cache):
    cold          no conversation cache, plain decoding: the edit turn evaluates the whole conversation
    cache         the conversation cache, plain decoding, both turns
    cache+auto    the conversation cache and prompt-lookup drafting 'auto' (the default: the draft length adapts to
                  what is accepted), both turns
    cache+on      drafting 'on' (always the longest drafts): the edit turn
'cold' and 'cache+on' answer only the edit turn, with the transcript's turn 1 as the conversation so far (the same
conversation the other variants reach), and 'cold' writes only the first COLD_TOKENS tokens of it (what it measures is
the time to the first token: its decoding is 'cache''s), which keeps the run within 20 minutes on 2 cores; --quick
answers both turns whole in all.
Per turn: time to first token (TTFT: message sent -> first reply token shown), reply tokens/s (after the first
token), tokens per model call, drafted / accepted tokens, reused / new prompt tokens; every reply is checked against
the transcript (text and token count). Times are given twice: in process CPU time (all threads; steady on a shared
machine, what the goals are judged on, as in `bench llm`) and in wall-clock time (what a user waits; noisy when
other work shares the cores). Memory: the process's resident memory before loading, loaded, after the chat
and after unloading.

The last line is the summary of the gguf backend (llama.cpp), the one the goals are set for:
    turns: ttft_ratio=<turn-2 TTFT cache / cold> edit_speedup=<turn-2 tokens/s cache+auto / cache>
           turn1_speedup=<turn-1 tokens/s cache+auto / cache> identical=<yes|no (any reply of any variant)>
Goals (issue 17, this 2-core CPU): ttft_ratio <= 0.10, edit_speedup >= 2, turn1_speedup >= 0.98, RSS after unloading
within 10 % of before loading.
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time

# (name, conversation cache, drafting, the turns a full run replies to: 'cold' and 'cache+on' answer only the edit
# turn, after the transcript's turn 1, to fit the time; --quick answers both turns in every variant)
VARIANTS = (('cold', False, 'off', (2,)), ('cache', True, 'off', (1, 2)), ('cache+auto', True, 'auto', (1, 2)),
            ('cache+on', True, 'on', (2,)))
COLD_TOKENS = 64  # a full run's 'cold' reply: its first tokens, checked against the transcript's
DRAFTED = 'cache+auto'  # the summary's drafting variant: the setting's default
# (layers, hidden, heads, kv_heads): the real size; the transformers backend runs a smaller one by default, since
# plain decoding of 128k logits through `generate()` on 2 cores would not fit the 20 minutes next to llama.cpp's
SHAPES = {'gguf': (16, 1024, 16, 4), 'local': (8, 1024, 16, 4)}
QUICK_SHAPE = (2, 64, 4, 2)
QUICK_LINES = 16  # --quick: each reply cut to its first lines (a test of the machinery, not a measurement)
GOALS = {'ttft_ratio': 0.10, 'edit_speedup': 2.0, 'turn1_speedup': 0.98, 'rss': 0.10}
NAMES = {'gguf': 'gguf (llama.cpp)', 'local': 'transformers'}


def rss_mb() -> float:
    """This process's resident memory in MB (Linux /proc; 0 where there is none)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def quick_replies() -> list:
    from lib_omost.llm.replay import omost_replies
    out = []
    for reply in omost_replies():
        lines = reply.split('\n')[:QUICK_LINES]
        out.append('\n'.join(lines) + '\n```')
    return out


def _shape_kwargs(shape) -> dict:
    layers, hidden, heads, kv_heads = shape
    return dict(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads)


def _make_backend(kind: str, model: str, threads: int):
    if kind == 'gguf':
        from lib_omost.llm.gguf import GGUFBackend
        return GGUFBackend(model, threads=threads, keep_loaded=True)
    from lib_omost.llm import LocalBackend
    return LocalBackend(model, device='cpu', keep_loaded=True)


def _check_interface(backend):
    missing = [a for a in ('reuse_prompt', 'draft', 'logits_hook') if not hasattr(backend, a)]
    if missing:
        raise RuntimeError(f'the {backend.kind} backend has no {", ".join(missing)} (issue 17 items 1-2)')


def _turn(backend, conv, message: str, params, expected_text: str, expected_tokens: int) -> dict:
    """One reply: wall-clock and process CPU time to the first token and after it, and the backend's stats. A reply
    cut at `params.max_new_tokens` is compared with the transcript's text up to there."""
    from lib_omost.llm import stream_reply
    from lib_omost.llm.conversation import PARTIAL_MARK
    clocks = (time.perf_counter, time.process_time)
    started, first, last = [c() for c in clocks], None, None
    for update in stream_reply(backend, conv, message, params, threading.Event()):
        if first is None and update.tokens > 0:
            first = [c() for c in clocks]
        last = update
    end = [c() for c in clocks]
    first = first or end
    stats = dict(getattr(last, 'stats', None) or {})
    tokens = last.tokens
    text = last.text[:-len(PARTIAL_MARK)] if last.text.endswith(PARTIAL_MARK) else last.text
    out = {'tokens': tokens, 'error': last.error,
           'same': last.error is None and text == expected_text and tokens == expected_tokens,
           'prompt': stats.get('prompt_tokens', last.prompt_tokens), 'reused': stats.get('prompt_reused'),
           'calls': stats.get('model_calls'), 'drafted': stats.get('drafted'), 'accepted': stats.get('accepted')}
    for i, clock in enumerate(('wall', 'cpu')):
        out[f'ttft_{clock}'] = first[i] - started[i]
        spent = end[i] - first[i]
        out[f'rate_{clock}'] = (tokens - 1) / spent if tokens > 1 and spent > 0 else 0.0
    return out


def _variant(kind: str, model: str, script, reuse: bool, draft: str, threads: int, answer=(1, 2),
             limit: int | None = None) -> dict:
    from lib_omost.llm import ChatParams, Conversation, Turn
    from lib_omost.llm.replay import USER_MESSAGES
    gc.collect()
    before = rss_mb()
    backend = _make_backend(kind, model, threads)
    _check_interface(backend)
    backend.reuse_prompt, backend.draft, backend.logits_hook = reuse, draft, script
    backend.load()
    loaded = rss_mb()
    params = ChatParams(temperature=0, max_new_tokens=limit or 4096)
    conv, turns = Conversation(), {}
    for number, (message, text, ids) in enumerate(zip(USER_MESSAGES, script.replies_text, script.replies), 1):
        if number in answer:
            if limit:  # only 'cold' is cut, and it answers the last turn: nothing follows the cut reply
                text, ids = script.tok.decode(ids[:limit]), ids[:limit]
            turns[number] = _turn(backend, conv, message, params, text, len(ids))
        else:  # the transcript's turn, as if the model had written it
            conv.turns.append(Turn(message, text))
    after = rss_mb()
    prompt_same = _same_prompt(backend, conv, script)
    backend.unload()
    del backend
    gc.collect()
    return {'turns': turns, 'rss': (before, loaded, after, rss_mb()), 'prompt_same': prompt_same}


def _same_prompt(backend, conv, script) -> bool:
    """The backend's prompt ids for turn 2 are those of Llama-3's tokenizer with Omost's template (llama.cpp's own
    tokenizer is checked against transformers')."""
    return backend.prompt_ids(conv.messages(upto=1)) == script.prompt_ids(conv.messages(upto=1))


def measure(kind: str, workdir: str, shape, script, threads: int, quick: bool = False, log=print) -> dict:
    from lib_omost.llm.replay import build_replay_gguf, build_replay_llama, llama_config, parameter_count
    t = time.perf_counter()
    if kind == 'gguf':
        model = build_replay_gguf(os.path.join(workdir, 'replay.gguf'), script.tok, **_shape_kwargs(shape))
    else:
        model = build_replay_llama(os.path.join(workdir, 'replay-hf'), script.tok, **_shape_kwargs(shape))
    params = parameter_count(llama_config(script.tok, **_shape_kwargs(shape)))
    log(f'{NAMES[kind]}: built a {shape[0]}L x {shape[1]} replay model ({params / 1e6:.0f}M parameters, F32) in '
        f'{time.perf_counter() - t:.0f} s')
    runs = {}
    for name, reuse, draft, answer in VARIANTS:
        t = time.perf_counter()
        runs[name] = _variant(kind, model, script, reuse, draft, threads, (1, 2) if quick else answer,
                              None if quick or name != 'cold' else COLD_TOKENS)
        log(f'  {name}: {time.perf_counter() - t:.0f} s')
    return {'kind': kind, 'shape': shape, 'params': params, 'runs': runs}


def summary(result: dict, clock: str = 'cpu') -> dict:
    runs = result['runs']
    cold, cache, draft = (runs[name]['turns'] for name in ('cold', 'cache', DRAFTED))
    identical = all(t['same'] for r in runs.values() for t in r['turns'].values()) and all(
        r['prompt_same'] for r in runs.values())
    ratio = lambda a, b: a / b if b else float('nan')  # noqa: E731
    return {'ttft_ratio': ratio(cache[2][f'ttft_{clock}'], cold[2][f'ttft_{clock}']),
            'edit_speedup': ratio(draft[2][f'rate_{clock}'], cache[2][f'rate_{clock}']),
            'turn1_speedup': ratio(draft[1][f'rate_{clock}'], cache[1][f'rate_{clock}']),
            'identical': identical,
            'rss_back': max(ratio(abs(r['rss'][3] - r['rss'][0]), r['rss'][0]) for r in runs.values())}


def _fmt(value, spec: str = '') -> str:
    return '-' if value is None else format(value, spec)


def report(result: dict, log=print) -> dict:
    kind, shape = result['kind'], result['shape']
    log(f'{NAMES[kind]}, {shape[0]} layers x {shape[1]} ({result["params"] / 1e6:.0f}M parameters), greedy:')
    log(f'{"variant":<12} {"turn":>4} {"prompt":>6} {"reused":>6} {"reply":>5} {"calls":>5} {"tok/call":>8} '
        f'{"drafted":>7} {"accepted":>8} {"same":>4} | {"TTFT cpu":>8} {"tok/s cpu":>9} | {"TTFT wall":>9} '
        f'{"tok/s wall":>10}')
    for name, run in result['runs'].items():
        for i, t in run['turns'].items():
            per_call = t['tokens'] / t['calls'] if t['calls'] else None
            log(f'{name:<12} {i:>4} {_fmt(t["prompt"]):>6} {_fmt(t["reused"]):>6} {t["tokens"]:>5} {_fmt(t["calls"]):>5} '
                f'{_fmt(per_call, ".2f"):>8} {_fmt(t["drafted"]):>7} {_fmt(t["accepted"]):>8} '
                f'{"yes" if t["same"] else "NO":>4} | {t["ttft_cpu"]:>8.2f} {t["rate_cpu"]:>9.2f} | '
                f'{t["ttft_wall"]:>9.2f} {t["rate_wall"]:>10.2f}' + (f'  error: {t["error"]}' if t['error'] else ''))
    log(f'{"RSS MB":<12} {"before load":>11} {"loaded":>7} {"after chat":>10} {"unloaded":>8}')
    for name, run in result['runs'].items():
        log(f'{name:<12} ' + ' '.join(f'{v:>{w}.0f}' for v, w in zip(run['rss'], (11, 7, 10, 8))))
    s, wall = summary(result), summary(result, 'wall')
    log(f'{NAMES[kind]}, by wall-clock time: turn-2 TTFT {wall["ttft_ratio"]:.3f} of cold; edit turn '
        f'x{wall["edit_speedup"]:.2f} tokens/s; turn 1 x{wall["turn1_speedup"]:.2f}')
    goals = [f'turn-2 TTFT {s["ttft_ratio"]:.3f} of cold (goal <= {GOALS["ttft_ratio"]})',
             f'edit turn x{s["edit_speedup"]:.2f} tokens/s (goal >= {GOALS["edit_speedup"]})',
             f'turn 1 x{s["turn1_speedup"]:.2f} (goal >= {GOALS["turn1_speedup"]})',
             f'RSS after unloading {s["rss_back"] * 100:.1f} % from before loading (goal <= {GOALS["rss"] * 100:.0f} %)',
             f'replies identical to the transcript: {"yes" if s["identical"] else "NO"}']
    met = (s['ttft_ratio'] <= GOALS['ttft_ratio'] and s['edit_speedup'] >= GOALS['edit_speedup']
           and s['turn1_speedup'] >= GOALS['turn1_speedup'] and s['rss_back'] <= GOALS['rss'] and s['identical'])
    log(f'{NAMES[kind]}, by CPU time (the goals): ' + '; '.join(goals) + f' -> {"goals met" if met else "BELOW GOAL"}')
    return s


def summary_line(s: dict) -> str:
    return (f'turns: ttft_ratio={s["ttft_ratio"]:.2f} edit_speedup={s["edit_speedup"]:.2f} '
            f'turn1_speedup={s["turn1_speedup"]:.2f} identical={"yes" if s["identical"] else "no"}')


def _available(kind: str) -> str | None:
    """None when the backend can run here, else why not."""
    import importlib.util
    need = ['gguf', 'llama_cpp'] if kind == 'gguf' else ['torch', 'transformers']
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    return f'needs {", ".join(missing)}' if missing else None


def _load_average() -> str:
    try:
        return ', '.join(f'{x:.2f}' for x in os.getloadavg())
    except OSError:
        return '?'


def main(args) -> int:
    from lib_omost.llm.replay import ReplayScript, llama3_tokenizer, llama3_tokenizer_file, MISSING
    if llama3_tokenizer_file() is None:
        print(f'error: {MISSING}')
        return 1
    quick = bool(getattr(args, 'quick', False))
    which = getattr(args, 'backend', None) or 'gguf'
    kinds = ['gguf', 'local'] if which == 'both' else [which]
    # --quick: one thread (a tiny model's OpenMP team spins more than it computes on a shared machine)
    threads = int(getattr(args, 'threads', None) or (1 if quick else os.cpu_count() or 1))
    skipped = {k: why for k in kinds if (why := _available(k))}
    if len(skipped) == len(kinds):
        print('error: ' + '; '.join(f'{NAMES[k]} {why}' for k, why in skipped.items()))
        return 1
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    tok = llama3_tokenizer()
    script = ReplayScript(tok, quick_replies() if quick else None)
    print(f'Omost two-turn chat replayed ({"quick: replies cut to their first {} lines".format(QUICK_LINES) if quick else "full replies"}: '
          f'{" + ".join(str(len(r)) for r in script.replies)} Llama-3 tokens); {threads} threads; '
          f'load average before: {_load_average()}')
    for k, why in skipped.items():
        print(f'{NAMES[k]}: skipped ({why})')
    results = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.environ.get('OMOST_BENCH_DIR')) as workdir:
        for kind in kinds:
            if kind in skipped:
                continue
            shape = QUICK_SHAPE if quick else SHAPES[kind]
            results[kind] = measure(kind, workdir, shape, script, threads, quick)
            for name in os.listdir(workdir):  # the model files are not needed any more
                path = os.path.join(workdir, name)
                if os.path.isfile(path):
                    os.remove(path)
    print(f'{time.perf_counter() - started:.0f} s in all; load average after: {_load_average()}')
    if 'local' in results and not quick and SHAPES['local'] != SHAPES['gguf']:
        print(f'note: the transformers backend runs {SHAPES["local"][0]} layers (not {SHAPES["gguf"][0]}) to fit the '
              'time; its figures are not the goals\' figures')
    sums = {kind: report(result) for kind, result in results.items()}
    final = 'gguf' if 'gguf' in sums else 'local'
    for kind, s in sums.items():
        if kind != final:
            print(f'{NAMES[kind]}: ' + summary_line(s))
    print(summary_line(sums[final]))
    return 0
