"""scripts/peers_paired.py (paired rows from a sweep cache and rollout files), peers_pareto.front and the
distribution script's refusal of evaluation seeds."""

import json

import numpy as np
import pytest
from helpers import load_script


def _detail(scores):
    s = np.asarray(scores)
    return {"mean_score": float(s.mean()), "success_rate": float((s >= 1).mean()), "scores": list(map(float, s)),
            "mean_iterations": 1.0, "mean_nfe": 1.0}


@pytest.fixture
def sweep(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.5, 1, 20)
    runs = tmp_path / "sw" / "runs"
    runs.mkdir(parents=True)
    (runs / "reference_score.json").write_text(json.dumps({"key": {}, "value": {"score": 0, "detail": _detail(ref)}}))
    for name, shift in (("pcm", -0.05), ("ddim-k", -0.3)):
        (runs / f"{name}_k1.json").write_text(json.dumps({"key": {}, "value": {"detail": _detail(ref + shift)}}))
    (runs / "distance_pcm.json").write_text(json.dumps({"key": {}, "value": [1.0]}))  # not a score row
    roll = {"sampler": {"name": "srds", "k": 1}, "summary": {**_detail(ref[5:10] - 0.5)},
            "episodes": [{"seed": 100005 + i, "score": float(v)} for i, v in enumerate(ref[5:10] - 0.5)]}
    (tmp_path / "roll.json").write_text(json.dumps(roll))
    return tmp_path, ref


def test_paired_rows_against_the_reference_and_pcm(sweep, capsys):
    tmp, ref = sweep
    out = tmp / "paired.json"
    rc = load_script("peers_paired").main(["--sweep-out", str(tmp / "sw"), "--rollouts", str(tmp / "roll.json"),
                                       "--out", str(out), "--markdown"])
    assert rc == 0
    res = json.loads(out.read_text())
    rows = {(r["sampler"], r["k"]): r for r in res["rows"]}
    assert set(rows) == {("pcm", 1), ("ddim-k", 1), ("srds", 1)}
    assert rows[("ddim-k", 1)]["vs_ddim50"]["diff"] == pytest.approx(-0.3)
    assert rows[("ddim-k", 1)]["vs_pcm"]["diff"] == pytest.approx(-0.25)
    assert rows[("ddim-k", 1)]["vs_pcm"]["ci95"][1] < 0  # a constant shift: the interval is the shift
    srds = rows[("srds", 1)]  # 5 episodes, paired with the same seeds of the others
    assert srds["episodes"] == 5 and srds["vs_pcm"]["n"] == 5 and srds["vs_pcm"]["diff"] == pytest.approx(-0.45)
    assert "| pcm |" in capsys.readouterr().out


def test_paired_from_an_earlier_output_pairs_new_rollouts_with_its_rows(sweep):
    """--paired: the full rows of an earlier output (not its rows on fewer seeds), new --rollouts paired with them."""
    tmp, _ = sweep
    script = load_script("peers_paired")
    assert script.main(["--sweep-out", str(tmp / "sw"), "--rollouts", str(tmp / "roll.json"),
                        "--out", str(tmp / "first.json")]) == 0
    first = {(r["sampler"], r["k"]): r for r in json.loads((tmp / "first.json").read_text())["rows"]}
    roll = json.loads((tmp / "roll.json").read_text())
    roll["sampler"]["name"] = "consistency"
    (tmp / "cd.json").write_text(json.dumps(roll))
    assert script.main(["--paired", str(tmp / "first.json"), "--rollouts", str(tmp / "cd.json"),
                        "--out", str(tmp / "again.json")]) == 0
    again = {(r["sampler"], r["k"]): r for r in json.loads((tmp / "again.json").read_text())["rows"]}
    assert set(again) == {("pcm", 1), ("ddim-k", 1), ("consistency", 1)}  # srds (5 of 20 episodes) left out
    for key in (("pcm", 1), ("ddim-k", 1)):
        assert again[key]["vs_ddim50"] == first[key]["vs_ddim50"] and again[key]["scores"] == first[key]["scores"]
    assert again[("consistency", 1)]["vs_pcm"] == first[("srds", 1)]["vs_pcm"]  # the same scores, the same seeds


def test_paired_refuses_a_missing_cache_and_foreign_seeds(sweep, capsys):
    tmp, _ = sweep
    assert load_script("peers_paired").main(["--sweep-out", str(tmp / "nothing")]) == 2
    roll = json.loads((tmp / "roll.json").read_text())
    roll["episodes"][0]["seed"] = 7
    (tmp / "roll.json").write_text(json.dumps(roll))
    assert load_script("peers_paired").main(["--sweep-out", str(tmp / "sw"), "--rollouts", str(tmp / "roll.json")]) == 2
    assert "seeds outside" in capsys.readouterr().err


def test_pareto_front_keeps_the_points_nothing_beats():
    front = load_script("peers_pareto").front
    assert front([(1, 0.2), (2, 0.1), (2, 0.6), (3, 0.5), (50, 0.9)]) == [(1, 0.2), (2, 0.6), (50, 0.9)]


def test_distribution_refuses_evaluation_seeds(capsys):
    assert load_script("peers_distribution").main(["--states", "100003"]) == 2
    assert "evaluation seeds" in capsys.readouterr().err


def test_paired_rollout_without_k(sweep, capsys):
    """A rollout run without --k: DDIM's calls are its steps (DDIM-10 is paired at k = 10); an iterative sampler's
    vary per chunk, so it is refused with one line."""
    tmp, _ = sweep
    roll = json.loads((tmp / "roll.json").read_text())
    roll["sampler"] = {"name": "ddim", "k": None, "num_steps": 10}
    (tmp / "ddim10.json").write_text(json.dumps(roll))
    out = tmp / "paired.json"
    assert load_script("peers_paired").main(["--sweep-out", str(tmp / "sw"), "--rollouts", str(tmp / "ddim10.json"),
                                         "--out", str(out)]) == 0
    assert ("ddim", 10) in {(r["sampler"], r["k"]) for r in json.loads(out.read_text())["rows"]}
    roll["sampler"] = {"name": "taa", "k": None, "num_steps": 50}
    (tmp / "taa.json").write_text(json.dumps(roll))
    assert load_script("peers_paired").main(["--sweep-out", str(tmp / "sw"), "--rollouts", str(tmp / "taa.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rerun it with --k" in err
