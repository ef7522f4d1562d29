"""Complete LLM replies on disk, keyed by everything that decides them.

The key covers the backend kind, its address/model (or local model id), the whole conversation (system prompt
included) and the sampling parameters (seed included). One JSON file per reply; the folder is kept under
`max_bytes` by deleting the least recently used files (a hit refreshes the file's mtime).
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from lib_omost.atomic import write_atomic

FORMAT = 'omost-llm-reply'
STALE_TEMP_S = 600


class ResponseCache:
    def __init__(self, folder: str, max_bytes: int = 64 * 1024 * 1024):
        self.folder = folder
        self.max_bytes = int(max_bytes)

    @staticmethod
    def key(identity: dict, messages: list, params: dict) -> str:
        blob = json.dumps({'backend': identity, 'messages': messages, 'params': params},
                          sort_keys=True, ensure_ascii=False, separators=(',', ':'))
        return hashlib.sha256(blob.encode('utf-8')).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key + '.json')

    def get(self, key: str) -> str | None:
        path = self._path(key)
        try:
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
            os.utime(path)  # LRU: a hit makes the entry the newest
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get('format') != FORMAT or not isinstance(data.get('reply'), str):
            return None
        return data['reply']

    def put(self, key: str, reply: str):
        data = {'format': FORMAT, 'created': time.time(), 'reply': reply}
        write_atomic(self._path(key), json.dumps(data, ensure_ascii=False))  # readers never see half a file
        self.trim()

    def _entries(self) -> list:
        entries = []
        try:
            names = os.listdir(self.folder)
        except OSError:
            return entries
        for name in names:
            if name.endswith('.json'):
                try:
                    st = os.stat(os.path.join(self.folder, name))
                except OSError:
                    continue
                entries.append((st.st_mtime, st.st_size, name))
        return sorted(entries)

    def size(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def trim(self):
        self._remove_stale_temps()
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        for _, size, name in entries:  # oldest first
            if total <= self.max_bytes:
                break
            try:
                os.remove(os.path.join(self.folder, name))
            except OSError:
                continue
            total -= size

    def _remove_stale_temps(self, age_s: float = STALE_TEMP_S):
        """Temporary files of writers that were killed (lib_omost/atomic.py names them .<name>.<random>.tmp); a
        live writer needs milliseconds, so one older than `age_s` is a leftover."""
        try:
            names = [n for n in os.listdir(self.folder) if n.startswith('.') and n.endswith('.tmp')]
        except OSError:
            return
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                if time.time() - os.stat(path).st_mtime > age_s:
                    os.remove(path)
            except OSError:
                continue

    def clear(self) -> int:
        """Delete every cached reply; returns how many."""
        removed = 0
        for _, _, name in self._entries():
            try:
                os.remove(os.path.join(self.folder, name))
                removed += 1
            except OSError:
                pass
        return removed
