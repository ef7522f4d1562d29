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
