"""Scenarios: a plain dataclass tree, loaded from TOML and validated once at the edge.

Unknown keys, wrong types and impossible combinations (Bulyan with p < 4f+3, more
Byzantine workers than workers, a batch larger than the data allows, …) are rejected
with a :class:`ScenarioError` that names the offending key.

* :mod:`~innet.config.schema` — the dataclasses (every key, its default, its meaning);
* :mod:`~innet.config.build` — from plain data (TOML) and back;
* :mod:`~innet.config.grid` — sweep grids;
* :mod:`~innet.config.validate` — the checks.
"""

from innet.errors import ScenarioError  # noqa: I001  (before the modules that raise it)
from innet.config.schema import (
    OFFLOAD_PARAMS, PHASE2_ATTACKS, SWITCH_RULES, VIAS, AggregationPath, Data, Expectation,
    LinkOverride, Network, Report, Scenario, Training, Workers, split_offload_params,
)
from innet.config.build import TRAINING_DEFAULTS, from_dict, load, read_toml, to_dict
from innet.config.grid import fmt, point_name, set_key, sweep_points
from innet.config.validate import validate

__all__ = [
    "OFFLOAD_PARAMS", "PHASE2_ATTACKS", "SWITCH_RULES", "TRAINING_DEFAULTS", "VIAS",
    "AggregationPath", "Data", "Expectation", "LinkOverride", "Network", "Report", "Scenario",
    "ScenarioError", "Training", "Workers", "fmt", "from_dict", "load", "point_name",
    "read_toml", "set_key", "split_offload_params", "sweep_points", "to_dict", "validate",
]
