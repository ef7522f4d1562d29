"""The "Omost" section of the WebUI settings, and the values the UI and the chat start from.

Defaults come from the command line (`preload.py` flags) when given, so a launcher can point every new install at
its LLM server without touching config.json.
"""

from __future__ import annotations

import os

from lib_omost.llm.inprocess import DRAFT_MODES as DRAFT_CHOICES  # auto / on / off

SECTION = ('omost', 'Omost')
BACKENDS = ('server', 'local', 'gguf')  # OpenAI-compatible HTTP server / transformers / llama.cpp in the WebUI


def _cmd(name: str, default: str = '') -> str:
    from modules import shared
    return getattr(shared.cmd_opts, name, None) or default


def default_models_dir() -> str:
    from modules import paths
    return _cmd('omost_models_dir', os.path.join(paths.models_path, 'omost'))


def data_root() -> str:
    """The extension's data folder (user presets, response cache): in the WebUI's data folder, so it survives
    reinstalling or updating the extension."""
    from modules import paths
    return os.path.join(getattr(paths, 'data_path', paths.models_path), 'omost')


def data_dir() -> str:
    """Where the LLM response cache lives."""
    return os.path.join(data_root(), 'llm-cache')


# Settings that are paths. Anyone who can reach the WebUI's API can change settings (POST /sdapi/v1/options), and
# the extension reads and writes there (the presets text, model downloads, LLM and vision weights it loads).
# `restrict_api` keeps them out of A1111's options API (modules/options.py: Options.set returns early `if is_api and
# option.restrict_api`), but Forge's options API calls modules/sysinfo.py: set_config(req) with is_api=False; so
# every path is also confined to the WebUI's data and models folders (and a folder named on the command line),
# wherever it came from. The model settings also take model names, which are no path.
PATH_SETTINGS = ('omost_presets_file', 'omost_models_dir', 'omost_vision_path', 'omost_local_model',
                 'omost_gguf_model')
# Settings that are URLs the server contacts (the LLM server, vision tower downloads): an API client must not
# point them at an address of its choosing (nor get the --omost-api-key sent there). Out of both options APIs:
# `restrict_api` for A1111's, and omost_webui/api_args.py drops them (and the paths) from Forge's.
URL_SETTINGS = ('omost_server_url', 'omost_vision_url_768', 'omost_vision_url_1280')
API_RESTRICTED = PATH_SETTINGS + URL_SETTINGS


def allowed_roots() -> list:
    from modules import paths
    roots = [getattr(paths, 'data_path', paths.models_path), paths.models_path, _cmd('omost_models_dir')]
    return [os.path.realpath(r) for r in roots if r]


def confined(path: str) -> bool:
    """Whether `path` (symlinks resolved) lies inside one of `allowed_roots`."""
    real = os.path.realpath(path)

    def inside(root):
        try:
            return os.path.commonpath([real, root]) == root
        except ValueError:  # another drive (Windows)
            return False
    return any(inside(root) for root in allowed_roots())


def setting_path(key: str, value: str) -> str | None:
    """The path a path setting's value stands for, found the way the code that uses it finds it; None for a
    model name (the local model: an Omost catalogue name that is no folder, lib_omost/llm/local.py:
    LocalBackend.locate; the GGUF model: a known GGUF name, whose file is in the confined models folder)."""
    if key == 'omost_local_model':
        from lib_omost.llm.models import catalogue_entry
        return None if catalogue_entry(value) is not None and not os.path.isdir(value) else value
    if key == 'omost_gguf_model':
        from lib_omost.llm.gguf import gguf_file
        from lib_omost.llm.models import GGUF_MODELS
        return None if value in GGUF_MODELS else gguf_file(value, models_dir())
    return value


def _confined_setting(key: str, default: str) -> str:
    value = (get(key, '') or '').strip()
    if not value:
        return default
    path = setting_path(key, value)
    if path is None or confined(path):
        return value
    instead = f'using {default!r} instead' if default else 'ignoring it'
    message = (f'the setting {key} = {value!r} is outside the WebUI\'s data and models folders; {instead} (a '
               'folder given with --omost-models-dir is allowed too)')
    if message not in _said:
        _said.add(message)
        print(f'[Omost] {message}')
    return default


_said = set()


def check_path_setting(key: str):
    """Settings `onchange` of a path setting: refuse a path outside `allowed_roots` (the host then reports the
    error and restores the old value)."""
    value = (get(key, '') or '').strip()
    path = setting_path(key, value) if value else None
    if path is not None and not confined(path):
        raise ValueError(f'{key} must be inside the WebUI\'s data or models folder ({", ".join(allowed_roots())})')


def _path_setting(key: str) -> dict:
    """The OptionInfo extras of a path setting: out of A1111's options API, and confined when changed."""
    return {'onchange': lambda: check_path_setting(key), 'restrict_api': True}


def presets_path() -> str:
    return _confined_setting('omost_presets_file', os.path.join(data_root(), 'presets.json'))


def models_dir() -> str:
    return _confined_setting('omost_models_dir', default_models_dir())


def vision_path() -> str:
    """The CLIP vision tower file or folder of Settings > Omost ('' for none)."""
    return _confined_setting('omost_vision_path', '')


def local_model() -> str:
    return _confined_setting('omost_local_model', '')


def gguf_model() -> str:
    return _confined_setting('omost_gguf_model', '')


EXAMPLE_PRESETS = """{
  "format": "omost-presets",
  "version": 1,
  "presets": {
    "my-anime": {
      "description": "An example: the anime preset plus a quality tag. Edit or add presets here.",
      "extends": "anime",
      "replace": [["a cat", "1cat"]],
      "prepend": "masterpiece,",
      "append": ""
    }
  }
}
"""


def _presets_text() -> str:
    try:
        with open(presets_path(), 'r', encoding='utf-8') as f:
            return f.read()
    except OSError:
        return EXAMPLE_PRESETS


def save_presets_text():
    """Settings `onchange`: validate the edited presets and write them to the presets file (the file is what
    generation reads). Invalid presets, or a file that cannot be written (read-only folder, full disk), raise: the
    WebUI shows the message and keeps the old setting, and the old file is untouched (lib_omost/atomic.py)."""
    from lib_omost.atomic import discard, replace_durably, temp_beside
    from lib_omost.canvas import CanvasError
    from lib_omost.presets import load_presets
    text = get('omost_presets_json', '') or ''
    path = presets_path()
    candidate = None
    try:
        candidate = temp_beside(path, '.new')
        with open(candidate, 'w', encoding='utf-8') as f:
            f.write(text)
        try:
            load_presets(candidate)
        except CanvasError as e:
            raise CanvasError(f'tag presets not saved: {e}'.replace(candidate, path)) from None
        replace_durably(candidate, path)
    except OSError as e:
        error = OSError(f'tag presets not saved: cannot write {path} ({e.strerror or e}); the file is as it was')
        error.errno = e.errno
        raise error from None
    finally:
        if candidate is not None and os.path.exists(candidate):
            discard(candidate)


def hide_api_key():
    """Move --omost-api-key where no API shows it: GET /sdapi/v1/cmd-flags answers `vars(shared.cmd_opts)`
    (modules/api/api.py: Api.get_cmd_flags) and /internal/sysinfo lists `sys.argv` (modules/sysinfo.py: get_argv
    hides only the WebUI's own auth flags). The key goes to this process's environment as OMOST_API_KEY, which
    `current()` reads and a restart of the WebUI (os.execv with sys.argv) inherits."""
    import sys
    from modules import shared
    key = getattr(shared.cmd_opts, 'omost_api_key', None)
    if not key:
        return
    os.environ['OMOST_API_KEY'] = key
    shared.cmd_opts.omost_api_key = None
    sys.argv[:] = ['<hidden>' if arg == key else '--omost-api-key=<hidden>' if arg == f'--omost-api-key={key}'
                   else arg for arg in sys.argv]


def _options():
    """(key, default, label, component factory name, component args, extra) for every setting."""
    return [
        ('omost_models_dir', default_models_dir(), 'Folder of local Omost LLMs (inside the WebUI\'s models or data '
         'folder)', 'Textbox', {}, _path_setting('omost_models_dir')),
        ('omost_backend', 'server', 'Default LLM backend', 'Dropdown', {'choices': list(BACKENDS)}, {}),
        ('omost_server_url', _cmd('omost_server_url'), 'Default LLM server base URL (OpenAI-compatible, e.g. '
         'http://127.0.0.1:8080/v1)', 'Textbox', {}, {'restrict_api': True}),
        ('omost_server_model', _cmd('omost_model'), 'Default model name on the LLM server', 'Textbox', {}, {}),
        ('omost_local_model', '', 'Default local model (an Omost model name, or a folder inside the WebUI\'s models '
         'or data folder)', 'Textbox', {}, _path_setting('omost_local_model')),
        ('omost_gguf_model', '', 'Default GGUF model for the gguf backend (a known name, or a .gguf file inside the '
         'WebUI\'s models or data folder; needs llama-cpp-python)', 'Textbox', {}, _path_setting('omost_gguf_model')),
        ('omost_keep_loaded', True, 'Keep the local LLM loaded between replies (off: unload after each reply to '
         'free memory for the image model)', 'Checkbox', {}, {}),
        ('omost_llm_reuse_prompt', True, 'In-process LLM (local, gguf): reuse the conversation the model already '
         'read, so each turn evaluates only its new tokens (needs "keep loaded"; off: every reply reads the whole '
         'conversation afresh)', 'Checkbox', {}, {}),
        ('omost_llm_draft', 'auto', 'In-process LLM: draft tokens from the conversation (prompt lookup) and verify '
         'them in one pass, for greedy replies (temperature 0); the reply is the same. auto: on for greedy replies, '
         'the draft length adapted to how much is accepted', 'Radio', {'choices': list(DRAFT_CHOICES)}, {}),
        ('omost_presets_file', '', 'Tag presets file (empty: presets.json in the WebUI data folder, under omost/; '
         'a file elsewhere must be inside the data or models folder)', 'Textbox', {},
         _path_setting('omost_presets_file')),
        ('omost_presets_json', _presets_text(), 'Your tag presets (JSON, see the README; saved to the presets file '
         'and added to the built-in none/anime/pony/illustrious)', 'Textbox', {'lines': 10},
         {'onchange': save_presets_text}),
        ('omost_system_prompt', '', "System prompt override (empty: Omost's own)", 'Textbox', {'lines': 4}, {}),
        ('omost_vision_path', '', 'Image guidance: CLIP vision tower file or folder (.safetensors, inside the '
         'WebUI\'s models or data folder; searched first, then the clip_vision folders of the WebUI and '
         'models/omost/clip_vision)', 'Textbox', {}, _path_setting('omost_vision_path')),
        ('omost_vision_url_768', _vision_url(768), 'Image guidance: download URL of the ViT-L/14 tower when none '
         'is found (empty: never download)', 'Textbox', {}, {'restrict_api': True}),
        ('omost_vision_url_1280', _vision_url(1280), 'Image guidance: download URL of the ViT-bigG/14 tower (SDXL) '
         'when none is found (empty: never download)', 'Textbox', {}, {'restrict_api': True}),
        ('omost_cache_mb', 64, 'LLM response cache size (MB; 0 turns the cache off)', 'Number',
         {'precision': 0, 'minimum': 0}, {}),
    ]


def _vision_url(width: int) -> str:
    from lib_omost.vision import DEFAULT_URLS
    return DEFAULT_URLS[width]


def register():
    """`script_callbacks.on_ui_settings` callback."""
    import gradio as gr
    from modules import shared
    for key, default, label, component, args, extra in _options():
        info = shared.OptionInfo(default, label, getattr(gr, component), args, section=SECTION, **extra)
        shared.opts.add_option(key, info)


def get(key: str, default=None):
    from modules import shared
    value = getattr(shared.opts, key, None)
    return default if value is None else value


def current() -> dict:
    """The settings dict `omost_webui.ui.build_ui` takes."""
    cache_mb = get('omost_cache_mb', 64) or 0
    return dict(
        server_url=get('omost_server_url', '') or _cmd('omost_server_url'),
        server_model=get('omost_server_model', '') or _cmd('omost_model'),
        # Never a WebUI setting: /sdapi/v1/options and sysinfo dumps show every setting.
        api_key=_cmd('omost_api_key') or os.environ.get('OMOST_API_KEY', ''),
        backend=get('omost_backend', 'server') if get('omost_backend') in BACKENDS else 'server',
        local_model=local_model(),
        gguf_model=gguf_model(),
        models_dir=models_dir(),
        keep_loaded=bool(get('omost_keep_loaded', True)),
        reuse_prompt=bool(get('omost_llm_reuse_prompt', True)),
        draft=get('omost_llm_draft', 'auto') if get('omost_llm_draft') in DRAFT_CHOICES else 'auto',
        system_prompt=get('omost_system_prompt', ''),
        data_dir=data_dir() if cache_mb > 0 else '',
        cache_bytes=int(cache_mb) * 1024 * 1024,
        presets=preset_names(),
    )


def preset_names() -> list:
    """Names of the tag presets (built-in plus the presets file); none while the presets module is absent."""
    try:
        from lib_omost import presets
    except ImportError:
        return []
    try:
        return list(presets.load_presets(presets_path()))
    except Exception as e:  # noqa: BLE001 - a broken user file must not break the UI; generation reports it
        print(f'[Omost] {e}')
        return list(presets.load_presets())
