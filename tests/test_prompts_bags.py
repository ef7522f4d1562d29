"""Sub-prompt bags against Omost's own algorithm, run independently on transformers' CLIP ids."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prompts_helpers as ref
from conftest import fixture_path, read_fixture
from lib_omost.canvas import CanvasError, load_canvas
from lib_omost.cli import main as cli_main
from lib_omost.presets import load_presets
from lib_omost.prompts import CROPPED_HEAD_TOKENS, build_host_prompt, offline_counter, region_bags

FIXTURES = ['dragon_battle.canvas.py', 'dinosaur_edit.canvas.py']


def canvas_of(name):
    return load_canvas(read_fixture(name)).canvas


def selected_words(prefixes, suffixes, items):
    return ' '.join(list(prefixes) + [suffixes[i] for i in items]).split()


@pytest.mark.parametrize('name', FIXTURES)
def test_fixture_bags_are_omosts(name):
    canvas = canvas_of(name)
    result = build_host_prompt(canvas, offline_counter)
    n_bags = 0
    for region, rp in zip(canvas.regions, result.regions):
        expected = ref.omost_bags(region.prefixes, region.suffixes)
        assert [list(b.items) for b in rp.bags] == [group for group, _ in expected]
        for bag, (_, omost_ids) in zip(rp.bags, expected):
            got = ref.ids(bag.text)
            if bag.cropped:  # Omost truncates the ids at 75; we keep whole words of the same ids
                assert len(omost_ids) == ref.BAG and got == omost_ids[:len(got)] and len(got) > ref.BAG - 8
            else:
                assert got == omost_ids
                assert bag.text.split() == selected_words(region.prefixes, region.suffixes, bag.items)
            assert bag.tokens == len(got)
        n_bags += len(rp.bags)
    assert n_bags > len(canvas.regions)  # the fixtures do need several bags per region
    assert result.n_chunks == n_bags


def test_a_bag_of_exactly_75_tokens_is_one_bag_and_one_chunk():
    prefixes = ['A yard.']
    suffixes = [' '.join(['cat'] * 36), ' '.join(['dog'] * 36), 'A ball.']
    assert ref.n_tokens(prefixes[0]) + ref.n_tokens(suffixes[0]) + ref.n_tokens(suffixes[1]) == 75
    bags, _ = region_bags(prefixes, suffixes, offline_counter, chunk_count=ref.host_chunk_count)
    assert [list(b.items) for b in bags] == [g for g, _ in ref.omost_bags(prefixes, suffixes)] == [[0, 1], [2]]
    assert bags[0].tokens == 75 and not bags[0].cropped


def test_over_long_sub_prompt_is_cropped_by_words_like_omosts_truncation():
    prefixes = ['A quiet harbour at dawn.', 'A small red fishing boat.']
    long_one = ', '.join(f'detail number {i} of the weathered hull' for i in range(14)) + '.'
    suffixes = ['Gulls circle overhead.', long_one, 'Mist on the water.']
    assert ref.n_tokens(long_one) > 75
    bags, warnings = region_bags(prefixes, suffixes, offline_counter)
    expected = ref.omost_bags(prefixes, suffixes)
    assert [list(b.items) for b in bags] == [g for g, _ in expected] == [[0], [1], [2]]
    got = ref.ids(bags[1].text)
    assert bags[1].cropped and got == expected[1][1][:len(got)] and 70 <= len(got) <= 75
    assert any('cropped' in w for w in warnings)


SUBPROMPT_WORDS = ['a', 'cat', 'sits', 'on', 'the', 'sofa,', 'glistening', 'scales', 'unpredictability', '16:9',
                   '(soft', 'light)', 'AND', 'BREAK', '<lora:x:1>', 'über-detailed', '1girl', 'score_9', '...',
                   'a\\b', '[dog|fox]', 'hyperrealistic', 'photograph.', '2024']
subprompt = st.lists(st.sampled_from(SUBPROMPT_WORDS), min_size=0, max_size=70).map(' '.join)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefixes=st.lists(subprompt, min_size=1, max_size=2), suffixes=st.lists(subprompt, max_size=10))
def test_random_sub_prompts_never_overflow_and_keep_order(prefixes, suffixes):
    bags, _ = region_bags(prefixes, suffixes, offline_counter)
    assert [i for b in bags for i in b.items] == list(range(len(suffixes)))
    head_tokens = sum(ref.n_tokens(p) for p in prefixes)
    for bag in bags:
        assert ref.n_tokens(bag.text) <= ref.BAG
        if not bag.cropped and head_tokens <= ref.BAG:  # an empty bag is written '.' so that it still is a chunk
            assert bag.text.split() == (selected_words(prefixes, suffixes, bag.items) or ['.'])
    if head_tokens <= ref.BAG and suffixes:
        assert [list(b.items) for b in bags] == [g for g, _ in ref.omost_bags(prefixes, suffixes)]
    if head_tokens > ref.BAG:  # a head Omost could not encode is cropped, leaving room for details
        assert all(ref.n_tokens(b.text) - ref.n_tokens(' '.join(suffixes[i] for i in b.items)) <= CROPPED_HEAD_TOKENS
                   for b in bags if not b.cropped)


def test_head_over_75_tokens_is_cropped_global_description_first():
    global_desc = ' '.join(['An enormous ancient castle'] * 20) + '.'
    own = 'A tiny knight.'
    bags, warnings = region_bags([global_desc, own], ['Shiny armour.', 'A red plume.'], offline_counter)
    assert ref.n_tokens(global_desc) > 75
    assert len(bags) == 1 and bags[0].items == (0, 1)
    assert 'A tiny knight. Shiny armour. A red plume.' in bags[0].text
    assert ref.n_tokens(bags[0].text.split(' A tiny knight.')[0] + ' A tiny knight.') <= CROPPED_HEAD_TOKENS
    assert any('cropped' in w for w in warnings)


# ---------------------------------------------------------------------------------------------------------------
# The prompt box and the presets


def test_user_text_goes_into_every_bag_or_the_global_region_only():
    canvas = canvas_of('dragon_battle.canvas.py')
    user = '(masterpiece:1.2), best quality <lora:detail:0.8> BREAK'
    every = build_host_prompt(canvas, offline_counter, user_text=user)
    only_global = build_host_prompt(canvas, offline_counter, user_text=user, user_target='global')
    for result, target in ((every, 'every'), (only_global, 'global')):
        for rp in result.regions:
            for bag in rp.bags:
                has = bag.host_text.startswith('(masterpiece:1.2), best quality break,')
                assert has == (target == 'every' or rp.index == 0)
                assert '<lora' not in bag.host_text and 'BREAK' not in bag.host_text
                assert sum(ref.n_tokens(t) for t, _ in ref.parse_host_prompt(bag.host_text)['chunks'][0]) <= 75
    # the prompt box counts against the bags like a prefix: more bags than without it
    assert every.n_chunks > build_host_prompt(canvas, offline_counter).n_chunks


def test_user_text_too_long_for_the_bags_is_a_clear_error():
    canvas = canvas_of('dragon_battle.canvas.py')
    with pytest.raises(CanvasError, match='prompt box'):
        build_host_prompt(canvas, offline_counter, user_text=', '.join(['very detailed'] * 20))
    with pytest.raises(CanvasError, match="prompt target"):
        build_host_prompt(canvas, offline_counter, user_target='local')


def test_pony_prepends_score_tags_once_per_bag_and_stays_within_75():
    canvas = canvas_of('dragon_battle.canvas.py')
    result = build_host_prompt(canvas, offline_counter, preset='pony')
    for rp in result.regions:
        for bag in rp.bags:
            assert bag.text.startswith('score_9, score_8_up, score_7_up, ')
            assert bag.text.count('score_9') == 1
            assert ref.n_tokens(bag.text) <= ref.BAG
    assert result.n_chunks >= build_host_prompt(canvas, offline_counter).n_chunks


def test_anime_replacements_apply_per_sub_prompt_before_bagging():
    code = read_fixture('dragon_battle.canvas.py').replace(
        "description='A group of fierce warriors.'", "description='Two girls and a man face a woman.'").replace(
        "'They are armed with swords, shields, and spears, ready for battle.'",
        "'A girl and two men, a GIRL with a man-made sword, the woman\\'s shield, women and boys.'")
    canvas = load_canvas(code).canvas
    result = build_host_prompt(canvas, offline_counter, preset='anime')
    warriors = next(rp for rp, r in zip(result.regions, canvas.regions) if '2girls' in ' '.join(
        b.text for b in rp.bags))
    text = ' '.join(b.text for b in warriors.bags)
    assert '2girls and 1boy face 1girl.' in text
    assert '1girl and 2boys, 1girl with a man-made sword, the woman\'s shield, multiple girls and multiple boys.' \
        in text
    for rp in result.regions:
        for bag in rp.bags:
            assert ref.n_tokens(bag.text) <= ref.BAG


def test_presets_file_format_and_errors(tmp_path):
    shipped = load_presets()
    assert {'none', 'anime', 'pony', 'illustrious'} <= set(shipped)
    assert shipped['pony'].replace == shipped['anime'].replace
    assert load_presets(str(tmp_path / 'missing.json')).keys() == shipped.keys()

    def write(data):
        path = tmp_path / 'presets.json'
        path.write_text(data if isinstance(data, str) else json.dumps(data), encoding='utf-8')
        return str(path)

    mine = write({'format': 'omost-presets', 'version': 1, 'presets': {
        'cats': {'extends': 'pony', 'replace': [['a cat', '1cat'], ['a man', 'a gentleman']], 'append': 'cat ears'},
        'pony': {'prepend': 'score_9,'}}})
    presets = load_presets(mine)
    assert presets['pony'].prepend == 'score_9,' and presets['pony'].replace == ()
    cats = presets['cats']
    assert cats.prepend == 'score_9,' and cats.append == 'cat ears'
    assert cats.apply('A cat and a man and A  Cat.') == '1cat and a gentleman and 1cat.'

    bad = {
        '{"format": "omost-presets", "version": 1,\n "presets": {,}}': r'line 2, column \d+: .*not valid JSON',
        json.dumps({'format': 'other'}): 'format',
        json.dumps({'format': 'omost-presets', 'version': 9, 'presets': {}}): 'version 9',
        json.dumps({'format': 'omost-presets', 'version': 1, 'presets': {'x': {'prepend': 1}}}): '"prepend" must',
        json.dumps({'format': 'omost-presets', 'version': 1, 'presets': {'x': {'replce': []}}}): 'unknown key',
        json.dumps({'format': 'omost-presets', 'version': 1, 'presets': {'x': {'replace': [['a']]}}}): 'pair',
        json.dumps({'format': 'omost-presets', 'version': 1, 'presets': {'x': {'replace': [[',', 'y']]}}}): 'a word',
        json.dumps({'format': 'omost-presets', 'version': 1, 'presets': {'x': {'extends': 'nope'}}}): 'does not exist',
        json.dumps({'format': 'omost-presets', 'version': 1, 'presets': {
            'x': {'extends': 'y'}, 'y': {'extends': 'x'}}}): 'extends itself',
    }
    for text, message in bad.items():
        with pytest.raises(CanvasError, match=message):
            load_presets(write(text))
    with pytest.raises(CanvasError, match='unknown tag preset'):
        build_host_prompt(canvas_of('dragon_battle.canvas.py'), offline_counter, preset='nope')


def test_cli_bags_prints_bags_prompt_and_map(capsys):
    path = fixture_path('dragon_battle.canvas.py')
    assert cli_main(['bags', path, '--preset', 'pony', '--prompt', 'source_anime <lora:x:1>']) == 0
    out = json.loads(capsys.readouterr().out)
    regions = out['regions']
    assert [r['label'] for r in regions][0] == 'A fierce battle between warriors and a dragon.'
    n_chunks = sum(len(r['bags']) for r in regions)
    assert out['token_region']['length'] == 77 * n_chunks
    assert [c[:2] for c in out['token_region']['chunks']] == [r['chunks'] for r in regions]
    for r in regions:
        for bag in r['bags']:
            assert bag['tokens'] == ref.n_tokens(bag['text']) <= 75
            assert bag['text'].startswith('score_9, score_8_up, score_7_up, source_anime, ')
    assert len(ref.literal_chunks(out['prompt'])) == n_chunks
