"""scripts/compare_adapters.py: adapters side by side, paired per episode (in-process, small)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_script

from pcm_policy.adapters import load_sampler
from pcm_policy.pusht.checkpoint import load_adapter_folder, load_policy
from pcm_policy.pusht.rollout import run_rollouts

ROOT = Path(__file__).resolve().parents[1]
PCM, PAPER = ROOT / "checkpoints/pusht_pcm", ROOT / "checkpoints/pusht_pcm_paper"


@pytest.mark.parametrize("args, msg", [
    (["--adapters", str(PCM), str(PCM)], "names a folder twice"),
    (["--adapters", str(ROOT / "checkpoints/pusht_base")], "is not an adapter folder"),
    (["--adapters", str(PCM), "--score-ks", "0"], "must be >= 1"),
    (["--adapters", str(PCM), "--out", "results/bench_anytime.json"], "tracked by git"),
])
def test_bad_settings_exit_2_with_one_line(args, msg, capsys):
    with pytest.raises(SystemExit) as e:
        load_script("compare_adapters").parse_args(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_rows_are_each_adapters_own_rollouts_paired_with_the_first(tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc = load_script("compare_adapters").main(["--adapters", str(PCM), str(PAPER), "--seed", "300000",
                                               "--episodes", "2", "--max-steps", "16", "--conditions", "4",
                                               "--ks", "1,2", "--score-ks", "1", "--out", str(out)])
    assert rc == 0 and "px / first" in capsys.readouterr().out
    res = json.loads(out.read_text())
    first, second = res["adapters"]
    assert len(res["reference"]["scores"]) == 2 and set(first["distance_px"]) == {"1", "2"}
    assert first["distance_px"]["1"] < second["distance_px"]["1"]  # the paper's recipe jumps nowhere at k = 1
    # the first adapter's row is its own PCM at exactly one call, rolled out on the same seeds
    policy = load_policy(ROOT / "checkpoints/pusht_base")
    spec, _ = load_adapter_folder(policy, PCM)
    with torch.no_grad():
        eps = run_rollouts(policy.freeze(), load_sampler(spec.replace(tol=0.0, k=1), policy.noise_scheduler),
                           [300000, 300001], max_steps=16)["episodes"]
    assert first["rows"]["1"]["scores"] == [e["score"] for e in eps]
    vs, (a, b) = second["rows"]["1"]["vs_first"], (r["rows"]["1"]["mean_score"] for r in (second, first))
    assert vs["n"] == 2 and vs["diff"] == pytest.approx(a - b)


def test_paired_with_an_earlier_run_only_when_its_reference_reproduces(tmp_path, capsys):
    main = load_script("compare_adapters").main
    args = ["--adapters", str(PCM), "--seed", "300000", "--episodes", "2", "--max-steps", "8", "--conditions", "2",
            "--ks", "1", "--score-ks", "1"]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    ref = json.loads((tmp_path / "a.json").read_text())["reference"]["scores"]
    peers = {"reference": {"first_seed": 300000, "scores": ref},
             "rows": [{"sampler": "ddim-k", "k": 1, "scores": [0.25, 0.5]},
                      {"sampler": "taa", "k": 2, "scores": [1, 1]}]}
    (tmp_path / "p.json").write_text(json.dumps(peers))
    capsys.readouterr()
    assert main([*args, "--paired-with", str(tmp_path / "p.json"), "--out", str(tmp_path / "b.json")]) == 0
    row = json.loads((tmp_path / "b.json").read_text())["adapters"][0]["rows"]["1"]
    assert set(row["peers_minus_this"]) == {"ddim-k"}  # rows at the adapter's k only
    assert row["peers_minus_this"]["ddim-k"]["diff"] == pytest.approx(0.375 - row["mean_score"])
    other = {"first_seed": 300000, "scores": [ref[0], ref[1] + 0.5]}
    (tmp_path / "p.json").write_text(json.dumps({**peers, "reference": other}))
    assert main([*args, "--paired-with", str(tmp_path / "p.json")]) == 2  # another machine's episodes: refused
    assert "differ from" in capsys.readouterr().err
    assert main([*args, "--episodes", "3", "--paired-with", str(tmp_path / "p.json")]) == 2
    assert "run with --seed 300000 --episodes 2" in capsys.readouterr().err
