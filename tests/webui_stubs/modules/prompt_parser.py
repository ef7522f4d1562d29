"""AND composition as modules/prompt_parser.py has it (both hosts): get_multicond_prompt_list splits each prompt
on `\bAND\b` (a trailing `:number` is the subprompt's weight), every subprompt is encoded, and
reconstruct_multicond_batch gives (conds_list, tensor): one row per subprompt, image by image, conds_list[i] the
(row, weight) pairs of image i; stack_conds pads shorter rows by repeating their last vector. Prompt schedules
([a:b:N]) are not modelled: one schedule per subprompt."""
import re

import torch

re_AND = re.compile(r'\bAND\b')
re_weight = re.compile(r'^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$')


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape, self.batch = shape, batch  # batch[i] = [(weight, cond (T, C)), ...] of image i


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


def get_multicond_learned_conditioning(model, prompts):
    """prompt_parser.get_multicond_learned_conditioning: the distinct subprompts encoded in one call."""
    lists = get_multicond_prompt_list(prompts)
    texts = list(dict.fromkeys(text for subs in lists for text, _ in subs))
    conds = model.get_learned_conditioning(texts)
    if isinstance(conds, dict):  # SDXL: one {'crossattn', 'vector'} per text
        rows = [{k: v[i] for k, v in conds.items()} for i in range(len(texts))]
    else:
        rows = list(conds)
    encoded = dict(zip(texts, rows))
    return MulticondLearnedConditioning(len(prompts), [[(w, encoded[t]) for t, w in subs] for subs in lists])


def stack_conds(tensors):
    token_count = max(t.shape[0] for t in tensors)
    tensors = [t if t.shape[0] == token_count else torch.vstack([t, t[-1:].repeat([token_count - t.shape[0], 1])])
               for t in tensors]
    return torch.stack(tensors)


class DictWithShape(dict):
    """prompt_parser.DictWithShape: an SDXL cond {'crossattn': (B, T, C), 'vector': (B, V)} with `.shape`."""

    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self['crossattn'].shape


def reconstruct_multicond_batch(c, current_step):
    tensors, conds_list = [], []
    for composable in c.batch:
        conds_for_batch = []
        for weight, cond in composable:
            conds_for_batch.append((len(tensors), weight))
            tensors.append(cond)
        conds_list.append(conds_for_batch)
    if isinstance(tensors[0], dict):
        return conds_list, DictWithShape({k: stack_conds([x[k] for x in tensors]) for k in tensors[0]})
    return conds_list, stack_conds(tensors)
