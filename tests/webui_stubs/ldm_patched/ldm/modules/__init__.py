"""ldm_patched/ldm/modules."""
