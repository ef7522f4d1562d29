"""Forge Classic / reForge ldm_patched (stubs of the parts the extension touches)."""
