"""`python -m lib_omost bench llm --turns --quick` runs end to end on a tiny replay model (2 layers x 64, Llama-3's
128k vocabulary): every variant writes the transcript's replies exactly, the cache reuses turn 1 in turn 2, drafting
drafts and is accepted in the edit turn, and the summary line is well formed. Its figures are for the README (the
full run), never asserted here."""

import argparse
import os
import re

import pytest

from lib_omost.llm.replay import MISSING, ReplayScript, llama3_tokenizer, llama3_tokenizer_file

pytest.importorskip('transformers')
if llama3_tokenizer_file() is None:
    pytest.skip(MISSING, allow_module_level=True)

SUMMARY = r'turns: ttft_ratio=\d+\.\d\d edit_speedup=\d+\.\d\d turn1_speedup=\d+\.\d\d identical=(yes|no)'


def _gguf_available() -> bool:
    if os.environ.get('OMOST_REQUIRE_GGUF'):  # CI installs both: a missing one is a failure there, not a skip
        return True
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _rows(lines: list, title: str) -> dict:
    """{(variant, turn): the table row's columns} of one backend's table."""
    start = lines.index(next(line for line in lines if line.startswith(title)))
    rows = {}
    for line in lines[start + 2:]:
        cols = line.split()
        if len(cols) < 12 or not cols[1].isdigit():
            break
        rows[cols[0], int(cols[1])] = dict(zip(['prompt', 'reused', 'reply', 'calls', 'per_call', 'drafted',
                                                'accepted', 'same'], cols[2:10]))
    return rows


def test_the_replay_script_is_omosts_transcript_in_llama3_tokens():
    tok = llama3_tokenizer()
    script = ReplayScript(tok)
    assert len(tok) == 128256
    assert [len(r) for r in script.replies] == [1392, 1358]  # the 1,354 dinosaur tokens plus the fences
    assert all(tok.decode(ids) == text for ids, text in zip(script.replies, script.replies_text))
    messages = [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'u'}]
    prompt = script.prompt_ids(messages)
    assert script.next_token(prompt) == script.replies[0][0]
    assert script.next_token(prompt + script.replies[0]) == tok.convert_tokens_to_ids('<|eot_id|>')
    assert script.next_token(prompt + [script.replies[0][1]]) is None  # off the script: the weights decide


def test_the_turns_benchmark_replays_the_chat_identically_in_every_variant(capsys):
    from lib_omost.bench import llm_turns
    backend = 'both' if _gguf_available() else 'local'
    args = argparse.Namespace(quick=True, turns=True, backend=backend, threads=1)
    assert llm_turns.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(SUMMARY, lines[-1]), lines[-1]
    assert lines[-1].endswith('identical=yes')
    titles = ['transformers, 2 layers x 64'] + (['gguf (llama.cpp), 2 layers x 64'] if backend == 'both' else [])
    for title in titles:
        rows = _rows(lines, title)
        assert sorted(rows) == sorted((v, t) for v, *_ in llm_turns.VARIANTS for t in (1, 2))
        assert all(r['same'] == 'yes' for r in rows.values()), rows
        assert rows['cold', 2]['reused'] == '0'
        for variant in ('cache', 'cache+auto', 'cache+on'):
            turn2 = rows[variant, 2]
            # turn 2 evaluates only what follows turn 1's reply: the new user message and the headers
            assert int(turn2['prompt']) - int(turn2['reused']) < 30, turn2
        for variant in ('cold', 'cache'):
            plain = rows[variant, 2]  # one forward pass per token after the first, and one for <|eot_id|>
            assert plain['drafted'] == '0' and plain['calls'] == plain['reply'], plain
        for variant in ('cache+auto', 'cache+on'):
            edit = rows[variant, 2]
            assert int(edit['accepted']) > int(edit['reply']) // 2  # the edit turn mostly copies turn 1's canvas
            assert int(edit['calls']) < int(edit['reply']) // 2
