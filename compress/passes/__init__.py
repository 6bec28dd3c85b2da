"""Built-in passes; importing this package registers them."""
from . import align  # noqa: F401
from . import distill  # noqa: F401
from . import fold  # noqa: F401
from . import kernel_swap  # noqa: F401  (the pass `kernels`)
from . import prune  # noqa: F401
from . import quantize  # noqa: F401
from . import split  # noqa: F401
