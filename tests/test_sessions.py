"""Several users at once, at the chat handler (`omost_webui.ui.chat_stream`, what each browser session's Send runs
in its own thread): two sessions on one in-process model take turns, the second says it waits, Stop in one leaves
the other alone, and neither reply is mixed into the other. The browser version is tests/test_ui_sessions.py."""

import threading
import time

import pytest
from conftest import FIXTURES

from lib_omost.llm.inprocess import WAITING_NOTICE
from llm_helpers import build_tiny_llama, corpus_texts
from omost_webui import ui

pytest.importorskip('torch')
pytest.importorskip('transformers')
pytestmark = pytest.mark.timeout(600)

WAIT_S = 300  # a bound for a hung test only: the machine may be loaded, nothing here is timed


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    # eos off: the reply ends at max new tokens or at Stop, never by chance
    folder = build_tiny_llama(str(tmp_path_factory.mktemp('tiny-llama3')), corpus_texts(FIXTURES), eos=False)
    yield folder
    if ui._local_backend['backend'] is not None:
        ui._local_backend['backend'].unload()
    ui._local_backend.update(key=None, backend=None)


class Chat:
    """One browser session's Send, run in a thread the way gradio runs it; `steps` records every
    (chatbot, input box, canvas, status) update."""

    def __init__(self, folder, message, max_new_tokens):
        self.session, self.steps, self.error = ui.ChatSession(), [], None
        args = dict(kind='local', server_url='', server_model='', api_key='', local_model=folder, keep_loaded=True,
                    seed=1, temperature=0.0, top_p=0.9, max_new_tokens=max_new_tokens)
        self.gen = ui.chat_stream('new', self.session, message, *args.values(), live_preview=False)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for step in self.gen:
                self.steps.append(step)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def statuses(self):
        return [s[3] for s in list(self.steps) if isinstance(s[3], str)]

    def reply(self):
        chat = self.steps[-1][0]
        return chat[-1][1] if chat else ''

    def wait(self, condition, what):
        deadline = time.monotonic() + WAIT_S
        while not condition():
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f'{what}: statuses {self.statuses()}'
            time.sleep(0.05)

    def join(self):
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive() and self.error is None, self.error


def alone(folder, message, max_new_tokens):
    chat = Chat(folder, message, max_new_tokens)
    chat.join()
    (_, reply), = chat.session.conversation.history
    return reply


def test_the_second_chat_waits_visibly_then_runs_and_stop_in_one_leaves_the_other(folder):
    first = Chat(folder, 'a cat on a sofa', max_new_tokens=8192)  # ends only when stopped
    first.wait(lambda: len(first.reply()) > 0, 'the first reply never started')
    second = Chat(folder, 'a dog in the snow', max_new_tokens=16)
    second.wait(lambda: any(WAITING_NOTICE in s for s in second.statuses()), 'the second chat never said it waits')
    assert second.reply() == '' and second.thread.is_alive()
    assert not any(WAITING_NOTICE in s for s in first.statuses())
    ui.stop_chat(first.session)
    first.join()
    second.join()
    assert 'Stopped' in first.statuses()[-1] and 'Stopped' not in second.statuses()[-1]
    assert 'cut at 16 new tokens' in second.statuses()[-1]
    assert WAITING_NOTICE not in second.statuses()[-1]
    # Each conversation holds its own message and reply, equal to the same chat run alone (greedy decoding).
    (user1, reply1), = first.session.conversation.history
    (user2, reply2), = second.session.conversation.history
    assert (user1, user2) == ('a cat on a sofa', 'a dog in the snow')
    assert reply2 == alone(folder, 'a dog in the snow', 16)
    # The stopped reply is the start of the first chat run alone (a token is at least one character here).
    by_itself = alone(folder, 'a cat on a sofa', len(reply1) + 16)
    assert reply1 and (by_itself.startswith(reply1) or reply1.startswith(by_itself)), (reply1, by_itself)


def test_stop_while_waiting_ends_that_chat_at_once_and_the_running_one_goes_on(folder):
    first = Chat(folder, 'a cat on a sofa', max_new_tokens=8192)
    first.wait(lambda: len(first.reply()) > 0, 'the first reply never started')
    second = Chat(folder, 'a dog in the snow', max_new_tokens=16)
    second.wait(lambda: any(WAITING_NOTICE in s for s in second.statuses()), 'the second chat never said it waits')
    ui.stop_chat(second.session)
    second.join()  # while the first still holds the model: a waiting chat does not wait to be stopped
    assert first.thread.is_alive() and not first.session.stop.is_set()
    assert 'Stopped' in second.statuses()[-1] and second.reply() == ''
    before = len(first.reply())
    first.wait(lambda: len(first.reply()) > before, 'the first reply stopped with the second')
    ui.stop_chat(first.session)
    first.join()
    assert 'Stopped' in first.statuses()[-1]
