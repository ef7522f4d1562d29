"""The soak benchmark's own measuring tools (tests/e2e/soak.py): memory of a process with its children, and the
console log's tracebacks since a given byte, the ones mentioning the extension picked out."""

import os
import subprocess
import sys

from tests.e2e import soak


def own_rss() -> int:
    with open('/proc/self/status', encoding='utf-8') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmRSS:'))


def test_rss_counts_the_children():
    child = subprocess.Popen([sys.executable, '-c', 'import time; b = bytearray(200 * 2**20); b[::4096] = b"x" * '
                              'len(b[::4096]); print(1, flush=True); time.sleep(60)'], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # its 200 MB are touched
        assert child.pid in soak._children(os.getpid())
        assert soak.rss_bytes(child.pid) >= 200 * 2**20
        assert soak.rss_bytes(os.getpid()) - own_rss() >= 190 * 2**20  # the parent's figure includes the child
    finally:
        child.kill()
        child.wait()


def test_tracebacks_since_the_start_and_which_mention_omost(tmp_path):
    log = tmp_path / 'webui.log'
    old = 'Traceback (most recent call last):\n  File "x/omost.py", line 1\nValueError: before the run\n'
    log.write_text(old)
    start = log.stat().st_size
    with open(log, 'a') as f:
        f.write('[Omost] a refusal, one line\n'
                '*** Error running process: x\n'
                'Traceback (most recent call last):\n'
                '  File "extensions/sd-webui-omost/omost_webui/generation.py", line 3, in process\n'
                '    raise KeyError\n'
                'KeyError: 1\n'
                'Loading weights\n'
                'Traceback (most recent call last):\n'
                '  File "modules/processing.py", line 9, in run\n'
                'RuntimeError: the host\'s own\n')
    blocks = soak.tracebacks(str(log), start)
    assert len(blocks) == 2 and 'before the run' not in ''.join(blocks)
    assert blocks[0].endswith('KeyError: 1') and blocks[1].endswith("RuntimeError: the host's own")
    assert [b for b in blocks if 'omost' in b.lower()] == [blocks[0]]
    assert soak.tracebacks(str(tmp_path / 'missing.log'), 0) == []


def test_anonymous_memory_leaves_out_the_mapped_file(tmp_path):
    """The leak figure (RssAnon) counts what the process allocated, not the pages of a memory-mapped file (the
    checkpoint), which VmRSS counts and the kernel drops and reads back under memory pressure."""
    data = tmp_path / 'weights.bin'
    data.write_bytes(os.urandom(2**20) * 120)
    code = ('import mmap, sys, time; f = open(sys.argv[1], "rb"); m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ);'
            ' s = sum(m[i] for i in range(0, len(m), 4096)); b = bytearray(200 * 2**20); b[::4096] = b"x" * '
            'len(b[::4096]); print(s, flush=True); time.sleep(60)')
    child = subprocess.Popen([sys.executable, '-c', code, str(data)], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the file's 120 MB are mapped and read, 200 MB allocated and touched
        rss, anon = soak.rss_bytes(child.pid), soak.rss_bytes(child.pid, 'RssAnon')
        assert soak.memory(child.pid)['anon'] >= 200 * 2**20
        assert 200 * 2**20 <= anon < 300 * 2**20  # the interpreter's own few MB, not the file
        assert rss - anon >= 110 * 2**20          # the mapped file is in VmRSS only
    finally:
        child.kill()
        child.wait()


def test_slope_per_100_jobs():
    mb = 2**20
    assert soak.slope_per_100([(i, (1000 + i) * mb) for i in range(10, 50)]) == 100.0
    assert soak.slope_per_100([(i, 5 * mb) for i in range(10, 50)]) == 0.0
    assert soak.slope_per_100([(10, mb)]) is None
