"""What every benchmark shares: machine facts, child processes, CPU time, results files.

A benchmark script runs each side of a comparison as its own Python process (each
with its own Keras dtype policy, thread pools and import cost), collects what the
children print as one JSON line, and writes ``benchmarks/results/<name>.json`` with
:func:`write_results`: machine facts (CPU model and flags, cores, load average
before and after), library versions, every timing of every run, the ratios and
whether each goal was met.

The children import kerastl from this checkout (``ROOT`` is put first on
``PYTHONPATH``), never from another installed copy.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# CPU flags that decide which kernels oneDNN can run (and so which precision wins).
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                         "amx_bf16", "amx_tile", "amx_int8")
# Above this one-minute load average the machine was busy with other work.
BUSY_LOAD = 3.0
# What a run's pixel blend decided (its run.json), as a results file keeps it: the
# run folders themselves are not committed.
BLEND_FACTS = ("weight", "kept", "pixel_cv_accuracy", "probe_cv_accuracy", "chosen_on")


def cpu_facts(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, the flags that matter for oneDNN, and the core count."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(),
            "flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST}}


def versions() -> dict[str, str]:
    """Library versions, read without importing TensorFlow (so this stays cheap)."""
    from importlib import metadata

    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("tensorflow", "keras", "numpy", "kerastl"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def blend_facts(output: Path) -> dict[str, Any] | None:
    """The pixel blend's :data:`BLEND_FACTS` from the run in ``output``; None where the
    run did not blend or wrote no ``run.json`` (a scikit-learn head's run)."""
    facts = Path(output) / "run.json"
    blend = json.loads(facts.read_text()).get("pixel_blend") if facts.is_file() else None
    return {key: blend.get(key) for key in BLEND_FACTS} if blend else None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class CpuClock:
    """Wall time and CPU time (user + system, all threads) of this process.

    ``utilisation`` is CPU seconds per wall second: 2.0 means both cores of a
    2-core machine were busy the whole time.

    Example:
        >>> clock = CpuClock()
        >>> clock.stop()["wall_seconds"] >= 0
        True
    """

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = _cpu_seconds(resource.RUSAGE_SELF)

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        cpu = _cpu_seconds(resource.RUSAGE_SELF) - self.cpu
        return {"wall_seconds": round(wall, 4), "cpu_seconds": round(cpu, 4),
                "cpu_utilisation": round(cpu / wall, 3) if wall > 0 else None}


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_process(command: list[str], *, env: dict[str, str] | None = None,
                cwd: Path | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``command`` as a child process; its wall time, CPU time and last JSON line.

    The wall time is the whole process, from ``exec`` to exit: Python start-up and
    importing TensorFlow included.

    Raises:
        RuntimeError: the child failed (its stderr tail is quoted).
    """
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [child_env.get("PYTHONPATH")])])
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    before = _cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=child_env, cwd=cwd or ROOT, capture_output=True,
                            text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - started
    cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) - before
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n"
                           f"{result.stderr[-4000:]}")
    printed = None
    for line in reversed(result.stdout.strip().splitlines()):
        if line.startswith("{"):
            printed = json.loads(line)
            break
    return {"wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
            "cpu_utilisation": round(cpu / wall, 3), "printed": printed}


def python_command(script: Path | str, *args: str) -> list[str]:
    return [sys.executable, str(script), *map(str, args)]


def emit(result: dict[str, Any]) -> None:
    """What a child process hands back to its parent: one JSON line on stdout."""
    print(json.dumps(result, default=float), flush=True)


def _public(argument: str) -> str:
    """A command-line argument with this machine's absolute paths left out."""
    flag, equals, value = argument.partition("=")
    if equals and flag.startswith("-") and os.path.isabs(value):
        return f"{flag}=<path>"
    return "<path>" if os.path.isabs(argument) else argument


def write_results(name: str, report: dict[str, Any], *, load_before: list[float],
                  notes: list[str] | None = None, output: Path | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the facts every results file has."""
    load_after = load_average()
    notes = list(notes or [])
    if max(load_before[0], load_after[0]) > BUSY_LOAD:
        notes.append(f"the machine was shared: one-minute load average {load_before[0]} "
                     f"before and {load_after[0]} after (> {BUSY_LOAD}); absolute timings "
                     "are pessimistic, ratios measured in this run are what to compare")
    full = {
        "benchmark": name,
        # This machine's paths (a --workdir, a --root) are not part of the method.
        "command": " ".join(["python", f"benchmarks/{name}.py",
                             *(_public(argument) for argument in sys.argv[1:])]),
        "commit": git_commit(),
        "machine": {**cpu_facts(), "load_average_before": load_before,
                    "load_average_after": load_after},
        "versions": versions(),
        **report,
        "notes": notes,
    }
    path = output or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(full, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path


def count_macs(model) -> dict[str, int]:
    """Multiply-accumulates per image of every Conv2D, DepthwiseConv2D and Dense layer.

    Counted from the built layers' kernel shapes and output sizes (nested models
    included): ``out_h * out_w * k_h * k_w * c_in / groups * c_out`` for a
    convolution, ``k_h * k_w * channels * multiplier`` per output pixel for a
    depthwise one, ``inputs * units`` for Dense. BatchNorm, activations, pooling and
    additions are left out (well under 1% of VGG16's or ResNet50's work). Checks:
    VGG16 at 224 gives 15.47 G (the usual "15.5 GMACs"), ResNet50 3.86 G (the usual
    "3.8-4.1 G"; papers counting the 1000-way top add 2 M).

    Returns:
        ``{"conv": ..., "depthwise": ..., "dense": ..., "total": ...}``.
    """
    import keras

    counts = {"conv": 0, "depthwise": 0, "dense": 0}
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            out = layer.output.shape
            kh, kw, channels, multiplier = layer.kernel.shape
            counts["depthwise"] += out[1] * out[2] * kh * kw * channels * multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            kh, kw, c_in, c_out = layer.kernel.shape
            counts["conv"] += out[1] * out[2] * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            c_in, c_out = layer.kernel.shape
            counts["dense"] += c_in * c_out
    counts = {key: int(value) for key, value in counts.items()}
    counts["total"] = sum(counts.values())
    return counts


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _all_layers(layer)
        else:
            yield layer
