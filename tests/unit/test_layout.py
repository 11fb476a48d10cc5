"""The run folder's layout is named in one place (stages/layout.py): what it names, and that no other module spells
a run-folder path itself."""

from __future__ import annotations

import re
from pathlib import Path

from stages.layout import RESERVED, ArmLayout, EvalLayout, RunLayout
from tests.conftest import REPO


def test_the_layout_names_the_documented_folder():
    run = RunLayout(Path("runs/x"))
    arm = run.arm("rpsft")
    assert arm.checkpoint == Path("runs/x/rpsft/checkpoint") and arm.trainer == Path("runs/x/rpsft/trainer")
    assert arm.metrics.name == "metrics.json" and arm.steps.name == "metrics.jsonl" and arm.done.name == "DONE"
    assert run.items("chain_sum") == Path("runs/x/eval/items/chain_sum.jsonl")
    assert run.eval_model("base").metrics == Path("runs/x/eval/base/metrics.json")
    assert run.general_text(sampled=True).name == "general_text_sampled.json"
    seed = run.seed_run(1)
    assert seed.dir == Path("runs/x/seeds/seed-1") and seed.is_seed_run and seed.parent_run == run
    assert not run.is_seed_run and run.parent_run == run
    # an arm may not take a name the folder uses
    used = {p.relative_to(run.dir).parts[0] for p in (run.prepare_dir, run.sft_data, run.eval_dir, run.plots)}
    used |= {run.seeds_dir.name, arm.trainer.name, arm.checkpoint.name, arm.adapter.name}
    assert used <= RESERVED


def test_seed_runs_lists_the_seed_folders_that_exist(tmp_path):
    run = RunLayout(tmp_path)
    for s in (2, 0):
        run.seed_run(s).dir.mkdir(parents=True)
    (run.seeds_dir / "seed-9.txt").write_text("not a folder")
    assert [r.dir.name for r in run.seed_runs()] == ["seed-0", "seed-2"]


def _owned_names() -> set[str]:
    names: set[str] = set()
    for cls in (ArmLayout, EvalLayout, RunLayout):
        obj = cls(Path("a"))
        for key, value in vars(cls).items():
            if isinstance(value, property) and isinstance(path := getattr(obj, key), Path) and key != "parent_run":
                names.update(path.relative_to("a").parts)
    run = RunLayout(Path("a"))
    names.update(run.items("b").relative_to("a").parts[:-1])
    names.update(run.general_text(True).relative_to("a").parts)
    names.update(run.general_text(False).relative_to("a").parts)
    return names


def test_no_module_but_the_layout_spells_a_run_folder_path():
    names = _owned_names()
    assert {"checkpoint", "trainer", "metrics.json", "eval", "seeds", "report.json", "DONE"} <= names
    alternatives = "|".join(re.escape(n) for n in sorted(names))
    quoted = rf"""['"]({alternatives})['"]"""
    # a path joined from a name (`/ "eval"`), a glob into one (`glob("seed-*/eval")`), a path's name compared
    pattern = re.compile(rf"""/ {quoted}|glob\(f?["'][^"']*/({alternatives})["']\)|\.name == {quoted}""")
    spelt = ['self.run_dir / "seeds"', "run_dir / 'eval' / name", 'd.glob("seed-*/eval")', "p.name == 'checkpoint'"]
    assert all(pattern.search(x) for x in spelt)  # the forms the layout replaced are caught
    found = []
    for path in [*REPO.glob("stages/*.py"), *REPO.glob("pipeline/*.py")]:
        if path.name == "layout.py":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "Path(tmp)" not in line and "submodule_search_locations" not in line:
                found.append(f"{path.relative_to(REPO)}:{no}: {line.strip()}")
    assert not found, found
