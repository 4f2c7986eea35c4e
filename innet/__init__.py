"""innet: a lab for in-network robust gradient aggregation."""

__version__ = "0.1.0"
