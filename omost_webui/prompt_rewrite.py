"""The batch's prompts become Omost's region bags, encoded by the host itself (see generation.process_batch)."""

from __future__ import annotations

from omost_webui.host_tokenizer import host_counter
from omost_webui.notes import note


def _host_prompt(p, job, user_text: str):
    """The bags for one prompt, built once per job: `check` builds them in `process`, `rewrite` reuses them
    (keyed by the prompt box text as it goes into the bags, so `<lora:...>` tags the host strips do not matter)."""
    from lib_omost.prompts import build_host_prompt, clean_user_text
    key = clean_user_text(user_text)
    if key not in job.host_prompts:
        if job.counter is None:
            job.counter = host_counter(job.host.tokenize_line(p.sd_model), f'this model ({type(p.sd_model).__name__})')
        count, chunk_count = job.counter
        job.host_prompts[key] = build_host_prompt(job.canvas, count, preset=job.preset, user_text=user_text,
                                                  user_target=job.options.prompt_target, chunk_count=chunk_count)
    return job.host_prompts[key]


def check(p, job):
    """Build the bags of every distinct prompt of the job in `process`, so that a problem (the prompt box text too
    long for the bags, a broken preset) refuses the job with its message instead of failing later in
    `process_batch`, where the hosts would only log it and generate without regions."""
    prompts = list(getattr(p, 'all_prompts', None) or [])
    if getattr(p, 'enable_hr', False):
        prompts += list(getattr(p, 'all_hr_prompts', None) or [])
    for user_text in dict.fromkeys(prompts):
        _host_prompt(p, job, user_text)


def rewrite(p, job, prompts: list):
    """Replace each prompt of the batch, in place, with its bags text.

    Returns (rects, token_region) shared by every row of the batch, or None when rows differ (different user
    prompts in one batch give different token layouts; those rows then keep plain attention).
    """
    built = [_host_prompt(p, job, user_text) for user_text in prompts]
    prompts[:] = [hp.text for hp in built]  # all rows or none: an exception above leaves the batch as it was
    for w in dict.fromkeys(w for hp in built for w in hp.warnings):
        note(p, w)  # once per generation, not per batch
    layouts = [([r.rect for r in hp.regions], list(hp.token_region)) for hp in built]
    if any(layout != layouts[0] for layout in layouts[1:]):
        note(p, 'the prompts of this batch differ, so their regions do not line up; regional attention is off '
                'for this batch (use batch count instead of batch size).')
        return None
    return layouts[0]
