"""Omost canvases as data, sub-prompt bags and regional attention: the host-independent core of sd-webui-omost.

Nothing in this package imports the WebUI. Modules:
- canvas: safe parser, Omost's geometry, masks, JSON form
- sketch: colour sketch, blurred initial image, region overlay preview
- prompts: sub-prompt bags, host prompt assembly, tag presets
- attention: Omost's regional cross-attention as one SDPA call
- llm: chat engine (transformers in-process, OpenAI-compatible servers), response cache
"""

__version__ = '0.1.0'
