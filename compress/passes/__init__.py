"""Built-in passes; importing this package registers them."""
from . import align  # noqa: F401
from . import fold  # noqa: F401
from . import kernels  # noqa: F401
from . import prune  # noqa: F401
from . import quantize  # noqa: F401
from . import split  # noqa: F401
