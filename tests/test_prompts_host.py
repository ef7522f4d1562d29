"""The host prompt: escaping against the documented host grammar, chunk layout, token map, host tokenizers."""

import types

import pytest

import prompts_helpers as ref
from conftest import read_fixture
from lib_omost.canvas import load_canvas
from lib_omost.prompts import CHUNK_TOKENS, build_host_prompt, defuse_trailing_weight, escape, offline_counter
from omost_webui.host_tokenizer import HostTokenizer, clip_tokenize_line, engine_tokenize_line, host_counter

NASTY = r'masterpiece (cat:1.2) AND [dog|fox] BREAK <lora:x:1> a\b [a:b:5] (x) ratio 16:9'


def test_escaped_text_is_read_literally_by_the_host_grammar():
    host = defuse_trailing_weight(escape(NASTY))  # the defusing is needed where the text ends the prompt
    assert escape(NASTY).endswith('16:9') and host.endswith('16:\\9')
    (literal,) = ref.literal_chunks(host)  # one chunk, no AND part, no weight, no emphasis, no network
    assert literal == NASTY.replace('AND', 'and').replace('BREAK', 'break').replace('<lora:', '<lora :')
    assert ref.ids(literal) == ref.ids(NASTY)  # what the encoder reads is exactly the LLM's text
    # and without escaping, the same text would be rewritten by the host in every one of these ways
    raw = ref.parse_host_prompt(NASTY)
    assert raw['and_parts'] == 2 and raw['weights'][-1] == 9.0 and raw['networks'] and raw['brackets']


def canvas_with(descriptions: list):
    """A canvas whose every text field is hostile host syntax."""
    glob, *local = descriptions
    code = ['canvas = Canvas()',
            f'canvas.set_global_description(description={glob!r}, detailed_descriptions=[{NASTY!r}], '
            f'tags={NASTY!r}, HTML_web_color_name="red")']
    for i, d in enumerate(local):
        code.append(f'canvas.add_local_description(location="on the left", offset="no offset", '
                    f'area="a small square area", distance_to_viewer={5.0 - i}, description={d!r}, '
                    f'detailed_descriptions=[{NASTY!r}, "a second detail"], tags="a, b", atmosphere="calm", '
                    f'style="photo (film)", quality_meta="ratio 16:9", HTML_web_color_name="blue")')
    return load_canvas('\n'.join(code)).canvas


@pytest.mark.parametrize('preset', ['none', 'pony'])
def test_host_prompt_is_one_literal_chunk_per_bag_with_the_token_map(preset):
    canvas = canvas_with(['A (city) at night AND day.', 'A cat <lora:cat:1>.', 'A BREAK dog [x:y:3].'])
    result = build_host_prompt(canvas, offline_counter, preset=preset)
    chunks = ref.literal_chunks(result.text)
    bags = [b for r in result.regions for b in r.bags]
    assert len(chunks) == len(bags) == result.n_chunks
    for literal, bag in zip(chunks, bags):
        assert ref.ids(literal) == ref.ids(bag.text) and len(ref.ids(literal)) <= 75
    assert result.text.endswith('16:9\\.')  # the trailing ':9.' would otherwise become an AND weight
    # the token map: each region owns whole 77-column chunks, in canvas order
    assert len(result.token_region) == CHUNK_TOKENS * result.n_chunks
    for rp in result.regions:
        assert result.token_region[rp.start * 77:rp.end * 77] == [rp.index] * (77 * (rp.end - rp.start))
        assert rp.rect == canvas.regions[rp.index].rect
    assert [rp.index for rp in result.regions] == [0, 1, 2]
    assert [rp.start for rp in result.regions] == [0] + [rp.end for rp in result.regions][:-1]


def test_fixture_prompt_chunks_match_the_bags():
    canvas = load_canvas(read_fixture('dinosaur_edit.canvas.py')).canvas
    result = build_host_prompt(canvas, offline_counter, user_text='best quality')
    assert ref.host_chunk_count(result.text) == result.n_chunks
    for literal, bag in zip(ref.literal_chunks(result.text), [b for r in result.regions for b in r.bags]):
        assert ref.ids(literal) == ref.ids(bag.text)


def test_empty_texts_still_give_one_chunk_per_bag():
    comfy = [{'rect': [0, 90, 0, 90], 'prefixes': ['a meadow.'], 'suffixes': ['', 'flowers.']},
             {'rect': [0, 45, 0, 90], 'prefixes': [''], 'suffixes': ['']}]
    canvas = load_canvas(comfy).canvas
    result = build_host_prompt(canvas, offline_counter)
    assert result.n_chunks == 2 == ref.host_chunk_count(result.text)
    assert result.token_region == [0] * 77 + [1] * 77


def test_bag_the_host_would_spill_is_split_not_truncated():
    """A counter that under-counts (as when a textual-inversion name is longer than its words) is corrected by the
    host's own chunking: the bag is split, and every word still reaches the encoder."""
    canvas = load_canvas(read_fixture('dragon_battle.canvas.py')).canvas

    def under(text):
        return max(0, offline_counter(text) - 12)

    result = build_host_prompt(canvas, under, chunk_count=ref.host_chunk_count)
    assert any('split' in w for w in result.warnings)
    assert ref.host_chunk_count(result.text) == result.n_chunks
    for region, rp in zip(canvas.regions, result.regions):
        assert [i for b in rp.bags for i in b.items] == list(range(len(region.suffixes)))
        for bag in rp.bags:
            assert ref.host_chunk_count(bag.host_text) == 1
            if not bag.cropped:
                assert bag.text.split() == ' '.join(region.prefixes + [region.suffixes[i] for i in bag.items]).split()
    unchecked = build_host_prompt(canvas, under)
    assert ref.host_chunk_count(unchecked.text) > unchecked.n_chunks  # without the check the host would spill


def test_host_tokenizer_finds_each_hosts_engine_and_counts():
    def engine():
        return types.SimpleNamespace(tokenize_line=ref.tokenize_line)

    forge_xl = types.SimpleNamespace(text_processing_engine_l=engine(), text_processing_engine_g=engine())
    forge_15 = types.SimpleNamespace(text_processing_engine=engine())
    a1111_xl = types.SimpleNamespace(conditioner=types.SimpleNamespace(embedders=[engine(), object()]),
                                     cond_stage_model=object())
    a1111_15 = types.SimpleNamespace(cond_stage_model=engine())
    assert engine_tokenize_line(forge_xl) is forge_xl.text_processing_engine_l.tokenize_line
    assert engine_tokenize_line(forge_15) is forge_15.text_processing_engine.tokenize_line
    assert clip_tokenize_line(a1111_xl) is a1111_xl.conditioner.embedders[0].tokenize_line
    assert clip_tokenize_line(a1111_15) is a1111_15.cond_stage_model.tokenize_line
    assert engine_tokenize_line(a1111_15) is None and clip_tokenize_line(forge_15) is None
    assert engine_tokenize_line(types.SimpleNamespace()) is None and clip_tokenize_line(types.SimpleNamespace()) is None
    with pytest.raises(RuntimeError, match='no CLIP text encoder'):
        host_counter(None)

    count, chunks = host_counter(clip_tokenize_line(a1111_15))
    assert count(escape(NASTY)) == ref.n_tokens(NASTY) and chunks(escape(NASTY)) == 1
    assert chunks('a BREAK b') == 2 and HostTokenizer(ref.tokenize_line).chunks(' '.join(['cat'] * 80)) == 2
    canvas = load_canvas(read_fixture('dragon_battle.canvas.py')).canvas
    via_host = build_host_prompt(canvas, count, chunk_count=chunks, preset='illustrious')
    offline = build_host_prompt(canvas, offline_counter, preset='illustrious')
    assert via_host.text == offline.text and via_host.token_region == offline.token_region
