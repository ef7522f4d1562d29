"""`python -m lib_omost bench canvas`: parse + colour sketch of the dragon fixture, median of 20 runs."""

import os
import statistics
import time

from lib_omost.canvas import parse_canvas
from lib_omost.sketch import overlay_preview, sketch_array

FIXTURE = os.path.join(os.path.dirname(__file__), '..', '..', 'tests', 'fixtures', 'dragon_battle.canvas.py')


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(args) -> int:
    with open(FIXTURE, encoding='utf-8') as f:
        code = f.read()
    canvas = parse_canvas(code).canvas
    runs = 20
    rows = [
        ('parse', _median_ms(lambda: parse_canvas(code), runs)),
        ('sketch 1024x1024', _median_ms(lambda: sketch_array(canvas, 1024, 1024), runs)),
        ('sketch 1024x1024 blur 40', _median_ms(lambda: sketch_array(canvas, 1024, 1024, blur=40), runs)),
        ('parse + sketch', _median_ms(lambda: sketch_array(parse_canvas(code).canvas, 1024, 1024), runs)),
        ('overlay preview 896x1152', _median_ms(lambda: overlay_preview(canvas, 896, 1152), runs)),
    ]
    print(f'{"step (dragon fixture, median of 20)":40s} {"ms":>8s}')
    for name, ms in rows:
        print(f'{name:40s} {ms:8.2f}')
    total = rows[3][1]
    print(f'canvas: parse + sketch {total:.2f} ms (goal < 20 ms)')
    return 0
