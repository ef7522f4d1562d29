"""`python -m lib_omost bench live` runs end to end (a high token rate, yet a reply long enough in time for the live
preview to update the editor while it streams); its figures are for the README."""

import argparse

from lib_omost.bench import live


def test_the_live_preview_benchmark_streams_both_ways_and_prints_the_ratio(capsys):
    args = argparse.Namespace(quick=True, rate=300.0, repeats=1)
    live.main(args)  # the exit code judges the goal; at 300 tokens/s on a shared machine it is noise
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith('Chat over a loopback server: 560 tokens at 300 tokens/s')
    off, on = (line.split() for line in lines[2:4])
    assert off[0] == 'off' and on[0] == 'on'
    assert int(on[-1]) > int(off[-1]) == 1  # the live preview updated the editor before the end; plain did not
    assert 'live/plain chat tokens/s' in lines[4]
