"""A stage's output as the Prefect run log shows it: each line once, at its own level, without a second timestamp.

- The stages' own log lines (``2026-12-05 09:45:36,052 WARNING stages.vllm_cpu: ...``) keep their level and drop
  their timestamp (Prefect stamps every line).
- Third-party warnings known to be harmless here (:data:`HARMLESS`, each with its reason) and the source line Python
  echoes after a warning go to DEBUG; any other warning stays at WARNING. vLLM's own INFO lines go to DEBUG too.
- Trainer metric dicts (``{'loss': '1.037', 'grad_norm': ...}``, one per step) become a compact line every
  :data:`METRICS_EVERY`-th dict (and the final summary); the others go to DEBUG.
- Progress bars that run for more than :data:`SLOW_BAR_S` become one labelled line per tenth (``progress Map 50/100
  (50%)``); quicker bars and bars of one item go to DEBUG (the stage's steps are its progress artifact).
"""

from __future__ import annotations

import ast
import logging
import re

# (pattern, why it is harmless in this project): matched lines are logged at DEBUG, not WARNING.
HARMLESS: list[tuple[re.Pattern, str]] = [
    (
        re.compile(r"TRL currently supports vLLM versions"),
        "the CPU build of vLLM carries a newer version string than TRL lists; the RL stage tests that engine",
    ),
    (
        re.compile(r"`torch\.distributed\.reduce_op` is deprecated"),
        "raised inside vLLM's own kernel registry at import, not by this project's code",
    ),
    (
        re.compile(r"`is_gradient_checkpointing` is deprecated"),
        "read by TRL's generation wrapper under transformers 5.24 and later (a renamed property), not by this project",
    ),
    (re.compile(r"NUMA binding: Using MEMBIND policy"), "vLLM's CPU worker binding memory to the machine's one node"),
    (re.compile(r"Triton (is )?not (available|installed)"), "CPU builds have no Triton; nothing here needs it"),
    (
        re.compile(r"mtime may not be reliable on this filesystem"),
        "transformers orders checkpoints by step number instead, the order resume uses",
    ),
    (
        re.compile(r"doesn't allow to use `torch\.set_num_threads` after the thread binding"),
        "evaluation's in-process vLLM engine bound the threads already; the later phases use those threads",
    ),
    (
        re.compile(r"global random seed is set to .*VLLM_ENABLE_V1_MULTIPROCESSING"),
        "evaluation's in-process engine seeds the process; the sampled phases after it set their own seeds",
    ),
    (
        re.compile(r"Kernel \S+ is already registered\. Overwriting"),
        "the second in-process vLLM engine of an evaluation registers vLLM's own kernels again",
    ),
    # vLLM's CPU engine, once per evaluated model (34 lines at WARNING in one default make run before these)
    (
        re.compile(r"lib(tcmalloc|iomp) is not found in LD_PRELOAD"),
        "vLLM's hint to preload an allocator and OpenMP this install does not ship; every speed measured here ran "
        "without them",
    ),
    (
        re.compile(r"Reset SSM cache type to float32"),
        "vLLM's CPU platform setting for state-space (Mamba) layers, which the models here do not have",
    ),
    (
        re.compile(r"Unknown vLLM environment variable detected: VLLM_DIST_IDENT"),
        "set by vLLM's own CPU worker for the previous in-process engine and read back by the next one",
    ),
    (re.compile(r"Model Runner V2 requires Triton"), "CPU builds have no Triton; vLLM's V1 runner is the CPU one"),
    (
        re.compile(r"Enforce eager set, disabling torch\.compile|Inductor compilation was disabled by user settings"),
        "the project runs vLLM's CPU engine eager on purpose (no compile step per engine start)",
    ),
]
SLOW_BAR_S = 10.0  # a progress bar gets lines at INFO once it has run this long; quicker ones stay at DEBUG
METRICS_EVERY = 10  # trainer metric dicts: one compact line at INFO per this many
METRIC_KEYS = ("loss", "grad_norm", "learning_rate", "reward", "kl", "entropy", "rpsft/penalty")

# vLLM's own INFO lines (engine arguments, weight loading, KV cache size: about ten per engine start): DEBUG, since the
# stage's own lines say which engine ran and what it took; its warnings and errors keep their levels.
_VLLM_INFO = re.compile(r"^(\(\S+ pid=\d+\) )?INFO \d\d-\d\d \d\d:\d\d:\d\d \[\S+\.py:\d+\] ")
_OWN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)$")
_PY_WARNING = re.compile(r"^\S+\.py:\d+: \w*Warning: ")
_CPP_WARNING = re.compile(r"^\[W\d{4} [\d:.]+ \S+\] Warning: ")
PROGRESS = re.compile(r"(\d+)/(\d+) \[[^\]]*\]")  # a tqdm bar: "19/40 [01:53<02:00,  5.75s/it]"
_ELAPSED = re.compile(r"\[(?:(\d+):)?(\d+):(\d+)<")  # tqdm's elapsed time: "[01:53<02:00" or "[1:01:53<..."
_DESC = re.compile(r"^\s*(.*?):?\s*\d+%\|")  # "Map:  50%|#####     | 50/100 [...]" -> "Map"


def log_level(line: str) -> int:
    """The level a stage's output line deserves: errors and tracebacks at ERROR, warnings at WARNING, else INFO."""
    if line.startswith(("error:", "Traceback", "RuntimeError", "ValueError")) or " ERROR " in line:
        return logging.ERROR
    if " WARNING " in line or "Warning:" in line or line.startswith("warning:"):
        return logging.WARNING
    return logging.INFO


def elapsed_s(line: str) -> float:
    """Seconds a tqdm bar has run (0 when the line shows none)."""
    m = _ELAPSED.search(line)
    return 0.0 if not m else 3600.0 * int(m.group(1) or 0) + 60.0 * int(m.group(2)) + int(m.group(3))


def harmless(line: str) -> str | None:
    """Why ``line`` is a known-harmless third-party warning, or None."""
    return next((why for pattern, why in HARMLESS if pattern.search(line)), None)


class ProgressThrottle:
    """Progress-bar redraws become a labelled line per 10% of the bar (and its last state):
    ``progress Map 19/40 (47%) ...``; bars of a single item are not worth a line (DEBUG)."""

    def __init__(self, label: str = ""):
        self.label = label
        self.last: dict[tuple[str, int], int] = {}
        self.previous: str | None = None

    def keep(self, line: str) -> str | None:
        m = PROGRESS.search(line)
        if not m:
            return line
        done, total = int(m.group(1)), int(m.group(2))
        desc_m = _DESC.match(line[: m.start()])
        desc = (desc_m.group(1).strip() if desc_m else "") or self.label
        step = max(1, total // 10)
        prev = self.last.get((desc, total), -step)
        if done < total and done - prev < step:
            return None
        self.last[(desc, total)] = done
        out = f"progress {desc + ' ' if desc else ''}{done}/{total} ({100 * done // max(1, total)}%)"
        rest = line[m.end() :].strip()
        out = f"{out} {rest}".rstrip()
        if out == self.previous:  # the same finished bar drawn again
            return None
        self.previous = out
        return out

    @staticmethod
    def trivial(line: str) -> bool:
        m = PROGRESS.search(line)
        return bool(m) and int(m.group(2)) <= 1


def compact_metrics(d: dict) -> str:
    """A trainer metric dict as one short line: ``train loss 1.037 grad_norm 10.8 learning_rate 2e-05 ...``."""
    if "train_runtime" in d:
        keys = [k for k in ("train_runtime", "train_loss", "train_steps_per_second") if k in d]
        return "training done: " + " ".join(f"{k.removeprefix('train_')} {_num(d[k])}" for k in keys)
    shown = [k for k in METRIC_KEYS if k in d] or list(d)[:6]
    epoch = f"epoch {_num(d['epoch'])} " if "epoch" in d else ""
    return "train " + epoch + " ".join(f"{k} {_num(d[k])}" for k in shown)


def _num(v) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


class StageLog:
    """Decides, line by line, what of a stage's output reaches the run log and at which level."""

    def __init__(self, label: str = ""):
        self.throttle = ProgressThrottle(label)
        self.metrics_seen = 0
        self.after_warning = False  # Python echoes the warning's source line, indented, after it

    def relay(self, line: str) -> tuple[int, str] | None:
        """(level, text) for the run log, or None to drop the line (a progress redraw between tenths)."""
        echoed, self.after_warning = self.after_warning, False
        if echoed and line.startswith("  ") and not line.strip().startswith(("File ", "Traceback")):
            return logging.DEBUG, line
        m = _OWN.match(line)
        if m:
            level = getattr(logging, m.group(1))
            if level <= logging.WARNING and harmless(line):
                level = logging.DEBUG
            return level, f"{m.group(2)}: {m.group(3)}"
        if _VLLM_INFO.match(line):
            return logging.DEBUG, line
        if _PY_WARNING.match(line) or _CPP_WARNING.match(line):
            self.after_warning = bool(_PY_WARNING.match(line))
            return (logging.DEBUG if harmless(line) else logging.WARNING), line
        if line.startswith("{'") and line.endswith("}"):
            try:
                d = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                d = None
            if isinstance(d, dict):
                self.metrics_seen += 1
                final = "train_runtime" in d
                every = final or self.metrics_seen == 1 or self.metrics_seen % METRICS_EVERY == 0
                return (logging.INFO if every else logging.DEBUG), compact_metrics(d)
        if ProgressThrottle.trivial(line) or (PROGRESS.search(line) and elapsed_s(line) < SLOW_BAR_S):
            return logging.DEBUG, line
        kept = self.throttle.keep(line)
        if kept is None:
            return None
        level = log_level(line)
        if level <= logging.WARNING and harmless(line):
            level = logging.DEBUG
        return level, kept
