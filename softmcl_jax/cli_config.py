"""``--config=FILE`` and ``--config.x.y=value`` as main.py and ``softmcl_jax.data.prepare`` read
them: every mistake is one line naming the file (and line) or the field, exit status 1.

``parse_flags`` is the ``flags_parser`` both give ``absl.app.run``. Before absl parses anything it
loads the config file itself (:func:`load_config_file`) and checks that every overridden field
exists (:func:`check_overrides`): ml_collections would otherwise raise a bare
``AttributeError: 'nonexistent'`` from deep inside flag parsing, defer a missing file to the first
use of the config, and let a syntax error or an exception of ``get_config`` out as a traceback.
The file is loaded again by ml_collections' own parser (``get_config`` is pure), so what the run
gets is exactly what ml_collections makes of it.

Tuple overrides go through :class:`TupleParser`, registered with ml_collections' supported hook
(``register_flag_parser_for_type``): ``nan``, ``inf`` and ``infinity`` are floats there, as they
already are for float fields, so ``--config.data.packing_quantiles="(nan,)"`` reaches
:func:`check_finite` (called by ``config_check.validate``) as a number to refuse, not as the
string ``"(nan,)"`` that fails with a ``TypeError`` later.

Kept free of JAX: a refused command line costs no JAX import.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
import math
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file or field."""


# --- tuples with nan and inf ------------------------------------------------------------------

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "infinity": math.inf}


class _NonFiniteNames(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.AST:
        value = _NON_FINITE.get(node.id.lower())
        return node if value is None else ast.copy_location(ast.Constant(value), node)


def literal(text: str) -> Any:
    """``ast.literal_eval`` that also reads the bare names nan, inf and infinity as floats
    (``-inf`` too); ``ValueError``/``SyntaxError`` as ``literal_eval`` for anything else."""
    tree = _NonFiniteNames().visit(ast.parse(text.strip(), mode="eval"))
    return ast.literal_eval(tree)


class TupleParser(tuple_parser.TupleParser):
    """ml_collections' tuple parser, with nan/inf read as floats (:func:`literal`); a string that
    is no such literal is parsed exactly as ml_collections parses it."""

    def parse(self, argument: Any) -> tuple:
        if isinstance(argument, str):
            try:
                value = literal(argument)
            except (ValueError, SyntaxError):
                pass  # unquoted strings and the like: ml_collections' rules
            else:
                if isinstance(value, (tuple, list)):
                    return tuple(value)
                if isinstance(value, float) and not math.isfinite(value):
                    return (value,)
        return super().parse(argument)


def register_parsers() -> None:
    """Parse tuple overrides with :class:`TupleParser` (for every config flag defined after)."""
    config_flags.register_flag_parser_for_type(tuple, TupleParser())


def check_finite(config: ml_collections.ConfigDict, skip: Sequence[str] = ()) -> None:
    """Refuse a nan or infinite number anywhere in ``config``, in a tuple too (``ValueError``
    naming the field); ``skip``: dotted fields checked elsewhere with a message of their own."""

    def bad(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return value
        if isinstance(value, (tuple, list)):
            return next((b for b in map(bad, value) if b is not None), None)
        return None

    def walk(node: ml_collections.ConfigDict, prefix: str) -> None:
        for key, value in node.items():
            field = f"{prefix}.{key}"
            if field.removeprefix("config.") in skip:
                continue
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, field)
            elif isinstance(value, (tuple, list)) and bad(value) is not None:
                raise ValueError(f"{field}={value!r} holds {bad(value)!r}: every number in it "
                                 "must be finite")
            elif bad(value) is not None:
                raise ValueError(f"{field}={value!r} must be finite")

    walk(config, "config")


# --- the config file --------------------------------------------------------------------------

def _where(tb: Any, path: str) -> str:
    """``file:line`` of the innermost frame in the config's folder (the config or a module next
    to it, such as configs/base.py), else of the innermost frame; ``path`` where the error was
    the call itself (a ``get_config`` that takes other arguments)."""
    frames = traceback.extract_tb(tb)[1:]  # the first is this module's call
    folder = os.path.dirname(os.path.abspath(path))
    inside = [f for f in frames if os.path.dirname(os.path.abspath(f.filename)) == folder]
    if not frames:
        return path
    frame = (inside or frames)[-1]
    return f"{frame.filename}:{frame.lineno}"


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``spec`` (``PATH`` or ``PATH:ARG``, as ml_collections
    reads it: ARG is passed to ``get_config``). ``ConfigError`` naming the file, and the line of
    a syntax error or of what ``get_config`` raised."""
    path, *arg = spec.split(":", 1)
    flag = f"--config={spec}"
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ConfigError(f"{flag}: the config file {path} {what}")
    loader = importlib.machinery.SourceFileLoader("softmcl_jax_cli_config_file", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
    except SyntaxError as e:  # IndentationError too; possibly in a module it imports
        raise ConfigError(f"{flag}: {e.filename}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # whatever the file runs at import
        raise ConfigError(f"{flag}: {_where(e.__traceback__, path)}: loading the config file "
                          f"raised {type(e).__name__}: {_one_line(e)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"{flag}: {path} defines no get_config() function")
    try:
        config = get_config(*arg)
    except Exception as e:
        raise ConfigError(f"{flag}: {_where(e.__traceback__, path)}: get_config() raised "
                          f"{type(e).__name__}: {_one_line(e)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{flag}: get_config() of {path} returned {type(config).__name__}, "
                          "not an ml_collections.ConfigDict")
    return config


_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", re.DOTALL)


def check_overrides(config: ml_collections.ConfigDict, argv: Sequence[str], source: str) -> None:
    """``ConfigError`` for a ``--config.a.b`` of ``argv`` that names no field of ``config``,
    naming the full field, the config file ``source`` and the closest fields there are."""
    for arg in argv:
        match = _OVERRIDE.match(arg)
        if not match:
            continue
        path = match.group(1)
        node, done = config, "config"
        for part in path.split("."):
            name, *indices = part.split("[")  # mixture[0][1]: ml_collections indexes the value
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"{arg}: {done}={node!r} is a value, not a section with a "
                                  f"field {name!r}")
            if name not in node:
                close = difflib.get_close_matches(name, list(node.keys()), n=3)
                hint = (f"did you mean {', '.join(f'{done}.{c}' for c in close)}?" if close
                        else f"its fields: {', '.join(sorted(node.keys()))}")
                raise ConfigError(f"{arg}: {done}.{name} is not a field of {source} "
                                  f"(configs/base.py declares every field); {hint}")
            node, done = node[name], f"{done}.{name}"
            for index in indices:
                i = index.rstrip("]")
                if not (isinstance(node, (tuple, list)) and i.lstrip("-").isdigit()
                        and -len(node) <= int(i) < len(node)):
                    raise ConfigError(f"{arg}: {done}={node!r} has no element [{i}]")
                node, done = node[int(i)], f"{done}[{i}]"


def _config_spec(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config=X`` or ``--config X``), the last one."""
    spec = None
    for i, arg in enumerate(argv):
        if re.match(r"^--?config=", arg):
            spec = arg.split("=", 1)[1]
        elif re.match(r"^--?config$", arg) and i + 1 < len(argv):
            spec = argv[i + 1]
    return spec


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def parse_flags(argv: list[str]) -> list[str]:
    """An ``absl.app.run`` ``flags_parser``: the config file and its overrides checked first
    (:func:`load_config_file`, :func:`check_overrides`), then absl's parse; any error is one
    line on stderr and exit status 1."""
    prog = os.path.basename(argv[0]) if argv else "softmcl_jax"
    register_parsers()
    try:
        spec = _config_spec(argv[1:])
        if spec:
            check_overrides(load_config_file(spec), argv[1:], spec.split(":", 1)[0])
        return flags.FLAGS(argv)
    except (ConfigError, flags.Error) as e:
        message = _one_line(e)
    except (ValueError, TypeError, LookupError, AttributeError, OSError) as e:
        message = f"{type(e).__name__}: {_one_line(e)}"  # from inside ml_collections or absl
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(1)
