"""Wrap a function that Dagster introspects (op bodies, sensor functions) without hiding its
parameters: Dagster reads names and annotations from the wrapper, so they are copied over, with
string annotations (`from __future__ import annotations`) resolved in the original's module."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any


def keep_signature(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    with contextlib.suppress(NameError, TypeError):
        signature = inspect.signature(original, eval_str=True)
        wrapper.__signature__ = signature
        wrapper.__annotations__ = {
            name: p.annotation
            for name, p in signature.parameters.items()
            if p.annotation is not inspect.Parameter.empty
        }
    return wrapper
