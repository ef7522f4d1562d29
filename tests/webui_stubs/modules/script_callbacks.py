"""Global callback lists, as the WebUI's: every registered callback runs, exceptions are reported, not raised."""
from modules import errors

callbacks = {name: [] for name in ('ui_settings', 'cfg_denoiser', 'infotext_pasted', 'model_loaded',
                                   'script_unloaded', 'app_started')}


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


def _run(name, *args):
    for callback in callbacks[name]:
        try:
            callback(*args)
        except Exception:
            errors.report(f'Error executing callback {name} for {callback}', exc_info=True)


def clear_callbacks():
    for value in callbacks.values():
        value.clear()


def on_ui_settings(callback):
    callbacks['ui_settings'].append(callback)


def on_cfg_denoiser(callback):
    callbacks['cfg_denoiser'].append(callback)


def on_infotext_pasted(callback):
    callbacks['infotext_pasted'].append(callback)


def on_model_loaded(callback):
    callbacks['model_loaded'].append(callback)


def on_script_unloaded(callback):
    callbacks['script_unloaded'].append(callback)


def on_app_started(callback, *, name=None):
    callbacks['app_started'].append(callback)


def ui_settings_callback():
    _run('ui_settings')


def cfg_denoiser_callback(params):
    _run('cfg_denoiser', params)


def infotext_pasted_callback(infotext, params):
    _run('infotext_pasted', infotext, params)


def model_loaded_callback(sd_model):
    _run('model_loaded', sd_model)


def script_unloaded_callback():
    _run('script_unloaded')


def app_started_callback(demo, app):
    """modules/script_callbacks.py: app_started_callback(demo, app), which webui.py calls after the API's routes
    are added (demo is None with --nowebui)."""
    for callback in callbacks['app_started']:
        try:
            callback(demo, app)
        except Exception:
            errors.report(f'Error executing callback app_started_callback for {callback}', exc_info=True)
