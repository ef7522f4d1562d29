"""Forge Neo backend/utils.py deepcopy_: what Neo's ModelPatcher.clone() does to model_options. Dicts and lists are
copied (recursively); every other object, patch objects included, is the same object in the copy."""


def deepcopy_(obj, memo=None):
    if memo is None:
        memo = {}
    obj_id = id(obj)
    if obj_id in memo:
        return memo[obj_id]
    if isinstance(obj, dict):
        res = {deepcopy_(k, memo): deepcopy_(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        res = [deepcopy_(i, memo) for i in obj]
    else:
        res = obj
    memo[obj_id] = res
    return res
