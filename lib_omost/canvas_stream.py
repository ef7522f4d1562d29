"""The canvas of a reply that is still streaming: each complete Canvas call, as soon as it closes.

`CanvasStream.feed(reply_so_far)` looks only at the text after the last complete statement, and only when a new
line arrived, so a reply is tokenized about once per statement and parsed once per call, never once per token.
The result is built with the canvas core's own whitelist, validation and repair (nothing is executed).
"""

from __future__ import annotations

import ast
import re
import warnings as _warnings

from lib_omost.canvas import (CanvasError, ParseResult, Canvas, _Builder, _complete_statements_end, build_global,
                              build_local, sort_far_to_near)

_FENCE_OPEN = re.compile(r'```[ \t]*(?:python|py)?[ \t]*\r?\n', re.IGNORECASE)
_FENCE_CLOSE = re.compile(r'\r?\n[ \t]*```')


class CanvasStream:
    def __init__(self):
        self._code_start = None   # offset of the code in the reply (after the opening fence)
        self._done = 0            # offset in the code just after the last complete statement
        self._seen = 0            # code length at the last look
        self._builder = _Builder([])
        self.result: ParseResult | None = None  # the canvas of the complete calls so far
        self.code = ''            # the code of the complete statements so far

    def feed(self, reply: str) -> bool:
        """Take the reply so far; True when a new complete call changed `result`."""
        if self._code_start is None:
            fence = _FENCE_OPEN.search(reply)
            if fence is None:
                if not reply.lstrip().startswith(('canvas', '#')):
                    return False
                self._code_start = 0  # bare code, no fence
            else:
                self._code_start = fence.end()
        code = reply[self._code_start:]
        close = _FENCE_CLOSE.search(code, max(0, self._done - 1))
        if close:
            code = code[:close.start()] + '\n'
        if len(code) == self._seen or '\n' not in code[max(self._done, self._seen - 1):]:
            self._seen = len(code)
            return False
        self._seen = len(code)
        tail = code[self._done:]
        tail = tail[:tail.rfind('\n') + 1]  # whole lines only: tokenize would close a cut-off last line itself
        end = _complete_statements_end(tail)
        if not end:
            return False
        try:
            with _warnings.catch_warnings():
                _warnings.simplefilter('ignore')
                module = ast.parse(tail[:end], mode='exec')
        except (SyntaxError, ValueError, RecursionError):
            return False  # a statement the final parse will report; wait for more text
        self._done += end
        self.code = code[:self._done]
        changed = False
        for stmt in module.body:
            try:
                self._builder.statement(stmt)
                changed = True
            except CanvasError:
                pass  # a bad call: the finished reply's parse reports it
        return changed and self._rebuild()

    def _rebuild(self) -> bool:
        b = self._builder
        if b.global_args is None:
            return False
        warnings = []
        try:
            glob = build_global(*b.global_args, warnings)
        except CanvasError:
            return False
        regions = []
        for i, (values, node) in enumerate(b.local_args):
            try:
                regions.append(build_local(values, node, i + 1, glob.prefixes, warnings))
            except CanvasError:
                continue
        self.result = ParseResult(Canvas(glob, sort_far_to_near(regions)), warnings)
        return True
