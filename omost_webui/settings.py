"""The "Omost" section of the WebUI settings, and the values the UI and the chat start from.

Defaults come from the command line (`preload.py` flags) when given, so a launcher can point every new install at
its LLM server without touching config.json.
"""

from __future__ import annotations

import os

SECTION = ('omost', 'Omost')
BACKENDS = ('server', 'local')  # OpenAI-compatible HTTP server / transformers inside the WebUI


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


def presets_path() -> str:
    return get('omost_presets_file', '') or os.path.join(data_root(), 'presets.json')


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
    generation reads). Invalid presets raise: the WebUI shows the message and keeps the old setting and file."""
    from lib_omost.canvas import CanvasError
    from lib_omost.presets import load_presets
    text = get('omost_presets_json', '') or ''
    path = presets_path()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    candidate = path + '.new'
    with open(candidate, 'w', encoding='utf-8') as f:
        f.write(text)
    try:
        load_presets(candidate)
    except CanvasError as e:
        os.remove(candidate)
        raise CanvasError(f'tag presets not saved: {e}'.replace(candidate, path)) from None
    os.replace(candidate, path)


def _options():
    """(key, default, label, component factory name, component args, extra) for every setting."""
    return [
        ('omost_models_dir', default_models_dir(), 'Folder of local Omost LLMs', 'Textbox', {}, {}),
        ('omost_backend', 'server', 'Default LLM backend', 'Dropdown', {'choices': list(BACKENDS)}, {}),
        ('omost_server_url', _cmd('omost_server_url'), 'Default LLM server base URL (OpenAI-compatible, e.g. '
         'http://127.0.0.1:8080/v1)', 'Textbox', {}, {}),
        ('omost_server_model', _cmd('omost_model'), 'Default model name on the LLM server', 'Textbox', {}, {}),
        ('omost_local_model', '', 'Default local model (folder name or Hugging Face id)', 'Textbox', {}, {}),
        ('omost_keep_loaded', True, 'Keep the local LLM loaded between replies (off: unload after each reply to '
         'free memory for the image model)', 'Checkbox', {}, {}),
        ('omost_presets_file', '', 'Tag presets file (empty: presets.json in the WebUI data folder, under omost/)',
         'Textbox', {}, {}),
        ('omost_presets_json', _presets_text(), 'Your tag presets (JSON, see the README; saved to the presets file '
         'and added to the built-in none/anime/pony/illustrious)', 'Textbox', {'lines': 10},
         {'onchange': save_presets_text}),
        ('omost_system_prompt', '', "System prompt override (empty: Omost's own)", 'Textbox', {'lines': 4}, {}),
        ('omost_vision_path', '', 'Image guidance: CLIP vision tower file or folder (.safetensors; searched first, '
         'then the clip_vision folders of the WebUI and models/omost/clip_vision)', 'Textbox', {}, {}),
        ('omost_vision_url_768', _vision_url(768), 'Image guidance: download URL of the ViT-L/14 tower when none '
         'is found (empty: never download)', 'Textbox', {}, {}),
        ('omost_vision_url_1280', _vision_url(1280), 'Image guidance: download URL of the ViT-bigG/14 tower (SDXL) '
         'when none is found (empty: never download)', 'Textbox', {}, {}),
        ('omost_cache_mb', 64, 'LLM response cache size (MB; 0 turns the cache off)', 'Number',
         {'precision': 0, 'minimum': 0}, {}),
    ]


def _vision_url(width: int) -> str:
    from omost_webui.guidance_step import DEFAULT_URLS
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
        local_model=get('omost_local_model', ''),
        models_dir=get('omost_models_dir', '') or default_models_dir(),
        keep_loaded=bool(get('omost_keep_loaded', True)),
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
