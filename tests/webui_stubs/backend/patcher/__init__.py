"""Forge / Neo backend/patcher (stubs of the parts the extension touches)."""
