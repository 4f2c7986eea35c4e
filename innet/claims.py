"""Claims a report checks: small expressions over final accuracies and sweep values.

``check`` expressions compare paths' final test accuracies: a quoted string is the
accuracy of the path of that name, numbers are numbers, and ``+ - * /``, comparisons,
``and``/``or``/``not`` and ``abs``/``min``/``max`` are allowed
(``"'fa' >= 'multi_krum' - 0.01"``). With several seeds a quoted name is the *mean*
over the seeds, and three functions speak about the spread: ``sd('fa')`` is that
path's sample sd, ``differs('fa', 'mean')`` holds when the two means are further
apart than 2 × the larger sd (anything closer is a tie), and ``separated()`` counts
the pairs of paths that differ so. ``where`` expressions select sweep points by
their values (``"workers.f >= 1"``, ``"network.recovery == false"``; a swept table
such as ``workers`` is reachable by its fields, ``workers.attack``). Expressions are
parsed with :mod:`ast` and walked by hand: nothing else is evaluated.
"""

from __future__ import annotations

import ast
import operator
from typing import Any

from innet.errors import ScenarioError

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FUNCS = {"abs": abs, "min": min, "max": max}
_SPREAD_FUNCS = ("sd", "differs", "separated")
_CONSTANTS = {"true": True, "false": False}
#: two means closer than this many (larger) sds are a tie
TIE_SDS = 2.0


def differs(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Do two (mean, sd) results differ by more than :data:`TIE_SDS` × the larger sd?
    (With one seed each, sd = 0 and any difference counts.)"""
    return abs(a[0] - b[0]) > TIE_SDS * max(a[1], b[1])


def separated_pairs(results: dict[str, tuple[float, float]]) -> list[tuple[str, str]]:
    names = list(results)
    return [(x, y) for i, x in enumerate(names) for y in names[i + 1:]
            if differs(results[x], results[y])]


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """Sweep values with swept tables opened up: {"workers": {"f": 3}} also gives
    "workers.f" = 3."""
    out = dict(values)
    for key, value in values.items():
        if isinstance(value, dict):
            for sub, v in flatten(value).items():
                out[f"{key}.{sub}"] = v
    return out


def where_names(sweep: dict[str, list]) -> list[str]:
    """The names a ``where`` clause may use for a sweep grid."""
    names = set(sweep)
    for key, values in sweep.items():
        for value in values if isinstance(values, list) else []:
            if isinstance(value, dict):
                names |= set(flatten({key: value}))
    return sorted(names)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _eval(node: ast.AST, strings: dict[str, Any], names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, strings, names)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            if strings is None:  # a where clause: a quoted string is a string
                return node.value
            if node.value not in strings:
                raise KeyError(f"no path named {node.value!r} (paths: {', '.join(strings)})")
            return strings[node.value]
        if isinstance(node.value, bool | int | float):
            return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        value = _eval(node.operand, strings, names)
        return -value if isinstance(node.op, ast.USub) else not value
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        return _BIN[type(node.op)](_eval(node.left, strings, names),
                                   _eval(node.right, strings, names))
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, strings, names) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, strings, names)
        for op, comp in zip(node.ops, node.comparators):
            if type(op) not in _CMP:
                break
            right = _eval(comp, strings, names)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        else:
            return True
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in _SPREAD_FUNCS and not node.keywords):
        if strings is None:
            raise ValueError(f"{node.func.id}() speaks about paths: it belongs in a check")
        spreads = names.get("__spreads__", {name: (v, 0.0) for name, v in strings.items()})
        args = []
        for a in node.args:
            if not (isinstance(a, ast.Constant) and isinstance(a.value, str)):
                raise ValueError(f"{node.func.id}() takes quoted path names")
            if a.value not in strings:
                raise KeyError(f"no path named {a.value!r} (paths: {', '.join(strings)})")
            args.append(a.value)
        want = {"sd": 1, "differs": 2, "separated": 0}[node.func.id]
        if len(args) != want:
            raise ValueError(f"{node.func.id}() takes {want} path name(s)")
        if node.func.id == "sd":
            return spreads[args[0]][1]
        if node.func.id == "differs":
            return differs(spreads[args[0]], spreads[args[1]])
        return len(separated_pairs(spreads))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS and not node.keywords):
        return _FUNCS[node.func.id](*(_eval(a, strings, names) for a in node.args))
    key = _dotted(node)
    if key is not None:
        if key in _CONSTANTS:
            return _CONSTANTS[key]
        if key not in names:
            raise KeyError(f"unknown name {key!r} (known: {', '.join(names) or 'none'})")
        return names[key]
    raise ValueError(f"not allowed here: {ast.unparse(node)!r}")


def evaluate(expression: str, accuracies: dict[str, float] | None = None,
             values: dict[str, Any] | None = None,
             spreads: dict[str, tuple[float, float]] | None = None) -> Any:
    """Evaluate a check (``accuracies``: path name → final accuracy, the mean over
    seeds; ``spreads``: path name → (mean, sd)) or a where clause (``values``: sweep
    key → value of this point)."""
    tree = ast.parse(expression, mode="eval")
    names = flatten(values or {})
    if spreads is not None:
        names["__spreads__"] = spreads
    where = accuracies is None and spreads is None
    return _eval(tree, None if where else accuracies, names)


def check_expression(key: str, expression: str, known: list[str], kind: str) -> None:
    """Validate at load time: it parses, and names only paths (check) or sweep
    keys (where). Raises :class:`ScenarioError` naming ``key``."""
    if not expression.strip():
        raise ScenarioError(f"{key}: empty expression")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as err:
        raise ScenarioError(f"{key}: cannot parse {expression!r}: {err.msg}") from None
    probe_strings = {name: 0.5 for name in known} if kind == "check" else None
    probe_names = {name: 1 for name in known} if kind == "where" else {}
    if kind == "check":
        probe_names["__spreads__"] = {name: (0.5, 0.0) for name in known}
    try:
        _eval(tree, probe_strings, probe_names)
    except (KeyError, ValueError) as err:
        raise ScenarioError(f"{key}: {err.args[0]}") from None
    except (TypeError, ZeroDivisionError):
        pass  # a probe value can make a valid expression fail; fine at load time
