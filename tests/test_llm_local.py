"""The in-process backend on a tiny random-weight Llama-3-style model built offline: streaming, Omost's
seed/greedy semantics against raw `model.generate`, stop within 2 tokens, unload, the exact context budget,
and the refusals (old transformers, bitsandbytes) that happen before anything is loaded."""

import gc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import weakref

import pytest

from conftest import FIXTURES, ROOT
from lib_omost.llm import SYSTEM_PROMPT, ChatParams, Conversation, LocalBackend, stream_reply
from lib_omost.llm.conversation import BUDGET_FULL, Turn
from lib_omost.llm.local import ALTERNATIVES
from llm_helpers import build_tiny_llama, corpus_texts

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    # eos off: random weights would otherwise end some replies after a token or two
    return build_tiny_llama(str(tmp_path_factory.mktemp('tiny-llama3')), corpus_texts(FIXTURES), eos=False)


@pytest.fixture(scope='module')
def backend(folder):
    b = LocalBackend(folder)
    b.load()
    yield b
    b.unload()


@pytest.fixture(scope='module')
def raw(folder):
    """An independent copy of the model and tokenizer, driven the way Omost's chat_fn drives them."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return tok, model


def omost_generate(raw, user, seed, temperature, max_new_tokens):
    tok, model = raw
    ids = tok.apply_chat_template([{'role': 'system', 'content': SYSTEM_PROMPT}, {'role': 'user', 'content': user}],
                                  add_generation_prompt=True, return_tensors='pt')
    torch.manual_seed(seed)
    kwargs = dict(do_sample=True, temperature=temperature, top_p=0.9) if temperature else dict(do_sample=False)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         pad_token_id=tok.pad_token_id, **kwargs)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), ids.shape[1]


def chat(backend, conv, message, **params):
    return list(stream_reply(backend, conv, message, ChatParams(**params), threading.Event()))


def test_greedy_stream_equals_raw_generate(backend, raw):
    conv = Conversation()
    backend.update_interval = 0  # an update per token batch, so the cumulative stream shows
    try:
        updates = chat(backend, conv, 'a cat on a sofa', temperature=0, max_new_tokens=40)
    finally:
        backend.update_interval = LocalBackend.update_interval
    expected, prompt_len = omost_generate(raw, 'a cat on a sofa', seed=0, temperature=0, max_new_tokens=40)
    last = updates[-1]
    assert last.text == expected and conv.history == [('a cat on a sofa', expected)]
    assert len(updates) > 3 and all(b.text.startswith(a.text) for a, b in zip(updates, updates[1:]))
    assert (last.tokens, last.prompt_tokens, last.finish, last.partial) == (40, prompt_len, 'length', True)


def test_seed_reproduces_omost_sampling(backend, raw):
    a = chat(backend, Conversation(), 'a cat', seed=1, temperature=0.6, max_new_tokens=30)[-1].text
    b = chat(backend, Conversation(), 'a cat', seed=1, temperature=0.6, max_new_tokens=30)[-1].text
    c = chat(backend, Conversation(), 'a cat', seed=2, temperature=0.6, max_new_tokens=30)[-1].text
    assert a == b != c
    assert a == omost_generate(raw, 'a cat', seed=1, temperature=0.6, max_new_tokens=30)[0]


def test_chat_leaves_the_global_rng_as_it_was(backend):
    import torch
    torch.manual_seed(777)
    expected = torch.rand(4)
    torch.manual_seed(777)
    chat(backend, Conversation(), 'a cat', seed=1, temperature=0.6, max_new_tokens=10)
    assert torch.equal(torch.rand(4), expected)  # the WebUI's generator is untouched by the chat's seeding


def test_stop_within_two_tokens(backend):
    forwards = []
    handle = backend.model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        stop, conv = threading.Event(), Conversation([Turn('a dragon', 'canvas = Canvas()')])
        at_stop = None
        updates = []
        for u in stream_reply(backend, conv, 'a cat', ChatParams(max_new_tokens=400), stop):
            updates.append(u)
            if len(updates) == 5:
                at_stop = len(forwards)
                stop.set()
    finally:
        handle.remove()
    assert len(forwards) - at_stop <= 2
    last = updates[-1]
    assert (last.finish, last.partial, last.error) == ('cancelled', True, None) and last.tokens < 400
    assert conv.history == [('a dragon', 'canvas = Canvas()'), ('a cat', last.text)] and conv.turns[-1].partial


def test_abandoned_chat_stops_and_frees_the_model_for_the_next(backend):
    gen = stream_reply(backend, Conversation(), 'a cat', ChatParams(max_new_tokens=4000), threading.Event())
    next(gen)
    del gen  # a UI dropped it mid-reply, without stop or close: generate() must end, the lock must not stay held
    result = []
    worker = threading.Thread(target=lambda: result.append(chat(backend, Conversation(), 'a dog',
                                                                max_new_tokens=3)[-1]))
    worker.start()
    worker.join(30)
    assert result and (result[0].error, result[0].tokens) == (None, 3)


def test_context_budget_is_exact_and_never_truncates(folder, raw):
    tok = raw[0]
    conv = Conversation([Turn('a dragon', 'canvas = Canvas()\n' * 60)])
    messages = [{'role': 'system', 'content': SYSTEM_PROMPT}, {'role': 'user', 'content': 'a dragon'},
                {'role': 'assistant', 'content': 'canvas = Canvas()\n' * 60}, {'role': 'user', 'content': 'a cat'}]
    n = len(tok.apply_chat_template(messages, add_generation_prompt=True))
    b = LocalBackend(folder, context_tokens=n)
    last = chat(b, conv, 'a cat')[-1]
    assert last.error == BUDGET_FULL.format(n=n, limit=n)
    assert conv.history == [('a dragon', 'canvas = Canvas()\n' * 60), ('a cat', '')]
    b.context_tokens = n + 100  # fits, but the next canvas (~2k tokens) would not: a warning, then the reply
    updates = chat(b, Conversation(conv.turns[:1]), 'a cat', max_new_tokens=150)
    assert updates[0].notice == (f'The conversation is about {n} of {n + 100} tokens; the next canvas (about 150 '
                                 'tokens) may not fit. After this reply, start a new chat or edit an earlier message.')
    assert updates[-1].error is None and updates[-1].tokens == 150
    b.unload()


def test_unload_frees_the_model(folder):
    b = LocalBackend(folder)
    chat(b, Conversation(), 'a cat', max_new_tokens=3)
    ref = weakref.ref(b.model)
    b.unload()
    gc.collect()
    assert ref() is None and b.model is None
    once = LocalBackend(folder, keep_loaded=False)  # the "unload after each chat" policy
    b_ref = []
    for u in stream_reply(once, Conversation(), 'a cat', ChatParams(max_new_tokens=3), threading.Event()):
        if once.model is not None and not b_ref:
            b_ref.append(weakref.ref(once.model))
    gc.collect()
    assert u.done and u.error is None and b_ref and b_ref[0]() is None and once.model is None


def test_quantised_checkpoint_refused_before_loading(folder, tmp_path):
    q = tmp_path / 'tiny-4bit'
    shutil.copytree(folder, q)
    config = json.loads((q / 'config.json').read_text())
    config['quantization_config'] = {'quant_method': 'bitsandbytes', 'load_in_4bit': True}
    (q / 'config.json').write_text(json.dumps(config))
    conv = Conversation()
    last = chat(LocalBackend(str(q), device='cpu'), conv, 'a cat')[-1]
    plain = 'choose the unquantised model, or a server backend (llama.cpp / Ollama with a GGUF)'
    if importlib.util.find_spec('bitsandbytes') is None:
        assert last.error == (f'{q} is a 4-bit bitsandbytes model and bitsandbytes is not installed: install it '
                              f'(pip install "bitsandbytes>=0.43.1", NVIDIA GPU needed) or {plain}.')
        assert 'bitsandbytes' not in sys.modules
    else:
        assert last.error == (f'{q} is a 4-bit bitsandbytes model; with this transformers it needs an NVIDIA GPU '
                              f'(device here: cpu). On CPU {plain}.')
    assert conv.history == [('a cat', '')]


def test_unknown_model_name(tmp_path):
    last = chat(LocalBackend('omost-gpt-9', str(tmp_path)), Conversation(), 'a cat')[-1]
    assert last.error == "Model 'omost-gpt-9' not found: not a folder, and not one of the Omost models."


A1111_PY = os.path.join(ROOT, '.venv-a1111', 'bin', 'python')
A1111_SCRIPT = r'''
import sys, threading
from lib_omost.llm import LocalBackend, Conversation, ChatParams, stream_reply
for name in sys.argv[2:]:
    last = list(stream_reply(LocalBackend(name, sys.argv[1]), Conversation(), 'a cat', ChatParams(), threading.Event()))[-1]
    print(last.error)
print('transformers imported:', 'transformers' in sys.modules)
'''


@pytest.mark.skipif(not os.path.exists(A1111_PY), reason='no A1111-like venv')
def test_a1111_transformers_refuses_llama3_with_alternatives(folder, tmp_path):
    out = subprocess.run([A1111_PY, '-c', A1111_SCRIPT, str(tmp_path), folder, 'lllyasviel/omost-phi-3-mini-128k'],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, 'PYTHONPATH': ROOT, 'HF_HUB_OFFLINE': '1'})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == (f'{folder} cannot run in-process with transformers 4.30.2 (it needs 4.40.0 or newer): '
                        'chat templates (apply_chat_template) arrived in transformers 4.34; Llama-3 models '
                        '(rope_theta 500000, their tokenizer) need transformers 4.40; older versions ignore '
                        f'rope_theta and write garbage. {ALTERNATIVES}')
    assert lines[1] == ('lllyasviel/omost-phi-3-mini-128k cannot run in-process with transformers 4.30.2 (it needs '
                        '4.40.0 or newer): chat templates (apply_chat_template) arrived in transformers 4.34; '
                        f'Phi-3 needs transformers 4.40 (older versions have no Phi3). {ALTERNATIVES}')
    assert lines[2] == 'transformers imported: False'  # refused from the config files alone
    assert not (tmp_path / 'omost-phi-3-mini-128k').exists()  # and before any download


# The greedy loop (conversation cache + drafts) on a plain tiny Llama, against generate(): transformers 4.30 has no
# DynamicCache (its cache is tuples, sliced to crop) and no chat templates, so the loop is driven with ids directly.
CACHE_SCRIPT = r'''
import threading
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from lib_omost.llm import LocalBackend, ChatParams
from lib_omost.llm.inprocess import StopOnEvent, TokenStreamer
import transformers
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, vocab_size=300)).eval()
model.generation_config.eos_token_id = None
b = LocalBackend('tiny')
b.model = model
g = torch.Generator().manual_seed(1)
base = torch.randint(0, 300, (60,), generator=g).tolist()
prompt = base + base[:30] + [5, 6, 7]   # something to draft from

def reply(ids, draft, reuse):
    b.draft, b.reuse_prompt = draft, reuse
    streamer, stats = TokenStreamer(), {}
    b._job((model, None), ids, ChatParams(temperature=0, max_new_tokens=40), streamer,
           StopOnEvent(threading.Event(), threading.Event()), stats)()
    return streamer.ids, stats

with torch.no_grad():
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt):].tolist()
first, s1 = reply(prompt, 'on', True)
turn2 = prompt + first + [9, 8, 7]
second, s2 = reply(turn2, 'on', True)
with torch.no_grad():
    expected2 = model.generate(torch.tensor([turn2]), max_new_tokens=40, do_sample=False)[0, len(turn2):].tolist()
print(transformers.__version__, type(b._kv).__name__, first == expected, second == expected2,
      s2['prompt_reused'], s2['drafted'] > 0 and s2['accepted'] > 0)
'''


@pytest.mark.parametrize('python', ['forge', 'a1111'])
def test_cache_and_drafts_on_both_cache_kinds(python):
    exe = sys.executable if python == 'forge' else A1111_PY
    if not os.path.exists(exe):
        pytest.skip('no A1111-like venv')
    out = subprocess.run([exe, '-c', CACHE_SCRIPT], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, 'PYTHONPATH': ROOT})
    assert out.returncode == 0, out.stderr
    version, cache, *rest = out.stdout.split()
    # 93 prompt tokens + 40 reply tokens, less the last reply token (never evaluated) are reused on turn 2
    assert (cache, rest) == ('tuple' if version == '4.30.2' else 'DynamicCache', ['True', 'True', '132', 'True'])


DOWNLOAD_SCRIPT = r'''
import sys, threading
from lib_omost.llm import LocalBackend, Conversation, ChatParams, stream_reply
conv = Conversation()
for u in stream_reply(LocalBackend('omost-llama-3-8b', sys.argv[1]), conv, 'a cat', ChatParams(), threading.Event()):
    print(u.notice if not u.done else u.error)
print(conv.history)
'''


def test_catalogue_model_is_downloaded_with_progress_and_fails_cleanly_offline(tmp_path):
    out = subprocess.run([sys.executable, '-c', DOWNLOAD_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT, 'HF_HUB_OFFLINE': '1'})
    folder = tmp_path / 'omost-llama-3-8b'
    lines = out.stdout.splitlines()
    assert lines[0] == f'Downloading lllyasviel/omost-llama-3-8b (about 16.1 GB) into {folder}', out.stderr
    assert lines[-2].startswith(f'Could not download lllyasviel/omost-llama-3-8b into {folder}: ')
    assert lines[-2].endswith('Run it again to resume, or download it by hand (huggingface-cli download '
                              f'lllyasviel/omost-llama-3-8b --local-dir {folder}).')
    assert lines[-1] == "[('a cat', '')]"
