"""`python -m tests.e2e.tiny_gguf FILE`: the tests' scripted tiny GGUF (lib_omost.llm.tiny.build_scripted_gguf),
replying to any chat with the dragon canvas, for the gguf backend in a real WebUI (tests/e2e/editor_in_host.py
--gguf FILE; FILE inside the WebUI's models folder, where the extension's path settings may point). Needs `gguf`."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]

from lib_omost.llm.tiny import build_scripted_gguf  # noqa: E402
from ui_helpers import canvas_reply  # noqa: E402

if __name__ == '__main__':
    with open(os.path.join(ROOT, 'tests', 'fixtures', 'dragon_battle.canvas.py'), encoding='utf-8') as f:
        reply = canvas_reply(f.read())
    os.makedirs(os.path.dirname(os.path.abspath(sys.argv[1])), exist_ok=True)
    # the size tests/test_ui_browser_gguf.py uses: the reply streams for seconds, so the regions arrive live
    print(build_scripted_gguf(sys.argv[1], reply, layers=4, ff=2048))
