"""Run by the WebUI at startup: installs only what the extension needs and the host lacks.

Never installs or upgrades torch, gradio or transformers (the host pins them; the local LLM backend checks the
transformers version itself and says what it needs). bitsandbytes stays optional: it is never installed here,
because the right build depends on the GPU; the 4-bit/8-bit Omost models say when it is missing.
"""

import importlib.metadata

# distribution name -> pip requirement, for packages the extension imports that a host might not ship
REQUIREMENTS = {
    'numpy': 'numpy',
    'Pillow': 'Pillow',
    'huggingface-hub': 'huggingface-hub',  # model downloads for the local LLM backend
    'tqdm': 'tqdm',                        # download progress in the console
}
NEVER = ('torch', 'gradio', 'transformers', 'bitsandbytes')


def is_installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing() -> list:
    return [req for dist, req in REQUIREMENTS.items() if not is_installed(dist)]


def main():
    import launch  # the WebUI's own installer helpers (A1111 and Forge)
    for requirement in missing():
        assert not requirement.lower().startswith(NEVER), requirement
        # pip leaves already satisfied dependencies (torch etc.) as they are
        launch.run_pip(f'install "{requirement}"', f'sd-webui-omost requirement: {requirement}')


if __name__ == '__main__':  # the WebUI runs this file as a subprocess with its root on PYTHONPATH
    main()
