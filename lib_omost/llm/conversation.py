"""Omost's conversation format: the system prompt the models were trained with, turns, sampling parameters.

`SYSTEM_PROMPT` is copied verbatim from lllyasviel/Omost `lib_omost/canvas.py` (Apache-2.0); the models answer
well only with exactly this text. `Conversation.messages()` follows Omost's `chat_fn`: the system prompt, then every
earlier (user, assistant) pair whose two sides are non-empty, then the new user message.
"""

from __future__ import annotations

import dataclasses

# Copied verbatim from lllyasviel/Omost lib_omost/canvas.py (Apache License 2.0).
SYSTEM_PROMPT = r'''You are a helpful AI assistant to compose images using the below python class `Canvas`:

```python
class Canvas:
    def set_global_description(self, description: str, detailed_descriptions: list[str], tags: str, HTML_web_color_name: str):
        pass

    def add_local_description(self, location: str, offset: str, area: str, distance_to_viewer: float, description: str, detailed_descriptions: list[str], tags: str, atmosphere: str, style: str, quality_meta: str, HTML_web_color_name: str):
        assert location in ["in the center", "on the left", "on the right", "on the top", "on the bottom", "on the top-left", "on the top-right", "on the bottom-left", "on the bottom-right"]
        assert offset in ["no offset", "slightly to the left", "slightly to the right", "slightly to the upper", "slightly to the lower", "slightly to the upper-left", "slightly to the upper-right", "slightly to the lower-left", "slightly to the lower-right"]
        assert area in ["a small square area", "a small vertical area", "a small horizontal area", "a medium-sized square area", "a medium-sized vertical area", "a medium-sized horizontal area", "a large square area", "a large vertical area", "a large horizontal area"]
        assert distance_to_viewer > 0
        pass
```'''

# Omost's README: an 8k context gives "about 5 to 6 rounds of conversational editing"; the models (phi-3's 128k
# included) cannot be trusted beyond it.
CONTEXT_TOKENS = 8192
# A canvas reply is typically 1,200-2,000 tokens; warn when the next one may not fit.
TYPICAL_REPLY_TOKENS = 2048
BUDGET_FULL = ('The conversation is about {n} tokens, over the {limit} tokens Omost models are good for. '
               'Start a new chat, or edit an earlier message to continue from there.')


class ChatError(Exception):
    """A failure the user can act on; str() is the one-line message shown in the chat."""


@dataclasses.dataclass
class ChatParams:
    seed: int = 12345
    temperature: float = 0.6  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 4096

    def cache_fields(self) -> dict:
        return {'seed': int(self.seed), 'temperature': float(self.temperature), 'top_p': float(self.top_p),
                'max_new_tokens': int(self.max_new_tokens)}


@dataclasses.dataclass
class ChatUpdate:
    text: str = ''                 # the reply so far (cumulative)
    done: bool = False             # the last update of this reply
    error: str | None = None       # one-line user-facing message
    partial: bool = False          # the reply was cut (stop, error, max tokens); it is kept in the conversation
    cached: bool = False           # served from the response cache
    notice: str | None = None      # context-budget warning, "answered without Canvas code", download progress...
    tokens: int = 0                # reply tokens so far: exact (local backend, server usage) or estimated
    tokens_exact: bool = False     # False: `tokens` is estimated from the characters (a server without usage)
    tokens_per_s: float = 0.0
    prompt_tokens: int = 0         # the conversation's size in tokens (estimated for servers)
    finish: str = ''               # on done: 'stop', 'length', 'cancelled', 'error', 'cached'
    stats: dict | None = None      # in-process backends: prompt_tokens, prompt_reused, model_calls, drafted,
                                   # accepted, reply_tokens (see lib_omost.llm.inprocess)


@dataclasses.dataclass
class Turn:
    """One exchange. Iterates as (user, assistant) so `for user, reply in conv.turns` works."""
    user: str
    assistant: str = ''
    partial: bool = False  # the reply was cut; kept and marked, still sent back to the model like Omost does
    edited_canvas: str | None = None  # the user edited this reply's canvas: sent back with this code instead

    def sent_reply(self) -> str:
        """The assistant's side as the model sees it next time: its reply, with the user's edited canvas."""
        if not self.edited_canvas:
            return self.assistant
        from lib_omost.canvas import replace_code
        return replace_code(self.assistant, self.edited_canvas)

    def __iter__(self):
        return iter((self.user, self.assistant))

    def __getitem__(self, i):
        return (self.user, self.assistant)[i]


PARTIAL_MARK = '\n\n*(reply cut off)*'
EDITED_MARK = '\n\n*(canvas edited by you: the next message continues from your edited canvas)*'
_CLOSE_FENCE = '\n```'  # a reply cut inside its code block: close the block so the mark is not shown as code


def _marked(reply: str) -> str:
    return reply + (_CLOSE_FENCE if reply.count('```') % 2 else '') + PARTIAL_MARK


def _unmarked(shown: str) -> tuple:
    """(reply, partial) from a chat text that may carry our marks."""
    if shown.endswith(EDITED_MARK):
        shown = shown[:-len(EDITED_MARK)]
    if not shown.endswith(PARTIAL_MARK):
        return shown, False
    reply = shown[:-len(PARTIAL_MARK)]
    if reply.endswith(_CLOSE_FENCE) and reply[:-len(_CLOSE_FENCE)].count('```') % 2:
        reply = reply[:-len(_CLOSE_FENCE)]
    return reply, True


class Conversation:
    def __init__(self, turns=None):
        self.turns = [t if isinstance(t, Turn) else Turn(str(t[0] or ''), str(t[1] or '')) for t in (turns or [])]

    @classmethod
    def from_history(cls, history) -> 'Conversation':
        """From a gradio tuples Chatbot value (our partial marks are removed again)."""
        turns = []
        for user, assistant in history or []:
            if not isinstance(user, str):
                continue  # images and files the UI appended to the chat
            assistant = assistant if isinstance(assistant, str) else ''
            turns.append(Turn(user, *_unmarked(assistant)))
        return cls(turns)

    @property
    def history(self) -> list:
        """[(user, assistant)] for a gradio tuples Chatbot; the texts exactly as exchanged."""
        return [(t.user, t.assistant) for t in self.turns]

    def display_history(self) -> list:
        """Like `history`, with cut-off and edited replies marked (`from_history` strips the marks again)."""
        return [(t.user, (_marked(t.assistant) if t.partial and t.assistant else t.assistant)
                 + (EDITED_MARK if t.edited_canvas and t.assistant else '')) for t in self.turns]

    def messages(self, system_prompt: str | None = None, upto: int | None = None) -> list:
        """OpenAI-style messages for turns[:upto] plus turn `upto`'s user message (Omost's chat_fn format)."""
        turns = self.turns if upto is None else self.turns[:upto + 1]
        out = [{'role': 'system', 'content': SYSTEM_PROMPT if system_prompt is None else system_prompt}]
        for t in turns[:-1]:
            if t.user and t.assistant:  # Omost drops pairs with an empty side (failed or image-only turns)
                out += [{'role': 'user', 'content': t.user}, {'role': 'assistant', 'content': t.sent_reply()}]
        if turns:
            out.append({'role': 'user', 'content': turns[-1].user})
        return out
