"""`python -m tests.e2e.ui_config FILE`: the ui-config.json that Settings > Defaults > Apply writes after the user
set Region strength 0.8 in txt2img (the hidden options JSON is unlabelled, so not in the file: the page computes it
from the restored controls on load), for
test_e2e_api.test_saved_ui_defaults_are_what_generation_reads (start the WebUI with --ui-config-file FILE)."""

import json
import sys


def saved_defaults() -> dict:
    return {'txt2img/Region strength/value': 0.8}


if __name__ == '__main__':
    with open(sys.argv[1], 'w', encoding='utf-8') as f:
        json.dump(saved_defaults(), f, indent=4)
