"""The step window in a real WebUI: both hosts report `state.sampling_step` after a step, so a window that
starts half way used to turn on one step late (on 2 steps: never). The window follows the denoiser's own
call counter now."""

from .client import omost_args


def test_window_half_to_end_differs_from_full_and_from_off(webui, job, canvas):
    def run(options, steps):
        return webui.txt2img(job(steps=steps, alwayson_scripts=omost_args(canvas, options))).ok().pixels

    for steps in (2, 3):  # start 0.5: on 2 steps the second is regional, on 3 the third
        full, off = run({}, steps), run({'regions': False}, steps)
        late, early = run({'start': 0.5}, steps), run({'end': 0.5}, steps)
        assert len({tuple(full), tuple(off), tuple(late), tuple(early)}) == 4, steps
