"""A tiny random-weight Llama-3-style model with a tokenizer trained in memory: offline test and benchmark
substrate (no weights are downloaded). Needs transformers >= 4.34 and tokenizers."""

from __future__ import annotations

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']


def default_corpus() -> list:
    from lib_omost.llm.conversation import SYSTEM_PROMPT
    return [SYSTEM_PROMPT, 'a cat on a sofa', 'change the dragon to a dinosaur']


def build_tokenizer(corpus: list, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token='<|begin_of_text|>', eos_token='<|eot_id|>',
                                  pad_token='<|end_of_text|>')
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def build_tiny_llama(folder: str, corpus: list | None = None, layers: int = 2, hidden: int = 64, eos: bool = True,
                     seed: int = 0) -> str:
    """Save a tiny random Llama (rope_theta 500000, like Llama-3) and its tokenizer into `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = build_tokenizer(corpus or default_corpus())
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok), rope_theta=500000.0,
                         max_position_embeddings=8192, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    # Random weights emit <|eot_id|> now and then; callers that need replies of a set length switch it off.
    model.generation_config.eos_token_id = tok.eos_token_id if eos else None
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# The same models as GGUF files for the llama.cpp backend (needs the `gguf` package, numpy and, to convert, torch)


def _gguf_tokenizer(writer, tok, extra_tokens=(), pre='gpt-2', specials=None):
    """The BPE tokenizer as GGUF metadata. The tests' ByteLevel pre-tokenizer splits with GPT-2's regex, which
    llama.cpp knows as 'gpt-2' (Omost's real GGUFs use Llama-3's, 'llama-bpe'). `specials`: the control tokens
    (default: this module's)."""
    import json
    import gguf
    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)
    tokens = [None] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    tokens += list(extra_tokens)
    specials = set(SPECIALS if specials is None else specials)
    writer.add_tokenizer_model('gpt2')
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else ' '.join(m) for m in data['model']['merges']])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)  # <|eot_id|>, as Omost's GGUFs have it
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(False)  # the chat template writes <|begin_of_text|>
    writer.add_chat_template(LLAMA3_TEMPLATE)
    return tokens


def _gguf_header(writer, n_vocab, hidden, layers, ff, heads, kv_heads, rope_theta=500000.0, eps=1e-6, ctx=8192):
    import gguf
    writer.add_name('omost-tiny')
    writer.add_context_length(ctx)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(eps)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _write_gguf(writer, tensors: dict):
    import numpy as np
    for name, array in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _permute(w, n_head):
    """HF's rotate-half q/k layout -> llama.cpp's interleaved one (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_tiny_gguf(folder: str, path: str) -> str:
    """Convert the tiny transformers Llama in `folder` (build_tiny_llama) into an F32 GGUF at `path`."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(path, 'llama')
    _gguf_header(writer, c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size,
                 c.num_attention_heads, c.num_key_value_heads, c.rope_theta, c.rms_norm_eps,
                 c.max_position_embeddings)
    _gguf_tokenizer(writer, tok)
    tensors = {'token_embd.weight': sd['model.embed_tokens.weight'], 'output_norm.weight': sd['model.norm.weight'],
               'output.weight': sd['lm_head.weight']}
    for i in range(c.num_hidden_layers):
        p = f'model.layers.{i}.'
        tensors.update({
            f'blk.{i}.attn_norm.weight': sd[p + 'input_layernorm.weight'],
            f'blk.{i}.attn_q.weight': _permute(sd[p + 'self_attn.q_proj.weight'], c.num_attention_heads),
            f'blk.{i}.attn_k.weight': _permute(sd[p + 'self_attn.k_proj.weight'], c.num_key_value_heads),
            f'blk.{i}.attn_v.weight': sd[p + 'self_attn.v_proj.weight'],
            f'blk.{i}.attn_output.weight': sd[p + 'self_attn.o_proj.weight'],
            f'blk.{i}.ffn_norm.weight': sd[p + 'post_attention_layernorm.weight'],
            f'blk.{i}.ffn_gate.weight': sd[p + 'mlp.gate_proj.weight'],
            f'blk.{i}.ffn_up.weight': sd[p + 'mlp.up_proj.weight'],
            f'blk.{i}.ffn_down.weight': sd[p + 'mlp.down_proj.weight'],
        })
    _write_gguf(writer, tensors)
    return path


def _gpt2_bytes_to_unicode() -> dict:
    """GPT-2's byte -> unicode character map, the alphabet byte-level BPE vocabularies are written in."""
    bs = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_scripted_gguf(path: str, reply: str, chunk: int = 8, hidden: int = 256, layers: int = 2,
                        ff: int = 1024, corpus: list | None = None, seed: int = 0) -> str:
    """A tiny GGUF that answers every conversation with exactly `reply`, token by token, then <|eot_id|>.

    How: the reply is cut into pieces that become new tokens of their own; every block's attention and MLP output
    weights are zero, so the last hidden state is the current token's embedding, and the output matrix maps each
    embedding to the next token of the script (the generation prompt's last token, '\\n', to the first piece). The
    margin is so wide that any temperature/top-p gives the script. The other weights only cost time, like a
    real model's would (`layers`, `ff`)."""
    import numpy as np
    import gguf
    tok = build_tokenizer(corpus or default_corpus())
    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)
    to_unicode = _gpt2_bytes_to_unicode()

    def byte_level(text):
        return ''.join(to_unicode[b] for b in text.encode('utf-8'))

    pieces, seen, i = [], set(vocab), 0  # every piece a token of its own: llama.cpp refuses duplicate texts
    while i < len(reply):
        n = chunk
        while byte_level(reply[i:i + n]) in seen and i + n < len(reply):
            n += 1
        piece = byte_level(reply[i:i + n])
        if piece in seen:  # the reply's tail repeats an earlier piece: it joins the piece before it
            seen.discard(pieces[-1])
            piece = pieces.pop() + piece
        pieces.append(piece)
        seen.add(piece)
        i += n
    n_vocab = len(vocab) + len(pieces)
    trigger = tok.apply_chat_template([{'role': 'user', 'content': 'x'}], add_generation_prompt=True)[-1]
    script = [trigger] + list(range(len(vocab), n_vocab)) + [tok.eos_token_id]
    rng = np.random.default_rng(seed)
    embd = rng.standard_normal((n_vocab, hidden))
    embd *= np.sqrt(hidden) / np.linalg.norm(embd, axis=1, keepdims=True)  # RMS 1: the final norm keeps it
    out = np.zeros((n_vocab, hidden))
    for prev, nxt in zip(script, script[1:]):
        out[nxt] = 50.0 * embd[prev] / hidden  # logit 50 for the scripted token, about +-3 for the others
    heads, head_dim = 4, hidden // 4
    writer = gguf.GGUFWriter(path, 'llama')
    _gguf_header(writer, n_vocab, hidden, layers, ff, heads, heads)
    _gguf_tokenizer(writer, tok, pieces)
    tensors = {'token_embd.weight': embd, 'output_norm.weight': np.ones(hidden), 'output.weight': out}
    for b in range(layers):
        small = lambda *shape: rng.standard_normal(shape) * 0.02  # noqa: E731
        tensors.update({
            f'blk.{b}.attn_norm.weight': np.ones(hidden), f'blk.{b}.ffn_norm.weight': np.ones(hidden),
            f'blk.{b}.attn_q.weight': small(hidden, hidden), f'blk.{b}.attn_k.weight': small(heads * head_dim, hidden),
            f'blk.{b}.attn_v.weight': small(heads * head_dim, hidden),
            f'blk.{b}.attn_output.weight': np.zeros((hidden, hidden)),
            f'blk.{b}.ffn_gate.weight': small(ff, hidden), f'blk.{b}.ffn_up.weight': small(ff, hidden),
            f'blk.{b}.ffn_down.weight': np.zeros((hidden, ff)),
        })
    _write_gguf(writer, tensors)
    return path
