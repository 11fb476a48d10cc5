"""Run by tests/integration/test_eval_backends.py in a child process (the engine layout is process-wide): two
in-process evaluation engines in a row, as the evaluation stage starts one per model, then one in vLLM's own
process layout. Prints one ``RESULT {json}`` line: greedy answers, engine child processes seen while each engine
was up, and the environment variable the in-process engine sets, before and after."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

from stages.startup import defer_collection, imports_done

defer_collection(__name__)  # as a stage process does (stages/startup.py)

FLAG = "VLLM_ENABLE_V1_MULTIPROCESSING"


def main() -> None:
    from stages.config import load_config
    from stages.generation import VLLMGenerator
    from stages.models import load_tokenizer, resolve_model

    imports_done()
    cfg = load_config(sys.argv[1], sys.argv[2:])
    path = resolve_model(cfg)
    tok = load_tokenizer(path, cfg.model)
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"{i} + {i + 5} ="}], tokenize=False, add_generation_prompt=True
        )
        for i in range(6)
    ]
    before = os.environ.get(FLAG)
    runs = []
    for in_process in (True, True, False):
        engine = VLLMGenerator(path, cfg, 512, in_process=in_process)
        try:
            children = len(multiprocessing.active_children())
            greedy = engine.generate(prompts, n=1, temperature=0.0, max_new_tokens=12, seed=0)
        finally:
            engine.close()
        runs.append(
            {"in_process": in_process, "children": children, "greedy": greedy, "flag_after": os.environ.get(FLAG)}
        )
    print("RESULT " + json.dumps({"prompts": prompts, "flag_before": before, "runs": runs}))


if __name__ == "__main__":
    main()
