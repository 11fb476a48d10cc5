"""Model options users of TRL reach for: precision, attention implementation, and a chat template of their own for
a model whose tokenizer has none. Each reaches transformers, and the template travels with the checkpoint."""

from __future__ import annotations

import pytest
import torch

from stages.config import ConfigError
from stages.models import load_model, load_tokenizer, resolve_model
from stages.sft import run as sft_run

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token if m['role'] == 'assistant' }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_dtype_and_attention_reach_transformers(tiny_cfg):
    cfg = tiny_cfg("model.dtype=bfloat16", "model.attn_implementation=eager")
    model = load_model(resolve_model(cfg), cfg.model)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"
    default = tiny_cfg()
    assert {p.dtype for p in load_model(resolve_model(default), default.model).parameters()} == {torch.float32}


def test_a_chat_template_file_is_used_and_saved_with_the_checkpoint(tiny_cfg, tmp_path):
    tpl = tmp_path / "chat.jinja"
    tpl.write_text(TEMPLATE)
    cfg = tiny_cfg(f"model.chat_template_path={tpl}", "sft.training.max_steps=1")
    tok = load_tokenizer(resolve_model(cfg), cfg.model)
    text = tok.apply_chat_template([{"role": "user", "content": "2+2"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>2+2\n<|assistant|>"
    sft_run(cfg)
    saved = load_tokenizer(str(cfg.arm_dir / "checkpoint"), tiny_cfg().model)  # no template option: the saved one
    assert saved.chat_template == TEMPLATE


def test_a_missing_template_file_is_refused_at_load(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="chat_template_path .* is not a file"):
        tiny_cfg(f"model.chat_template_path={tmp_path / 'nope.jinja'}")


def test_hub_ids_resolve_through_one_resolver_and_fail_clearly_offline(tiny_cfg, tmp_path, monkeypatch):
    from stages.evaluate import model_table
    from stages.models import ModelError, is_hub_id, resolve_checkpoint
    from stages.rl import run as rl_run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: the message must say what to do instead
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert is_hub_id("acme/tiny-chat") and not is_hub_id("runs/sft") and not is_hub_id("./a/b")
    assert resolve_checkpoint(str(tmp_path / "runs"), "rl.init") == str(tmp_path / "runs")  # a folder as it is
    with pytest.raises(ModelError, match="neither a folder here nor a hub id"):
        resolve_checkpoint("runs/sft", "rl.init")
    with pytest.raises(ConfigError, match=r"(?s)rl.init .acme/tiny-chat. could not be fetched from the hub.*Offline\?"):
        rl_run(tiny_cfg("rl.init=acme/tiny-chat"))
    with pytest.raises(ConfigError, match=r"eval.models 'acme/tiny-chat' could not be fetched from the hub"):
        model_table(tiny_cfg("eval.models=[acme/tiny-chat]"))
