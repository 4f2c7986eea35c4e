"""innet: a lab for in-network robust gradient aggregation."""

from innet import kernel_cache

__version__ = "0.1.0"

# before any kernel is decorated: cached kernels are keyed on every kernel source
# they may inline or call, not only their own file (see innet.kernel_cache)
kernel_cache.install()
