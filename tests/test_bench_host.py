"""`python -m lib_omost bench host` against a loopback stand-in for the WebUI's txt2img endpoint: the runs
alternate, Omost jobs carry the canvas, and the table reports what the server did (here: Omost jobs take twice as
long and allocate 64 MB more)."""

import http.server
import json
import os
import threading
import time

from lib_omost import cli


class _WebUI(http.server.BaseHTTPRequestHandler):
    jobs = []

    def do_POST(self):
        job = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        omost = 'Omost' in job.get('alwayson_scripts', {})
        _WebUI.jobs.append(job)
        if omost:
            ballast = bytearray(64 * 1024 * 1024)  # touched: resident
            ballast[::4096] = b'x' * len(ballast[::4096])
            del ballast
        time.sleep(0.2 if omost else 0.1)
        body = json.dumps({'images': [], 'info': '{}'}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_bench_host_alternates_and_reports_time_and_memory_side_by_side(tmp_path, capsys, dragon_code):
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _WebUI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _WebUI.jobs = []
    try:
        out = tmp_path / 'bench.json'
        assert cli.main(['bench', 'host', '--url', f'http://127.0.0.1:{server.server_port}', '--pid',
                         str(os.getpid()), '--jobs', 'random-sd15:128:3', '--repeats', '2', '--json', str(out)]) == 0
    finally:
        server.shutdown()
    kinds = ['omost' if 'alwayson_scripts' in job else 'plain' for job in _WebUI.jobs]
    assert kinds == ['plain', 'omost', 'plain', 'omost', 'omost', 'plain']  # warm-up, then alternating
    assert all(job['alwayson_scripts']['Omost']['args'] == [True, dragon_code] for job in _WebUI.jobs
               if 'alwayson_scripts' in job)
    assert [(j['width'], j['steps']) for j in _WebUI.jobs] == [(128, 1)] * 2 + [(128, 3)] * 4  # warm-up: 1 step
    assert {j['override_settings']['sd_model_checkpoint'] for j in _WebUI.jobs} == {'random-sd15'}
    row, = json.loads(out.read_text())
    assert row['omost_wall'] > row['plain_wall'] + 0.05  # each Omost job sleeps 0.1 s longer
    assert row['omost_peak_mb'] - row['plain_peak_mb'] > 32
    printed = capsys.readouterr().out
    assert '| random-sd15 | 128 | 3 | 2 |' in printed and 'host: Omost/plain' in printed and 'over the goal' in printed


def test_bench_host_without_a_url_is_one_line():
    assert cli.main(['bench', 'host']) == 1
