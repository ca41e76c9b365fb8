"""scripts/bench_peers.py and the rollout script with the peers' sampler names (in-process, small)."""

from __future__ import annotations

import json

import pytest
from helpers import load_script


def script(name):
    return load_script(name).main


@pytest.mark.parametrize("args, msg", [
    (["--seeds", "100000", "100001"], "evaluation seeds"),
    (["--out", "checkpoints/pusht_base/config.json"], "tracked by git"),
    (["--peers", "ddim", "srds"], "peers must be among"),
])
def test_bench_peers_refuses_evaluation_seeds_and_shipped_files(args, msg, capsys):
    assert script("bench_peers")(args) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_peers_small_run(tmp_path, capsys):
    out = tmp_path / "peers.json"
    rc = script("bench_peers")(["--seeds", "400000", "400000", "--max-steps", "24", "--conditions", "3", "--ks", "1",
                                "5", "--peers", "ddim-k", "dpmsolver++", "srds", "pcm", "--paradigms-tols", "0.1",
                                "0.01", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["settings"]["conditions"] == 3 and set(res["anytime"]) == {"ddim-k", "dpmsolver++", "srds", "pcm"}
    for rows in res["anytime"].values():  # a budget of k batched calls is k calls, for every peer
        assert [r["k"] for r in rows] == [1, 5] and [r["iterations"] for r in rows] == [1, 5]
    p = res["paradigms"]
    assert set(p["runs"]) == {"paradigms", "picard", "taa", "pcm"}
    assert p["target_distance"] == p["runs"]["paradigms"][0]["distance"]
    assert all(m is None or m["distance"] <= p["target_distance"] for m in p["matched"].values())
    assert "distance to DDIM-50" in capsys.readouterr().out


def test_rollout_script_wants_k_for_the_solvers(capsys):
    with pytest.raises(SystemExit) as e:
        script("rollout")(["--sampler", "unipc"])
    assert e.value.code == 2 and "--sampler unipc needs --k" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpmsolver++", "unipc", "srds"])
def test_rollout_script_runs_the_peers(name, capsys):
    assert script("rollout")(["--sampler", name, "--k", "3", "--seed", "400000", "--max-steps", "8"]) == 0
    assert f"{name} k=3: mean score" in capsys.readouterr().out


def test_the_consistency_peer_needs_its_student(capsys):
    assert script("rollout")(["--sampler", "consistency", "--k", "1"]) == 2
    assert "--sampler consistency needs --adapter" in capsys.readouterr().err
    assert script("bench_peers")(["--peers", "pcm", "consistency"]) == 2  # no --student
    assert "peers must be among" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_peers_measures_a_student_at_k_calls(tmp_path):
    out = tmp_path / "peers.json"  # any LoRA adapter folder of the policy stands in for a student here
    rc = script("bench_peers")(["--seeds", "400000", "400000", "--max-steps", "8", "--conditions", "2", "--ks", "1",
                                "3", "--peers", "consistency", "--student", "checkpoints/pusht_pcm",
                                "--paradigms-tols", "0.1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and res["settings"]["student"] == "checkpoints/pusht_pcm"
    assert [(r["k"], r["iterations"], r["nfe"]) for r in res["anytime"]["consistency"]] == [(1, 1, 1), (3, 3, 3)]
