"""The GPU check's sizing: FLOP counts of the real shapes at conservative H200 rates fit the 8-minute budget, and
the matrices it counts are the model's."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_check_run", REPO / "scripts" / "gpu_check" / "run.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)


def test_the_full_run_is_planned_under_eight_minutes_on_one_h200():
    p = gc.plan(gc.FULL)
    assert p["total"] < 8 * 60, p
    assert p["anchors"] > p["steps"] > 0  # the fp32 SVDs of the 152064 x 3584 embedding and head dominate
    # the paper's shapes: two Qwen2.5-7B layers with embedding and head, 1.56 B parameters in 2-D weights
    assert abs(sum(m * n for m, n in gc.matrices(gc.SHAPES["qwen2.5-7b-layers"])) - 1.556e9) < 1e6


def test_the_counted_matrices_are_those_of_the_built_model():
    import torch

    for name in ("smoke-layers", "smoke-body"):
        shape = {**gc.SHAPES[name], "vocab_size": gc.SHAPES[name].get("vocab_size", 1024)}
        model = gc.build_layers_model(shape, torch.device("cpu"), torch.float32)
        built = sorted(tuple(p.shape) for p in model.parameters() if p.dim() == 2)
        assert built == sorted(gc.matrices(shape)), name


def test_the_committed_h200_results_are_a_full_cuda_run_and_the_readme_quotes_them():
    import json
    import re

    r = json.loads((REPO / "benchmarks" / "results" / "gpu_check.json").read_text())
    assert r["mode"] == "full" and r["machine"]["device"] == "cuda" and "H200" in r["machine"]["gpu"]
    assert all("error" not in v and "skipped" not in v for v in r["parts"].values()), r["parts"]
    assert set(r["parts"]) == {"anchors", "steps", "grpo"}
    assert r["total_s"] < 8 * 60  # the sizing held on the machine itself
    readme = (REPO / "docs" / "install.md").read_text()
    section = readme[readme.index("**Measured on the lent H200**") :]
    steps = r["parts"]["steps"]
    for ga in ("ga1", "ga8"):
        for k in ("k768", "k25pct"):
            quoted = f"{steps[ga]['ratio_to_sft'][k]:.2f}x"
            assert quoted in section, (ga, k, quoted)
    assert f"{r['parts']['grpo']['generation_tokens_per_s']:,.0f} tokens/s" in section
    k768 = r["parts"]["anchors"]["k768"]
    assert f"{k768['precompute_s']:.1f} s, {k768['precompute_over_full_svd']:.2f}x" in section
    assert re.search(rf"{r['total_s']:.0f} s, against {r['plan_s_on_h200']['total']:.0f} s planned", section)


def test_the_committed_h100_results_are_a_cuda_run_and_the_install_page_quotes_them():
    import json

    r = json.loads((REPO / "benchmarks" / "results" / "gpu_check_h100.json").read_text())
    assert r["mode"] == "full" and r["machine"]["device"] == "cuda" and "H100" in r["machine"]["gpu"]
    assert set(r["parts"]) == {"anchors", "steps"} and all("error" not in v for v in r["parts"].values())
    page = (REPO / "docs" / "install.md").read_text()
    section = page[page.index("**Measured on the lent H100**") : page.index("**The default model on a GPU**")]
    assert f"one run of {r['total_s']:.0f} s" in section
    steps = r["parts"]["steps"]
    for ga in ("ga1", "ga8"):
        ratios = steps[ga]["ratio_to_sft"]
        assert f"**{ratios['k768']:.2f}x** / {ratios['k25pct']:.2f}x" in section, ga
        s = steps[ga]["step_s"]
        assert f"({s['k768']:.3f} s / {s['k25pct']:.3f} s vs {s['sft']:.3f} s)" in section, ga
    pen = steps["penalty_k25pct"]
    assert pen["native_bf16_products"] is True and pen["penalty_rel_diff"] < 1e-4
    quoted = f"{pen['fp32']['s']:.3f} s vs {pen['split_bf16']['s']:.3f} s ({pen['split_over_fp32_time']:.2f}x)"
    assert quoted in section and f"within {pen['penalty_rel_diff']:.1e}" in section
    rpsft_page = (REPO / "docs" / "rpsft.md").read_text()
    assert f"**{pen['split_bf16']['s']:.3f} s against fp32's {pen['fp32']['s']:.3f} s" in rpsft_page
    a = r["parts"]["anchors"]
    k768 = f"{a['k768']['precompute_s']:.1f} s, {a['k768']['precompute_over_full_svd']:.2f}x a full fp32 SVD"
    assert k768 in section and f"({a['full_svd_s']:.1f} s)" in section
