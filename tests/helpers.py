"""Checks shared by several test files."""

import torch


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
