"""ldm_patched/modules."""
