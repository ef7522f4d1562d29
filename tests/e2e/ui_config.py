"""`python -m tests.e2e.ui_config FILE`: the ui-config.json that Settings > Defaults > Apply writes after the user
set Region strength 0.8 in txt2img (the slider and the hidden options JSON it keeps in step), for
test_e2e_api.test_saved_ui_defaults_are_what_generation_reads (start the WebUI with --ui-config-file FILE)."""

import json
import sys

from lib_omost.options import RenderOptions


def saved_defaults() -> dict:
    return {'txt2img/Region strength/value': 0.8,
            'customscript/omost.py/txt2img/Omost options JSON/value': RenderOptions(strength=0.8).to_json()}


if __name__ == '__main__':
    with open(sys.argv[1], 'w', encoding='utf-8') as f:
        json.dump(saved_defaults(), f, indent=4)
