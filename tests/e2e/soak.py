"""Soak: a long run of mixed API jobs against a running WebUI (A1111 1.10.1 or Forge with this extension and
`--api`), with the WebUI's memory sampled, then the checks that a long run must pass:

- RSS (the WebUI process and its children, /proc/<pid>/status VmRSS) at the start, after the warm-up and at the
  end; growth after the warm-up (goal: <= 50 MB) and its slope. The same for RssAnon, the anonymous part, which is
  what a leak grows: VmRSS also counts the pages of the memory-mapped checkpoint (RssFile), which the kernel drops and
  reads back as other processes need memory (on a shared machine VmRSS fell by 1.1 GB in the middle of a run), so
  the goal is checked on RssAnon;
- no residual hook or patch: the plain job, repeated through the run, gives the same pixels every time (first and
  last included), and so does every deterministic Omost job of the same kind;
- hostile canvases refused (422) every time, interrupted jobs answered;
- the WebUI's console log (from the byte where the run started) has no traceback that mentions omost.

Bounded by count and time, whichever comes first:

    python tests/e2e/soak.py --url http://127.0.0.1:7871 --jobs 300 --minutes 40 \\
        --pid-file HOST_DIR/webui.pid --log HOST_DIR/webui.log --out EVIDENCE_DIR/soak-forge.json

Prints one line per job and a summary (also written as JSON to --out). Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from conftest import read_fixture  # noqa: E402  (tests/conftest.py)
from tests.e2e.client import WebUI, omost_args  # noqa: E402
from tests.e2e.conftest import make_job  # noqa: E402

MB = 1024 * 1024
DRAGON = read_fixture('dragon_battle.canvas.py')
DINOSAUR = read_fixture('dinosaur_edit.canvas.py')
COMFY = read_fixture('comfyui_omost_conditioning.json')
HOSTILE = [  # canvases an API client may send: each must be a 422 with nothing run
    "canvas = Canvas()\n__import__('os').system('echo soak-hostile')\n",
    "canvas = Canvas()\ncanvas.set_global_description(description=open('/etc/passwd').read(), detailed_descriptions=[],"
    " tags='', HTML_web_color_name='red')\n",
    '{"regions": [' * 200 + ']}' * 200,
    "canvas = Canvas()\n" + "canvas.add_local_description(location='on the left', offset='no offset', area='a small"
    " square area', distance_to_viewer=1.0, description='x' * 10**9, detailed_descriptions=[], tags='', atmosphere='',"
    " style='', quality_meta='', HTML_web_color_name='red')\n",
    'x' * 300_000,
]


# ---------------------------------------------------------------------------------------------------------------
# Memory


def _children(pid: int) -> list:
    """pid and every descendant (from /proc/*/stat's parent field)."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat', encoding='utf-8') as f:
                    stat = f.read()
                parents.setdefault(int(stat.rsplit(')', 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def rss_bytes(pid: int, field: str = 'VmRSS') -> int:
    """`field` of /proc/<pid>/status (VmRSS, RssAnon, RssFile) summed over pid and its children, in bytes."""
    total = 0
    for p in _children(pid):
        try:
            with open(f'/proc/{p}/status', encoding='utf-8') as f:
                for line in f:
                    if line.startswith(field + ':'):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def memory(pid: int) -> dict:
    """{'rss': VmRSS, 'anon': RssAnon} of pid and its children, in bytes."""
    return {'rss': rss_bytes(pid), 'anon': rss_bytes(pid, 'RssAnon')}


def slope_per_100(samples) -> float | None:
    """Least-squares slope of [(job index, bytes)], in MB per 100 jobs (None for fewer than two distinct jobs)."""
    if len(samples) < 2:
        return None
    xs, ys = [i for i, _ in samples], [r / MB for _, r in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return round(100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var, 2) if var else None


class Sampler(threading.Thread):
    """RSS every `interval` seconds in the background (the peak between jobs)."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.done = pid, interval, 0, threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))


# ---------------------------------------------------------------------------------------------------------------
# Jobs


def hires(host: str) -> dict:
    extra = {'enable_hr': True, 'hr_scale': 2, 'hr_upscaler': 'Latent', 'denoising_strength': 0.5,
             'hr_second_pass_steps': 2}
    if host == 'forge':  # Forge refuses a hires job through the API without it (with or without Omost)
        extra['hr_additional_modules'] = ['Use same choices']
    return extra


def kinds(host: str, size: int, steps: int) -> list:
    """(name, payload changes, expected status, deterministic) of each kind of job, in the order they cycle."""
    wide = {'width': size + size // 2, 'height': size}
    tall = {'width': size, 'height': size + size // 2}
    out = [
        ('plain', {}, 200, True),
        ('omost-dragon', {'alwayson_scripts': omost_args(DRAGON)}, 200, True),
        ('hostile-{}', None, 422, True),
        ('omost-dinosaur-wide', {**wide, 'alwayson_scripts': omost_args(DINOSAUR, {'strength': 0.8})}, 200, True),
        ('plain-tall', {**tall, 'seed': 99}, 200, True),
        ('omost-comfy-json', {'alwayson_scripts': omost_args(COMFY)}, 200, True),
        ('interrupted', {'steps': max(20, steps * 10), 'alwayson_scripts': omost_args(DRAGON)}, 200, False),
        ('omost-hires', {**hires(host), 'alwayson_scripts': omost_args(DRAGON)}, 200, True),
        ('omost-batch', {'batch_size': 2, 'seed': 7, 'alwayson_scripts': omost_args(DINOSAUR)}, 200, True),
        ('omost-sketch-tall', {**tall, 'alwayson_scripts': omost_args(DRAGON, {'sketch': True})}, 200, True),
        ('omost-off', {'alwayson_scripts': omost_args(DRAGON, enabled=False)}, 200, True),
    ]
    return out


def run_interrupted(webui: WebUI, payload: dict):
    """Start the job, interrupt it once it samples; (result, whether the interrupt landed during sampling)."""
    result = {}
    worker = threading.Thread(target=lambda: result.update(res=webui.txt2img(payload)), daemon=True)
    worker.start()
    landed = False
    while worker.is_alive():
        status, progress = webui.get('/sdapi/v1/progress?skip_current_image=true')
        if status == 200 and isinstance(progress, dict) and (progress.get('state') or {}).get('sampling_step', 0) >= 1:
            landed = worker.is_alive()
            webui.interrupt()
            break
        time.sleep(0.2)
    worker.join()
    return result['res'], landed


# ---------------------------------------------------------------------------------------------------------------
# The console log


def tracebacks(log_path: str, start: int) -> list:
    """Traceback blocks the log gained since byte `start` (each up to 60 lines)."""
    if not log_path or not os.path.exists(log_path):
        return []
    with open(log_path, 'rb') as f:
        f.seek(start)
        lines = f.read().decode('utf-8', errors='replace').splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith('Traceback (most recent call last)'):
            block = [line]
            for nxt in lines[i + 1:i + 60]:
                block.append(nxt)
                if nxt and not nxt.startswith((' ', '\t')) and not nxt.startswith('Traceback'):
                    break  # the exception line ends the block
            blocks.append('\n'.join(block))
    return blocks


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--url', required=True)
    ap.add_argument('--jobs', type=int, default=300)
    ap.add_argument('--minutes', type=float, default=40)
    ap.add_argument('--pid-file', required=True, help="the WebUI's pid file (the harness's webui.pid)")
    ap.add_argument('--log', default='', help="the WebUI's console log, scanned for tracebacks")
    ap.add_argument('--host', default='', help="'forge' or 'a1111' (default: guessed from the options)")
    ap.add_argument('--ckpt', default='', help='checkpoint file to run (default: the loaded one)')
    ap.add_argument('--size', type=int, default=64)
    ap.add_argument('--steps', type=int, default=2)
    ap.add_argument('--warmup', type=int, default=0, help='jobs before the warm-up RSS (default: one cycle of '
                    'every kind, so each size and feature has run once)')
    ap.add_argument('--out', default='', help='write the summary JSON here')
    args = ap.parse_args(argv)

    with open(args.pid_file, encoding='utf-8') as f:
        pid = int(f.read().split()[0])
    webui = WebUI(args.url)
    host = args.host or ('forge' if 'forge_preset' in webui.options() else 'a1111')
    ckpt = webui.switch_checkpoint(args.ckpt) if args.ckpt else webui.options().get('sd_model_checkpoint')
    cycle = kinds(host, args.size, args.steps)
    warmup = args.warmup or len(cycle)
    log_start = os.path.getsize(args.log) if args.log and os.path.exists(args.log) else 0

    def payload(changes):
        return make_job(ckpt, **{'width': args.size, 'height': args.size, 'steps': args.steps, **changes})

    sampler = Sampler(pid)
    sampler.start()
    started = time.monotonic()
    deadline = started + args.minutes * 60
    rss = {'start': memory(pid)}
    samples = []              # (job index, memory()) after each job
    first_pixels = {}         # kind -> pixels of its first run
    changed = {}              # kind -> runs whose pixels differ from the first
    counts, failures, interrupts = {}, [], {'landed': 0, 'finished_first': 0}
    plain_runs = []           # pixels of every 'plain' job
    hostile_i = 0
    n = 0
    stopping = []  # SIGTERM / Ctrl-C: finish the job in flight, then the last plain job and the summary
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *a: stopping.append(1))
    while n < args.jobs and time.monotonic() < deadline and not stopping:
        name, changes, expected, deterministic = cycle[n % len(cycle)]
        if changes is None:  # hostile: rotate through the list
            name = name.format(hostile_i % len(HOSTILE))
            changes = {'alwayson_scripts': omost_args(HOSTILE[hostile_i % len(HOSTILE)])}
            hostile_i += 1
        if name == 'interrupted':
            res, landed = run_interrupted(webui, payload(changes))
            interrupts['landed' if landed else 'finished_first'] += 1
        else:
            res = webui.txt2img(payload(changes))
        n += 1
        counts[name] = counts.get(name, 0) + 1
        if res.status != expected:
            failures.append(f'job {n} {name}: HTTP {res.status} (expected {expected}): {res.detail[:300]}')
        elif deterministic and res.status == 200:
            if name not in first_pixels:
                first_pixels[name] = res.pixels
            elif res.pixels != first_pixels[name]:
                changed[name] = changed.get(name, 0) + 1
            if name == 'plain':
                plain_runs.append(res.pixels)
        now = memory(pid)
        samples.append((n, now))
        if n == warmup:
            rss['warmup'] = now
        print(f'{n:4d} {name:22s} {res.status} {res.seconds:7.2f}s rss {now["rss"] / MB:8.1f} MB anon '
              f'{now["anon"] / MB:8.1f} MB'
              f'{" " + res.pixels[0][:10] if res.pixels else ""}', flush=True)
    # The last job is the plain one again, so first and last plain jobs are compared whatever the count.
    last = webui.txt2img(payload({}))
    n += 1
    if last.status == 200:
        plain_runs.append(last.pixels)
    else:
        failures.append(f'final plain job: HTTP {last.status}: {last.detail[:300]}')
    if 'omost-off' in first_pixels and first_pixels['omost-off'] != first_pixels.get('plain'):
        failures.append('Omost off (canvas sent, enabled false) gave other pixels than the plain job')
    rss['end'] = memory(pid)
    sampler.done.set()
    sampler.join()
    rss.setdefault('warmup', samples[min(warmup, len(samples)) - 1][1] if samples else rss['start'])
    after = [(i, m) for i, m in samples if i >= warmup]
    blocks = tracebacks(args.log, log_start)
    ours = [b for b in blocks if re.search('omost', b, re.IGNORECASE)]
    growth = {k: (rss['end'][k] - rss['warmup'][k]) / MB for k in ('rss', 'anon')}
    summary = {
        'host': host, 'url': args.url, 'ckpt': ckpt, 'size': args.size, 'steps': args.steps,
        'jobs': n, 'minutes': round((time.monotonic() - started) / 60, 1), 'warmup_jobs': warmup,
        'bounded_by': 'jobs' if n > args.jobs else 'signal' if stopping else 'time',
        'warmup_reached': len(samples) > warmup,
        'rss_mb': {k: round(v['rss'] / MB, 1) for k, v in rss.items()}, 'peak_rss_mb': round(sampler.peak / MB, 1),
        'growth_after_warmup_mb': round(growth['rss'], 1),
        'slope_mb_per_100_jobs': slope_per_100([(i, m['rss']) for i, m in after]),
        'anon_mb': {k: round(v['anon'] / MB, 1) for k, v in rss.items()},
        'anon_growth_after_warmup_mb': round(growth['anon'], 1),
        'anon_slope_mb_per_100_jobs': slope_per_100([(i, m['anon']) for i, m in after]),
        'plain_first_last_identical': len(plain_runs) >= 2 and plain_runs[0] == plain_runs[-1],
        'plain_runs': len(plain_runs), 'plain_all_identical': len({tuple(p) for p in plain_runs}) == 1,
        'kinds_whose_pixels_changed': changed, 'counts': counts, 'interrupts': interrupts,
        'failures': failures, 'tracebacks': len(blocks), 'tracebacks_mentioning_omost': ours,
    }
    summary['ok'] = (not failures and not ours and not changed and summary['plain_first_last_identical']
                     and growth['anon'] <= 50 and summary['warmup_reached'])
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w', encoding='utf-8') as f:
            f.write(text + '\n')
    return 0 if summary['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
