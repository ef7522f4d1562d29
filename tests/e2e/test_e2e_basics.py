"""Omost in a real WebUI: no trace on the images around it, and the regions reach the image."""

from .client import omost_args


def test_baseline_omost_baseline(webui, job, canvas):
    """A plain job gives the same pixels before and after an Omost job (no trace), and Omost changes them."""
    before = webui.txt2img(job()).ok()
    with_omost = webui.txt2img(job(alwayson_scripts=omost_args(canvas))).ok()
    after = webui.txt2img(job()).ok()
    assert before.pixels == after.pixels
    assert with_omost.pixels != before.pixels
    assert 'Omost: "' in with_omost.infotexts[0]
    assert 'Omost' not in after.infotexts[0]


def test_regions_on_and_off_differ(webui, job, canvas, reference):
    """The same bags with and without regional attention: the attention hook changes the image."""
    on = webui.txt2img(job(alwayson_scripts=omost_args(canvas, {'regions': True}))).ok()
    off = webui.txt2img(job(alwayson_scripts=omost_args(canvas, {'regions': False}))).ok()
    plain = reference('plain')
    assert on.pixels != off.pixels
    assert off.pixels != plain.pixels  # the bags alone are another prompt
    assert on.pixels == reference('omost').pixels  # deterministic, and the options' defaults
