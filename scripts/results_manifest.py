"""Write results/MANIFEST.md: every file under results/ that git tracks, with the command that made it, and the
commit and date that last changed it (from git).

    python scripts/results_manifest.py            # rewrites results/MANIFEST.md
    python scripts/results_manifest.py --check    # exit 1 if the manifest is out of date

The command is read from the file itself where it records one (``command``, or the ``args`` / ``settings``
a script saved with its output); a plot or CSV takes the command of the JSON beside it. Files that record
nothing say so: the docs that quote them name the command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SCRIPT_OF = {"sweep.json": "scripts/eval_sweep.py", "bench_samplers": "scripts/bench_samplers.py",
             "bench_env": "scripts/bench_env.py", "taa_tuning": "scripts/tune_taa.py",
             "vision_bench_window": "scripts/vision/bench_window.py"}
SKIP_FLAGS = {"json", "video", "out"}  # paths that only name where the output was written


def git(*args: str) -> str:
    r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return r.stdout.strip()


def tracked() -> list[str]:
    """The files under results/ that git tracks (a sweep's cache and other untracked outputs are not listed, so
    the manifest is the same in every clone); exits with a one-line error outside a git checkout."""
    r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", "results"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: git ls-files failed in {ROOT} ({r.stderr.strip()}); run this in a git checkout")
    return sorted(f for f in r.stdout.split("\0") if f)


def flags(d: dict) -> str:
    out = []
    for k, v in d.items():
        if v is None or v is False or k in SKIP_FLAGS or isinstance(v, (dict, list)):
            continue
        flag = "--" + k.replace("_", "-")
        out.append(flag if v is True else f"{flag} {v}")
    return " ".join(out)


def vision_command(st: dict) -> str:
    """``scripts/vision/evaluate.py``'s command line from the settings its sweep.json records (its own flags, not
    the sweep's setting names)."""
    parts = [f"--family {st['family']}"]
    if not st.get("stand_in"):
        parts.append(f"--model {st.get('model_path')}")
    if st.get("adapter_path"):  # a shipped adapter run from another checkout: its path in this repository
        a = str(st["adapter_path"])
        parts.append(f"--adapter {a[a.index('checkpoints/'):] if a.startswith('/') and 'checkpoints/' in a else a}")
    if isinstance(st.get("samplers"), dict):
        parts.append("--samplers " + ",".join(st["samplers"]))
    for key, flag in (("ks", "--ks"), ("score_ks", "--score-ks")):
        if isinstance(st.get(key), list):
            parts.append(f"{flag} {','.join(str(k) for k in st[key])}")
    for key, flag in (("n", "--num-samples"), ("seed", "--seed"), ("T", "--steps"), ("guidance", "--guidance"),
                      ("batch_size", "--batch-size")):
        if st.get(key) is not None:
            parts.append(f"{flag} {st[key]}")
    if st.get("distances_only"):
        parts.append("--distances-only")
    return "python scripts/vision/evaluate.py " + " ".join(parts)


def command_of(path: Path) -> str:
    if path.name == "training.png":
        return "python scripts/plot_training.py (on the run's log.jsonl)"
    if path.suffix == ".json":
        json_path = path
    else:  # a sweep's plots and CSV: its sweep.json; otherwise a JSON of the same name
        json_path = next((q for q in (path.parent / "sweep.json", path.with_suffix(".json")) if q.exists()), None)
    if json_path is None:
        return "not recorded (see the docs that quote it)"
    try:
        d = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return "not recorded"
    if not isinstance(d, dict):
        return "not recorded"
    script = next((s for key, s in SCRIPT_OF.items() if key in json_path.name), None)
    if isinstance(d.get("command"), str):
        return d["command"]
    if isinstance(d.get("args"), dict) and "per_task" in d:  # eval_accelerated.py's eval_info.json (lerobot's loop)
        args = dict(d["args"])
        return f"python scripts/lerobot/eval_accelerated.py {args.pop('checkpoint', '')} {flags(args)}"
    if isinstance(d.get("args"), dict):
        return f"python scripts/rollout.py {flags(d['args'])}"
    if isinstance(d.get("settings"), dict) and d["settings"].get("family") and "sweep" in json_path.name:
        return vision_command(d["settings"])
    if isinstance(d.get("settings"), dict) and script:
        return f"python {script} {flags(d['settings'])}"
    if script:
        return f"python {script} (settings inside the file)"
    return "not recorded (see the docs that quote it)"


def manifest() -> str:
    rows = ["# results/ manifest", "",
            "Made by `python scripts/results_manifest.py`. Each tracked file: the command that made it (as the",
            "file records it), and the commit and date that last changed it. Superseded runs live in git history.", "",
            "| file | command | commit | date |", "|---|---|---|---|"]
    for rel in tracked():
        p = ROOT / rel
        if p.name == "MANIFEST.md":
            continue
        commit, date = (git("log", "-1", "--format=%h %as", "--", rel).split() + ["uncommitted", "-"])[:2]
        rows.append(f"| `{rel}` | `{command_of(p)}` | {commit} | {date} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if results/MANIFEST.md is out of date")
    a = p.parse_args(argv)
    text, path = manifest(), RESULTS / "MANIFEST.md"
    if a.check:
        ok = path.exists() and path.read_text() == text
        print("manifest up to date" if ok else "results/MANIFEST.md is out of date: run scripts/results_manifest.py")
        return 0 if ok else 1
    from pcm_policy.io import write_text

    write_text(path, text)
    print(f"wrote {path.relative_to(ROOT)} ({text.count(chr(10)) - 6} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
