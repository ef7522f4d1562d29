"""Omost in the WebUI (A1111 1.10, Forge, Forge Neo, Forge Classic, reForge): an always-on script with its accordion
in txt2img and img2img.

Thin wiring only: the UI is `omost_webui.ui`, the generation hooks are `omost_webui.generation`, what differs
between the WebUIs is `omost_webui.hosts`. No `ldm`, `sgm`, `backend` or `ldm_patched` import here: each WebUI
lacks some of them.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # the extension's own packages (lib_omost, omost_webui)
    sys.path.insert(0, _ROOT)

from modules import script_callbacks, scripts  # noqa: E402

from omost_webui import api_args, generation, settings  # noqa: E402
from omost_webui.paste import on_infotext_pasted  # noqa: E402


class Script(scripts.Script):
    def title(self):
        return 'Omost'

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def after_component(self, component, **kwargs):
        # The tab's width/height sliders are built before the scripts: catch them so the region preview takes the
        # image's aspect ratio.
        elem_id = kwargs.get('elem_id') or ''
        if elem_id.endswith(('2img_width', '2img_height')):
            self.__dict__.setdefault('_size', {})[elem_id.rsplit('_', 1)[1]] = component

    def ui(self, is_img2img):
        from modules.ui_components import InputAccordion
        from omost_webui.ui import build_ui
        size = self.__dict__.get('_size', {})
        ui = build_ui(is_img2img, self.elem_id, accordion_cls=InputAccordion, settings=settings.current(),
                      image_size=(size['width'], size['height']) if len(size) == 2 else None)
        self.infotext_fields = ui.infotext_fields
        self.paste_field_names = ui.paste_field_names
        return ui.inputs

    def before_process(self, p, enabled=False, canvas=None, options=None, *rest):
        generation.before_process(p, enabled, canvas, options)

    def process(self, p, enabled=False, canvas=None, options=None, guidance=None, *guide_images):
        generation.process(p, enabled, canvas, options, guidance, guide_images)

    def process_batch(self, p, *args, **kwargs):
        generation.process_batch(p)

    def process_before_every_sampling(self, p, *args, **kwargs):
        generation.process_before_every_sampling(p, kwargs['x'], kwargs.get('c'))

    def postprocess(self, p, processed, *args):
        generation.postprocess(p)


settings.hide_api_key()
script_callbacks.on_ui_settings(settings.register)
script_callbacks.on_cfg_denoiser(generation.on_cfg_denoiser)
script_callbacks.on_infotext_pasted(on_infotext_pasted)
script_callbacks.on_model_loaded(generation.on_model_loaded)
script_callbacks.on_script_unloaded(generation.cleanup)
script_callbacks.on_app_started(api_args.on_app_started)
