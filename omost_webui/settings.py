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


def data_dir() -> str:
    """Where the response cache lives: next to the models, never inside the extension folder."""
    from modules import paths
    return os.path.join(getattr(paths, 'data_path', paths.models_path), 'cache', 'omost')


def _options():
    """(key, default, label, component factory name, component args, extra) for every setting."""
    return [
        ('omost_models_dir', default_models_dir(), 'Folder of local Omost LLMs', 'Textbox', {}, {}),
        ('omost_backend', 'server', 'Default LLM backend', 'Dropdown', {'choices': list(BACKENDS)}, {}),
        ('omost_server_url', _cmd('omost_server_url'), 'Default LLM server base URL (OpenAI-compatible, e.g. '
         'http://127.0.0.1:8080/v1)', 'Textbox', {}, {}),
        ('omost_server_model', _cmd('omost_model'), 'Default model name on the LLM server', 'Textbox', {}, {}),
        ('omost_api_key', '', 'API key for the LLM server', 'Textbox', {'type': 'password'}, {'restrict_api': True}),
        ('omost_local_model', '', 'Default local model (folder name or Hugging Face id)', 'Textbox', {}, {}),
        ('omost_keep_loaded', True, 'Keep the local LLM loaded between replies (off: unload after each reply to '
         'free memory for the image model)', 'Checkbox', {}, {}),
        ('omost_presets_file', '', 'Tag presets file (JSON; empty: built-in presets)', 'Textbox', {}, {}),
        ('omost_system_prompt', '', "System prompt override (empty: Omost's own)", 'Textbox', {'lines': 4}, {}),
        ('omost_cache_mb', 64, 'LLM response cache size (MB; 0 turns the cache off)', 'Number',
         {'precision': 0, 'minimum': 0}, {}),
    ]


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
        api_key=get('omost_api_key', ''),
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
    return list(presets.load_presets(get('omost_presets_file', '') or None))
