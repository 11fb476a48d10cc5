"""Bad input, as one table: every row goes through a real entry point (a stage's command line, the sft2rl CLI, or a
flow's parameter validation), must stop with exit code 2 / ConfigError and one message naming the field or file,
before any training, and must leave an existing run folder byte-for-byte untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import CONFIGS


def _recorded(*overrides: str) -> str:
    """The config.yaml an arm records, made by configs/tiny.yaml with ``overrides``."""
    from stages.config import dump_config, load_config

    return dump_config(load_config(CONFIGS / "tiny.yaml", list(overrides)))


SENTINEL_FILES = {
    "tiny/sft/metrics.json": '{"steps": 4}\n',
    "tiny/sft/DONE": "complete\n",
    # the finished sft arm was trained at another learning rate than the tiny config's
    "tiny/sft/config.yaml": _recorded("sft.training.learning_rate=0.5"),
    # an RL arm killed after its step-2 checkpoint, started at another learning rate
    "tiny/rl-held/config.yaml": _recorded("rl.training.learning_rate=0.5", "rl.arm=rl-held"),
    "tiny/rl-held/trainer/checkpoint-2/trainer_state.json": '{"global_step": 2}\n',
    "tiny/report.md": "# an earlier report\n",
    "tiny/eval/base/metrics.json": "{}\n",
    # run "torn": a finished arm whose metrics.json was cut short
    "torn/sft/DONE": "complete\n",
    "torn/sft/checkpoint/config.json": "{}\n",
    "torn/sft/metrics.json": '{"steps": 4, "train_lo',
    "torn/sft/config.yaml": "run_name: [torn\n",  # and its recorded config, cut short
    # run "stale": an RL run from its sft arm's weights of that time; the sft arm was retrained since
    "stale/sft/DONE": "complete\n",
    "stale/sft/checkpoint/config.json": "{}\n",
    "stale/sft/checkpoint/model.safetensors": "the weights of the retrained sft arm",
    "stale/sft/metrics.json": "{}\n",
    "stale/rl-sft/DONE": "complete\n",
    "stale/rl-sft/checkpoint/config.json": "{}\n",
    "stale/rl-sft/metrics.json": '{"algorithm": "grpo", "init": "stale/sft/checkpoint"}\n',
    "stale/rl-sft/init.json": '{"init": "stale/sft/checkpoint", "sha256": {"model.safetensors": "0123abcd"}}\n',
    "stale/eval/rl-sft/metrics.json": "{}\n",  # evaluated before the sft arm was retrained
}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, cache_dir):
    """Broken files and folders the rows point at, and a tiny model folder to break in different ways."""
    from stages.config import load_config
    from stages.models import resolve_model

    ws = tmp_path_factory.mktemp("bad-input")
    (ws / "malformed.yaml").write_text("sft:\n  method: [sft\n")
    (ws / "list.yaml").write_text("- a\n- b\n")
    (ws / "python-tag.yaml").write_text("run_name: !!python/object/apply:os.system ['echo pwned']\n")
    (ws / "empty.jsonl").write_text("")
    (ws / "malformed.jsonl").write_text('{"question": "1+1", "response": \n')
    (ws / "nofield.jsonl").write_text(json.dumps({"prompt": "1+1?", "response": "2 #### 2", "answer": "2"}) + "\n")
    (ws / "badgold.jsonl").write_text(
        "".join(json.dumps({"question": f"{i}+{i}?", "answer": f"\\frac{{{i}}}{{"}) + "\n" for i in range(40))
    )
    cfg = load_config(CONFIGS / "tiny.yaml", [f"cache_dir={cache_dir}"])
    model = Path(resolve_model(cfg))
    corrupt = ws / "corrupt-model"
    shutil.copytree(model, corrupt)
    (corrupt / "config.json").write_text("{not json")
    pickle_only = ws / "pickle-model"
    shutil.copytree(model, pickle_only)
    for f in pickle_only.glob("*.safetensors"):
        f.rename(f.with_name("pytorch_model.bin"))
    (ws / "alias-bomb.yaml").write_text(
        "a: &a ['x', 'x', 'x', 'x', 'x', 'x', 'x', 'x']\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nrun_name: [*c, *c, *c, *c, *c, *c, *c, *c]\n"
    )
    (ws / "duplicate-keys.yaml").write_text("run_name: a\nseed: 1\nseed: 2\n")
    (ws / "deep.yaml").write_text("x: " + "[" * 3000 + "]" * 3000 + "\n")
    (ws / "latin1.yaml").write_bytes("run_name: caf\xe9\n".encode("latin-1"))
    (ws / "ok.yaml").write_text((CONFIGS / "tiny.yaml").read_text())
    (ws / "nested.jsonl").write_text(
        json.dumps({"prompt": [{"role": "user", "content": "1+1?"}], "reward_model": {"ground_truth": "2"}}) + "\n"
    )
    (ws / "dict-gold.jsonl").write_text(json.dumps({"question": "1+1?", "answer": {"value": 2}}) + "\n")
    (ws / "bad-chat.jsonl").write_text(json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    import os

    os.mkfifo(ws / "pipe.jsonl")
    (ws / "seedrun" / "eval").mkdir(parents=True)
    (ws / "driftrun" / "eval").mkdir(parents=True)  # a "seed run" whose sft arm was trained at another rate
    (ws / "driftrun" / "sft").mkdir()
    (ws / "driftrun" / "sft" / "config.yaml").write_text(_recorded("sft.training.learning_rate=0.9", "seed=1"))
    truncated = ws / "truncated-model"
    shutil.copytree(model, truncated)
    for f in truncated.glob("*.safetensors"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    remote = ws / "remote-code-model"
    shutil.copytree(model, remote)
    rc = json.loads((remote / "config.json").read_text())
    rc["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(rc))
    (ws / "huge-line.jsonl").write_text(json.dumps({"question": "x" * (17 << 20), "response": "y"}) + "\n")
    from transformers import AutoTokenizer

    big_vocab = ws / "big-vocab-model"
    shutil.copytree(model, big_vocab)
    tok = AutoTokenizer.from_pretrained(big_vocab)
    tok.add_tokens([f"extra{i}" for i in range(2000)])
    tok.save_pretrained(big_vocab)
    no_template = ws / "no-template-model"
    shutil.copytree(model, no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((no_template / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(tc))
    return ws


def _stage(name: str, *args: str):
    return ("stage", name, list(args))


TINY = str(CONFIGS / "tiny.yaml")
# A method whose arm does not exist yet in the sentinel run (an existing complete arm would be skipped).
RP, LOCAL, FILE = "sft.method=rpsft", "model.source=local", "data.source=file"
# (id, invocation, expected message fragment). {ws} = the workspace folder.
ROWS = [
    ("malformed-yaml", _stage("sft", "--config", "{ws}/malformed.yaml"), "not valid YAML"),
    ("yaml-not-a-mapping", _stage("sft", "--config", "{ws}/list.yaml"), "must hold a mapping"),
    ("yaml-python-tag", _stage("sft", "--config", "{ws}/python-tag.yaml"), "not valid YAML"),
    ("missing-config-file", _stage("sft", "--config", "{ws}/nope.yaml"), "does not exist"),
    ("unknown-key", _stage("sft", "--config", TINY, "sft.trainig.max_steps=3"), "sft.trainig: unknown key"),
    ("wrong-type", _stage("sft", "--config", TINY, "sft.training.max_steps=ten"), "sft.training.max_steps"),
    ("negative-lambda", _stage("sft", "--config", TINY, "sft.rpsft.lambda=-1"), "sft.rpsft.lambda"),
    ("k-fraction-above-1", _stage("sft", "--config", TINY, "sft.rpsft.k_fraction=1.5"), "k_fraction"),
    ("k-and-k-fraction", _stage("sft", "--config", TINY, "sft.rpsft.k=8"), "set exactly one of sft.rpsft.k"),
    ("zero-learning-rate", _stage("sft", "--config", TINY, "sft.training.learning_rate=0"), "learning_rate"),
    ("override-without-equals", _stage("sft", "--config", TINY, "sft.method"), "is not key=value"),
    ("run-name-escapes", _stage("sft", "--config", TINY, "run_name=../../etc"), "plain folder name"),
    ("unknown-method", _stage("sft", "--config", TINY, "sft.method=magic"), "sft.method"),
    ("rl-batch-not-multiple-of-group", _stage("rl", "--config", TINY, "rl.generation.num_generations=3"),
     "not a multiple of rl.generation.num_generations"),
    ("ppo-with-top-p", _stage("rl", "--config", TINY, "rl.algorithm=ppo", "rl.generation.top_p=0.9"),
     "set top_p=1 and top_k=0"),
    ("vllm-server-without-url", _stage("rl", "--config", TINY, "rl.generation.vllm_mode=server"),
     "vllm_server_base_url"),
    ("unknown-reward", _stage("rl", "--config", TINY, "rl.rewards=[os.system]"), "unknown rewards"),
    ("reward-weights-length", _stage("rl", "--config", TINY, "rl.reward_weights=[1.0]"), "rl.reward_weights has 1"),
    ("missing-model-folder", _stage("sft", "--config", TINY, RP, LOCAL, "model.path={ws}/absent"),
     "absent"),
    ("corrupt-model-folder", _stage("sft", "--config", TINY, RP, LOCAL, "model.path={ws}/corrupt-model"),
     "corrupt-model"),
    ("pickle-only-weights", _stage("sft", "--config", TINY, RP, LOCAL, "model.path={ws}/pickle-model"),
     "pickle"),
    ("no-chat-template", _stage("sft", "--config", TINY, RP, LOCAL, "model.path={ws}/no-template-model"),
     "chat template"),
    ("empty-dataset", _stage("sft", "--config", TINY, RP, FILE, "data.path={ws}/empty.jsonl"), "empty"),
    ("malformed-dataset", _stage("sft", "--config", TINY, RP, FILE, "data.path={ws}/malformed.jsonl"),
     "could not be read"),
    ("missing-mapped-field", _stage("sft", "--config", TINY, RP, FILE, "data.path={ws}/nofield.jsonl"),
     "column 'question' is missing"),
    ("unparsable-gold-answer", _stage("rl", "--config", TINY, "rl.prompt_data={source: file, path: {ws}/badgold.jsonl,"
     " fields: {response: null}}", "rl.num_prompts=8"), "gold answer the math_correct reward cannot read"),
    ("rl-init-missing", _stage("rl", "--config", TINY, "rl.init={ws}/no-such-checkpoint"), "rl.init"),
    ("eval-unknown-model", _stage("evaluate", "--config", TINY, "eval.models=[nosuch]"), "neither 'base'"),
    ("eval-duplicate-benchmarks", _stage("evaluate", "--config", TINY,
     "eval.benchmarks=[{name: a, source: facts}, {name: a, source: agreement}]"), "unique"),
    ("cli-unknown-stage", ("cli", ["stage", "train", "--config", TINY]), "invalid choice"),
    ("cli-run-unknown-arm", ("cli", ["run", "--config", TINY, "--arms", "sft,bogus", "--no-server"]), "bogus"),
    ("cli-run-bad-override", ("cli", ["run", "--config", TINY, "--no-server", "sft.training.learning_rate=-1"]),
     "learning_rate"),
    ("deploy-unknown-arm", ("flow", {"arms": ["bogus"]}), "bogus"),
    ("deploy-override-not-kv", ("flow", {"overrides": ["seed"]}), "key=value"),
    ("deploy-launcher-without-config", ("flow", {"launcher": {"num_processes": 2}}), "accelerate_config"),
    ("deploy-missing-config", ("flow", {"config": "configs/nope.yaml"}), "does not exist"),
    # Round two: output names, seeds, non-finite and unbounded numbers, hostile YAML, data and model files,
    # deployment parameters.
    ("arm-named-report-file", _stage("sft", "--config", TINY, "sft.arm=report.md"), "already uses"),
    ("arm-named-eval", _stage("sft", "--config", TINY, "sft.arm=eval"), "already uses"),
    ("arm-named-data", _stage("sft", "--config", TINY, "sft.arm=data"), "already uses"),
    ("arm-named-plots", _stage("sft", "--config", TINY, "sft.arm=plots"), "already uses"),
    ("arm-named-prepare", _stage("sft", "--config", TINY, "sft.arm=prepare"), "already uses"),
    ("arm-named-seeds", _stage("sft", "--config", TINY, "sft.arm=seeds"), "already uses"),
    ("arm-with-rl-prefix", _stage("sft", "--config", TINY, "sft.arm=rl-sft"), "prefix of RL outputs"),
    ("rl-arm-named-like-sft-arm", _stage("rl", "--config", TINY, "rl.arm=sft"), "must start with 'rl-'"),
    ("rl-arm-reserved", _stage("rl", "--config", TINY, "rl.arm=eval"), "already uses"),
    ("run-name-trailing-newline", _stage("sft", "--config", TINY, 'run_name="tiny\\n"'), "plain folder name"),
    ("arm-trailing-newline", _stage("sft", "--config", TINY, 'sft.arm="x\\n"'), "plain folder name"),
    ("seed-negative", _stage("sft", "--config", TINY, RP, "seed=-1"), "seed"),
    ("seed-too-large", _stage("sft", "--config", TINY, RP, "seed=4294967296"), "seed"),
    ("seeds-repeated", _stage("sft", "--config", TINY, RP, "seeds=[0, 0]"), "repeats"),
    ("seeds-out-of-range", _stage("sft", "--config", TINY, RP, "seeds=[0, 4294967296]"), "outside [0, 2**32)"),
    ("lr-inf", _stage("sft", "--config", TINY, RP, "sft.training.learning_rate=.inf"), "finite"),
    ("lambda-inf", _stage("sft", "--config", TINY, RP, "sft.rpsft.lambda=.inf"), "finite"),
    ("max-grad-norm-nan", _stage("sft", "--config", TINY, RP, "sft.training.max_grad_norm=.nan"), "finite"),
    ("rl-lr-inf", _stage("rl", "--config", TINY, "rl.training.learning_rate=.inf"), "finite"),
    ("rl-temperature-inf", _stage("rl", "--config", TINY, "rl.generation.temperature=.inf"), "finite"),
    ("bootstrap-huge", _stage("evaluate", "--config", TINY, "eval.bootstrap=1000000000"), "100000"),
    ("data-size-huge", _stage("sft", "--config", TINY, RP, "data.size=100000000000"), "data.size"),
    ("max-length-huge", _stage("sft", "--config", TINY, RP, "sft.training.max_length=100000000000"), "max_length"),
    ("yaml-alias-bomb", _stage("sft", "--config", "{ws}/alias-bomb.yaml"), "aliases are not allowed"),
    ("yaml-duplicate-keys", _stage("sft", "--config", "{ws}/duplicate-keys.yaml"), "duplicate key 'seed'"),
    ("yaml-deeply-nested", _stage("sft", "--config", "{ws}/deep.yaml"), "nested too deeply"),
    ("yaml-not-utf8", _stage("sft", "--config", "{ws}/latin1.yaml"), "UTF-8"),
    ("override-alias", _stage("sft", "--config", TINY, RP, "run_name=*x"), "aliases are not allowed"),
    ("include-invalid-regex", _stage("sft", "--config", TINY, RP, "sft.rpsft.include=['(']"), "regular expression"),
    ("unknown-scheduler", _stage("sft", "--config", TINY, RP, "sft.training.lr_scheduler_type=bogus"),
     "unknown scheduler"),
    ("data-field-index-out-of-range", _stage("sft", "--config", TINY, RP, FILE, "data.path={ws}/nested.jsonl",
     "data.fields.question=prompt[5].content"), "has no [5]"),
    ("data-field-path-malformed", _stage("sft", "--config", TINY, RP, FILE, "data.path={ws}/nested.jsonl",
     "data.fields.question=prompt..content"), "not a field path"),
    ("data-field-missing-key", _stage("sft", "--config", TINY, RP, FILE, "data.path={ws}/nested.jsonl",
     "data.fields.question=reward_model.truth"), "has no key 'truth'"),
    ("data-bad-chat-role", _stage("sft", "--config", TINY, RP, FILE, "data.path={ws}/bad-chat.jsonl",
     "data.fields.question=messages", "data.fields.response=null"), "role system/user/assistant"),
    ("rl-gold-is-a-dict", _stage("rl", "--config", TINY, "rl.prompt_data={source: file, path: {ws}/dict-gold.jsonl,"
     " fields: {response: null}}", "rl.num_prompts=1"), "is a dict"),
    ("data-is-a-pipe", _stage("sft", "--config", TINY, RP, FILE, "data.path={ws}/pipe.jsonl"), "not a regular file"),
    ("data-is-a-device", _stage("sft", "--config", TINY, RP, FILE, "data.path=/dev/zero"), "not a regular file"),
    ("model-truncated-safetensors", _stage("sft", "--config", TINY, RP, LOCAL, "model.path={ws}/truncated-model"),
     "truncated"),
    ("model-auto-map-remote-code-off", _stage("sft", "--config", TINY, RP, LOCAL,
     "model.path={ws}/remote-code-model"), "trust_remote_code=true"),
    ("lora-target-missing", _stage("sft", "--config", TINY, "sft.method=lora", "sft.lora.include_embeddings=false",
     "sft.lora.target_modules=[no_such_proj]"), "sft.lora.target_modules"),
    ("include-matches-nothing", _stage("sft", "--config", TINY, RP, "sft.rpsft.include=['^nothing$']"), "matched no"),
    ("jsonl-line-too-long", _stage("sft", "--config", TINY, RP, FILE, "data.path={ws}/huge-line.jsonl"),
     "longer than 16 MiB"),
    ("tokenizer-vocab-mismatch", _stage("sft", "--config", TINY, RP, LOCAL, "model.path={ws}/big-vocab-model"),
     "do not belong together"),
    ("report-seed-run-twice", _stage("report", "--config", TINY, "report.seed_runs=[{ws}/seedrun, {ws}/seedrun]"),
     "listed twice"),
    ("deploy-penalty-per-micro-batch-under-deepspeed", ("flow", {"arms": ["rpsft"], "overrides": [
     "sft.rpsft.mode=per_micro_batch"], "launcher": {"num_processes": 2, "accelerate_config":
     "configs/accelerate/zero2.yaml"}}), "cannot run under"),
    ("deploy-ppo-under-fsdp", ("flow", {"arms": ["sft"], "overrides": ["rl.algorithm=ppo"], "launcher": {
     "num_processes": 2, "accelerate_config": "configs/accelerate/fsdp.yaml"}}), "rl.algorithm=ppo cannot run under"),
    ("deploy-remote-code", ("deployment", {"overrides": ["model.trust_remote_code=true"]}), "refused for deployment"),
    ("deploy-config-outside-roots", ("deployment", {"config": "{ws}/ok.yaml"}), "outside the folders"),
    ("deploy-runs-root-outside-roots", ("deployment", {}), "runs_root="),
    # provenance: a finished or half-trained arm is never reused or resumed under another recipe
    ("sft-finished-arm-other-recipe", _stage("sft", "--config", TINY), "is finished with another SFT recipe"),
    ("sft-finished-arm-other-data", _stage("sft", "--config", TINY, "sft.training.learning_rate=0.5",
     "data.size=20"), "data.size: 64 -> 20"),
    ("sft-finished-arm-other-seed", _stage("sft", "--config", TINY, "sft.training.learning_rate=0.5", "seed=7"),
     "seed: 0 -> 7"),
    ("rl-half-trained-other-recipe", _stage("rl", "--config", TINY, "rl.arm=rl-held"),
     "was started with another RL recipe"),
    ("rl-half-trained-other-rewards", _stage("rl", "--config", TINY, "rl.arm=rl-held", "rl.training.learning_rate=0.5",
     "rl.rewards=[format]"),
     "rl.rewards"),
    ("rl-prompt-filter-one-sample", _stage("rl", "--config", TINY, "rl.prompt_filter.samples=1"),
     "cannot tell mixed rewards"),
    ("rl-prompt-filter-negative", _stage("rl", "--config", TINY, "rl.prompt_filter.samples=-2"),
     "rl.prompt_filter.samples"),
    ("rl-prompt-filter-not-a-number", _stage("rl", "--config", TINY, "rl.prompt_filter.samples=many"),
     "rl.prompt_filter.samples"),
    ("rl-prompt-filter-unknown-key", _stage("rl", "--config", TINY, "rl.prompt_filter.keep=all"),
     "rl.prompt_filter.keep: unknown key"),
    ("report-confounds-unknown", _stage("report", "--config", TINY, "report.confounds=ignore"), "report.confounds"),
    ("eval-torn-arm-metrics", _stage("evaluate", "--config", TINY, "run_name=torn"),
     "torn/sft/metrics.json is not valid JSON"),
    ("eval-rl-from-a-retrained-sft-arm", _stage("evaluate", "--config", TINY, "run_name=stale"),
     "rl-sft was started from other weights than"),
    ("report-rl-from-a-retrained-sft-arm", _stage("report", "--config", TINY, "run_name=stale"),
     "rl-sft was started from other weights than"),
    ("sft-finished-arm-torn-config", _stage("sft", "--config", TINY, "run_name=torn"),
     "torn/sft/config.yaml is not valid YAML"),
    ("report-seed-run-of-another-recipe", _stage("report", "--config", TINY, "report.seed_runs=[{ws}/driftrun]"),
     "is not the same experiment with another seed: sft's config differs in sft.training.learning_rate"),
    ("rl-half-trained-from-another-init", _stage("rl", "--config", TINY, "rl.arm=rl-held",
     "rl.training.learning_rate=0.5", "rl.init={ws}/big-vocab-model"), "rl.init: None -> '{ws}/big-vocab-model'"),
    ("rpsft-split-bf16-per-micro-batch", _stage("sft", "--config", TINY, RP, "sft.rpsft.precision=split_bf16",
     "sft.rpsft.mode=per_micro_batch"), "computes the blocks once per optimizer step"),
    ("rpsft-unknown-precision", _stage("sft", "--config", TINY, RP, "sft.rpsft.precision=fp16"),
     "sft.rpsft.precision"),
    ("eval-models-twice", _stage("evaluate", "--config", TINY, "eval.models=[base, sft, base]"), "more than once"),
    ("runs-root-is-a-file", ("cli", ["stage", "sft", "--config", TINY, "runs_root={ws}/ok.yaml"]),
     "runs_root {ws}/ok.yaml is a file, not a folder"),
    ("cache-dir-is-a-file", ("cli", ["stage", "prepare", "--config", TINY, "cache_dir={ws}/ok.yaml"]),
     "is a file, not a folder"),
]  # fmt: skip


def _fill(x, ws: Path):
    if isinstance(x, str):
        return x.replace("{ws}", str(ws))
    if isinstance(x, list):
        return [_fill(v, ws) for v in x]
    if isinstance(x, dict):
        return {k: _fill(v, ws) for k, v in x.items()}
    return x


def test_row_names_are_unique():
    assert len({r[0] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize(("case", "invocation", "fragment"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_refused_with_a_named_message_and_nothing_touched(
    case, invocation, fragment, workspace, tmp_path, cache_dir, capfd, monkeypatch
):
    runs = tmp_path / "runs"
    for rel, text in SENTINEL_FILES.items():
        (runs / rel).parent.mkdir(parents=True, exist_ok=True)
        (runs / rel).write_text(text)
    before = _digest(runs)
    monkeypatch.setenv("SFT2RL_CACHE_DIR", str(cache_dir))
    # In-process calls leave logging handlers bound to an earlier test's (closed) captured stderr: drop the root
    # handlers (each stage call installs its own) and point library handlers (datasets, ...) at the current stderr.
    import logging
    import sys

    monkeypatch.setattr(logging.root, "handlers", [])
    for lg in [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict)]:
        for h in getattr(lg, "handlers", []):
            if type(h) is logging.StreamHandler:
                h.stream = sys.stderr
    kind = invocation[0]
    common = [f"runs_root={runs}", f"cache_dir={cache_dir}"]
    if kind == "stage":
        import importlib

        _, name, args = invocation
        module = importlib.import_module(f"stages.{name}")
        code = module.main([*_fill(args, workspace), *common])
        message = capfd.readouterr().err
    elif kind == "cli":
        from pipeline.cli import main

        args = _fill(invocation[1], workspace)
        try:
            code = main([*args, *common] if args[0] == "run" else args)
        except SystemExit as e:  # argparse
            code = e.code
        message = capfd.readouterr().err
    else:
        from pipeline.params import PipelineParams, _params, resolve
        from stages.config import ConfigError

        if kind == "deployment":  # what Prefect sets in a flow run started from a deployment
            monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "00000000-0000-0000-0000-000000000000")
            monkeypatch.delenv("SFT2RL_ALLOWED_ROOTS", raising=False)
        params = {"config": TINY, **_fill(invocation[1], workspace)}
        params["overrides"] = [*params.get("overrides", []), *common]
        with pytest.raises(ConfigError) as err:
            resolve(_params(PipelineParams, **params))
        code, message = 2, str(err.value)
    assert code == 2, message
    assert _fill(fragment, workspace) in message, message
    assert message.count("\n") < 12  # one message, not a traceback
    assert "Traceback" not in message
    assert _digest(runs) == before  # existing outputs untouched, and nothing new written
