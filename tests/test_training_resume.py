"""The one training loop resumes its own state only: a state of an earlier layout is refused, not guessed at."""

import pytest
import torch
from torch import nn

from pcm_policy.training.ema import EMA
from pcm_policy.training.loop import LoopConfig, ResumeError, train


def run(tmp_path, steps):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    batches = iter(lambda: {"x": torch.randn(4, 3)}, None)
    cfg = LoopConfig(steps=steps, warmup_steps=1, log_every=1, val_every=100, ckpt_every=1)
    return train(model, lambda b: model(b["x"]).pow(2).mean(), batches, cfg, tmp_path / "run",
                 save_fn=lambda m, step: None, config={"steps": steps}, desc="t")


def test_a_resume_state_of_an_earlier_layout_is_refused(tmp_path):
    run(tmp_path, 2)
    state_path = tmp_path / "run" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    assert int(state["step"]) == 2 and "params" in state
    state["model"] = state.pop("params")  # the layout of an earlier version: the whole model
    torch.save(state, state_path)
    with pytest.raises(ResumeError, match="earlier version"):
        run(tmp_path, 2)


def test_ema_refuses_a_state_without_shadow():
    ema = EMA(nn.Linear(3, 2))
    ema.load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="without 'shadow'"):
        ema.load_state_dict({"model": nn.Linear(3, 2).state_dict(), "step": 1})
