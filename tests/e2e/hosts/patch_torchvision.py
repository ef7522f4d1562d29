"""Make PyPI's CUDA-built torchvision importable with a CPU-only torch (idempotent).

PyPI's torchvision 0.28 links its _C.so against libtorch_cuda/libc10_cuda, which the CPU torch wheel does not have,
so its C ops (nms, roi_align, ...) are missing and torchvision/__init__.py dies registering fake kernels for them
("RuntimeError: operator torchvision::nms does not exist"). The WebUIs only use torchvision's Python parts
(transforms, models), so this wraps the two registration imports in try/except.
Usage: $HARNESS/venv/bin/python tests/e2e/hosts/patch_torchvision.py
"""
import importlib.util
import os

spec = importlib.util.find_spec('torchvision')  # finds the package without importing it
path = os.path.join(os.path.dirname(spec.origin), '__init__.py')
src = open(path).read()
old = """from torchvision import (
    _autograd_registrations,
    _meta_registrations,
    datasets,"""
new = """try:  # patched by tests/e2e/hosts/patch_torchvision.py: a CUDA-built _C.so does not load with CPU torch
    from torchvision import _autograd_registrations, _meta_registrations
except Exception:  # noqa: BLE001
    pass
from torchvision import (
    datasets,"""
if 'patch_torchvision.py' in src:
    print('   torchvision already patched:', path)
elif old in src:
    open(path, 'w').write(src.replace(old, new))
    print('   torchvision patched:', path)
else:
    raise SystemExit('torchvision __init__.py has an unexpected layout; patch by hand: ' + path)
