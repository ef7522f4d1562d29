"""opts (with add_option / OptionInfo, as modules/options.py), cmd_opts, state."""
import argparse


class OptionInfo:
    def __init__(self, default=None, label='', component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section, self.restrict_api, self.infotext = section, restrict_api, infotext
        self.onchange = onchange


class Options:
    def __init__(self, data_labels):
        object.__setattr__(self, 'data_labels', dict(data_labels))
        object.__setattr__(self, 'data', {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def get_default(self, key):
        return self.data_labels[key].default

    def set(self, key, value, is_api=False, run_callbacks=True):
        # as modules/options.py: a failing onchange is reported and the old value restored
        old = self.data.get(key)
        if old == value:
            return False
        option = self.data_labels[key]
        if is_api and option.restrict_api:
            return False
        self.data[key] = value
        if run_callbacks and option.onchange is not None:
            try:
                option.onchange()
            except Exception as e:  # noqa: BLE001
                print(f'*** Error changing setting {key}: {e}')
                self.data[key] = old
                return False
        return True

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value


opts = Options({
    'emphasis': OptionInfo('Original'),
    'sd_vae_encode_method': OptionInfo('Full'),
    'img2img_fix_steps': OptionInfo(False),
    'CLIP_stop_at_last_layers': OptionInfo(1),
    # modules/shared_options.py: the CFG denoiser's layout options (A1111 reads them, Forge only the last two)
    'batch_cond_uncond': OptionInfo(True),
    'pad_cond_uncond': OptionInfo(False),
    'pad_cond_uncond_v0': OptionInfo(False),
    'skip_early_cond': OptionInfo(0.0),
    's_min_uncond_all': OptionInfo(False),
})

cmd_opts = argparse.Namespace()


class State:
    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.sampling_step = 0
        self.sampling_steps = 0

    def interrupt(self):
        self.interrupted = True


state = State()
device = 'cpu'
sd_model = None
loaded_hypernetworks = []  # modules/shared.py: what modules.hypernetworks.hypernetwork.load_hypernetworks fills
