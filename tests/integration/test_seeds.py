"""Seeds as a first-class part of a run: every arm trained and evaluated once per training seed in
<run_dir>/seeds/seed-<s>/, one report that pools them, a seed control, and the paper's claims at the
level the number of seeds supports."""

from __future__ import annotations

import json

import pytest

from stages.evaluate import run as eval_run
from stages.report import run as report_run
from stages.sft import run as sft_run

BENCHES = [
    {"name": "task", "source": "train_task", "size": 10, "max_new_tokens": 8},
    {"name": "agreement", "source": "agreement", "domain": "out", "size": 16},
    {"name": "facts", "source": "facts", "domain": "out", "size": 12},
]


@pytest.fixture(scope="module")
def three_seed_run(tmp_path_factory, cache_dir):
    from stages.config import load_config
    from tests.conftest import CONFIGS

    tmp = tmp_path_factory.mktemp("seeds")
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        [
            f"runs_root={tmp / 'runs'}",
            f"cache_dir={cache_dir}",
            "seeds=[0, 1, 2]",
            "sft.training.max_steps=3",
            f"eval.benchmarks={json.dumps(BENCHES)}",
            "eval.forgetting.num_prompts=4",
            "eval.forgetting.max_new_tokens=8",
            "eval.forgetting.cka_bootstrap=20",
            "eval.bootstrap=300",
            "eval.models=[base, sft, rpsft]",
        ],
    )
    for seed in cfg.seed_list:
        scfg = cfg.for_seed(seed)
        assert scfg.run_dir == cfg.run_dir / "seeds" / f"seed-{seed}" and scfg.seed == seed
        for method in ("sft", "rpsft"):
            sft_run(scfg.model_copy(update={"sft": scfg.sft.model_copy(update={"method": method})}))
        eval_run(scfg)
    return cfg, report_run(cfg)


def test_each_seed_trains_from_the_same_base_with_its_own_seed(three_seed_run):
    cfg, _ = three_seed_run
    metrics = [json.loads((cfg.for_seed(s).run_dir / "sft" / "metrics.json").read_text()) for s in cfg.seed_list]
    assert len({m["base_model"] for m in metrics}) == 1  # one pretrained model for every seed
    assert len({round(m["train_loss"], 8) for m in metrics}) == 3  # but three different training runs


def test_the_base_is_evaluated_once_and_shared_by_every_seed_run(three_seed_run):
    cfg, _ = three_seed_run
    runs = [cfg.for_seed(s).run_dir / "eval" for s in cfg.seed_list]
    first = (runs[0] / "base" / "metrics.json").read_text()
    for other in runs[1:]:
        # byte-identical, timings included: copied from seed 0's evaluation, not measured again
        assert (other / "base" / "metrics.json").read_text() == first
        assert (other / "base" / "DONE").is_file()
        assert (other / "general_text.json").read_bytes() == (runs[0] / "general_text.json").read_bytes()


def test_the_report_pools_seeds_and_reads_claims_about_the_method(three_seed_run):
    cfg, report = three_seed_run
    assert report["seeds"] == [0, 1, 2] and report["n_seeds"] == 3
    sft = {m["name"]: m for m in report["models"]}["sft"]["metrics"]
    assert sft["agreement/accuracy"]["seeds"] == 3 and sft["agreement/accuracy"]["n"] == 16
    for c in report["comparisons"]:
        assert c["level"] == "method" and c["seeds"] == 3 and "checkpoints" not in c["verdict"]
    assert {c["claim"] for c in report["claims"]} == {"tradeoff", "representation", "rl_init"}
    assert all(c["level"] == "method" for c in report["claims"])
    rl = next(c for c in report["claims"] if c["claim"] == "rl_init")
    assert rl["verdict"] == "not tested" and not rl["evidence"] and "has no RL" in rl["why"]  # and says why
    # The seed control: the same method, every pair of seeds, on the primary metric.
    control = report["seed_control"]
    assert {(c["model"], tuple(c["runs"])) for c in control} >= {
        ("sft", ("seed 0", "seed 1")),
        ("rpsft", ("seed 1", "seed 2")),
    }
    md = (cfg.run_dir / "report.md").read_text()
    assert "## Seed control (the same model, two training seeds)" in md and "Student's t over the seeds'" in md
    assert "(a) RPSFT gives a better in-domain / out-of-domain trade-off than SFT" in md


def test_with_fewer_than_three_seeds_verdicts_are_about_checkpoints(three_seed_run, tmp_path):
    cfg, _ = three_seed_run
    two = cfg.model_copy(update={"seeds": [0, 1]})
    report = report_run(two)
    assert report["n_seeds"] == 2 and all(c["level"] == "checkpoint" for c in report["claims"])
    assert all("about these checkpoints: 2 seeds" in c["verdict"] for c in report["comparisons"])
    report_run(cfg)


def test_a_sweep_draws_the_frontier_and_names_its_pareto_arms(tmp_path, cache_dir):
    """A small lambda sweep on the tiny model: every sweep arm trained under its own name, evaluated, and the
    report's frontier plot and Pareto front computed from their in-domain and out-of-domain accuracies."""
    from stages.config import load_config
    from tests.conftest import CONFIGS

    sweep = [
        {"arm": "sft-a", "method": "sft", "overrides": {"sft.training.learning_rate": 1e-3}},
        {"arm": "sft-b", "method": "sft", "overrides": {"sft.training.learning_rate": 3e-3}},
        {"arm": "rpsft-l1", "method": "rpsft", "overrides": {"sft.rpsft.lambda": 1.0}},
        {"arm": "rpsft-l100", "method": "rpsft", "overrides": {"sft.rpsft.lambda": 100.0}},
    ]
    common = [
        f"runs_root={tmp_path}",
        f"cache_dir={cache_dir}",
        f"sweep={json.dumps(sweep)}",
        "sft.training.max_steps=3",
        f"eval.benchmarks={json.dumps(BENCHES)}",
        "eval.forgetting.enabled=false",
        "eval.bootstrap=200",
    ]
    cfg = load_config(CONFIGS / "tiny.yaml", common)
    for arm in cfg.sweep:
        sft_run(load_config(CONFIGS / "tiny.yaml", [*common, *arm.as_overrides()]))
        assert (cfg.run_dir / arm.arm / "DONE").is_file()
    assert "lambda: 100.0" in (cfg.run_dir / "rpsft-l100" / "config.yaml").read_text()  # its own settings
    eval_run(cfg)
    report = report_run(cfg)
    assert (cfg.run_dir / "plots" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    names = {"base", "sft-a", "sft-b", "rpsft-l1", "rpsft-l100"}
    assert report["frontier"] and set(report["frontier"]) <= names
    md = (cfg.run_dir / "report.md").read_text()
    assert "Pareto front of the sweep" in md and "plots/frontier.png" in md
    # The matched view: each RPSFT arm against the plain-SFT arm nearest in in-domain accuracy.
    matched = {r["arm"]: r for r in report["matched"]}
    assert set(matched) == {"rpsft-l1", "rpsft-l100"} and {r["matched_sft"] for r in matched.values()} <= {
        "sft-a",
        "sft-b",
    }
    for r in matched.values():
        assert ("diff" in r) == (abs(r["id_gap"]) <= cfg.report.matched_tolerance)


def test_a_stage_run_by_hand_on_a_multi_seed_config_runs_every_seed(tmp_path, cache_dir):
    from stages.config import load_config
    from stages.rl import init_for_seed
    from stages.sft import main as sft_main
    from tests.conftest import CONFIGS

    over = [f"runs_root={tmp_path / 'runs'}", f"cache_dir={cache_dir}", "seeds=[3, 4]", "sft.training.max_steps=2"]
    assert sft_main(["--config", str(CONFIGS / "tiny.yaml"), *over]) == 0
    cfg = load_config(CONFIGS / "tiny.yaml", over)
    for s in (3, 4):  # where the flow puts them, so evaluate and report find them
        assert (cfg.run_dir / "seeds" / f"seed-{s}" / "sft" / "DONE").is_file()
        assert json.loads((cfg.run_dir / "seeds" / f"seed-{s}" / "sft" / "metrics.json").read_text())["steps"] == 2
    assert not (cfg.run_dir / "sft").exists()
    # RL from "<run>/sft/checkpoint" means each seed's own sft arm; an outside checkpoint is shared
    rl_cfg = load_config(CONFIGS / "tiny.yaml", [*over, f"rl.init={cfg.run_dir / 'sft' / 'checkpoint'}"])
    seeded = init_for_seed(rl_cfg, rl_cfg.for_seed(4))
    assert seeded.rl.init == str(cfg.run_dir.resolve() / "seeds" / "seed-4" / "sft" / "checkpoint")
    outside = load_config(CONFIGS / "tiny.yaml", [*over, f"rl.init={tmp_path / 'elsewhere'}"])
    assert init_for_seed(outside, outside.for_seed(4)).rl.init == str(tmp_path / "elsewhere")


def test_rl_from_some_seeds_only_is_pooled_over_those_and_labelled_so(tmp_path, cache_dir):
    from stages.config import load_config
    from stages.rl import run as rl_run
    from tests.conftest import CONFIGS

    cfg = load_config(
        CONFIGS / "tiny.yaml",
        [
            f"runs_root={tmp_path / 'runs'}",
            f"cache_dir={cache_dir}",
            "seeds=[0, 1]",
            "rl.seeds=[0]",
            "sft.training.max_steps=2",
            "rl.training.max_steps=2",
            f"eval.benchmarks={json.dumps(BENCHES)}",
            "eval.forgetting.num_prompts=4",
            "eval.forgetting.max_new_tokens=8",
            "eval.forgetting.cka_bootstrap=20",
            "eval.bootstrap=300",
            "tracking.report_to=[tensorboard]",
        ],
    )
    assert [cfg.rl_for_seed(s) for s in cfg.seed_list] == [True, False]
    for seed in cfg.seed_list:
        scfg = cfg.for_seed(seed)
        for method in ("sft", "rpsft"):
            sft_run(scfg.model_copy(update={"sft": scfg.sft.model_copy(update={"method": method})}))
            if cfg.rl_for_seed(seed):
                init = str(scfg.run_dir / method / "checkpoint")
                rl_run(scfg.model_copy(update={"rl": scfg.rl.model_copy(update={"init": init})}))
        eval_run(scfg)
    report = report_run(cfg)
    models = {m["name"]: m for m in report["models"]}
    assert models["sft"]["metrics"]["id/mean_accuracy"]["seeds"] == 2
    assert models["rl-sft"]["metrics"]["id/mean_accuracy"]["seeds"] == 1  # seed 1 has no RL run
    comps = {(c["a"], c["b"], c["metric"]): c for c in report["comparisons"]}
    assert comps[("rpsft", "sft", "id/mean_accuracy")]["seeds"] == 2
    rl = comps[("rl-rpsft", "rl-sft", "id/mean_accuracy")]
    assert rl["seeds"] == 1 and rl["level"] == "checkpoint"
    assert next(c for c in report["claims"] if c["claim"] == "rl_init")["level"] == "checkpoint"
    md = (cfg.run_dir / "report.md").read_text()
    assert "RL ran from the arms of 1 of the 2 training seeds (rl.seeds)" in md
    # tracked: every seed's arms and evaluations, and the report's headline numbers, in one TensorBoard folder
    from tests.integration.test_tracking import read_scalars

    tb = cfg.run_dir / "tensorboard"
    assert "train/loss" in read_scalars(tb / "seed-1" / "rpsft")
    assert "train/loss" in read_scalars(tb / "seed-0" / "rl-sft")
    assert "eval/task/accuracy" in read_scalars(tb / "seed-0" / "eval-rl-sft")
    headline = read_scalars(tb / "report")
    primary = "report/rpsft-minus-sft/ood/mean_accuracy"
    assert headline[primary][0][1] == pytest.approx(comps[("rpsft", "sft", "ood/mean_accuracy")]["diff"], abs=1e-6)
