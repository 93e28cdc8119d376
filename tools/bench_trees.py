"""Start-up time, memory and subtask costs of two or more source trees, side by side.

Made for the decoder rewrite (before: Hugging Face modules, after: our decoder), usable for any
change that may move them. Each repeat runs every tree once per measurement, in a fresh random
order, each in a fresh process:

- `startup`: `import lego_embed.runtime`, then loading the bundled model and its skip bundle;
  seconds of each step, the whole process's wall time, resident memory after loading and its
  peak (VmRSS / VmHWM, MiB), and whether transformers was imported.
- `profile` (--profile): `lego-embed profile` of the bundled model on one thread; the median of
  every subtask kind at the given lengths (microseconds).
- `godot` (--godot): the Godot combat demo under Xvfb for a few seconds (model load, warm-up,
  play, exit): the process's wall time and peak resident memory (MiB).

Usage:
  python tools/bench_trees.py --tree after=.:.venv/bin/python \\
      --tree before=../before:../venv-before/bin/python --repeats 5 --profile --godot \\
      --out docs/benchmarks/decoder_before_after.json
A tree is NAME=SOURCE_DIR:PYTHON; the tree's Godot bridge must be built (make setup there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

STARTUP_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import lego_embed.runtime.runtime
t1 = time.perf_counter()
from lego_embed.model.loading import load_model
from lego_embed.skip.bundle import SkipBundle
loaded = load_model("bundled")
SkipBundle.load(loaded.path / "skip_bundle", loaded)
t2 = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({
    "import_s": t1 - t0, "load_s": t2 - t1,
    "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
    "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
    "transformers_imported": any(m.split(".")[0] == "transformers" for m in sys.modules),
}))
"""


@dataclass(frozen=True)
class Tree:
    """A source tree to measure: its name, folder and the Python that runs it."""

    name: str
    source: Path
    python: Path

    @classmethod
    def parse(cls, text: str) -> Tree:
        name, _, rest = text.partition("=")
        source, _, python = rest.partition(":")
        if not (name and source and python):
            raise argparse.ArgumentTypeError(f"expected NAME=SOURCE_DIR:PYTHON, got {text!r}")
        return cls(name, Path(source).resolve(), Path(python).absolute())

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.source), "TOKENIZERS_PARALLELISM": "false"}


def measure_startup(tree: Tree) -> dict:
    started = time.perf_counter()
    done = subprocess.run([str(tree.python), "-c", STARTUP_SCRIPT], cwd=tree.source,
                          env=tree.env(), capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def measure_profile(tree: Tree, lengths: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "profile.json"
        subprocess.run(
            [str(tree.python), "-c", "import sys; from lego_embed.cli import main; "
             "sys.exit(main(sys.argv[1:]))", "profile", "--model", "bundled",
             "--threads", "1", "--prompt-lengths", lengths, "--context-lengths", lengths,
             "--batch-sizes", "2", "--warmup", "3", "--repeats", "20", "--out", str(out)],
            cwd=tree.source, env=tree.env(), capture_output=True, text=True, check=True,
        )
        entries = json.loads(out.read_text())["entries"]
    return {
        f"{e['kind']}/{e['phase']}/{e['tokens']}x{e['context_tokens']}": e["median_us"]
        for e in entries
    }


def measure_godot(tree: Tree, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as work:
        env = {**tree.env(), "LEGO_EMBED_PYTHON": str(tree.python), "LEGO_EMBED_ENABLED": "1",
               "LEGO_DEMO_SECONDS": str(seconds), "LEGO_DEMO_BOT": "1",
               "LEGO_DEMO_REPORT": f"{work}/report.json",
               "LEGO_DEMO_SCREENSHOT": f"{work}/shot.png"}
        started = time.perf_counter()
        process = subprocess.Popen(
            ["xvfb-run", "-a", "-s", "-screen 0 800x450x24", "godot3", "--path",
             str(tree.source / "demo_game")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        report = json.loads(Path(f"{work}/report.json").read_text())
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the demo of {tree.name} exited with status {status}")
    return {"process_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "decisions": report["decisions"]}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def machine_state() -> dict:
    busy = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True,
                          text=True, check=False).stdout.splitlines()[1:6]
    return {"loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "busiest_processes": [line.strip() for line in busy]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Tree.parse, action="append", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-lengths", default="16,32,64")
    parser.add_argument("--godot", action="store_true")
    parser.add_argument("--godot-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    raw: dict[str, dict[str, list]] = {t.name: {"startup": [], "profile": [], "godot": []}
                                       for t in args.tree}
    state_before = machine_state()
    for repeat in range(args.repeats):
        trees = list(args.tree)
        rng.shuffle(trees)
        for tree in trees:
            print(f"repeat {repeat + 1}/{args.repeats}: {tree.name}", file=sys.stderr, flush=True)
            raw[tree.name]["startup"].append(measure_startup(tree))
            if args.profile:
                raw[tree.name]["profile"].append(measure_profile(tree, args.profile_lengths))
            if args.godot:
                raw[tree.name]["godot"].append(measure_godot(tree, args.godot_seconds))
    results = {}
    for name, runs in raw.items():
        startup_keys = ("import_s", "load_s", "process_s", "rss_mib", "peak_rss_mib")
        result = {"startup": {k: summary([r[k] for r in runs["startup"]]) for k in startup_keys}}
        result["startup"]["transformers_imported"] = any(
            r["transformers_imported"] for r in runs["startup"])
        if runs["profile"]:
            keys = sorted(set.intersection(*(set(p) for p in runs["profile"])))
            result["profile_median_us"] = {
                k: summary([p[k] for p in runs["profile"]]) for k in keys}
        if runs["godot"]:
            result["godot"] = {k: summary([r[k] for r in runs["godot"]])
                               for k in ("process_s", "peak_rss_mib", "decisions")}
        results[name] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "before": state_before, "after": machine_state()},
        "trees": {t.name: {"source": str(t.source), "python": str(t.python)} for t in args.tree},
        "results": results,
        "raw": raw,
    }, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
