"""Evaluate stage: score checkpoints in-domain and out-of-domain, and measure forgetting against the base model.

For every model (base, each SFT arm, each RL arm; or the ``eval.models`` list) and every ``eval.benchmarks`` entry:
generation benchmarks give greedy accuracy (and Avg@k / pass@k with ``samples: k``), multiple-choice benchmarks
give log-likelihood accuracy; ``eval.forgetting`` adds per-token KL(base || model) and linear CKA of hidden states
per layer on general text. Every score carries a bootstrap interval over items.

Outputs in ``<run_dir>/eval/``: ``items/<benchmark>.jsonl`` (the exact items, shared by all models),
``<model>/metrics.json`` (``{"metrics": {name: {value, ci_low, ci_high, n, ...}}}``), ``<model>/scores.json``
(per-item scores, for paired comparisons), ``<model>/outputs.jsonl`` (generated text), ``<model>/DONE``.
A model whose outputs are complete for the same checkpoint and eval settings is skipped on a rerun.

    sft2rl stage evaluate --config configs/smollm2-cpu.yaml [models=[base,sft]]
"""

from __future__ import annotations

from stages.startup import defer_collection

defer_collection(__name__)  # no full garbage collection during the imports below (stages/startup.py)

import gc
import hashlib
import inspect
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import reasoning_gym
import torch

from stages import backends, provenance, tracking
from stages.answers import choice_letter, extract_final_answer, lenient_final_answer, score_math
from stages.config import BenchmarkSpec, Config, ConfigError, use_cpu
from stages.data import prompt_messages, prompt_text
from stages.eval_items import NEEDS_TRAINING_ITEMS, OWN_SCORERS, build_benchmark, training_items
from stages.generation import HFGenerator, Request, VLLMGenerator, eval_dtype
from stages.layout import CHECKPOINT, ArmLayout, RunLayout
from stages.lm_eval_bench import score as lm_eval_score
from stages.metrics import (
    avg_at_k,
    bootstrap_ci,
    cka_bootstrap,
    pass_at_k,
    proportion_ci,
    stratified_bootstrap_ci,
    token_kl,
)
from stages.models import is_hub_id, load_model, load_tokenizer, resolve_checkpoint, resolve_model
from stages.probes import GENERAL_PROMPTS, chat_fact_correct, follows_instruction
from stages.stage_cli import stage_main
from stages.store import (
    FolderLock,
    LockedError,
    atomic_write_json,
    atomic_write_text,
    is_done,
    mark_done,
    read_json,
    report_progress,
    weights_stamp,
)

log = logging.getLogger(__name__)

EVAL_FORMAT_VERSION = 1
_LAST_LINE = re.compile(r"[^\n]*\S[^\n]*$")


# ----------------------------------------------------------------------------------------------------- models
def model_table(cfg: Config) -> list[dict[str, Any]]:
    """The models to evaluate: ``{"name", "path", "kind" (base|sft|rl|external), "init"}``.

    Raises:
        ConfigError: a named model has no finished checkpoint in the run folder and is not a model folder.
    """
    finished = finished_arms(cfg)
    names = cfg.eval.models or [
        "base",
        *[n for n, m in finished.items() if m["kind"] == "sft"],
        *[n for n, m in finished.items() if m["kind"] == "rl"],
    ]
    out = []
    for name in names:
        if name == "base":
            out.append({"name": "base", "path": _base_path(cfg), "kind": "base", "init": None})
        elif name in finished:
            out.append(finished[name])
        elif Path(name).is_dir() and (Path(name) / "config.json").is_file():
            p = Path(name).resolve()  # ".../x/.." names its parent, not a folder called ".."
            out.append({"name": external_label(p), "path": str(p), "kind": "external", "init": None})
        elif is_hub_id(name):  # a hub model, fetched once into the hub cache; named after its id
            p = Path(resolve_checkpoint(name, "eval.models"))
            label = "ext-" + re.sub(r"[^A-Za-z0-9._-]", "-", name)[:60]
            out.append({"name": label, "path": str(p), "kind": "external", "init": None})
        else:
            raise ConfigError(
                f"eval.models: {name!r} is neither 'base', a finished arm in {cfg.run_dir} "
                f"({sorted(finished) or 'none yet'}), a model folder with config.json, nor a hub id (org/name)"
            )
    return out


def finished_arms(cfg: Config) -> dict[str, dict[str, Any]]:
    """Every finished SFT and RL arm of the run folder, by name, as :func:`model_table` entries."""
    run_dir = cfg.run_dir
    finished: dict[str, dict[str, Any]] = {}
    if run_dir.is_dir():
        for d in sorted(run_dir.iterdir()):
            arm = ArmLayout(d)
            if not (d.is_dir() and is_done(d) and (arm.checkpoint / "config.json").is_file()):
                continue
            metrics = read_json(arm.metrics) if arm.metrics.is_file() else {}
            if "algorithm" in metrics:
                init = Path(str(metrics.get("init") or "base"))
                init_name = init.parent.name if init.name == CHECKPOINT else "base"
                finished[d.name] = {"name": d.name, "path": str(arm.checkpoint), "kind": "rl", "init": init_name}
            else:
                finished[d.name] = {"name": d.name, "path": str(arm.checkpoint), "kind": "sft", "init": "base"}
    return finished


def external_label(path: Path) -> str:
    """The evaluation name of a model folder from outside the run: ``ext-<folder>-<hash of the path>``, so it never
    takes the name (and the eval folder) of the run's own arms, and two folders of the same name stay apart."""
    stem = path.parent.name if path.name == CHECKPOINT else path.name
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem)[:40].strip(".-") or "model"
    return f"ext-{stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _note_text(note: dict[str, Any]) -> str:
    """A benchmark's build note as the log reads it: what was left out and why, nothing when nothing was."""
    said = [f"{k.replace('_', ' ')} {v}" for k, v in note.items() if k not in ("why", "n") and v]
    if not said:
        return ""
    return f" ({', '.join(said)}: {note['why']})" if note.get("why") else f" ({', '.join(said)})"


def _base_path(cfg: Config) -> str:
    """The base model folder prepare recorded; prepared again (verified, rebuilt where damaged) when the record is
    missing or names a folder that is gone (a cleaned cache)."""
    prepared = cfg.layout.prepare_result
    if prepared.is_file():
        path = read_json(prepared).get("model_path")
        if path and (Path(path) / "config.json").is_file():
            return path
        log.warning("the base model %s that prepare recorded is gone; preparing it again", path)
    return resolve_model(cfg)


def _fingerprint(cfg: Config, path: str, engine: str, sampled: bool = True) -> str:
    """Eval settings with the engine that generates (the plan's, ``auto`` resolved) + the checkpoint's weight files
    (size and mtime): a change of either re-evaluates. ``sampled``: whether this model gets the benchmarks'
    sampled answers (``eval.samples_for``), so a model scored greedy only is scored again once an RL run starts
    from it."""
    h = hashlib.sha256()
    settings = cfg.eval.model_dump(mode="json", exclude={"models", "samples_for"}) | {"backend": engine}
    h.update(json.dumps(settings, sort_keys=True).encode())
    if not sampled and any(b.samples for b in cfg.eval.benchmarks):
        h.update(b"greedy only")
    h.update(json.dumps([cfg.data.model_dump(mode="json"), cfg.rl.num_prompts, cfg.rl.prompt_seed]).encode())
    h.update(str(EVAL_FORMAT_VERSION).encode())
    h.update(weights_stamp(path).encode())
    return h.hexdigest()[:16]


def _fingerprints(cfg: Config, path: str, engine: str, sampled: bool) -> set[str]:
    """The fingerprints a finished evaluation may have to be reused: a sampled one also serves a model that needs
    greedy scores only (it holds them all), never the other way round."""
    return {_fingerprint(cfg, path, engine, sampled), _fingerprint(cfg, path, engine, True)}


def sampled_models(cfg: Config, table: list[dict[str, Any]]) -> set[str]:
    """The models that get the benchmarks' sampled answers: every model, or with ``eval.samples_for: rl`` the ones
    claim (c) reads (each RL model and the checkpoint it started from)."""
    if cfg.eval.samples_for == "all":
        return {e["name"] for e in table}
    # every RL arm of the run, also those eval.models leaves out: a start is sampled whether or not its RL model is
    # evaluated in the same call
    rl = [e for e in [*table, *finished_arms(cfg).values()] if e["kind"] == "rl"]
    return {e["name"] for e in rl} | {e["init"] for e in rl}


def item_prompt(tok, cfg: Config, spec: BenchmarkSpec, item: dict[str, Any]) -> str:
    """The generation prompt of an item: its own chat when the file had one, else the question under the benchmark's
    system prompt (``data.system_prompt`` unless the benchmark sets one)."""
    default = None if spec.source in ("chat_facts", "instructions") else cfg.data.system_prompt  # no task tag
    system = default if spec.system_prompt is None else spec.system_prompt
    return prompt_text(tok, prompt_messages(item, system))


def score_text(spec: BenchmarkSpec, item: dict[str, Any], text: str, *, lenient: bool = False) -> float:
    """1.0 when the completion's final answer is right, else 0.0. Math answers go through
    :func:`stages.answers.score_math`, the function the RL reward ``math_correct`` also calls."""
    if spec.source == "reasoning_gym":
        final = extract_final_answer(text)
        fn = reasoning_gym.get_score_answer_fn(spec.task)
        m = _LAST_LINE.search(text)
        cands = [c for c in (final, m.group(0).strip() if m else None) if c]
        return float(any(fn(c, item["entry"]) >= 0.999 for c in cands))
    if spec.source == "chat_facts":
        return float(chat_fact_correct(item, text))
    if spec.source == "instructions":
        return float(follows_instruction(item["check"], text))
    if spec.answer_type == "choice":
        return float(choice_letter(text, item["n_choices"]) == item["answer"])
    if spec.answer_type == "text":
        final = lenient_final_answer(text) if lenient else extract_final_answer(text)
        norm = lambda s: " ".join(str(s).lower().split()).strip(" .")  # noqa: E731
        return float(final is not None and norm(final) == norm(item["answer"]))
    return score_math(text, item["answer"], lenient=lenient)


# Task-shaped constant outputs: what a model collapsed onto the SFT task writes whatever it is asked. Their best score
# on a generation benchmark is its chance level (a probe that such outputs pass cannot show forgetting).
CONSTANT_OUTPUTS = ("#### 12", "12 + 7 = 19\n#### 19", "42")


def constant_output_score(spec: BenchmarkSpec, items: list[dict[str, Any]], lenient: bool = False) -> float:
    """The best mean score of one :data:`CONSTANT_OUTPUTS` answer given to every item."""
    return max(sum(score_text(spec, x, c, lenient=lenient) for x in items) / len(items) for c in CONSTANT_OUTPUTS)


def _chance(spec: BenchmarkSpec, items: list[dict[str, Any]], lenient: bool = False) -> float:
    """The configured chance level, else 1/#options averaged over items (multiple choice), else the score of
    task-shaped constant outputs (generation)."""
    if spec.chance is not None:
        return spec.chance
    if spec.answer_type == "choice":
        return float(sum(1 / x["n_choices"] for x in items) / len(items))
    if spec.is_choice:
        return float(sum(1 / len(x["choices"]) for x in items) / len(items))
    return constant_output_score(spec, items, lenient)


# ---------------------------------------------------------------------------------------- multiple choice
def choice_correct(model, tok, items: list[dict[str, Any]], batch_size: int) -> list[float]:
    """1.0 where the right option has the highest summed log-likelihood after the question, else 0.0."""
    out = []
    for it, opts in zip(items, choice_scores(model, tok, items, batch_size), strict=True):
        out.append(float(max(range(len(opts)), key=opts.__getitem__) == it["answer"]))
    return out


def choice_scores(model, tok, items: list[dict[str, Any]], batch_size: int) -> list[list[float]]:
    """Each item's options' summed log-likelihoods after its question.

    Sequences are batched by length (little padding) and the vocabulary's log-softmax is taken only over the
    positions that score an option: measured on SmolLM2 (benchmarks/results/eval_batching.json), the same choices
    in about three quarters of the time."""
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    seqs: list[tuple[list[int], int]] = []  # (token ids, number of option tokens), item by item
    for it in items:
        ctx = [start] + (tok(it["question"], add_special_tokens=False)["input_ids"] if it["question"] else [])
        for c in it["choices"]:
            cont = tok((" " + c) if it["question"] else c, add_special_tokens=False)["input_ids"]
            seqs.append((ctx + cont, len(cont)))
    scores = [0.0] * len(seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    keeps = "logits_to_keep" in inspect.signature(model.forward).parameters
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        width = max(len(seqs[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(chunk):
            s = seqs[i][0]
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        # the logits from the first position that predicts an option token on (right padding: the last ones)
        first = min(len(seqs[i][0]) - seqs[i][1] - 1 for i in chunk)
        extra = {"logits_to_keep": width - first} if keeps else {}
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **extra).logits
        offset = width - logits.shape[1]
        for j, i in enumerate(chunk):
            s, k = seqs[i]
            pos = torch.arange(len(s) - k - 1, len(s) - 1) - offset
            row = torch.log_softmax(logits[j, pos].float(), -1)
            scores[i] = float(row[torch.arange(k), torch.tensor(s[len(s) - k :], dtype=torch.long)].sum())
    out, pos = [], 0
    for it in items:
        out.append(scores[pos : pos + len(it["choices"])])
        pos += len(it["choices"])
    return out


# --------------------------------------------------------------------------------------------- forgetting
def general_text(cfg: Config, base_model, tok, sampled: bool = False) -> list[dict[str, list[int]]]:
    """The base model's answers to the built-in general prompts, greedy or sampled at temperature 1 with a fixed seed
    (cached in ``<run_dir>/eval``). Greedy answers are the base's mode; sampled ones weigh its whole distribution."""
    spec = cfg.eval.forgetting
    path = cfg.layout.general_text(sampled)
    base = _fingerprint(cfg, _base_path(cfg), "hf")  # transformers writes these answers whatever generates the rest
    key = {"n": spec.num_prompts, "max_new_tokens": spec.max_new_tokens, "base": base}
    key["sampled"] = sampled
    if sampled:
        key["seed"] = spec.seed
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["sequences"]
    prompts = [prompt_text(tok, prompt_messages({"question": p}, None)) for p in GENERAL_PROMPTS[: spec.num_prompts]]
    tok.padding_side = "left"
    seqs = []
    if sampled:
        torch.manual_seed(spec.seed)  # the same sampled texts on every run and seed of this experiment
    for i in range(0, len(prompts), 16):
        enc = tok(prompts[i : i + 16], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = base_model.generate(
                **enc.to(base_model.device),
                max_new_tokens=spec.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                **(
                    {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
                    if sampled
                    else {"do_sample": False}
                ),
            )
        for j in range(gen.shape[0]):
            p = [t for t, m in zip(enc["input_ids"][j].tolist(), enc["attention_mask"][j].tolist(), strict=True) if m]
            r = [t for t in gen[j, enc["input_ids"].shape[1] :].tolist() if t != tok.pad_token_id]
            if len(r) >= 2:
                seqs.append({"prompt": p, "response": r})
    atomic_write_json(path, {"key": key, "sequences": seqs})
    return seqs


def _forward_states(model, seqs: list[dict[str, list[int]]], batch_size: int = 8, hidden: bool = True):
    """Per sequence: response-token logits (predicting each response token) and hidden states per layer (an empty
    list when ``hidden`` is off: KL alone needs no hidden states)."""
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b : b + batch_size]
        full = [s["prompt"] + s["response"] for s in chunk]
        width = max(map(len, full))
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, f in enumerate(full):
            ids[j, : len(f)] = torch.tensor(f)
            mask[j, : len(f)] = 1
        with torch.no_grad():
            out = model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device), output_hidden_states=hidden
            )
        for j, s in enumerate(chunk):
            p, r = len(s["prompt"]), len(s["response"])
            logits = out.logits[j, p - 1 : p + r - 1].float().cpu()
            yield logits, [h[j, p : p + r].float().cpu() for h in out.hidden_states[1:]] if hidden else []


class BaseStates:
    """The base model (and its tokenizer) with its forward outputs (response logits, hidden states) on the forgetting
    texts, computed once per evaluation stage and reused for every model: the base and the texts are the same for all
    of them, so each model pays its own forward only. Per set of texts: the response tokens' logits (40 answers x 48
    tokens x SmolLM2's 49,152-word vocabulary: 0.38 GB in float32) and, for the greedy set, the hidden states."""

    def __init__(self, model, tok=None):
        self.model, self.tok = model, tok
        self._memo: dict[str, list] = {}

    def of(self, seqs: list[dict[str, list[int]]], key: str, hidden: bool) -> list:
        if key not in self._memo:
            self._memo[key] = list(_forward_states(self.model, seqs, hidden=hidden))
        return self._memo[key]


def sampled_kl(cfg: Config, model, base_model, seqs, base_states: list | None = None) -> dict[str, Any]:
    """KL(base || model) per token on the base's sampled answers (mean over sequences) with its interval.
    ``base_states``: the base's forward outputs on ``seqs`` when already computed (:class:`BaseStates`)."""
    per_seq = []
    base_out = base_states if base_states is not None else _forward_states(base_model, seqs, hidden=False)
    pairs = zip(base_out, _forward_states(model, seqs, hidden=False), strict=True)
    for (lb, _), (lm, _) in pairs:
        per_seq.append(float(token_kl(lb, lm).mean()))
    ev = cfg.eval
    v, lo, hi = bootstrap_ci(per_seq, n_boot=ev.bootstrap, confidence=ev.confidence, seed=cfg.seed)
    metric = {"value": v, "ci_low": lo, "ci_high": hi, "n": len(per_seq), "domain": "forgetting"}
    metric["note"] = "per-token KL(base || model) on the base's sampled (temperature 1) answers"
    return {"metric": metric, "per_sequence": per_seq}


def forgetting_metrics(cfg: Config, model, base_model, seqs, base_states: list | None = None) -> dict[str, Any]:
    """KL(base || model) per token (mean over sequences) and CKA per layer, each with a bootstrap interval.
    ``base_states``: the base's forward outputs on ``seqs`` when already computed (:class:`BaseStates`)."""
    spec, ev = cfg.eval.forgetting, cfg.eval
    kl_seq: list[float] = []
    hb_layers: list[list[torch.Tensor]] | None = None
    hm_layers: list[list[torch.Tensor]] | None = None
    groups: list[int] = []
    budget = spec.max_tokens_cka
    for i, ((lb, hb), (lm, hm)) in enumerate(
        zip(
            base_states if base_states is not None else _forward_states(base_model, seqs),
            _forward_states(model, seqs),
            strict=True,
        )
    ):
        kl_seq.append(float(token_kl(lb, lm).mean()))
        take = min(budget, lb.shape[0])
        if take > 0:
            hb_layers = hb_layers or [[] for _ in hb]
            hm_layers = hm_layers or [[] for _ in hm]
            for layer, (xb, xm) in enumerate(zip(hb, hm, strict=True)):
                hb_layers[layer].append(xb[:take])
                hm_layers[layer].append(xm[:take])
            groups += [i] * take
            budget -= take
    value, lo, hi = bootstrap_ci(kl_seq, n_boot=ev.bootstrap, confidence=ev.confidence, seed=cfg.seed)
    metrics: dict[str, Any] = {
        "forgetting/kl_to_base": {"value": value, "ci_low": lo, "ci_high": hi, "n": len(kl_seq), "domain": "forgetting"}
    }
    g = np.asarray(groups)
    layers = []
    layer_stats = []
    for xb_list, xm_list in zip(hb_layers or [], hm_layers or [], strict=True):
        xb = torch.cat(xb_list).double()
        xm = torch.cat(xm_list).double()
        kb = (xb @ xb.T).numpy()
        km = (xm @ xm.T).numpy()
        # the same seed draws the same sequences for every layer: averaging the statistics resample by resample
        # gives the bootstrap distribution of the mean CKA itself
        v, lo, hi, st = cka_bootstrap(kb, km, g, n_boot=spec.cka_bootstrap, confidence=ev.confidence, seed=cfg.seed)
        layers.append({"value": v, "ci_low": lo, "ci_high": hi})
        layer_stats.append(st)
    if layers:
        mean_stats = np.mean(np.stack(layer_stats), axis=0)
        a = (1 - ev.confidence) / 2
        metrics["forgetting/cka_mean"] = {
            "value": float(np.mean([x["value"] for x in layers])),
            "ci_low": float(np.quantile(mean_stats, a)),
            "ci_high": float(np.quantile(mean_stats, 1 - a)),
            "n": len(set(groups)),
            "domain": "forgetting",
            "note": "mean over layers; interval from the bootstrap of the mean itself (whole sequences resampled)",
        }
    return {"metrics": metrics, "cka_layers": layers, "kl_per_sequence": kl_seq}


# ------------------------------------------------------------------------------------------------ the stage
def _summary(values: list[float], cfg: Config, **extra: Any) -> dict[str, Any]:
    v, lo, hi = proportion_ci(values, n_boot=cfg.eval.bootstrap, confidence=cfg.eval.confidence, seed=cfg.seed)
    return {"value": v, "ci_low": lo, "ci_high": hi, "n": len(values), **extra}


Scores = dict[str, dict[str, Any]]


def evaluate_model(
    cfg: Config,
    entry: dict[str, Any],
    benches: list[tuple[BenchmarkSpec, list[dict[str, Any]], dict[str, Any]]],
    base: BaseStates | None,
    gen: backends.GenerationPlan,
    sampled: bool = True,
) -> dict[str, Any]:
    """Score one model on every benchmark; write its folder; return its metrics. Phases: generation benchmarks,
    lm-eval tasks, log-likelihood multiple choice, forgetting (KL and CKA against the base), summaries. ``base``: the
    base model with its tokenizer and cached forward outputs (None when the forgetting phase is off). ``sampled``:
    draw the benchmarks' sampled answers (Avg@k, pass@k) too."""
    files = cfg.layout.eval_model(entry["name"])
    t0 = time.perf_counter()
    tok = load_tokenizer(entry["path"], cfg.model)
    scores: Scores = {}
    metrics: dict[str, Any] = {}
    timing: dict[str, float] = {}
    gen_benches = [(s, it) for s, it, _ in benches if not s.is_choice and s.source != "lm_eval"]
    model, outputs = _generation_phase(cfg, gen, entry, tok, gen_benches, scores, metrics, timing, sampled)
    _lm_eval_phase(cfg, entry, [(s, it) for s, it, _ in benches if s.source == "lm_eval"], scores, metrics, timing)
    choice_benches = [(s, it) for s, it, _ in benches if s.is_choice]
    if (choice_benches or cfg.eval.forgetting.enabled) and model is None:
        model = load_model(entry["path"], cfg.model, eval_dtype(cfg, torch_dtype=True)).to(gen.device).eval()
    t = time.perf_counter()
    for spec, items in choice_benches:
        correct = choice_correct(model, tok, items, cfg.eval.batch_size)
        chance = _chance(spec, items)
        scores[f"{spec.name}/accuracy"] = {"ids": [x["id"] for x in items], "scores": correct}
        metrics[f"{spec.name}/accuracy"] = _summary(correct, cfg, domain=spec.domain, chance=chance, kind="choice")
    timing["choice_s"] = time.perf_counter() - t
    cka_layers = _forgetting_phase(cfg, model, base, scores, metrics, timing)
    metrics.update(_domain_summaries(cfg, scores, metrics))
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    timing["total_s"] = time.perf_counter() - t0
    result = {
        **entry,
        "metrics": metrics,
        "cka_layers": cka_layers,
        "timing": timing,
        "fingerprint": _fingerprint(cfg, entry["path"], gen.engine, sampled),
    }
    atomic_write_text(files.outputs, "".join(outputs))
    atomic_write_json(files.scores, scores)
    atomic_write_json(files.metrics, result)
    mark_done(files.dir)
    return result


def _generation_phase(
    cfg: Config, gen: backends.GenerationPlan, entry, tok, gen_benches, scores: Scores, metrics, timing, sampled
) -> tuple[Any, list[str]]:
    """Greedy (strict and lenient) and sampled (Avg@k, pass@k) scores of the generation benchmarks. Returns the
    transformers model when the hf backend loaded one (the later phases reuse it) and the output lines."""
    outputs: list[str] = []
    if not gen_benches:
        return None, outputs
    model = None
    t = time.perf_counter()
    if gen.engine == "vllm":
        generator = VLLMGenerator(entry["path"], cfg, 2048, in_process=True)
    else:
        model = load_model(entry["path"], cfg.model, eval_dtype(cfg, torch_dtype=True)).to(gen.device).eval()
        generator = HFGenerator(model, tok, cfg.eval.batch_size)
    timing["engine_start_s"] = time.perf_counter() - t
    try:
        # every benchmark's greedy and sampled answers in one call: vLLM keeps its batch full across them (transformers
        # answers request by request)
        requests, at = [], []  # at: each benchmark's (greedy, sampled or None) positions in requests
        for spec, items in gen_benches:
            prompts = [item_prompt(tok, cfg, spec, x) for x in items]
            common = {"max_new_tokens": spec.max_new_tokens, "seed": spec.seed}
            requests.append(Request(prompts, n=1, temperature=0.0, **common))
            greedy_at, sampled_at = len(requests) - 1, None
            if spec.samples and sampled:
                requests.append(Request(prompts, n=spec.samples, temperature=spec.temperature, **common))
                sampled_at = len(requests) - 1
            at.append((greedy_at, sampled_at))
        t_gen = time.perf_counter()
        answers = generator.generate_all(requests)
        timing["answers_s"] = time.perf_counter() - t_gen
        for (spec, items), (g_at, s_at) in zip(gen_benches, at, strict=True):
            greedy = answers[g_at]
            ids = [x["id"] for x in items]
            correct = [score_text(spec, x, g[0]) for x, g in zip(items, greedy, strict=True)]
            outputs += [
                json.dumps({"benchmark": spec.name, "id": x["id"], "output": g[0]}) + "\n"
                for x, g in zip(items, greedy, strict=True)
            ]
            scores[f"{spec.name}/accuracy"] = {"ids": ids, "scores": correct}
            extra = {"domain": spec.domain, "chance": _chance(spec, items)}
            metrics[f"{spec.name}/accuracy"] = _summary(correct, cfg, **extra, kind="greedy")
            if spec.answer_type in ("math", "number", "text") and spec.source not in OWN_SCORERS:
                # lenient: also the last number of an answer with no marked final answer (format vs knowledge)
                loose = [score_text(spec, x, g[0], lenient=True) for x, g in zip(items, greedy, strict=True)]
                scores[f"{spec.name}/accuracy_lenient"] = {"ids": ids, "scores": loose}
                extra_lenient = extra | {"chance": _chance(spec, items, lenient=True)}
                metrics[f"{spec.name}/accuracy_lenient"] = _summary(loose, cfg, **extra_lenient, kind="greedy_lenient")
            if s_at is not None:
                k = spec.samples
                per = [[score_text(spec, x, s) > 0 for s in ss] for x, ss in zip(items, answers[s_at], strict=True)]
                for name, vals in (
                    (f"avg@{k}", [avg_at_k(p) for p in per]),
                    (f"pass@{k}", [pass_at_k(k, sum(p), k) for p in per]),
                ):
                    scores[f"{spec.name}/{name}"] = {"ids": ids, "scores": vals}
                    metrics[f"{spec.name}/{name}"] = _summary(
                        vals, cfg, **extra, kind=name, temperature=spec.temperature
                    )
        timing["generation_s"] = time.perf_counter() - t
    finally:
        generator.close()
    return model, outputs


def _lm_eval_phase(cfg: Config, entry, lm_benches, scores: Scores, metrics, timing) -> None:
    """lm-evaluation-harness tasks, run and scored by lm-eval on the checkpoint; per-sample metric = item score."""
    if not lm_benches:
        return
    for spec, items in lm_benches:
        t = time.perf_counter()
        per_item = lm_eval_score(cfg, spec, entry["path"], len(items), "cpu" if use_cpu(cfg) else "cuda")
        missing = [x["id"] for x in items if x["id"] not in per_item]
        if missing:
            raise ConfigError(f"lm-eval scored no sample for {len(missing)} items of {spec.name!r} ({missing[0]} ...)")
        vals = [per_item[x["id"]] for x in items]
        scores[f"{spec.name}/accuracy"] = {"ids": [x["id"] for x in items], "scores": vals}
        metrics[f"{spec.name}/accuracy"] = _summary(vals, cfg, domain=spec.domain, chance=spec.chance, kind="lm_eval")
        timing["lm_eval_s"] = timing.get("lm_eval_s", 0.0) + time.perf_counter() - t


def _forgetting_phase(cfg: Config, model, base: BaseStates, scores: Scores, metrics, timing) -> list[dict]:
    """KL(base || model) on the base's greedy (and sampled) general text, and CKA per layer; returns the layers."""
    if not cfg.eval.forgetting.enabled:
        return []
    t = time.perf_counter()
    seqs = general_text(cfg, base.model, base.tok)
    f = forgetting_metrics(cfg, model, base.model, seqs, base.of(seqs, "greedy", hidden=True))
    metrics.update(f["metrics"])
    scores["forgetting/kl_to_base"] = {"ids": [str(i) for i in range(len(seqs))], "scores": f["kl_per_sequence"]}
    if cfg.eval.forgetting.sampled:
        sampled = general_text(cfg, base.model, base.tok, sampled=True)
        kl = sampled_kl(cfg, model, base.model, sampled, base.of(sampled, "sampled", hidden=False))
        metrics["forgetting/kl_to_base_sampled"] = kl["metric"]
        scores["forgetting/kl_to_base_sampled"] = {
            "ids": [str(i) for i in range(len(sampled))],
            "scores": kl["per_sequence"],
        }
    timing["forgetting_s"] = time.perf_counter() - t
    return f["cka_layers"]


def _domain_summaries(cfg: Config, scores: Scores, metrics: dict[str, Any]) -> dict[str, Any]:
    """id/mean_accuracy and ood/mean_accuracy: the unweighted mean of each domain's benchmark accuracies (greedy or
    multiple choice); and id/mean_avg@k and id/mean_pass@k over the domain's benchmarks that sample k answers (the
    paper's headline, Avg@k of sampled answers), when they all sample the same k."""
    out = {}
    for domain in ("in", "out"):
        prefix = "id" if domain == "in" else "ood"
        ks = {k.rsplit("/avg@", 1)[1] for k, m in metrics.items() if m.get("domain") == domain and "/avg@" in k}
        suffixes = ["accuracy"]
        if len(ks) == 1:  # benchmarks sampled with different k have no common Avg@k
            k = ks.pop()
            suffixes += [f"avg@{k}", f"pass@{k}"]
        for suffix in suffixes:
            groups = [
                scores[k]["scores"]
                for k, m in metrics.items()
                if m.get("domain") == domain and k.endswith(f"/{suffix}") and not k.startswith(("id/", "ood/"))
            ]
            if not groups:
                continue
            v, lo, hi = stratified_bootstrap_ci(
                groups, n_boot=cfg.eval.bootstrap, confidence=cfg.eval.confidence, seed=cfg.seed
            )
            what = "accuracies" if suffix == "accuracy" else f"{suffix} scores"
            out[f"{prefix}/mean_{suffix}"] = {
                "value": v,
                "ci_low": lo,
                "ci_high": hi,
                "n": sum(map(len, groups)),
                "domain": domain,
                "note": f"unweighted mean of the benchmark {what}; items resampled within each benchmark",
            }
    return out


def run(cfg: Config, force: bool = False) -> dict[str, Any]:
    """Evaluate every model in :func:`model_table`; return ``{name: metrics}``. One evaluation of a run folder at a
    time (a second, from another shell or a concurrent flow run, is refused naming the first)."""
    try:
        with FolderLock(cfg.layout.eval_dir):
            return _run(cfg, force)
    except LockedError as e:
        raise ConfigError(f"another evaluation of this run is in progress: {e}") from None


def _run(cfg: Config, force: bool) -> dict[str, Any]:
    if cfg.eval.backend == "vllm":
        try:  # lazy: vLLM is an optional extra; only checked for when eval.backend=vllm
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError(
                "eval.backend=vllm but vllm is not installed: install it or set eval.backend=hf"
            ) from None
    tracking.check_installed(cfg)
    table = model_table(cfg)
    # an RL run scored beside an SFT arm retrained since it started is refused before any item is built
    provenance.check_rl_inits(cfg.layout, [e["name"] for e in table if e["kind"] == "rl"], cfg.seed)
    benches = []
    # in-domain benchmarks of any source drop questions seen in training: build the training items once for all
    needs_training = any(b.source in NEEDS_TRAINING_ITEMS or b.domain == "in" for b in cfg.eval.benchmarks)
    trained = training_items(cfg) if needs_training else None
    for spec in cfg.eval.benchmarks:
        items, note = build_benchmark(cfg, spec, trained)
        atomic_write_text(cfg.layout.items(spec.name), "".join(json.dumps(x) + "\n" for x in items))
        benches.append((spec, items, note))
        log.info("benchmark %s: %d items%s", spec.name, len(items), _note_text(note))
    atomic_write_json(cfg.layout.benchmarks, {s.name: {**s.model_dump(mode="json"), **n} for s, _, n in benches})
    base_path = _base_path(cfg)
    generates = any(not s.is_choice and s.source != "lm_eval" for s, _, _ in benches)
    gen = backends.plan(cfg, "eval", base_path, generates=generates)
    base = None  # the base with its cached forward outputs, loaded for the first model the forgetting phase reads
    results = {}
    with_samples = sampled_models(cfg, table)
    if cfg.eval.samples_for == "rl" and any(b.samples for b in cfg.eval.benchmarks):
        log.info("sampled answers (eval.samples_for: rl) for: %s", ", ".join(sorted(with_samples)) or "no model")
    for i, entry in enumerate(table):
        report_progress(i, len(table), f"models evaluated (next: {entry['name']})")
        files = cfg.layout.eval_model(entry["name"])
        out_dir = files.dir
        sampled = entry["name"] in with_samples
        if not force and is_done(out_dir):
            prev = read_json(files.metrics)
            if prev.get("fingerprint") in _fingerprints(cfg, entry["path"], gen.engine, sampled):
                log.info("eval %s: complete, skipped (use --force to redo)", entry["name"])
                results[entry["name"]] = prev
                continue
        files.done.unlink(missing_ok=True)
        reused = None
        if entry["kind"] == "base" and not force:
            reused = _base_from_other_seed(cfg, entry, gen.engine, sampled)
        if reused is not None:
            results["base"] = reused
            continue
        if base is None and cfg.eval.forgetting.enabled:
            base_model = load_model(base_path, cfg.model, eval_dtype(cfg, torch_dtype=True)).to(gen.device).eval()
            base = BaseStates(base_model, load_tokenizer(base_path, cfg.model))
        log.info("eval %s (%s)", entry["name"], entry["path"])
        results[entry["name"]] = evaluate_model(cfg, entry, benches, base, gen, sampled)
        tracking.log_eval_metrics(cfg, entry["name"], results[entry["name"]]["metrics"])
        r = results[entry["name"]]
        log.info(
            "eval %s done in %.0f s: %s",
            entry["name"],
            r["timing"]["total_s"],
            ", ".join(f"{k}={m['value']:.3f}" for k, m in r["metrics"].items()),
        )
    report_progress(len(table), len(table), "models evaluated")
    return results


def _base_from_other_seed(cfg: Config, entry: dict[str, Any], engine: str, sampled: bool) -> dict[str, Any] | None:
    """The base model's evaluation from another seed run of the same experiment (``<run>/seeds/seed-<s>/``), copied
    when it is complete, has this run's fingerprint and was scored on the same items: the base does not depend on
    the training seed, so a multi-seed run evaluates it once. None when there is no such evaluation."""
    mine = cfg.layout
    if not mine.is_seed_run:
        return None
    fps = _fingerprints(cfg, entry["path"], engine, sampled)
    for other in mine.parent_run.seed_runs():
        src = other.eval_model("base")
        if other.dir == mine.dir or not is_done(src.dir) or not src.metrics.is_file():
            continue
        prev = read_json(src.metrics)
        if prev.get("fingerprint") not in fps or not _same_items(other, mine, cfg):
            continue
        for f in src.files:
            if f.is_file():
                atomic_write_text(mine.eval_model("base").dir / f.name, f.read_text())
        for sampled in (False, True):  # the base's texts, keyed by fingerprint
            if other.general_text(sampled).is_file() and not mine.general_text(sampled).is_file():
                atomic_write_text(mine.general_text(sampled), other.general_text(sampled).read_text())
        mark_done(mine.eval_model("base").dir)
        log.info("eval base: the same evaluation as %s (same settings and items), copied", src.dir)
        return prev
    return None


def _same_items(a: RunLayout, b: RunLayout, cfg: Config) -> bool:
    return all(
        a.items(s.name).is_file() and a.items(s.name).read_bytes() == b.items(s.name).read_bytes()
        for s in cfg.eval.benchmarks
    )


SHORTCUTS = {"models": "eval.models", "backend": "eval.backend"}


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        argv,
        prog="sft2rl stage evaluate",
        description="Evaluate base, SFT and RL checkpoints in-domain, out-of-domain and for forgetting.",
        run=run,
        shortcuts=SHORTCUTS,
        per_seed=True,
    )


if __name__ == "__main__":
    sys.exit(main())
