"""Numbers the README quotes come from committed result files, and stay equal to them."""

from __future__ import annotations

import json

from tests.conftest import REPO


def test_the_rl_setting_section_quotes_benchmarks_results_rl_setting_json():
    r = json.loads((REPO / "benchmarks" / "results" / "rl_setting.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Does RL move the default's checkpoints?") :]
    section = section[: section.index("\n### ", 10)]
    assert r["runs"], "the committed grid holds no run"
    for run in r["runs"]:
        g = run["gain"]["chain_sum/avg@4"]
        quoted = f"{100 * g['diff']:+.1f} [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}]"
        assert f"`{run['setting']}`" in section and quoted in section, (run["setting"], quoted)
        greedy = run["gain"]["chain_sum/accuracy"]
        assert f"{100 * greedy['diff']:+.1f}" in section, (run["setting"], "greedy")
        assert f"{run['curve']['mixed_groups_mean']:.2f}" in section, (run["setting"], "mixed groups")
        assert f"{run['curve']['step_s_median']:.0f} s per step" in section, (run["setting"], "step time")
    # the choice is the file's: none, when no setting raised Avg@k from every initialisation
    chosen = r["chosen"]
    assert (chosen is None) == ("No setting was chosen" in section)
