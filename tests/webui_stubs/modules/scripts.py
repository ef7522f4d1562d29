"""Script base class and the runner's hook dispatch: every hook gets its slice of p.script_args; exceptions are
reported and swallowed, as in the WebUI."""
import re

from modules import errors

AlwaysVisible = object()


class PostprocessImageArgs:
    def __init__(self, image, index=0):
        self.image, self.index = image, index


class Script:
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        pass

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabname = ('img2img_' if self.is_img2img else 'txt2img_') if need_tabname else ''
        title = re.sub(r'[^a-z_0-9]', '', re.sub(r'\s', '_', self.title().lower()))
        return f'script_{tabname}{title}_{item_id}'

    def before_process(self, p, *args): pass
    def process(self, p, *args): pass
    def before_process_batch(self, p, *args, **kwargs): pass
    def process_batch(self, p, *args, **kwargs): pass
    def process_before_every_sampling(self, p, *args, **kwargs): pass
    def before_hr(self, p, *args): pass
    def postprocess_batch(self, p, *args, **kwargs): pass
    def postprocess(self, p, processed, *args): pass


class ScriptRunner:
    def __init__(self, scripts_and_arg_counts):
        """[(script, number of ui() inputs)]: arg positions are laid out in that order, as the WebUI does."""
        self.alwayson_scripts = []
        position = 0
        for script, n_args in scripts_and_arg_counts:
            script.alwayson = True
            script.args_from, script.args_to = position, position + n_args
            position += n_args
            self.alwayson_scripts.append(script)
        self.scripts = self.alwayson_scripts  # the host's `scripts` holds the selectable ones too; these have none

    def _call(self, name, p, *args, **kwargs):
        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, name)(p, *args, *script_args, **kwargs)
            except Exception:
                errors.report(f'Error running {name}: {script.filename}', exc_info=True)

    def before_process(self, p): self._call('before_process', p)
    def process(self, p): self._call('process', p)
    def before_process_batch(self, p, **kwargs): self._call('before_process_batch', p, **kwargs)
    def process_batch(self, p, **kwargs): self._call('process_batch', p, **kwargs)
    def process_before_every_sampling(self, p, **kwargs): self._call('process_before_every_sampling', p, **kwargs)
    def before_hr(self, p): self._call('before_hr', p)
    def postprocess_batch(self, p, images, **kwargs): self._call('postprocess_batch', p, images=images, **kwargs)

    def postprocess(self, p, processed):
        for script in self.alwayson_scripts:
            try:
                script.postprocess(p, processed, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f'Error running postprocess: {script.filename}', exc_info=True)
