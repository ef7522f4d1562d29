"""The conditioning of modules/prompt_parser.py as both hosts have it.

AND composition: get_multicond_prompt_list splits each prompt on `\bAND\b` (a trailing `:number` is the
subprompt's weight). get_learned_conditioning encodes every distinct subprompt once: identical subprompts share
one schedule list (its `cache`), a list of ScheduledPromptConditioning(end_at_step, cond (T, C) or SDXL's dict);
get_multicond_learned_conditioning wraps them as MulticondLearnedConditioning(shape, batch), batch[i] the
ComposableScheduledPromptConditioning(schedules, weight) of image i. reconstruct_multicond_batch gives (conds_list,
tensor): one row per subprompt, image by image, conds_list[i] the (row, weight) pairs of image i; stack_conds pads
shorter rows by repeating their last vector. Prompt schedules ([a:b:N]) are not modelled: one schedule per
subprompt, ending at `steps`."""
import re
from collections import namedtuple

import torch

re_AND = re.compile(r'\bAND\b')
re_weight = re.compile(r'^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$')

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
        self.shape, self.batch = shape, batch


def get_multicond_prompt_list(prompts):
    """prompt_parser.get_multicond_prompt_list: per prompt [(subprompt text, weight)]."""
    res = []
    for prompt in prompts:
        subs = []
        for subprompt in re_AND.split(prompt):
            m = re_weight.search(subprompt)
            text, weight = m.groups() if m else (subprompt, 1.0)
            subs.append((text, float(weight) if weight is not None else 1.0))
        res.append(subs)
    return res


def get_learned_conditioning(model, prompts, steps=1):
    """prompt_parser.get_learned_conditioning: a schedule list per prompt, shared by identical prompts."""
    res, cache = [], {}
    for prompt in prompts:
        if prompt not in cache:
            conds = model.get_learned_conditioning(SdConditioning([prompt], copy_from=prompts))
            cond = {k: v[0] for k, v in conds.items()} if isinstance(conds, dict) else conds[0]
            cache[prompt] = [ScheduledPromptConditioning(steps, cond)]
        res.append(cache[prompt])
    return res


def get_multicond_learned_conditioning(model, prompts, steps=1):
    """prompt_parser.get_multicond_learned_conditioning: the distinct subprompts encoded once."""
    lists = get_multicond_prompt_list(prompts)
    texts = list(dict.fromkeys(text for subs in lists for text, _ in subs))
    encoded = dict(zip(texts, get_learned_conditioning(model, texts, steps)))
    return MulticondLearnedConditioning((len(prompts),), [[ComposableScheduledPromptConditioning(encoded[t], w)
                                                           for t, w in subs] for subs in lists])


class DictWithShape(dict):
    """prompt_parser.DictWithShape: an SDXL cond {'crossattn': (B, T, C), 'vector': (B, V)} with `.shape`."""

    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self['crossattn'].shape


def stack_conds(tensors):
    token_count = max(t.shape[0] for t in tensors)
    tensors = [t if t.shape[0] == token_count else torch.vstack([t, t[-1:].repeat([token_count - t.shape[0], 1])])
               for t in tensors]
    return torch.stack(tensors)


def reconstruct_multicond_batch(c, current_step):
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable in composable_prompts:
            target = 0
            for current, entry in enumerate(composable.schedules):
                if current_step <= entry.end_at_step:
                    target = current
                    break
            conds_for_batch.append((len(tensors), composable.weight))
            tensors.append(composable.schedules[target].cond)
        conds_list.append(conds_for_batch)
    if isinstance(tensors[0], dict):
        return conds_list, DictWithShape({k: stack_conds([t[k] for t in tensors]) for k in tensors[0]})
    return conds_list, stack_conds(tensors)
