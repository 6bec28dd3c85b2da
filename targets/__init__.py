"""Target devices, the lower layer: device profiles (data files, one per device class), latency models and LUTs.

Installed as ``compress.targets``. Adding a device is adding ``profiles/<name>.yaml``: runtimes and
versions, native precisions, memory, roofline peaks and bandwidth, exporters, and the sources of
those figures. A recipe entry may be a name or ``{name, precision, exporters, targets_check}``.

Recipes and passes use this layer (``devices``, ``latency_models``, ``lut``); it imports no exporter. The upper
layer, ``compress.targets.deploy``, holds what makes and runs artifacts for a device (``exporters``, ``tensorrt``,
``profiler``, runtimes) and registers them with the export stage.
"""
if __name__ != "compress.targets":  # imported as a bare top-level `targets`: not us (compress/_toplevel.py)
    from compress._toplevel import yield_name

    yield_name(__name__, __file__)
else:
    from .devices import BUILTIN_EXPORTERS, FALLBACK, PROFILE_DIR, list_profiles, load_profile, resolve_precision

__all__ = ["BUILTIN_EXPORTERS", "FALLBACK", "PROFILE_DIR", "list_profiles", "load_profile", "resolve_precision"]
