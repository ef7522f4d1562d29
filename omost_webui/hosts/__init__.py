"""The WebUI the extension runs in, behind one small interface (`base.Host`), one class per host family:

- `A1111Host` (hosts/a1111.py): AUTOMATIC1111 1.10, on `ldm` / `sgm` with modules/sd_hijack.py; instance hooks on
  every attn2.
- `ForgeHost` (hosts/forge.py): Forge (dfdcbab) and Forge Neo, on Forge's `backend` package; attn2 replace patches
  on a clone of backend/patcher/unet.py UnetPatcher.
- `ForgeClassicHost` (hosts/forge_classic.py): Forge Classic and reForge, on `ldm_patched`; attn2 replace patches on
  a clone of modules_forge/unet_patcher.py UnetPatcher, A1111's text encoders (modules/sd_hijack_clip.py).

The family is told by what the model has (its objects and the modules their classes come from), never by a version
string. A new host is one new class here, listed in FAMILIES before any family it could be mistaken for.
"""

from __future__ import annotations

from omost_webui.hosts.a1111 import A1111Host
from omost_webui.hosts.base import Host
from omost_webui.hosts.forge import ForgeHost
from omost_webui.hosts.forge_classic import ForgeClassicHost

FAMILIES = (ForgeHost, ForgeClassicHost, A1111Host)

__all__ = ['FAMILIES', 'A1111Host', 'ForgeClassicHost', 'ForgeHost', 'Host', 'host_for', 'release_all']


def host_for(sd_model) -> Host | None:
    """The host family whose model `sd_model` is, or None for a WebUI (or model) the extension does not know."""
    for family in FAMILIES:
        if family.matches(sd_model):
            return family()
    return None


def release_all():
    """Every family's `release_all` (the caller may not know the model any more, e.g. at script unload)."""
    for family in FAMILIES:
        family.release_all()
