"""Side-by-side latency of sequential DDIM-50, Picard and PCM on the shipped PushT policy, CPU or GPU (JSON out).

Run it on a QUIET machine (nothing else busy: the load average is recorded and a warning printed),
once per thread setting, from the repository root:

    # 1 thread for every call (the baseline)
    OMP_NUM_THREADS=1 python scripts/bench_samplers.py --checkpoint checkpoints/pusht_base \\
        --adapter checkpoints/pusht_pcm --threads 1 --window-threads 1 --out results/bench_samplers_1thread.json
    # batch-1 calls on 1 thread, calls with >= 4 rows (Picard/PCM windows) on 2 threads
    OMP_NUM_THREADS=1 python scripts/bench_samplers.py --checkpoint checkpoints/pusht_base \\
        --adapter checkpoints/pusht_pcm --threads 1 --window-threads 2 --switch-rows 4 \\
        --out results/bench_samplers_2thread.json

Several batch sizes side by side (B episodes in lockstep: B conditions sampled together; the Exact rows of
docs/peers.md, ``results/peers/latency_batches.json``):

    OMP_NUM_THREADS=1 python scripts/bench_samplers.py --batch 1,8,32 --threads 1 --window-threads 1 \
        --windows 50 --tols 0.1 --safeguards 1 --inits prior --anderson 3 --ddim-ks 10,16 --curve 1 \
        --curve-threads 1 --curve-repeats 3 --out results/peers/latency_batches.json

Each takes a few minutes. Compare the two JSONs: ``derived`` (full-window call / batch-1 call,
target <= 3x; batch-1 path through the ThreadPolicy vs fixed 1 thread, should be ~1.00x) and the
per-sampler medians. Only the 2-thread run's windows use the second core; its batch-1 path is the
1-thread run's. Caveat, measured on the loaded 2-core machine (load ~5): with libgomp's default
spin-waiting, 2-thread calls took 1.4 s (batch 1) and 0.47 s (50 rows) instead of 8-27 ms, and
``OMP_WAIT_POLICY=PASSIVE`` removed that (11 / 37 ms). So use the 2-thread setting only where the
cores are free, and if in doubt also run the 2-thread line with ``OMP_WAIT_POLICY=PASSIVE`` (recorded
in the JSON) and keep the faster one.

On a GPU, add ``--device cuda`` (TF32 off; every timing waits for the GPU; thread settings do not
matter there): ``scripts/device_check.sh`` runs it that way.

A quick check of the script itself (about a minute; the numbers mean nothing):

    OMP_NUM_THREADS=1 python scripts/bench_samplers.py --checkpoint /tmp/smoke/checkpoint --adapter random \\
        --conds 1 --repeats 1 --windows 50 --tols 0.1 --safeguards none --curve 1,50 --curve-repeats 2

What runs: the policy's own sampler-protocol denoiser (``policy.model_fn``) and noise schedule
(``policy.noise_scheduler``, solved with DDIM, eta = 0), conditioned on observation windows
(``n_obs_steps`` consecutive steps of one episode) drawn from the demonstrations (``--dataset``),
one action chunk of ``--batch`` samples per window. The UNet runs as frozen TorchScript graphs
(``DiffusionPolicy.freeze``: the eager kernels without Python's per-layer cost, same outputs;
``--eager`` for the module itself; the curve times both). Every call goes through
``pcm_policy.sampling.ThreadPolicy``: calls with fewer than ``--switch-rows`` rows run on
``--threads`` threads (the sequential path), wider ones on ``--window-threads`` (Picard windows);
its switching cost is included in every timing and also reported apart.

Fairness: sequential DDIM and Picard use the base policy without adapters; PCM uses a copy with
the adapter attached (peft's LoRA layers compute their branch even at lambda = 0, a cost PCM
really pays). One process, interleaved repeats (round robin over samplers, per condition),
warm-up first; median and min per action chunk. Accuracy: max |x_0 - DDIM-50's x_0| in normalised
action units and in pixels (normalised / the action normaliser's scale).

The batch-cost curve (one denoiser call with 1..50 rows, per fixed thread count and through the
ThreadPolicy) explains the sampler timings: a full-window Picard iteration is one 50-row call, so
Picard pays off when iterations * cost(50 rows) < 50 * cost(1 row).

``--adapter random`` (the default when ``checkpoints/pusht_pcm`` is missing) attaches a random
LoRA adapter: PCM timings are then representative per iteration, its iteration counts are not.
``--size NAME`` benches a randomly initialised policy of that UNet preset instead of a checkpoint
(timing only: iteration counts of a random network mean nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcm_policy.pusht.bench import BenchConfig, run_bench
from pcm_policy.pusht.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE, DEFAULT_ADAPTER = ROOT / "checkpoints/pusht_base", ROOT / "checkpoints/pusht_pcm"
D = BenchConfig()  # the defaults


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",")]


def kappas(s: str) -> list[float | None]:
    return [None if v.strip().lower() in ("none", "off", "") else float(v) for v in s.split(",")]


def join(vs) -> str:
    return ",".join("none" if v is None else f"{v:g}" if isinstance(v, float) else str(v) for v in vs)


def parse(argv=None) -> tuple[BenchConfig, str | None]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help=f"policy folder (default: {DEFAULT_BASE.relative_to(ROOT)} if present)")
    src.add_argument("--size", help="bench a RANDOM policy with this UNet preset instead (timing only)")
    p.add_argument("--adapter", help=f"PCM adapter folder, or 'random' (default: {DEFAULT_ADAPTER.relative_to(ROOT)} "
                                     "if present, else random)")
    p.add_argument("--dataset", default=str(ROOT / D.dataset), help="demonstrations the conditions are drawn from")
    p.add_argument("--conds", type=int, default=D.conds, help="observation windows (one action chunk each)")
    p.add_argument("--batch", default=str(D.batch), help="samples per action chunk (episodes in lockstep); several "
                                                          "(1,8,32): one run each, then a side-by-side table")
    p.add_argument("--num-steps", type=int, default=D.num_steps)
    p.add_argument("--windows", default=join(D.windows), help="Picard windows")
    p.add_argument("--tols", default=join(D.tols), help="Picard and PCM tolerances")
    p.add_argument("--safeguards", default=join(D.safeguards), help="iterate safeguard kappas ('none': off)")
    p.add_argument("--pcm-windows", default=join(D.pcm_windows), help="PCM windows")
    p.add_argument("--inits", default=join(D.inits), help="Picard first iterates (PCM uses its adapter's)")
    p.add_argument("--anderson", default=join(D.anderson),
                   help="Picard + triangular Anderson acceleration (init prior) with these memories ('' for none)")
    p.add_argument("--ddim-ks", default=join(D.ddim_ks), help="also DDIM re-discretised to these step counts "
                                                              "('' for none)")
    p.add_argument("--pcm-ks", default=join(D.pcm_ks), help="also the adapter's PCM with exactly k iterations "
                                                            "(tol 0), beside --ddim-ks ('' for none)")
    p.add_argument("--pcm-spaces", help="weight,feature (default: the adapter's own space)")
    p.add_argument("--k-on", type=int, help="override the adapter's schedule (random adapter: 2)")
    p.add_argument("--k-off", type=int, help="override the adapter's schedule (random adapter: 6)")
    p.add_argument("--repeats", type=int, default=D.repeats, help="timed runs per sampler and condition")
    p.add_argument("--curve", default=join(D.curve), help="batch-cost curve widths (rows per call)")
    p.add_argument("--curve-threads", default=join(D.curve_threads), help="fixed thread counts of the curve")
    p.add_argument("--curve-repeats", type=int, default=D.curve_repeats)
    p.add_argument("--threads", type=int, default=D.threads, help="threads of calls narrower than --switch-rows")
    p.add_argument("--window-threads", type=int, default=D.window_threads,
                   help="threads of calls with >= --switch-rows rows")
    p.add_argument("--switch-rows", type=int, default=D.switch_rows)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--device", default=D.device, help="cpu (default) or cuda[:N]: every timing then waits for the GPU")
    p.add_argument("--eager", action="store_true", help="samplers call the eager UNet (default: its frozen "
                                                        "TorchScript graphs, same outputs; the curve shows both)")
    p.add_argument("--out", help="write the JSON here (else it is printed after the table); a file git tracks "
                                 "(results/) needs --force")
    p.add_argument("--force", action="store_true", help="allow --out to replace a file git tracks (results/)")
    a = p.parse_args(argv)
    from pcm_policy.io import check_out_arg

    check_out_arg(p, a.out or None, a.force)
    if not a.size and not a.checkpoint and not DEFAULT_BASE.is_dir():
        sys.exit(f"error: no policy: {DEFAULT_BASE} does not exist; pass --checkpoint DIR (a folder from "
                 "scripts/train_policy.py) or --size small|medium for a random policy (timing only)")
    try:
        try:
            batches = ints(a.batch)
        except ValueError:
            batches = []
        if not batches:
            raise ValueError(f"--batch takes a size or sizes like 1,8,32, got {a.batch!r}")
        cfg = BenchConfig(
            checkpoint=None if a.size else a.checkpoint or str(DEFAULT_BASE), size=a.size,
            adapter=a.adapter or (str(DEFAULT_ADAPTER) if DEFAULT_ADAPTER.is_dir() else "random"),
            dataset=a.dataset, conds=a.conds, batch=batches[0], num_steps=a.num_steps, windows=ints(a.windows),
            tols=floats(a.tols), safeguards=kappas(a.safeguards), pcm_windows=ints(a.pcm_windows),
            inits=a.inits.split(","), anderson=ints(a.anderson), ddim_ks=ints(a.ddim_ks), pcm_ks=ints(a.pcm_ks),
            pcm_spaces=a.pcm_spaces.split(",") if a.pcm_spaces else None, k_on=a.k_on, k_off=a.k_off,
            repeats=a.repeats, curve=ints(a.curve), curve_threads=ints(a.curve_threads),
            curve_repeats=a.curve_repeats, threads=a.threads, window_threads=a.window_threads,
            switch_rows=a.switch_rows, seed=a.seed, device=a.device, eager=a.eager,
            batches=tuple(batches) if len(batches) > 1 else ())
    except ValueError as e:
        p.error(str(e))
    return cfg, a.out


def main(argv=None):
    cfg, out = parse(argv)
    command = " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])
    try:
        run_bench(cfg, command, out)
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
