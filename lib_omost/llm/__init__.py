"""Omost's LLM chat: one engine over an in-process transformers model or an OpenAI-compatible server.

    conv = Conversation()
    for upd in stream_reply(backend, conv, 'a cat on a sofa', ChatParams(), stop_event, cache=cache):
        show(upd.text)                       # cumulative; upd.error / upd.notice are one-line messages

Nothing here imports transformers, torch or bitsandbytes until a local model is used.
"""

from lib_omost.llm.cache import ResponseCache
from lib_omost.llm.conversation import (CONTEXT_TOKENS, SYSTEM_PROMPT, ChatError, ChatParams, ChatUpdate,
                                        Conversation, Turn)
from lib_omost.llm.engine import stream_reply
from lib_omost.llm.local import LocalBackend
from lib_omost.llm.models import DEFAULT_MODEL, OMOST_MODELS, ModelInfo, download_model
from lib_omost.llm.server import ServerBackend, normalize_base_url

__all__ = ['CONTEXT_TOKENS', 'DEFAULT_MODEL', 'OMOST_MODELS', 'SYSTEM_PROMPT', 'ChatError', 'ChatParams',
           'ChatUpdate', 'Conversation', 'LocalBackend', 'ModelInfo', 'ResponseCache', 'ServerBackend', 'Turn',
           'download_model', 'normalize_base_url', 'stream_reply']
