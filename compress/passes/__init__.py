"""Built-in passes; importing this package registers them."""
from . import fold  # noqa: F401
