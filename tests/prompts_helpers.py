"""Independent references for the prompt tests: a transformers CLIPTokenizer, Omost's bagging, a host parser.

None of this imports lib_omost.prompts or lib_omost.clip_tokenizer: the CLIP ids come from transformers'
CLIPTokenizer built offline from open_clip's BPE file (test-substrate.md §5), Omost's partition and merge are
re-written from `encode_bag_of_subprompts_greedy`'s formula, and the host parser is written from the documented
prompt grammar of A1111/Forge (host-integration.md §2.1, §2.2, §2.6), not copied from either host.
"""

import functools
import gzip
import importlib.util
import json
import os
import re
import tempfile

BAG = 75
CHUNK = 77


# ---------------------------------------------------------------------------------------------------------------
# transformers CLIPTokenizer, offline


@functools.lru_cache(maxsize=1)
def hf_tokenizer():
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode
    package = importlib.util.find_spec('open_clip').submodule_search_locations[0]
    with gzip.open(os.path.join(package, 'bpe_simple_vocab_16e6.txt.gz')) as f:
        lines = f.read().decode('utf-8').split('\n')
    merges = lines[1:49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + '</w>' for c in byte_chars] + [''.join(m.split()) for m in merges]
    vocab += ['<|startoftext|>', '<|endoftext|>']
    folder = tempfile.mkdtemp(prefix='omost-clip-vocab-')
    with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
    return CLIPTokenizer(os.path.join(folder, 'vocab.json'), os.path.join(folder, 'merges.txt'),
                         model_max_length=CHUNK)


def ids(text: str) -> list:
    return hf_tokenizer()(text, truncation=False, add_special_tokens=False).input_ids


def n_tokens(text: str) -> int:
    return len(ids(text))


# ---------------------------------------------------------------------------------------------------------------
# Omost's encode_bag_of_subprompts_greedy, from its formula


def omost_partition(lengths: list, max_sum: int) -> list:
    """First fit in order: start a new bag whenever adding the next item would pass max_sum."""
    bags, bag, total = [], [], 0
    for index, length in enumerate(lengths):
        if total + length > max_sum:
            if bag:
                bags.append(bag)
            bag, total = [index], length
        else:
            bag, total = bag + [index], total + length
    return bags + ([bag] if bag else [])


def omost_bags(prefixes: list, suffixes: list) -> list:
    """[(suffix indices, the bag's ids between BOS and EOS)] exactly as Omost builds them."""
    prefix_ids = [t for p in prefixes for t in ids(p)]
    suffix_ids = [ids(s)[:BAG] for s in suffixes]
    groups = omost_partition([len(x) for x in suffix_ids], BAG - len(prefix_ids))
    return [(g, (prefix_ids + [t for i in g for t in suffix_ids[i]])[:BAG]) for g in groups]


# ---------------------------------------------------------------------------------------------------------------
# The host prompt grammar, as documented (host-integration.md §2.1/§2.2/§2.6)

AND_SPLIT = re.compile(r'\bAND\b')
TRAILING_WEIGHT = re.compile(r'^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$')
EXTRA_NETWORK = re.compile(r'<(\w+):([^>]+)>')
BREAK_SPLIT = re.compile(r'\s*\bBREAK\b\s*')
ESCAPABLE = '()[]\\'


def attention_segments(text: str) -> list:
    """[[text, weight]] with BREAK as ['BREAK', -1]: `\\x` is a literal x for x in ()[]\\ (any other backslash
    vanishes), '(' ... ')' x1.1, '(' ... ':w)' xw, '[' ... ']' /1.1, unmatched closers are text, unclosed
    openers weigh the rest; runs of equal weight are merged."""
    out, rounds, squares, plain = [], [], [], []

    def flush():
        if plain:
            parts = BREAK_SPLIT.split(''.join(plain))
            for k, part in enumerate(parts):
                if k:
                    out.append(['BREAK', -1])
                out.append([part, 1.0])
            plain.clear()

    def scale(start, factor):
        for seg in out[start:]:
            seg[1] *= factor

    i = 0
    while i < len(text):
        c = text[i]
        if c == '\\':
            if i + 1 < len(text) and text[i + 1] in ESCAPABLE:
                flush()
                out.append([text[i + 1], 1.0])
                i += 2
            else:  # a lone backslash stands for nothing
                flush()
                out.append(['', 1.0])
                i += 1
            continue
        weight = re.match(r':([+-]?[.\d]+)\)', text[i:])
        if c == '(':
            flush()
            rounds.append(len(out))
        elif c == '[':
            flush()
            squares.append(len(out))
        elif weight and rounds:
            flush()
            scale(rounds.pop(), float(weight.group(1)))
            i += len(weight.group(0))
            continue
        elif c == ')' and rounds:
            flush()
            scale(rounds.pop(), 1.1)
        elif c == ']' and squares:
            flush()
            scale(squares.pop(), 1 / 1.1)
        else:
            plain.append(c)
        i += 1
    flush()
    for start in rounds:
        scale(start, 1.1)
    for start in squares:
        scale(start, 1 / 1.1)
    merged = []
    for seg in out or [['', 1.0]]:
        if merged and merged[-1][1] == seg[1]:
            merged[-1][0] += seg[0]
        else:
            merged.append(list(seg))
    return merged


def unescaped_brackets(text: str) -> int:
    """Square/round brackets the scheduling grammar ([a:b:N], [a|b]) or emphasis would see."""
    return len(re.findall(r'(?<!\\)(?:\\\\)*[\[\]()]', text))


def parse_host_prompt(text: str) -> dict:
    """What the host makes of a prompt: AND parts, the trailing weight, extra networks, and the emphasis
    segments split into BREAK chunks ([[(text, weight), ...], ...])."""
    networks = EXTRA_NETWORK.findall(text)
    parts = AND_SPLIT.split(text)
    weights, bodies = [], []
    for part in parts:
        m = TRAILING_WEIGHT.match(part)
        bodies.append(m.group(1) if m else part)
        weights.append(float(m.group(2)) if m and m.group(2) is not None else 1.0)
    chunks = [[]]
    for seg_text, weight in attention_segments(bodies[0]):
        if weight == -1:
            chunks.append([])
        else:
            chunks[-1].append((seg_text, weight))
    return {'and_parts': len(parts), 'weights': weights, 'networks': networks, 'chunks': chunks,
            'brackets': unescaped_brackets(text)}


def tokenize_line(line: str):
    """A host-like `tokenize_line` on the real CLIP BPE: (chunks of token ids, token_count). Only the emphasis
    parser runs here (AND and the trailing weight are split off before, by the multi-cond step). BREAK closes the
    current chunk (even an empty one), 75 tokens fill one, an empty last chunk is dropped unless it is the only
    one, and token_count counts every chunk but the last as full. (The hosts' comma back-tracking only moves
    tokens between chunks, so it does not change whether a line needs one chunk.)"""
    chunks, current = [], []
    for text, weight in attention_segments(line):
        if weight == -1:
            chunks.append(current)
            current = []
            continue
        for token in ids(text):
            if len(current) == BAG:
                chunks.append(current)
                current = []
            current.append(token)
    if current or not chunks:
        chunks.append(current)
    return chunks, BAG * (len(chunks) - 1) + len(chunks[-1])


def host_chunk_count(prompt: str) -> int:
    """Chunks of a whole prompt: the multi-cond step (AND parts, trailing weight), then tokenize_line."""
    parts = AND_SPLIT.split(prompt)
    assert len(parts) == 1, parts
    return len(tokenize_line(TRAILING_WEIGHT.match(prompt).group(1))[0])


def literal_chunks(text: str) -> list:
    """The literal text of each BREAK chunk of a host prompt, requiring plain weight 1 everywhere."""
    parsed = parse_host_prompt(text)
    assert parsed['and_parts'] == 1 and parsed['weights'] == [1.0], parsed
    assert parsed['networks'] == [] and parsed['brackets'] == 0, parsed
    for chunk in parsed['chunks']:
        assert all(w == 1.0 for _, w in chunk), chunk
    return [''.join(t for t, _ in chunk) for chunk in parsed['chunks']]
