"""Initialisers named in a config, as TorchEasyRec writes them (``wide_init_fn``)."""

import ast

import torch
from torch import nn

_INIT_FNS = {
    "uniform_": nn.init.uniform_,
    "normal_": nn.init.normal_,
    "zeros_": nn.init.zeros_,
    "constant_": nn.init.constant_,
    "trunc_normal_": nn.init.trunc_normal_,
    "xavier_uniform_": nn.init.xavier_uniform_,
    "xavier_normal_": nn.init.xavier_normal_,
}


def parse_init_fn(spec: str):
    """``"nn.init.uniform_,a=-0.01,b=0.01"`` -> a function ``tensor -> tensor`` (TorchEasyRec's
    ``wide_init_fn`` syntax, parsed without eval)."""
    name, *args = [p.strip() for p in spec.split(",")]
    short = name.removeprefix("torch.").removeprefix("nn.").removeprefix("init.")
    if short not in _INIT_FNS:
        raise ValueError(
            f"unknown init function {name!r}; expected one of "
            + ", ".join(f"nn.init.{n}" for n in _INIT_FNS)
        )
    kwargs = {}
    for a in args:
        key, eq, value = a.partition("=")
        if not eq:
            raise ValueError(f"init function argument {a!r} must be key=value")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"init function argument {a!r}: value is not a literal") from None
    fn = _INIT_FNS[short]
    try:  # arguments the function does not take or cannot use fail here, not in training
        fn(torch.empty(2, 2), **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"init function {spec!r}: {e}") from None

    def init(t: torch.Tensor) -> torch.Tensor:
        return fn(t, **kwargs)

    return init
