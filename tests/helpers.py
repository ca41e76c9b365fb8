"""Checks and loaders shared by several test files."""

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (``name`` e.g. "rollout", "vision/generate", "lerobot/probe"), executed
    afresh and registered in ``sys.modules`` as ``script_<name>`` (dataclasses look their module up there)."""
    mod_name = "script_" + name.replace("/", "_")
    spec = importlib.util.spec_from_file_location(mod_name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod


def assert_jvp_matches_finite_difference(model, x, t, c, eps=1e-6):
    """torch.func.jvp of ``model(., t, c)`` at x equals a central finite difference (float64 model)."""
    v = torch.randn_like(x)
    out, tangent = torch.func.jvp(lambda s: model(s, t, c), (x,), (v,))
    torch.testing.assert_close(out, model(x, t, c))
    fd = (model(x + eps * v, t, c) - model(x - eps * v, t, c)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-5, atol=1e-7)


def default_sigint():
    """``preexec_fn`` of a child that the test will Ctrl-C: SIGINT back to its default, as in a terminal (a job
    started in the background, e.g. under nohup, inherits SIGINT ignored, and Python then installs no handler)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
