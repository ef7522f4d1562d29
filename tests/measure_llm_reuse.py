"""How often a reply changes with the conversation cache and/or drafts, against a cold plain evaluation of the same
conversation, on random-weight test models (a measurement for the README, not a test).

    .venv/bin/python tests/measure_llm_reuse.py gguf|local [--models 2] [--hidden 1024] [--quant Q8_0]
                                                [--reuse on|off] [--draft on|off|auto]

Each model answers 5 two-turn chats greedily and 5 at temperature 0.6 (seeded), 48 tokens a reply; a reply that
differs is replaced by the cold one so the next turn continues the same conversation. Random weights give flatter
next-token distributions than a trained model (more near-ties), so this overstates how often a real model's reply
changes.
"""

import argparse
import ctypes
import os
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import FIXTURES  # noqa: E402
from lib_omost.llm import ChatParams, Conversation, LocalBackend, stream_reply  # noqa: E402
from llm_helpers import build_tiny_llama, corpus_texts  # noqa: E402

CHATS = [('a dragon attacking a castle', 'change the dragon to a dinosaur'), ('a cat on a sofa', 'make it night'),
         ('a city at night', 'add a moon'), ('two girls in a garden', 'make it rain'),
         ('a ship in a storm', 'change the dragon to a dinosaur')]


def make(kind, folder, quant, **kwargs):
    if kind == 'local':
        return LocalBackend(folder, **kwargs)
    from lib_omost.llm.gguf import GGUFBackend
    from lib_omost.llm.tiny import build_tiny_gguf
    path = os.path.join(folder, 'model.gguf')
    if not os.path.exists(path):
        build_tiny_gguf(folder, path)
        if quant:
            import llama_cpp
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f'LLAMA_FTYPE_MOSTLY_{quant}')
            if llama_cpp.llama_model_quantize(path.encode(), (path + '.q').encode(), ctypes.byref(params)):
                raise SystemExit(f'quantizing to {quant} failed')
            os.replace(path + '.q', path)
    return GGUFBackend(path, threads=1, **kwargs)


def reply(backend, conv, message, **params):
    last = list(stream_reply(backend, conv, message, ChatParams(max_new_tokens=48, **params), threading.Event()))[-1]
    if last.error:
        raise SystemExit(last.error)
    return last.text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('kind', choices=['gguf', 'local'])
    ap.add_argument('--models', type=int, default=2)
    ap.add_argument('--hidden', type=int, default=1024)
    ap.add_argument('--quant', default='', help='gguf: Q8_0 or Q4_0 (default F32)')
    ap.add_argument('--reuse', choices=['on', 'off'], default='on')
    ap.add_argument('--draft', choices=['on', 'off', 'auto'], default='on')
    args = ap.parse_args()
    total, differing = 0, []
    for seed in range(args.models):
        folder = tempfile.mkdtemp(prefix='omost-measure-')
        build_tiny_llama(folder, corpus_texts(FIXTURES), eos=False, seed=seed, hidden=args.hidden)
        cold = make(args.kind, folder, args.quant, reuse_prompt=False, draft='off')
        warm = make(args.kind, folder, args.quant, reuse_prompt=args.reuse == 'on', draft=args.draft)
        for i, chat in enumerate(CHATS):
            for temperature in (0, 0.6):
                a, b = Conversation(), Conversation()
                for message in chat:
                    x = reply(cold, a, message, temperature=temperature, seed=i)
                    y = reply(warm, b, message, temperature=temperature, seed=i)
                    total += 1
                    if x != y:
                        differing.append((seed, message, temperature))
                        b.turns[-1].assistant = x
        cold.unload()
        warm.unload()
    greedy = sum(1 for d in differing if d[2] == 0)
    print(f'{args.kind} {args.quant or ("F32" if args.kind == "gguf" else "fp32")} hidden {args.hidden}, cache '
          f'{args.reuse}, drafts {args.draft}: {total - len(differing)} of {total} replies identical to a cold plain '
          f'evaluation; {greedy} of {total // 2} greedy and {len(differing) - greedy} of {total // 2} sampled '
          f'(temperature 0.6) differ')


if __name__ == '__main__':
    main()
