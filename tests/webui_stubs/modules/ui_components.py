"""InputAccordion as the WebUI's contract has it: `with InputAccordion(value, label=..., elem_id=...) as enabled:`
opens an Accordion and gives the (hidden) checkbox whose bool is the script arg. Composition instead of the real
gr.Checkbox subclass, so gradio 4 writes no .pyi file next to this stub."""
import gradio as gr


class InputAccordion:
    def __init__(self, value=None, label='Accordion', elem_id=None, **kwargs):
        accordion_id = elem_id or 'input-accordion'
        self.checkbox = gr.Checkbox(value=value, label=label, elem_id=f'{accordion_id}-checkbox', visible=False)
        self.accordion = gr.Accordion(label=label, open=bool(value), elem_id=accordion_id)

    def __enter__(self):
        self.accordion.__enter__()
        return self.checkbox

    def __exit__(self, *exc):
        return self.accordion.__exit__(*exc)
