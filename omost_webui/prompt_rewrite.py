"""The batch's prompts become Omost's region bags, encoded by the host itself (see generation.process_batch)."""

from __future__ import annotations


def check(p, job):
    """Build the bags of every distinct prompt of the job once, in `process`, so that a problem (the prompt box
    text too long for the bags, a broken preset) refuses the job with its message instead of failing later in
    `process_batch`, where the hosts would only log it and generate without regions."""
    from lib_omost.prompts import build_host_prompt
    from omost_webui.host_tokenizer import host_counter
    counter, chunk_count = host_counter(p.sd_model)
    prompts = list(getattr(p, 'all_prompts', None) or [])
    if getattr(p, 'enable_hr', False):
        prompts += list(getattr(p, 'all_hr_prompts', None) or [])
    for user_text in dict.fromkeys(prompts):
        build_host_prompt(job.canvas, counter, preset=job.preset, user_text=user_text,
                          user_target=job.options.prompt_target, chunk_count=chunk_count)


def rewrite(p, job, prompts: list):
    """Replace each prompt of the batch, in place, with its bags text.

    Returns (rects, token_region) shared by every row of the batch, or None when rows differ (different user
    prompts in one batch give different token layouts; those rows then keep plain attention).
    """
    from lib_omost.prompts import build_host_prompt
    from omost_webui.host_tokenizer import host_counter
    counter, chunk_count = host_counter(p.sd_model)
    built = [build_host_prompt(job.canvas, counter, preset=job.preset, user_text=user_text,
                               user_target=job.options.prompt_target, chunk_count=chunk_count)
             for user_text in prompts]
    prompts[:] = [hp.text for hp in built]  # all rows or none: an exception above leaves the batch as it was
    for note in dict.fromkeys(w for hp in built for w in hp.warnings):
        if note not in job.notes:  # once per generation, not per batch
            job.notes.add(note)
            print(f'[Omost] {note}')
    layouts = [([r.rect for r in hp.regions], list(hp.token_region)) for hp in built]
    if any(layout != layouts[0] for layout in layouts[1:]):
        print('[Omost] the prompts of this batch differ, so their regions do not line up; '
              'regional attention is off for this batch (use batch count instead of batch size).')
        return None
    return layouts[0]
