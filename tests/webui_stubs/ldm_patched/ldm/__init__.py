"""ldm_patched/ldm."""
