"""The README is a front door: short, every docs page linked from it, every link resolving, its numbers and claims
those of the committed result files, and no build history (issue numbers) in the docs or the code."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import DOCS, REPO

README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path) -> set[str]:
    text, fence, out = path.read_text(), False, set()
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#{1,6} (.*)$", line)):
            out.add(_slug(m.group(1)))
    return out


def test_the_readme_is_a_front_door_that_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    linked = {m.removeprefix("docs/").split("#")[0] for m in LINK.findall(text) if m.startswith("docs/")}
    pages = {p.name for p in DOCS.glob("*.md")}
    assert pages and pages <= linked, sorted(pages - linked)


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_every_relative_link_and_anchor_resolves(page):
    path = README if page == "README.md" else DOCS / page
    for target in LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.is_file(), (page, target)
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), (page, target)


def test_no_issue_numbers_or_build_history_in_docs_or_code():
    roots = [README, *DOCS.glob("*.md"), *REPO.glob("stages/*.py"), *REPO.glob("pipeline/*.py")]
    roots += [*REPO.glob("benchmarks/**/*.py"), *REPO.glob("configs/**/*.yaml"), REPO / "Makefile"]
    found = [
        f"{p.relative_to(REPO)}: {m.group(0)}"
        for p in roots
        for m in re.finditer(r"\bissues? #?\d+", p.read_text(), flags=re.I)
    ]
    assert not found, found


def test_the_readme_quotes_the_default_runs_minutes_and_claims_from_their_files():
    from stages.report_text import _headline

    text = README.read_text()
    times = json.loads((REPO / "benchmarks" / "results" / "pipeline_smollm2_cpu.json").read_text())
    minutes = times["fresh_clone"]["total_s_make_run"] / 60
    assert f"**{minutes:.1f} minutes**" in text.split("<!-- make-run-minutes -->")[1][:200]
    slower = times["estimate_on_avx2_machines"]["total_s"] / 60  # the other end of the machines' range
    assert f"**{slower:.1f} minutes**" in text.split("<!-- make-run-minutes -->")[1][:500]
    (xeon,) = times["other_machines"]  # the same default from a fresh clone on another machine of this kind
    assert xeon["machine"]["cpu_model"].startswith("Intel(R) Xeon") and "amx_bf16" in xeon["machine"]["cpu_flags"]
    said = f"**{xeon['fresh_clone']['total_s_make_run'] / 60:.1f} minutes** on an Intel Xeon with AVX-512 and AMX"
    assert said in text.split("<!-- make-run-minutes -->")[1][:300]
    assert "on an AMD EPYC with AVX-512" in text and times["machine"]["cpu_model"] == "AMD EPYC"
    report = json.loads((REPO / "benchmarks" / "results" / "default_run_report.json").read_text())
    block = text.split("<!-- default-claims -->\n")[1].split("\n\n")[0]
    assert block.splitlines() == [f"- {line}" for line in _headline(report)]
    assert len(block.splitlines()) == 3
