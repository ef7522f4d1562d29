"""Settings > Defaults (`ui-config.json`), as modules/ui_loadsave.py: UiLoadsave in both hosts (A1111 1.10.1; Forge
dfdcbab differs only in storing None Textbox values as ''), for the component types the extension uses.

- add_block: walks the children; a component is tracked under `{path}/{label}` only when it has a label (so an
  unlabelled hidden Textbox is neither saved nor restored), prefixed `customscript/{source}/` for the controls a
  script's ui() returns (modules/scripts.py: ScriptRunner.create_script_ui_inner sets `custom_script_source` on
  those only).
- add_component/apply_field: an object with `do_not_save_to_config` is skipped; otherwise a saved value replaces
  the component's `value` (Textbox values as str, Number as float, Radio/Dropdown only when among the choices), a
  missing one is recorded from the component; tracked `value` fields go into `component_mapping`.
- ui_apply: writes the current values of every component in `component_mapping` (the Apply button).
"""
import gradio as gr


class UiLoadsave:
    def __init__(self, ui_settings=None):
        self.ui_settings = dict(ui_settings or {})
        self.component_mapping = {}

    def add_component(self, path, x):
        def apply_field(obj, field, condition=None):
            key = f'{path}/{field}'
            if getattr(obj, 'custom_script_source', None) is not None:
                key = f'customscript/{obj.custom_script_source}/{key}'
            if getattr(obj, 'do_not_save_to_config', False):
                return
            saved = self.ui_settings.get(key)
            if saved is None:
                self.ui_settings[key] = getattr(obj, field)
            elif condition and not condition(saved):
                pass
            else:
                if isinstance(obj, gr.Textbox) and field == 'value':
                    saved = str(saved)
                elif isinstance(obj, gr.Number) and field == 'value':
                    saved = float(saved)
                setattr(obj, field, saved)
            if field == 'value' and key not in self.component_mapping:
                self.component_mapping[key] = obj

        def choices(comp):
            return [c[0] if isinstance(c, tuple) else c for c in getattr(comp, 'choices', [])]

        if type(x) in (gr.Slider, gr.Checkbox, gr.Textbox, gr.Number):
            apply_field(x, 'value')
        elif type(x) in (gr.Radio, gr.Dropdown):
            apply_field(x, 'value', lambda v: v in choices(x))

    def add_block(self, x, path=''):
        if hasattr(x, 'children'):
            for c in x.children:
                self.add_block(c, path)
        elif getattr(x, 'label', None) is not None:
            self.add_component(f'{path}/{x.label}', x)

    def ui_apply(self, *values):
        for (key, _), value in zip(self.component_mapping.items(), values):
            self.ui_settings[key] = value
        return self.ui_settings

