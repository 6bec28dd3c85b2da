"""Target device profiles (data files, one per device class) and their exporters and profilers.

Installed as ``compress.targets``. Adding a device is adding ``profiles/<name>.yaml``: runtimes and
versions, native precisions, memory, roofline peaks and bandwidth, exporters, and the sources of
those figures. A recipe entry may be a name or ``{name, precision, exporters, targets_check}``.
"""
if __name__ != "compress.targets":  # imported as a bare top-level `targets`: not us (compress/_toplevel.py)
    from compress._toplevel import yield_name

    yield_name(__name__, __file__)
else:
    from .devices import FALLBACK, PROFILE_DIR, list_profiles, load_profile, resolve_precision
    from . import exporters, runners, tensorrt  # noqa: F401  register exporters and runners

__all__ = ["FALLBACK", "PROFILE_DIR", "list_profiles", "load_profile", "resolve_precision"]
