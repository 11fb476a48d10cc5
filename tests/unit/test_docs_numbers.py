"""Numbers the docs quote come from committed result files, and stay equal to them."""

from __future__ import annotations

import json
import math

from tests.conftest import DOCS, REPO, doc_section


def test_the_rl_setting_section_quotes_benchmarks_results_rl_setting_json():
    r = json.loads((REPO / "benchmarks" / "results" / "rl_setting.json").read_text())
    section = doc_section("measured.md", "## Does RL move the default's checkpoints?")
    assert r["runs"], "the committed grid holds no run"
    for run in r["runs"]:
        g = run["gain"]["chain_sum/avg@4"]
        quoted = f"{100 * g['diff']:+.1f} [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}]"
        assert f"`{run['setting']}`" in section and quoted in section, (run["setting"], quoted)
        greedy = run["gain"]["chain_sum/accuracy"]
        assert f"{100 * greedy['diff']:+.1f}" in section, (run["setting"], "greedy")
        assert f"{run['curve']['mixed_groups_mean']:.2f}" in section, (run["setting"], "mixed groups")
        assert f"{run['curve']['step_s_median']:.0f} s per step" in section, (run["setting"], "step time")
        if run.get("prompt_filter"):  # the filter's cost and its kept prompts, and the out-of-domain change
            pf = run["prompt_filter"]
            assert f"{pf['seconds']:.0f} s of filter sampling" in section, (run["setting"], "filter time")
            assert f"{pf['kept']}" in section and f"of {pf['prompts']} prompts" in section, (run["setting"], "kept")
            o = run["ood_mean_change"]
            ood = f"{100 * o['diff']:+.1f} [{100 * o['ci_low']:+.1f}, {100 * o['ci_high']:+.1f}]"
            assert ood in section, (run["setting"], run["init"], "ood", ood)
        if run["setting"].endswith("-48steps"):  # the longest runs' training reward, first and last 8 steps
            reward = run["curve"]["reward"]
            first, last = sum(reward[:8]) / 8, sum(reward[-8:]) / 8
            assert f"from {first:.2f}" in section and f"to {last:.2f}" in section, (run["init"], "reward")
            assert f"{100 * run['init_scores']['chain_sum/accuracy']:.1f}% {run['init']}" in section
    # claim (c)'s reading of every pair of runs from sft and rpsft: the difference of their gains per item, pooled
    # over the training seeds that ran both, each seed's reading beside it
    span = lambda g: f"{100 * g['diff']:+.1f} [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}]"  # noqa: E731
    for setting, diffs in r.get("gain_differences", {}).items():
        g = diffs["chain_sum/avg@4"]
        assert g["n"] == 200 and f"`{setting}`" in section
        assert span(g) in section, setting
        for run, one in g.get("per_seed", {}).items():
            assert span(one) in section, (setting, run)
    # each initialisation's gain pooled over the training seeds it ran from
    for setting, by_init in r.get("pooled_gains", {}).items():
        for init, gains in by_init.items():
            assert span(gains["chain_sum/avg@4"]) in section, (setting, init, "pooled")
    # where RL ended, rl-rpsft - rl-sft, pooled and per seed
    for setting, by_metric in r.get("post_rl_differences", {}).items():
        g = by_metric["chain_sum/avg@4"]
        assert span(g) in section, (setting, "post-RL")
        for run, one in g.get("per_seed", {}).items():
            assert span(one) in section, (setting, run, "post-RL")
    # the seeds' spread of claim (c)'s reading and the training seeds it would take to detect 2 and 4 points
    for diffs in r.get("gain_differences", {}).values():
        per = [100 * x["diff"] for x in diffs["chain_sum/avg@4"].get("per_seed", {}).values()]
        if len(per) == 2:
            sd = abs(per[0] - per[1]) / math.sqrt(2)
            flat = " ".join(section.split())  # sentences wrap across lines
            assert f"differ by {abs(per[0] - per[1]):.1f} points" in flat and f"deviation of {sd:.1f}" in flat
            need = {d: math.ceil((1.96 + 0.8416) ** 2 * sd**2 / d**2) for d in (2, 4)}
            assert f"about {need[2]} training seeds to detect a 2-point" in flat
            assert f"and {need[4]} for 4 points" in flat
    # the choice is the file's: none, when no setting raised Avg@k from every initialisation
    chosen = r["chosen"]
    assert (chosen is None) == ("No setting was chosen" in section)
    if chosen:
        assert f"**the chosen setting is `{chosen}`**" in " ".join(section.split())
        # the front door quotes the chosen setting's pooled gains and its claim (c) reading
        readme = " ".join((REPO / "README.md").read_text().split())
        pooled = r["pooled_gains"][chosen]
        assert f"{span(pooled['sft']['chain_sum/avg@4'])} points from SFT" in readme
        assert f"{span(pooled['rpsft']['chain_sum/avg@4'])} from RPSFT" in readme
        assert f"difference of gains of {span(r['gain_differences'][chosen]['chain_sum/avg@4'])}" in readme
        # what it costs against the default's RL, in minutes per initialisation, from the two files
        walls = [x["stage_wall_s"] / 60 for x in r["runs"] if x["setting"] == chosen and x["stage_wall_s"]]
        p = json.loads((REPO / "benchmarks" / "results" / "pipeline_smollm2_cpu.json").read_text())
        default = [v / 60 for k, v in p["stages_s"].items() if k.startswith("rl[")]
        cost = f"{min(walls):.0f} to {max(walls):.0f} minutes of RL per initialisation"
        ours = f"{min(default):.0f} to {max(default):.0f}"
        assert f"{cost} on 2 cores, against the default's {ours}" in readme
        assert f"costs {cost} and seed with its filter, against {ours} for the default's" in " ".join(section.split())


# The forgetting-setting table: each row's file and candidate (learning rate, system prompt tag)
FORGETTING_ROWS = [
    ("lr 2e-5 (the old default)", "forgetting_setting.json", 2e-5, True),
    ("lr 1e-4", "forgetting_setting.json", 1e-4, True),
    ("lr 2e-4", "forgetting_setting.json", 2e-4, True),
    ("lr 4e-4", "forgetting_setting.json", 4e-4, True),
    ("lr 1e-4, no system prompt", "forgetting_setting.json", 1e-4, False),
    ("lr 4e-4, no system prompt", "forgetting_setting.json", 4e-4, False),
    ("lr 1e-4, **80 steps**", "forgetting_setting_80steps.json", 1e-4, True),
    ("lr 1e-4, 80 steps, batch 4", "forgetting_setting_80steps_batch4.json", 1e-4, True),
    ("lr 1e-4, 80 steps, batch 4, cosine", "forgetting_setting_80steps_batch4_cosine.json", 1e-4, True),
    (
        "**lr 2e-4, 80 steps, batch 4, cosine** (the new default)",
        "forgetting_setting_80steps_batch4_cosine.json",
        2e-4,
        True,
    ),  # noqa: E501
]


def _pct(x: float) -> str:
    s = f"{100 * x:.1f}"
    return s[:-2] if s.endswith(".0") and s in ("100.0",) else s


def _cell(c: dict, key: str, always: bool) -> str:
    """A benchmark cell: the value, then the strict paired difference to the base when it is always shown or when it
    excludes 0 (bold when it falls beyond its interval)."""
    v, d = c["metrics"][key]["value"], c["vs_base"][key]
    span = f"[{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]".replace("+0.0", "0.0").replace("-0.0", "0.0")
    if d["ci_high"] < 0 and key != "chain_sum/accuracy":
        span = f"**{span}**"
    shown = always or d["ci_low"] > 0 or d["ci_high"] < 0
    return f"{_pct(v)} {span}" if shown else _pct(v)


def forgetting_table_rows() -> list[str]:
    rows = []
    for label, file, lr, tag in FORGETTING_ROWS:
        d = json.loads((REPO / "benchmarks" / "results" / file).read_text())
        c = next(x for x in d["candidates"] if x["learning_rate"] == lr and x["system_prompt_tag"] == tag)
        m = c["metrics"]
        cells = [
            label,
            _cell(c, "chain_sum/accuracy", True),
            _cell(c, "chat_facts/accuracy", True),
            _cell(c, "instructions/accuracy", False),
            _cell(c, "agreement/accuracy", False),
            _cell(c, "facts/accuracy", False),
            f"{m['forgetting/kl_to_base']['value']:.3f} / {m['forgetting/kl_to_base_sampled']['value']:.3f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def test_the_forgetting_setting_table_is_its_files_with_strict_in_domain_intervals():
    section = doc_section("measured.md", "## Which CPU setting makes plain SFT forget")
    for row in forgetting_table_rows():
        assert row in section, row


# The default run's table: the report.json of the last fresh-clone `make run`, committed
DEFAULT_REPORT = REPO / "benchmarks" / "results" / "default_run_report.json"
DEFAULT_COLUMNS = [
    ("chain_sum/accuracy", True),
    ("chain_sum/avg@4", True),
    ("chat_facts/accuracy", True),
    ("instructions/accuracy", True),
    ("agreement/accuracy", False),
    ("facts/accuracy", False),
    ("ood/mean_accuracy", True),
]


def _interval_cell(m: dict | None, with_interval: bool) -> str:
    if m is None:
        return "-"
    v = f"{100 * m['value']:.1f}"
    return f"{v} [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}]" if with_interval else v


def default_run_rows(report: dict) -> list[str]:
    rows = []
    for m in report["models"]:
        met = m["metrics"]
        kl = met.get("forgetting/kl_to_base")
        kls = met.get("forgetting/kl_to_base_sampled")
        cells = [m["name"], ", ".join(x.removeprefix("seed ") for x in m.get("seed_labels", [])) or "-"]
        cells += [_interval_cell(met.get(k), iv) for k, iv in DEFAULT_COLUMNS]
        cells.append("-" if kl is None or kls is None else f"{kl['value']:.3f} / {kls['value']:.3f}")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def test_the_default_run_section_quotes_its_committed_report():
    report = json.loads(DEFAULT_REPORT.read_text())
    section = doc_section("measured.md", "## What the default run shows")
    for row in default_run_rows(report):
        assert row in section, row
    letters = {"tradeoff": "a", "representation": "b", "rl_init": "c"}
    for c in report["claims"]:  # each claim's verdict as the report gives it, on the claim's own line
        line = next(ln for ln in section.splitlines() if ln.startswith(f"- ({letters[c['claim']]}) "))
        assert f"**{c['verdict']}**" in line, c["claim"]
    times = json.loads((REPO / "benchmarks" / "results" / "pipeline_smollm2_cpu.json").read_text())
    assert f"**{times['fresh_clone']['total_s_make_run'] / 60:.1f} minutes**" in section
    assert f"**{times['estimate_on_avx2_machines']['total_s'] / 60:.1f}\nminutes**" in section
    t = times["train_runtime_s"]  # the arms' training alone, and RPSFT's cost over plain SFT's, seed by seed
    assert f"training alone {t['sft@seed0']:.0f} and {t['sft@seed1']:.0f} s against" in section
    assert f"{t['rpsft@seed0']:.0f} and {t['rpsft@seed1']:.0f} s" in section
    ratios = sorted(t[f"rpsft@seed{s}"] / t[f"sft@seed{s}"] for s in (0, 1))
    assert f"costs {ratios[0]:.2f}-{ratios[1]:.2f} times a plain one" in section.replace("\n", " ")
    # the fresh-clone run on the Xeon: its minutes, the arms' training and what RPSFT added on each machine
    (x,) = times["other_machines"]
    flat = " ".join(section.split())
    assert f"**{x['fresh_clone']['total_s_make_run'] / 60:.1f} minutes**" in flat
    assert f"install and server start {x['fresh_clone']['install_and_server_start_s'] / 60:.1f} min" in flat
    xt = x["train_runtime_s"]
    assert f"training alone {xt['sft@seed0']:.0f} and {xt['sft@seed1']:.0f} s against" in flat
    assert f"{xt['rpsft@seed0']:.0f} and {xt['rpsft@seed1']:.0f} s: RPSFT added" in flat
    added = [f"{r[f'rpsft@seed{s}'] - r[f'sft@seed{s}']:.0f}" for r in (xt, t) for s in (0, 1)]
    assert "RPSFT added {} and {} s to an arm there against {} and {} s on the EPYC".format(*added) in flat
    xr = sorted(xt[f"rpsft@seed{s}"] / xt[f"sft@seed{s}"] for s in (0, 1))
    assert f"an arm costs {xr[0]:.2f}-{xr[1]:.2f} times a plain one there" in flat
    ev = [v["total_s"] for k, v in x["per_model_eval_s"].items() if k.endswith("seed-0") and not k.startswith("base")]
    assert f"each sampled model {min(ev):.0f}-{max(ev):.0f} s" in flat
    assert f"(the base {x['per_model_eval_s']['base@seed-0']['total_s']:.0f} s;" in flat
    assert f"evaluation {x['stages_s']['evaluate@seed0'] / 60:.1f} min for seed 0" in flat
    # the second fresh-clone run there, at a later commit on a slower afternoon
    later = x["later_run"]
    assert later["machine"] == x["machine"]
    lt = later["train_runtime_s"]
    assert f"at {later['fresh_clone']['commit']} (the code of the second overhead table above" in flat
    assert f"took **{later['fresh_clone']['total_s_make_run'] / 60:.1f} minutes** on a slower afternoon" in flat
    said = (
        f"({lt['sft@seed0']:.0f} and {lt['sft@seed1']:.0f} s against {xt['sft@seed0']:.0f} and {xt['sft@seed1']:.0f} s)"
    )
    assert said in flat
    lev = [v["total_s"] for k, v in later["per_model_eval_s"].items() if k.endswith("seed-0") and k[:4] != "base"]
    assert f"each sampled model's evaluation took {min(lev):.0f}-{max(lev):.0f} s" in flat
    ladded = [lt[f"rpsft@seed{s}"] - lt[f"sft@seed{s}"] for s in (0, 1)]
    lr = sorted(lt[f"rpsft@seed{s}"] / lt[f"sft@seed{s}"] for s in (0, 1))
    assert f"RPSFT added {ladded[0]:.0f} and {ladded[1]:.0f} s to an arm there, {lr[0]:.2f}-{lr[1]:.2f} times" in flat
    page = " ".join((DOCS / "measured.md").read_text().split())  # the Xeon overhead table's closing line
    assert f"read {xr[0]:.2f}-{xr[1]:.2f} at an earlier commit and {lr[0]:.2f}-{lr[1]:.2f} at this one" in page


def test_the_overhead_and_task_tables_quote_their_files():
    readme = (DOCS / "measured.md").read_text()
    o = json.loads((REPO / "benchmarks" / "results" / "rpsft_overhead.json").read_text())
    first = readme.split("**On an Intel Xeon with AVX-512 and AMX")[0]  # the table above the Xeon's (same row names)
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in first.splitlines() if ln.startswith("| ")}
    assert f"| {o['ratio_ga1']:.2f} (" in rows["optimizer step RPSFT / SFT, GA 1"]
    assert f"| {o['ratio_ga4']:.2f} (" in rows["optimizer step RPSFT / SFT, GA 4"]
    arm = [r for r in rows if r.startswith("a real arm's training time RPSFT / SFT, GA ")]
    assert len(arm) == 2  # the real arm's ratios, what users pay, from the file make bench writes them into
    for ga in (1, 4):
        (row,) = [rows[r] for r in arm if r.split(" GA ")[1].startswith(str(ga))]
        assert f"| {o[f'arm_ratio_ga{ga}']:.2f} (" in row, (ga, row)
    # what RPSFT added per optimizer step at GA 4 in each round, from the real arms' file
    a = json.loads((REPO / "benchmarks" / "results" / "arm_overhead.json").read_text())
    (ga4,) = [x for x in a["settings"] if x["gradient_accumulation_steps"] == 4]
    added = [
        (r["train_runtime_s"] - s["train_runtime_s"]) / ga4["steps"]
        for r, s in zip(ga4["runs"]["rpsft"], ga4["runs"]["sft"], strict=True)
    ]
    (row,) = [rows[r] for r in arm if r.split(" GA ")[1].startswith("4")]
    assert f"added {added[0]:.2f} and {added[1]:.2f} s per optimizer step" in row
    assert f"{ga4['sft_s_per_step']:.1f}-s SFT step" in row
    # the bare step's penalty (block and gradient, as that code computed them) and the ratios it alone implies
    assert f"against {o['penalty_grad_s']:.2f} s for the penalty (block and gradient) in the bare step" in row
    alone = 1 + o["penalty_grad_s"] / ga4["sft_s_per_step"]
    assert f"which alone puts the ratio at {alone:.2f} on this {ga4['sft_s_per_step']:.1f}-s SFT step" in row
    flat_first = " ".join(first.split())
    assert f"cost {o['penalty_grad_s']:.2f} s per optimizer step in that run" in flat_first
    c1, c4 = o["ratio_from_components_ga1"], o["ratio_from_components_ga4"]
    assert f"so the step ratio is about {c1:.2f} at GA 1 and {c4:.2f} at GA 4" in flat_first
    for other in a["other_machines"][:1]:  # the same arms timed on another machine, at an earlier commit
        (o4,) = [x for x in other["settings"] if x["gradient_accumulation_steps"] == 4]
        rounds = ", ".join(f"{x:.2f}" for x in o4["ratio_per_round"])
        sft = [x["train_runtime_s"] for x in o4["runs"]["sft"]]
        assert f"{o4['ratio']:.2f} by the medians, the rounds {rounds}" in row
        assert f"varied by {max(sft) - min(sft):.0f} s between rounds" in row
    assert (
        f"| {o['naive_ratio_ga1']:.2f} / {o['naive_ratio_ga4']:.2f} ("
        in rows["naive per-micro-batch form / SFT, GA 1 and GA 4"]
    )  # noqa: E501
    anchor = f"{o['precompute_s']:.2f} s vs {o['full_svd_s']:.2f} s = {o['precompute_over_full_svd']:.2f}"
    assert anchor in rows["anchor precompute vs full fp32 SVD of the same matrices"]
    assert f"| {o['cache_hit_s']:.2f} s |" in rows["anchor cache hit"]
    assert (
        f"{o['extra_memory_mb']:.0f} MB (model: {o['model_fp32_mb']:.0f} MB)"
        in rows["anchor memory (U_k, V_k, S_ref in fp32)"]
    )
    assert f"{o['anchor_max_rel_error_top_k_singular_values']:.1e}" in readme
    labels = {
        "base": "SmolLM2-135M-Instruct (base)",
        "sft": "after 40 SFT steps (batch 8, lr 2e-5)",
        "rpsft": "after 40 RPSFT steps (same recipe, lambda = 1)",
    }
    for arm, label in labels.items():
        t = json.loads((REPO / "benchmarks" / "results" / f"task_{arm}_chain_sum.json").read_text())

        def cell(v, ci):
            return f"{100 * v:.0f}% [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]"

        want = f"| {label} | {cell(t['strict_accuracy'], t['strict_ci95'])} | "
        want += f"{cell(t['lenient_accuracy'], t['lenient_ci95'])} | {100 * t['well_formed']:.0f}% |"
        assert want in readme, want


def test_the_xeon_overhead_table_quotes_both_files():
    """The second overhead table of docs/measured.md: this code's bare step and real arms on one machine, the bare
    step's record in rpsft_overhead.json and the arms' in arm_overhead.json (the same machine)."""
    text = (DOCS / "measured.md").read_text()
    flat = " ".join(text.split())
    (bare,) = json.loads((REPO / "benchmarks" / "results" / "rpsft_overhead.json").read_text())["other_machines"]
    arms = json.loads((REPO / "benchmarks" / "results" / "arm_overhead.json").read_text())["other_machines"][-1]
    assert arms["machine"]["cpu_model"] == bare["machine"]["cpu_model"] and "Xeon" in bare["machine"]["cpu_model"]
    section = text.split("**On an Intel Xeon with AVX-512 and AMX (2 cores), with the code of 2026-12-07**")[1]
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in section.splitlines() if ln.startswith("| ")}
    assert f"| {bare['ratio_ga1']:.2f} ({bare['ratio_ga1']:.3f}) |" in rows["optimizer step RPSFT / SFT, GA 1"]
    xeon = [r for r in rows if r.endswith("(Xeon)")]
    assert xeon == ["measurement (Xeon)"]
    by_ga = {x["gradient_accumulation_steps"]: x for x in arms["settings"]}
    for ga, steps in ((1, 80), (4, 20)):
        x = by_ga[ga]
        assert x["steps"] == steps and len(x["ratio_per_round"]) == 3
        assert bare[f"arm_ratio_ga{ga}"] == x["ratio"]
        rounds = ", ".join(f"{r:.2f}" for r in x["ratio_per_round"])
        assert f"| {x['ratio']:.2f} (the rounds {rounds}) |" in flat
    assert f"| {bare['ratio_ga4']:.2f} ({bare['ratio_ga4']:.3f}) | <= 1.05 | yes |" in flat
    step = bare["penalty_step_s"]
    assert f"| {step:.2f} s (the gradient from kept blocks alone {bare['penalty_grad_only_s']:.2f} s) |" in flat
    pre = f"| {bare['precompute_s']:.2f} s vs {bare['full_svd_s']:.2f} s = {bare['precompute_over_full_svd']:.2f} |"
    assert pre in flat
    one = by_ga[1]
    added = [
        (r["train_runtime_s"] - s["train_runtime_s"]) / 80
        for r, s in zip(one["runs"]["rpsft"], one["runs"]["sft"], strict=True)
    ]
    assert "RPSFT added {:.2f}, {:.2f} and {:.2f} s per optimizer step".format(*added) in flat
    assert max(added) <= step  # "no more than the bare penalty's"
    assert f"no more than the bare penalty's {step:.2f} s" in flat
    sft4 = [r["train_runtime_s"] for r in by_ga[4]["runs"]["sft"]]
    assert f"the SFT arm alone varied by {max(sft4) - min(sft4):.0f} s between rounds" in flat
    assert f"whole cost over 20 steps ({20 * step:.0f} s)" in flat
    assert f"the bare step's components put it at {bare['ratio_from_components_ga4']:.2f}" in flat
    extra = [r["stage_wall_s"] - r["train_runtime_s"] for x in by_ga.values() for m in x["runs"].values() for r in m]
    assert f"took {min(extra):.0f}-{max(extra):.0f} s beyond its training time" in flat


def test_the_readme_counts_the_bad_input_table_as_it_is():
    from tests.integration.test_bad_input import ROWS

    readme = (DOCS / "security.md").read_text()
    assert f"**Bad input** ({len(ROWS)} cases in `tests/integration/test_bad_input.py`" in readme


def test_the_grpo_step_table_quotes_its_file():
    r = json.loads((REPO / "benchmarks" / "results" / "grpo_step.json").read_text())
    section = doc_section("rl.md", "### What a GRPO step's update costs")
    for name, row in r["variants"].items():
        assert f"{row['training_s_median']:.1f} s" in section, name
    assert f"({r['default_over_trl_default']:.2f}x)" in section
    assert f"({r['beta0_over_default']:.2f}x of the default)" in section


def test_the_evaluation_cost_line_quotes_its_file():
    run = json.loads((REPO / "benchmarks" / "results" / "eval_phases.json").read_text())["runs"][0]
    text = " ".join((DOCS / "evaluation.md").read_text().split())
    quoted = {
        "engine start": "engine_start_s",
        "chain_sum greedy": "chain_sum/greedy_s",
        "Avg@4 sampling": "chain_sum/sampled_s",
        "chat_facts": "chat_facts/greedy_s",
        "instructions": "instructions/greedy_s",
        "probes": "choice_s",
        "forgetting": "forgetting_s",
    }
    for label, key in quoted.items():
        assert f"{label} {run[key]:.1f} s" in text, (label, run[key])
    assert f"{run['total_s']:.1f} s in all" in text


def test_the_evaluation_batching_line_quotes_its_file():
    import statistics

    r = json.loads((REPO / "benchmarks" / "results" / "eval_batching.json").read_text())
    g, c = r["generation"], r["choice"]
    text = " ".join((DOCS / "evaluation.md").read_text().split("<!-- eval-batching -->")[1][:600].split())
    assert "Intel Xeon with AVX-512 and AMX, 2 cores" in text and r["machine"]["cores"] == 2
    assert {"avx512f", "amx_bf16"} <= set(r["machine"]["cpu_flags"])
    after, before = statistics.median(g["together_s"]), statistics.median(g["one_at_a_time_s"])
    assert f"its {g['answers']} answers in {after:.1f} s against {before:.1f} s" in text
    assert f"one request at a time ({g['ratio']:.2f}x)" in text
    after, before = statistics.median(c["after_s"]), statistics.median(c["before_s"])
    assert f"the probes in {after:.1f} s against {before:.1f} s ({c['ratio']:.2f}x)" in text
    assert g["same_greedy_answers"] and c["same_choices"]  # "the same greedy answers and the same choices"


def test_the_claims_run_section_quotes_its_committed_report():
    """docs/measured.md, docs/configs.md and the README quote the committed report of `make claims` (five seeds) and
    its minutes; the prose's per-seed counts are the report's."""
    from stages.report_text import _headline, _power_text

    results = REPO / "benchmarks" / "results"
    report = json.loads((results / "claims_run_report.json").read_text())
    times = json.loads((results / "pipeline_smollm2_cpu_claims.json").read_text())
    section = " ".join(doc_section("measured.md", "## The claims at the method level").split())
    assert report["n_seeds"] == 5 and len(report["seed_labels"]) == 5
    for line in _headline(report):
        assert f"- {line}" in section, line
    for c in report["claims"]:
        assert _power_text(c).strip() in section, c["claim"]
    minutes = times["total_s"] / 60
    assert f"**{minutes:.0f} minutes**" in section
    comp = {(c["a"], c["b"], c["metric"]): c for c in report["comparisons"]}
    kl = comp[("rpsft", "sft", "forgetting/kl_to_base")]["per_seed"]
    assert (
        all(d < 0 for d in kl) and f"(by {min(map(abs, kl)):.3f} to {max(map(abs, kl)):.3f} nats per token)" in section
    )
    ood = comp[("rpsft", "sft", "ood/mean_accuracy")]["per_seed"]
    assert f"higher in {sum(d > 0 for d in ood)} seeds of five" in section
    id_sft, id_rp = (report["per_seed_values"][m]["id/mean_accuracy"] for m in ("sft", "rpsft"))
    assert f"seed 3 learned the task to {100 * id_sft[3]:.1f}% (sft) and {100 * id_rp[3]:.1f}% (rpsft)" in section
    others = [100 * v for i, vals in enumerate((id_sft, id_rp)) for j, v in enumerate(vals) if j != 3]
    assert f"reached {min(others):.1f}-{max(others):.1f}%" in section
    configs = " ".join((DOCS / "configs.md").read_text().split())
    assert f"CPU, {minutes:.0f} min (measured)" in configs
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- claims-run -->\n")[1].split("\n\n")[0]
    assert block.splitlines() == [f"- {line}" for line in _headline(report)]


def test_the_development_page_quotes_the_suites_time_from_benchmarks_results_test_suite_json():
    r = json.loads((REPO / "benchmarks" / "results" / "test_suite.json").read_text())
    assert r["exit_code"] == 0 and r["failures"] == r["errors"] == r["skipped"] == 0 and r["tests"] > 2000
    text = (DOCS / "development.md").read_text().split("<!-- suite-time -->")[1].split("run back to back")[0]
    text = text.replace("\n", " ")
    assert text.startswith(f"{r['tests']} tests in {r['wall_s'] / 60:.1f} minutes on {r['machine']['cores']} cores")
    slow = {c["test"].rsplit("::", 1)[-1]: c["s"] for c in r["slowest"]}
    e2e = (
        slow["test_tiny_pipeline_deployment_runs_end_to_end"],
        slow["test_stages_on_two_work_pools_meet_only_through_the_store"],
    )
    assert f"{e2e[0]:.0f} s" in text and f"{e2e[1]:.0f} s" in text
    gpu = slow["test_the_device_script_runs_every_part_of_the_check_and_the_arms_at_smoke_shapes"]
    assert f"({gpu:.0f} s)" in text
    before = r["earlier_runs"][0]  # the same machine, the same day, before the change the page names
    assert f"the suite took {before['wall_s'] / 60:.1f} minutes on the same machine the same day" in text
    other_day = r["earlier_runs"][2]  # the same version of the suite as earlier_runs[0], on another day
    assert f"and {other_day['wall_s'] / 60:.1f} on an Xeon of this kind on another day" in text
    assert other_day["machine"]["cpu_model"] == r["machine"]["cpu_model"] and other_day["tests"] == before["tests"]
    assert before["machine"] == r["machine"] and before["tests"] <= r["tests"]
    bench = [
        s for name, s in slow.items() if name.startswith(("test_task_accuracy", "test_grpo_step", "test_rl_setting"))
    ]
    assert f"({min(bench):.0f}-{max(bench):.0f} s each)" in text
    one = r["one_process_reference"]
    assert f"alone took {one['wall_s'] / 60:.1f} minutes in one process" in text
    assert f"the whole suite took {one['whole_suite_wall_s_same_machine'] / 60:.1f} minutes and" in text


def test_the_stage_process_start_line_quotes_its_file():
    r = json.loads((REPO / "benchmarks" / "results" / "process_start.json").read_text())
    text = " ".join((DOCS / "measured.md").read_text().split())
    for stage, label in (("sft", "SFT"), ("rl", "RL"), ("evaluate", "evaluation")):
        med = r["stages"][stage]["wall_s_median"]
        assert f"{med['default_collection']:.1f} -> {med['deferred_and_frozen']:.1f} s ({label})" in text, stage
    assert f"medians of {r['rounds']} processes" in text


def test_the_probe_layout_paragraph_quotes_its_file():
    r = json.loads((REPO / "benchmarks" / "results" / "probe_layout.json").read_text())
    m, sep = r["median"]["in_process"], r["median"]["separate"]
    text = " ".join((DOCS / "rl.md").read_text().split("<!-- probe-layout -->")[1].split("\n\n")[0].split())
    assert f"{r['rounds']} rounds of each layout" in text
    assert f"the probe took {m['wall_s']:.1f} s that way against {sep['wall_s']:.1f} s" in text
    assert f"(engine start {m['vllm_engine_start_s']:.1f} against {sep['vllm_engine_start_s']:.1f} s)" in text
    hf = {k: [x["hf_tokens_per_s"] for x in r["runs"][k]] for k in ("in_process", "separate")}
    assert (
        f"transformers at {m['hf_tokens_per_s']:.0f} tokens/s ({min(hf['in_process']):.0f}-{max(hf['in_process']):.0f}"
        f" over the rounds) against {sep['hf_tokens_per_s']:.0f} ({min(hf['separate']):.0f}-{max(hf['separate']):.0f})"
    ) in text
    assert all(x["vllm_layout"] == k for k in hf for x in r["runs"][k])
    assert f"(vLLM {m['vllm_tokens_per_s']:.0f} against {sep['vllm_tokens_per_s']:.0f})" in text
    assert r["machine"]["cores"] == 2 and "Xeon" in r["machine"]["cpu_model"] and "Intel Xeon" in text
    assert r["wall_saved_s"] == round(sep["wall_s"] - m["wall_s"], 1) > 0
