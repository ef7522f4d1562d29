"""Omost inside a WebUI generation: what each script hook does. What differs between the WebUIs is behind
`omost_webui.hosts` (one class per host family); nothing here asks which one it runs in.

Where each step happens, and why (see host-integration.md):
- `before_process`: under Emphasis "None" the host ignores BREAK, which the bags need; override it for this job
  through `p.override_settings` (the host restores it afterwards).
- `process`: validate canvas and options, find the host family and the architecture, release what an earlier job
  left attached, write infotext.
  The hosts swallow exceptions raised by script hooks, so bad input is refused by making the host's own next
  call (`p.init`) raise our error: the API then answers 422 with the message, the UI shows it in its error box,
  and nothing is generated.
- `process_batch`: the prompts become the region bags (`p.prompts`, `p.hr_prompts`), after the host has parsed
  the user's `<lora:...>` tags and before it encodes; `p.all_prompts` (infotext) stays the user's.
- `process_before_every_sampling`: the regions onto the model for this pass (`Host.apply_regions`: a patched clone
  of the UnetPatcher that the host discards after the pass, or A1111's hooks armed for this job only) and the
  sketch start of the first pass.
- `on_cfg_denoiser` (global callback, gated on the running job): step progress, cond/uncond bookkeeping.
- `on_model_loaded`: between jobs, release everything attached; inside a job (refiner, hires checkpoint) move the
  regions onto the new model, or say in the console and the infotext that the rest ran without them.
- `postprocess`, the next `process`, model load and script unload: release everything attached (`hosts.release_all`).
"""

from __future__ import annotations

import dataclasses
import json

from lib_omost.canvas import CanvasError, canvas_to_infotext, load_canvas
from lib_omost.options import parse_options
from lib_omost.presets import get_preset, load_presets
from omost_webui import hosts
from omost_webui.notes import note

INFOTEXT_ENABLED = 'Omost'
INFOTEXT_CANVAS = 'Omost canvas'
INFOTEXT_OPTIONS = 'Omost options'

_active = None   # the Job whose sampling is running; global callbacks act only for it


try:  # both hosts' API error handler prints a full traceback for any exception that is not an HTTPException
    from fastapi.exceptions import HTTPException as _Quiet  # (modules/api/api.py: api_middleware.handle_exception)
except ImportError:  # the extension's core tests without fastapi
    _Quiet = Exception


class OmostInputError(_Quiet, ValueError):
    """Bad canvas, options or script args. `status_code` and `detail` are what the WebUI's API error handler
    reports (HTTP 422); being an HTTPException, it is answered without a traceback in the console, where
    `refuse` has printed the one line that matters."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.status_code = 422
        self.detail = message
        self.headers = None

    def __str__(self):  # HTTPException's would prefix '422: '; the UI's error box shows str(e)
        return self.detail


@dataclasses.dataclass
class Job:
    p: object
    canvas: object
    options: object
    host: object                 # omost_webui.hosts.Host of the WebUI this job runs in
    arch: str
    preset: object = None        # lib_omost.presets.Preset, resolved (and validated) in process()
    counter: tuple = None        # (count, chunk_count) from the host's tokenizer
    host_prompts: dict = dataclasses.field(default_factory=dict)  # cleaned prompt box text -> HostPrompt
    regional: object = None      # RegionalAttention of the first pass (None: plain attention)
    regional_hr: object = None   # the hires pass's, when its prompts differ
    attached: object = None      # what host.apply_regions attached (A1111's hooks, the pass's patched UnetPatcher)
    current: object = None       # the RegionalAttention fed by on_cfg_denoiser in this pass
    model: object = None         # the sd_model the regions are on (a refiner / hires checkpoint replaces it)
    switched: bool = False       # a checkpoint was loaded during this job
    check_length: bool = False   # after a model switch: does the new model's cond still fit the token map?


def _job(p):
    return getattr(p, '_omost_job', None)


# ---------------------------------------------------------------------------------------------------------------
# Host and model


def detect_arch(host, model) -> str | None:
    """'sd1' / 'sd2' / 'sdxl', or None for a model Omost cannot steer (no cross-attention: Flux, SD3, ...)."""
    if host is None or getattr(model, 'is_sd3', False) or getattr(model, 'is_flux', False):
        return None
    try:
        has_attn2 = any(name.endswith('attn2') for name, _ in host.diffusion_model(model).named_modules())
    except AttributeError:
        has_attn2 = False
    if not has_attn2:
        return None
    if getattr(model, 'is_sdxl', False):
        return 'sdxl'
    if getattr(model, 'is_sd2', False):
        return 'sd2'
    return 'sd1'


def unsupported_reason(host, model) -> str | None:
    """Why Omost cannot put regions on `model` in this WebUI, or None when it can."""
    if host is None:
        return (f'this WebUI\'s model ({type(model).__name__}) is of a kind the extension does not know (none of '
                f'{", ".join(f.__name__ for f in hosts.FAMILIES)} matches it)')
    if detect_arch(host, model) is None:
        return 'this model has no cross-attention layers (Flux, SD3, ...)'
    if host.tokenize_line(model) is None:
        return 'this model has no CLIP text encoder the extension knows'
    return None


# ---------------------------------------------------------------------------------------------------------------
# Hooks


def _emphasis(p) -> str:
    """The Emphasis setting this job runs with: the request's override, else the global setting."""
    from modules import shared
    return p.override_settings.get('emphasis', getattr(shared.opts, 'emphasis', 'Original'))


def is_enabled(value) -> bool:
    """The script's first arg: a bool from the UI, any of the forms `parse_switch` takes from the API."""
    from lib_omost.options import parse_switch
    try:
        return parse_switch(value, 'Omost script arg 0 (enabled)')
    except CanvasError as e:
        raise OmostInputError(f'{e}; the args are [enabled, canvas, options, guidance] or an object with those '
                              'names') from None


def before_process(p, enabled, canvas_text, options_text):
    try:
        enabled = is_enabled(enabled)
    except OmostInputError:
        return  # process() refuses the job
    if enabled and _emphasis(p) == 'None' and getattr(p, 'override_settings_restore_afterwards', True):
        p.override_settings['emphasis'] = 'Original'


def refuse(p, error: Exception):
    """Make the host stop before anything is sampled, with `error` as the reason (see the module docstring)."""
    print(f'[Omost] {error}')

    def init(*args, **kwargs):
        raise error

    p.init = init


def parse_inputs(canvas_value, options_value, presets_file: str = ''):
    """(canvas, warnings, options, preset) from the script args, or OmostInputError naming the problem."""
    if canvas_value is None or (isinstance(canvas_value, str) and not canvas_value.strip()):
        raise OmostInputError('Omost is enabled but the canvas is empty: chat with the LLM, paste a canvas, '
                              'or turn Omost off.')
    try:
        result = load_canvas(canvas_value)
    except CanvasError as e:
        raise OmostInputError(f'Omost canvas: {e}') from None
    try:
        options = parse_options(options_value)
        preset = get_preset(options.preset, load_presets(presets_file or None))
    except CanvasError as e:
        raise OmostInputError(str(e)) from None
    return result.canvas, result.warnings, options, preset


def process(p, enabled, canvas_value, options_value, guidance_value=None, guide_images=()):
    cleanup()  # a failed earlier job (any tab) may have left hooks behind
    try:
        enabled = is_enabled(enabled)
    except OmostInputError as e:
        refuse(p, e)
        return
    if not enabled:
        if isinstance(canvas_value, str) and canvas_value.strip():  # easy to miss: say so, change nothing
            print('[Omost] Omost is off, so this image ignores the canvas in the Omost accordion (tick "Omost" in '
                  'its header to use it).')
        return
    from omost_webui import settings
    try:
        canvas, warnings, options, preset = parse_inputs(canvas_value, options_value, settings.presets_path())
    except OmostInputError as e:
        refuse(p, e)
        return
    if _emphasis(p) == 'None':  # only when the host would not restore our override (see before_process)
        refuse(p, OmostInputError('Omost needs BREAK, which Emphasis "None" turns off; choose another Emphasis '
                                  'in Settings > Stable Diffusion.'))
        return
    host = hosts.host_for(p.sd_model)
    reason = unsupported_reason(host, p.sd_model)
    if reason is not None:  # never a silent plain image: the console, the job's info and its infotext say so
        message = f'Omost is skipped: {reason}.'
        note(p, message)
        if hasattr(p, 'comment'):
            p.comment(message)
        return
    for w in warnings:  # repairs of the LLM's code: worth a note, not an error
        note(p, f'canvas: {w}')
    job = Job(p=p, canvas=canvas, options=options, host=host, arch=detect_arch(host, p.sd_model), preset=preset)
    from omost_webui.prompt_rewrite import check
    try:
        check(p, job)
    except CanvasError as e:
        refuse(p, OmostInputError(f'Omost: {e}'))
        return
    p._omost_job = job
    _cleanup_on_close(p)
    p.extra_generation_params[INFOTEXT_ENABLED] = infotext_summary(canvas, options)
    p.extra_generation_params[INFOTEXT_CANVAS] = canvas_to_infotext(canvas)
    p.extra_generation_params[INFOTEXT_OPTIONS] = options.to_json()
    _guidance_process(p, job, guidance_value, guide_images)


def _guidance_process(p, job, guidance_value, guide_images):
    """Image guidance (omost_webui.guidance_step): bad guides refuse the job like a bad canvas."""
    from lib_omost.vision import VisionError
    from omost_webui import guidance_step
    try:
        guidance_step.process(p, job, guidance_value, guide_images)
    except (CanvasError, VisionError) as e:
        p._omost_job = None
        refuse(p, OmostInputError(str(e)))


def infotext_summary(canvas, options) -> str:
    """The readable 'Omost' infotext value, e.g. '5 regions, strength 1.0' (the canvas itself is compressed)."""
    n = len(canvas.local_regions)
    return f'{n} region{"s" if n != 1 else ""}, strength {options.strength:g}' + ('' if options.regions else
                                                                                  ', regional attention off')


def _cleanup_on_close(p):
    """Both hosts run every job inside `with closing(p)` (UI and API), also when it fails with an exception,
    where `postprocess` is skipped: disarm there too, so no hook outlives its job even until the next one."""
    close = p.close

    def close_and_clean_up():
        try:
            if _active is not None and _active.p is p:
                cleanup()
        finally:
            close()

    p.close = close_and_clean_up


def process_batch(p):
    job = _job(p)
    if job is None:
        return
    from omost_webui.prompt_rewrite import rewrite
    first = rewrite(p, job, p.prompts)
    job.regional = _regional(job, first)
    from omost_webui import guidance_step
    guidance_step.process_batch(p)
    job.regional_hr = job.regional
    hr_prompts = getattr(p, 'hr_prompts', None)
    if getattr(p, 'enable_hr', False) and hr_prompts:
        second = rewrite(p, job, hr_prompts)
        if second != first:
            job.regional_hr = _regional(job, second)


def _regional(job, layout):
    if layout is None or not job.options.regions:
        return None
    from lib_omost.attention import RegionalAttention
    rects, token_region = layout
    o = job.options
    return RegionalAttention(rects, token_region, None, o.strength, o.start, o.end)


def process_before_every_sampling(p, x, c=None):
    global _active
    job = _job(p)
    if job is None:
        return
    hr = bool(getattr(p, 'is_hr_pass', False))
    from omost_webui import guidance_step
    guidance_step.process_before_every_sampling(p, job, c, hr)
    regional = job.regional_hr if hr else job.regional
    if hr and not job.options.hires:
        regional = None
    _active = job
    job.current = regional
    if job.switched and job.model is None and regional is not None:  # a hires checkpoint, loaded before this pass
        note(job.p, f'regions continued on {_model_title(p.sd_model)}')
    job.model = p.sd_model
    if regional is not None:
        regional.set_latent_size(int(x.shape[-2]), int(x.shape[-1]))
        regional.set_image_size(int(x.shape[-2]), int(x.shape[-1]))  # the whole image: other sizes are tiles
        regional.notify = lambda message: note(p, message)
        _apply_regions(p, job, regional)
    else:
        job.host.remove_regions(job)
    if not hr and job.options.sketch and getattr(p, 'firstpass_image', None) is None \
            and getattr(p, 'init_images', None) is None:
        from omost_webui import sketch_start
        sketch_start.seed_first_pass(p, job.canvas, job.options, x)


def _apply_regions(p, job, regional):
    """The host swallows a script hook's exception and samples on: where the regions cannot be put on the model
    (a fork whose objects are not what its family class expects), the console and the infotext say so, and the
    exception goes on to the host's error report."""
    try:
        job.host.apply_regions(p, job, regional)
    except Exception as e:
        job.current = None
        note(p, f'the regions could not be put on this WebUI\'s model ({type(e).__name__}: {e}); this pass ran '
                'without them')
        raise


def on_cfg_denoiser(params):
    """Global callback: feeds the running job only (it is shared by both tabs and every other generation)."""
    job = _active
    if job is None:
        return
    denoiser_p = getattr(params.denoiser, 'p', None)
    if denoiser_p is not None and denoiser_p is not job.p:
        return
    if job.current is None or not _follow_model(job):
        return
    job.current.set_progress(denoiser_progress(params))
    job.host.on_cfg_denoiser(job, params)
    if job.check_length:
        _check_switched_cond(job, params)


# ---------------------------------------------------------------------------------------------------------------
# A model switch inside a job


def on_model_loaded(sd_model):
    """`on_model_loaded`. Between jobs: release everything attached. Inside a running job (the hosts load the
    refiner in the middle of a sampling pass, `sd_samplers_common.apply_refiner`, and a hires checkpoint between the
    passes): what was attached to the old model goes, the job stays active, and its regions move onto the new model
    at the next denoiser step (`_follow_model`) or the next pass (`process_before_every_sampling`)."""
    job = _active
    if job is None:
        cleanup()
        return
    job.host.remove_regions(job)
    hosts.release_all()
    job.model = None
    job.switched = True


def _model_title(model) -> str:
    info = getattr(model, 'sd_checkpoint_info', None)
    return getattr(info, 'short_title', None) or getattr(info, 'title', None) or 'the new model'


def _follow_model(job) -> bool:
    """Put the regions on the model that samples now, when it is not the one they were put on (the refiner
    switch happened in this denoiser call); False when the new model cannot take them."""
    p = job.p
    model = p.sd_model  # every host: `shared.sd_model`, which the denoiser runs after update_inner_model()
    if job.model is model:
        return True
    job.model = model
    title = _model_title(model)
    if unsupported_reason(job.host, model) is not None:
        note(p, f'switched to {title}, which has no cross-attention / CLIP text encoder Omost knows: the rest '
                'of the job ran without regions')
        job.current = None
        return False
    job.current.clear_plans()  # new plans for the new model's layers
    _apply_regions(p, job, job.current)
    job.check_length = True
    note(p, f'regions continued on {title}')
    return True


def _check_switched_cond(job, params):
    """The new model re-encoded the bags (p.setup_conds); a different token count means the map no longer fits."""
    job.check_length = False
    length = job.host.cond_token_count(params.text_cond)
    if length != job.current.cond_length:
        note(job.p, f'switched to {_model_title(job.model)}, whose cond has {length} tokens where the regions '
                    f'expect {job.current.cond_length}: the rest of the job ran without regions')
        job.current.strength = 0.0  # the hooks / patches installed on the new model stay plain from now on
        job.current = None


def denoiser_progress(params) -> float:
    """How far the sampling pass is, 0 at its first denoiser call, 1 at its end.

    Both hosts' CFGDenoiser count their own calls (`step`, incremented at the end of every forward) and expect
    `total_steps` of them (set by `Sampler.launch_sampling` from the sampler's config: 2 per step for second-order
    samplers); `step / total_steps` is the ratio the hosts themselves use for "skip early CFG" and the refiner
    switch (modules/sd_samplers_cfg_denoiser.py, sd_samplers_common.apply_refiner). `params.sampling_step` is not
    usable: the hosts set `state.sampling_step` in the per-step callback, after the step, so during step i >= 1
    it still says i - 1 (a window starting at 0.5 of 3 steps would never turn on)."""
    denoiser = params.denoiser
    step, total = getattr(denoiser, 'step', None), getattr(denoiser, 'total_steps', None)
    if not isinstance(step, int) or not total:  # a denoiser without the counters: the step the host reports
        step, total = params.sampling_step, params.total_sampling_steps
    return min(max(step / max(int(total or 0), 1), 0.0), 1.0)


def postprocess(p):
    cleanup()


def cleanup():
    """Disarm and remove everything this extension may have attached to the model (idempotent, cheap)."""
    global _active
    from omost_webui import guidance_step
    guidance_step.restore()
    job, _active = _active, None
    if job is not None:
        job.current = None
        job.host.remove_regions(job)
        for regional in {id(r): r for r in (job.regional, job.regional_hr) if r is not None}.values():
            regional.clear_plans()  # the job is over: its masks and plans are not needed again
    hosts.release_all()
