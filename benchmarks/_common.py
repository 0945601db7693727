"""Shared helpers of the benchmark scripts: timing, memory, headers, tables and checks.

Timing rules, the same in every script:

- compile time: lowering, compiling and the first call, which also serves as warm-up;
- run time: the median of repeated calls of the compiled function, each wrapped in
    `jax.block_until_ready`;
- memory: the buffers that XLA's compiled memory analysis assigns to the program
    (arguments, outputs and temporaries, less aliased buffers). It is a property of the
    compiled program, measured the same way on every backend, and is available before
    the program runs, so that oversized programs are skipped instead of run.
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


MIB = 2**20


def enable_float64() -> None:
    """Enables float64 in JAX. Call before creating any array."""
    jax.config.update("jax_enable_x64", True)


def log(message: str) -> None:
    """Prints a progress message to stderr, so that stdout keeps only the results."""
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Measurement:
    """Timings and memory of one compiled function.

    `run_seconds` is `None` when the program was not run because its memory analysis
    exceeded the limit; then `skipped` gives the reason.
    """

    compile_seconds: float
    run_seconds: float | None
    num_repeats: int
    memory_bytes: int
    skipped: str | None = None


def compiled_memory_bytes(compiled: Any) -> int:
    """Returns the bytes of arguments, outputs and temporaries of a compiled program."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return -1
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def measure(
    fn: Callable,
    *args: Any,
    repeats: int,
    max_seconds: float,
    max_memory_bytes: float = math.inf,
) -> tuple[Measurement, Any]:
    """Compiles `fn(*args)` with `jax.jit`, runs it once, then times repeated calls.

    **Arguments:**

    - `fn`: the function to time; its array inputs must be in `args` (not closed over),
        so that XLA cannot fold them into constants.
    - `args`: the arguments, PyTrees of arrays.
    - `repeats`: the maximum number of timed calls after the first call.
    - `max_seconds`: timed calls stop once their total exceeds this, after at least one.
    - `max_memory_bytes`: programs whose memory analysis exceeds this are not run.

    **Returns:**

    The measurement and the output of the first call (`None` when skipped).
    """
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    memory = compiled_memory_bytes(compiled)
    if memory > max_memory_bytes:
        elapsed = time.perf_counter() - start
        reason = (
            f"needs {memory / MIB:.0f} MiB > limit {max_memory_bytes / MIB:.0f} MiB"
        )
        return Measurement(elapsed, None, 0, memory, skipped=reason), None
    output = jax.block_until_ready(compiled(*args))
    compile_seconds = time.perf_counter() - start

    durations: list[float] = []
    while len(durations) < repeats:
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        durations.append(time.perf_counter() - start)
        if sum(durations) > max_seconds:
            break
    run_seconds = statistics.median(durations) if durations else None
    return Measurement(compile_seconds, run_seconds, len(durations), memory), output


def _versions() -> dict[str, str]:
    import importlib.metadata

    names = (
        "jax",
        "jaxlib",
        "diffrax",
        "lineax",
        "optimistix",
        "equinox",
        "diffrax_parallel",
    )
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unavailable"
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min)"


# Every script imports this module before it measures anything, so these describe the
# start of the run. `header` runs at its end.
_START_DATE = time.strftime("%Y-%m-%d %H:%M:%S %Z")
_START_LOAD_AVERAGE = _load_average()


def header(command: str, dtypes: Sequence[str], notes: Sequence[str] = ()) -> str:
    """Returns a Markdown header describing the run: command, machine, versions, dtype."""
    devices = ", ".join(f"{d.platform}:{d.device_kind}" for d in jax.devices())
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    lines = [
        f"- command: `{command}`",
        f"- started: {_START_DATE}; finished: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {platform.platform()}, {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, processor '{_processor_name()}'",
        f"- load average at start: {_START_LOAD_AVERAGE}; at the end, with this "
        f"run's own load: {_load_average()}",
        f"- devices: {devices}",
        f"- Python {platform.python_version()}; {versions}",
        f"- dtype: {', '.join(dtypes)}",
        "- timing: compile = lower + compile + first call; run = median of repeated "
        "calls after the first, each with `jax.block_until_ready`",
        "- memory: XLA compiled memory analysis (arguments + outputs + temporaries - "
        "aliases) of the timed program, in MiB",
    ]
    lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines)


def _processor_name() -> str:
    name = platform.processor()
    if name:
        return name
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def command_line() -> str:
    return " ".join(["python"] + sys.argv)


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """Formats rows (dicts keyed by column name) as a Markdown table."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = [format_cell(row.get(column)) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def format_seconds(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def format_mib(num_bytes: int | None) -> str | None:
    if num_bytes is None:
        return None
    if num_bytes < 0:
        return "n/a"
    return f"{num_bytes / MIB:.3g}"


def result_name(result: Any, enumeration: Any) -> str:
    """Returns the name of an item of an equinox enumeration such as `diffrax.RESULTS`."""
    # NOTE: equinox 0.13 has no public way to list the items of an enumeration.
    for name in enumeration._name_to_item:
        if bool(result == getattr(enumeration, name)):
            return name
    return "unknown"


def max_abs_difference(x: Any, y: Any) -> float:
    """Returns the largest absolute difference between two arrays, in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y), initial=0.0))


class WrongAnswers:
    """Collects wrong solutions, so that a run finishes its table and then fails."""

    def __init__(self):
        self.messages: list[str] = []

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.messages.append(message)
            log(f"WRONG SOLUTION: {message}")
        return ok

    def exit_if_any(self) -> None:
        if self.messages:
            log(f"{len(self.messages)} wrong solution(s):")
            for message in self.messages:
                log(f"  {message}")
            sys.exit(1)


def add_measurement_arguments(
    parser: argparse.ArgumentParser,
    *,
    repeats: int,
    max_seconds: float,
    max_memory: bool = True,
) -> None:
    """Add the options for repeated timing, the memory limit and the output folder."""
    parser.add_argument(
        "--repeats", type=int, default=repeats, help="maximum timed calls per method"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=max_seconds,
        help="stop repeating a method once its timed calls exceed this many seconds",
    )
    if max_memory:
        parser.add_argument(
            "--max-memory-gb",
            type=float,
            default=6.0,
            help="skip programs whose XLA memory analysis exceeds this many GiB",
        )
    parser.add_argument("--output-dir", default="results/benchmarks")


def write_report(
    title: str,
    dtypes: Sequence[str],
    notes: Sequence[str],
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
    path: str,
) -> None:
    """Print a Markdown report (title, run header, table) and write it to `path`."""
    text = (
        f"{title}\n\n"
        + header(command_line(), dtypes, notes)
        + "\n\n"
        + markdown_table(columns, rows)
        + "\n"
    )
    print(text)
    write_text(path, text)


def write_text(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as file:
        file.write(text)
    log(f"wrote {path}")


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, default=str) + "\n")
