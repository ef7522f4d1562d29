"""The conditioning containers of A1111/Forge `modules/prompt_parser.py` (identical in both): per prompt a list of
ScheduledPromptConditioning (one per prompt-editing step; no [a:b:N] scheduling or AND here, so one schedule per
prompt with end_at_step = steps), identical prompts sharing one schedule list (`get_learned_conditioning`'s
`cache`), wrapped as MulticondLearnedConditioning by `get_multicond_learned_conditioning`; the CFG denoiser stacks
them per step with `reconstruct_multicond_batch` (`sd_samplers_cfg_denoiser.CFGDenoiser.forward`)."""
from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple('ScheduledPromptConditioning', ['end_at_step', 'cond'])
ComposableScheduledPromptConditioning = namedtuple('ComposableScheduledPromptConditioning', ['schedules', 'weight'])


class SdConditioning(list):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        copy_from = prompts if copy_from is None else copy_from
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, 'is_negative_prompt', False)
        self.width = width or getattr(copy_from, 'width', None)
        self.height = height or getattr(copy_from, 'height', None)


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def get_learned_conditioning(model, prompts, steps):
    res, cache = [], {}
    for prompt in prompts:
        if prompt not in cache:
            conds = model.get_learned_conditioning(SdConditioning([prompt], copy_from=prompts))
            cond = {k: v[0] for k, v in conds.items()} if isinstance(conds, dict) else conds[0]
            cache[prompt] = [ScheduledPromptConditioning(steps, cond)]
        res.append(cache[prompt])
    return res


def get_multicond_learned_conditioning(model, prompts, steps):
    learned = get_learned_conditioning(model, prompts, steps)
    return MulticondLearnedConditioning(shape=(len(prompts),),
                                        batch=[[ComposableScheduledPromptConditioning(s, 1.0)] for s in learned])


def reconstruct_multicond_batch(c, current_step):
    tensors = []
    for composable_prompts in c.batch:
        for composable_prompt in composable_prompts:
            target = 0
            for current, entry in enumerate(composable_prompt.schedules):
                if current_step <= entry.end_at_step:
                    target = current
                    break
            tensors.append(composable_prompt.schedules[target].cond)
    if isinstance(tensors[0], dict):
        return {k: stack_conds([t[k] for t in tensors]) for k in tensors[0]}
    return stack_conds(tensors)


def stack_conds(tensors):
    """prompt_parser.stack_conds: shorter conds are padded with their last vector to the longest."""
    token_count = max(t.shape[0] for t in tensors)
    padded = [t if t.shape[0] == token_count else torch.vstack([t, t[-1:].repeat([token_count - t.shape[0], 1])])
              for t in tensors]
    return torch.stack(padded)
