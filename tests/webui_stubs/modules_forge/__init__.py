"""Forge Classic / reForge modules_forge (stubs of the parts the extension touches)."""
