import pytest

from lib_omost.canvas import CanvasError
from lib_omost.options import RenderOptions, parse_options, parse_switch


def test_defaults_from_nothing():
    assert parse_options(None) == parse_options('') == parse_options({}) == RenderOptions()
    assert RenderOptions().sketch_denoise == 0.95


def test_round_trip_json():
    opts = parse_options({'strength': 0.5, 'start': 0.1, 'sketch': True, 'preset': 'pony', 'prompt_target': 'global'})
    assert parse_options(opts.to_json()) == opts and opts.strength == 0.5 and opts.sketch_blur == 40


@pytest.mark.parametrize('bad, message', [
    ({'strenght': 1}, "unknown Omost option(s) strenght"),
    ({'strength': 'high'}, "'strength' must be a number"),
    ({'strength': 9}, "'strength' must be between 0.0 and 2.0"),
    ({'regions': 2}, "'regions' must be true or false (also \"true\"/\"false\" or 0/1), got 2"),
    ({'hires': 'yes'}, "'hires' must be true or false"),
    ({'sketch': None}, "'sketch' must be true or false"),
    ({'sketch_denoise': 0}, "'sketch_denoise' must be between 0.05 and 1.0"),  # 0 would sample no steps
    ({'prompt_target': 'all'}, "'prompt_target' must be one of every, global"),
    ({'start': 0.8, 'end': 0.2}, 'step window is empty'),
    ('{nope', 'not valid JSON'),
    ([1, 2], 'must be an object'),
])
def test_bad_options_name_the_problem(bad, message):
    with pytest.raises(CanvasError) as e:
        parse_options(bad)
    assert message in str(e.value)


@pytest.mark.parametrize('value, expected', [
    (True, True), (False, False), ('true', True), ('false', False), ('False', False), (' TRUE ', True),
    (1, True), (0, False), (1.0, True), ('1', True), ('0', False)])
def test_switches_take_the_forms_api_clients_send(value, expected):
    assert parse_switch(value, 'x') is expected
    assert parse_options({'regions': value, 'sketch': value}) == RenderOptions(regions=expected, sketch=expected)


@pytest.mark.parametrize('value', ['no', 'yes', '', 2, -1, 0.5, None, [], {}, [True], {'enabled': True}])
def test_anything_else_is_not_a_switch(value):
    with pytest.raises(CanvasError, match=r'^arg must be true or false \(also "true"/"false" or 0/1\), got '):
        parse_switch(value, 'arg')
