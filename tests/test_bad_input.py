"""Every bad setting, corpus or folder fails with exit status 2 and a message naming the fix, before any
data or model is touched (mspgt/config_schema.py, mspgt/config_validation.py); settings that run but
probably not as meant are warnings."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tests.conftest import MODEL_LOADED, TINY, log_text, run_mspgt

BAD = [
    (["probes.epochs=0"], "probes.epochs"),
    (["probes.epochs=-3"], "probes.epochs"),
    (["fusion.attention.first_block=bogus"], "fusion.attention.first_block"),
    (["fusion.edges=both"], "fusion.edges"),
    (["data.max_tokens=0"], "data.max_tokens"),
    (["extraction.chunk_groups=0"], "extraction.chunk_groups"),
    (["experiment=intervention", "experiment.activation_std.n_sentences=0"], "experiment.activation_std.n_sentences"),
    (["fusion.prominence=abc"], "fusion.prominence"),
    (["bootstrap.n_resamples=1.5"], "bootstrap.n_resamples"),
    (["extraction.cache=maybe"], "extraction.cache"),
    (["probes.f1_average=bogus"], "probes.f1_average"),
    (["probes.precision=float8"], "probes.precision"),
    (["probes.schedule=linear"], "probes.schedule"),
    (["experiment.name=bogus"], "experiment"),
    (["tracking.mode=bogus"], "tracking.mode"),
    (["data=text"], "data.path"),
    (["data=text", "data.path={binary}"], "byte 3"),
    (["data=conllu", "data.path={notconllu}"], "line 2"),
    (["paths.store_dir={file}"], "paths.store_dir"),
    (["paths.cache_dir={file}"], "paths.cache_dir"),
    (["hydra.run.dir={file}"], "hydra.run.dir"),
    (["model=llama2", "model.local_path={modeldir}"], "missing weights"),
]


@pytest.mark.parametrize(("override", "names"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_fails_before_the_model_loads(override, names, tmp_path):
    (tmp_path / "binary.txt").write_bytes(b"abc\xff\xfe\x00\x01 binary")
    (tmp_path / "notconllu.conllu").write_text("# a comment\nThis is prose, not CoNLL-U.\n")
    (tmp_path / "file").write_text("a file in the way")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}')  # no weights, no tokenizer
    files = {"binary": tmp_path / "binary.txt", "notconllu": tmp_path / "notconllu.conllu", "file": tmp_path / "file",
             "modeldir": tmp_path / "model"}
    override = [o.format(**files) for o in override]
    run = tmp_path / "r"
    args = ["model=tiny_llama", *TINY, *override]  # a later model= wins
    if not any(o.startswith("hydra.run.dir=") for o in override):
        args.append(f"hydra.run.dir={run}")
    proc = run_mspgt(args, tmp_path, check=False)
    text = log_text(proc)
    assert proc.returncode == 2, text[-3000:]
    assert names in text and "fix:" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert MODEL_LOADED not in text and "sentences in" not in text, "must fail before any data or model"
    assert not (run / "results.json").exists()
    if (run / "run.log").exists():
        assert names in (run / "run.log").read_text(), "the message belongs in run.log too"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_probe_device_without_cuda_names_probes_device(tmp_path):
    proc = run_mspgt(["model=tiny_llama", *TINY, "probes.device=cuda", f"hydra.run.dir={tmp_path / 'r'}"],
                     tmp_path, check=False)
    text = log_text(proc)
    assert proc.returncode == 2 and "probes.device=cuda" in text and "model.device" not in text, text[-3000:]
    assert MODEL_LOADED not in text and not (tmp_path / "r" / "results.json").exists()


def test_warnings_for_a_corpus_that_is_not_words_and_too_short(tmp_path):
    junk = tmp_path / "numbers.txt"
    rng = random.Random(0)
    junk.write_text("\n".join(" ".join(f"{rng.randint(0, 99999)}.{rng.randint(0, 99)}" for _ in range(8))
                              for _ in range(44)) + "\n")
    proc = run_mspgt(["model=tiny_llama", *TINY, "data=text", f"data.path={junk}", "data.one_per_line=true",
                      f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, check=False)
    text = log_text(proc)
    assert "44 of 44 sentences are mostly not words" in text, text[-3000:]
    assert "data.n_sentences=48 but the corpus gave only 44" in text


def test_identical_sentences_warn(caplog):
    from omegaconf import OmegaConf

    from mspgt.data.corpus import Sentence, check_sentences

    cfg = OmegaConf.create({"n_sentences": 3, "min_words": 1, "max_words": 40})
    check_sentences([Sentence("The same words again.", "d")] * 3, cfg)
    assert "all 3 sentences are identical" in caplog.text


def test_sigma_that_dwarfs_the_activations_warns(tmp_path):
    # the warning comes from the validation step; the missing data.path then stops the run before any work
    proc = run_mspgt(["model=tiny_llama", "experiment=intervention", "scale=local", "scale.layers=[1,2]",
                      "sigma=1e9", "data=text", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, check=False)
    text = log_text(proc)
    assert "dwarfs the activations" in text and proc.returncode == 2, text[-3000:]


# Settings that ran with a wrong or unchecked result, or ended in a raw traceback (issue 27): each is one message
# naming the setting and the fix, before any data or model.
REFUSED = [
    (["extraction.information.enabled=no"], "extraction.information.enabled"),
    (["extraction.information.alpha=-1"], "extraction.information.alpha"),
    (["extraction.information.alpha=nan"], "extraction.information.alpha"),
    (["extraction.information.alpha=two"], "extraction.information.alpha"),
    (["extraction.information.kink_window=0"], "extraction.information.kink_window"),
    (["extraction.information.kink_window=-2"], "extraction.information.kink_window"),
    (["extraction.information.max_tokens=0"], "extraction.information.max_tokens"),
    (["+fusion.prominance=0.9"], "fusion.prominence"),
    (["model.attn_implementation=nope"], "model.attn_implementation"),
    (["bootstrap.n_resamples=1000000000"], "bootstrap.n_resamples"),
    (["model.tiny.hidden_size=30"], "model.tiny.hidden_size"),
    (["model.tiny.num_attention_heads=0"], "model.tiny.num_attention_heads"),
    (["model.tiny.num_hidden_layers=0"], "model.tiny.num_hidden_layers"),
    (["model.tiny.num_hidden_layers=-1"], "model.tiny.num_hidden_layers"),
    (["bootstrap.seed=-1"], "bootstrap.seed"),
    (["bootstrap.grouping_seed=-1"], "bootstrap.grouping_seed"),
    (["probes.seed=-1"], "probes.seed"),
    (["probes.seed=1180591620717411303424"], "probes.seed"),
]


@pytest.mark.parametrize(("override", "names"), REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_unchecked_setting_is_refused_before_any_work(override, names, tmp_path):
    run = tmp_path / "r"
    proc = run_mspgt(["model=tiny_llama", *TINY, *override, f"hydra.run.dir={run}"], tmp_path, check=False)
    text = log_text(proc)
    assert proc.returncode == 2, text[-3000:]
    assert names in text and "fix:" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert MODEL_LOADED not in text and "sentences in" not in text, "must fail before any data or model"


def test_an_empty_cache_variable_is_refused_not_the_working_directory(tmp_path):
    proc = run_mspgt(["model=tiny_llama", *TINY, f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, check=False,
                     env_extra={"MSPGT_CACHE_DIR": ""})
    text = log_text(proc)
    assert proc.returncode == 2 and "MSPGT_CACHE_DIR" in text and "fix:" in text, text[-3000:]
    assert MODEL_LOADED not in text and not (tmp_path / "stats").exists() and not (tmp_path / "models").exists()


def test_probes_on_a_handful_of_words_warn(tmp_path):
    # the warning comes from the validation step; the missing data.path then stops the run before any work
    proc = run_mspgt(["model=tiny_llama", "probes.max_train_words=1", "data=text", f"hydra.run.dir={tmp_path / 'r'}"],
                     tmp_path, check=False)
    text = log_text(proc)
    assert "probes.max_train_words=1" in text and "noise" in text and proc.returncode == 2, text[-3000:]


REFUSED_FISHER_AND_MODEL = [
    (["experiment=fisher", "experiment.n_sentences=abc"], "experiment.n_sentences"),
    (["experiment=fisher", "experiment.band=0.5"], "experiment.band"),
    (["model.architecture=gpt2", "data.max_tokens=1000"], "data.max_tokens"),
]


@pytest.mark.parametrize(("override", "names"), REFUSED_FISHER_AND_MODEL,
                         ids=[" ".join(o) for o, _ in REFUSED_FISHER_AND_MODEL])
def test_fisher_and_model_settings_are_refused_before_any_work(override, names, tmp_path):
    run = tmp_path / "r"
    proc = run_mspgt(["model=tiny", *TINY, *override, f"hydra.run.dir={run}"], tmp_path, check=False)
    text = log_text(proc)
    assert proc.returncode == 2 and names in text and "fix:" in text, text[-3000:]
    assert "Traceback" not in text and MODEL_LOADED.replace("tiny_llama", "tiny_") not in text


def test_conllu_without_blank_lines_between_sentences_is_named(tmp_path):
    def token(i: int, word: str) -> str:
        return "\t".join([str(i), word, word, "NOUN", "_", "_", "0", "root", "_", "_"])

    glued = tmp_path / "glued.conllu"  # two sentences, no blank line between them
    glued.write_text("\n".join([token(1, "Dogs"), token(2, "bark"), "# sent_id = 2", token(1, "Cats"),
                                token(2, "sleep")]) + "\n")
    proc = run_mspgt(["model=tiny_llama", *TINY, "data=conllu", f"data.path={glued}",
                      f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, check=False)
    text = log_text(proc)
    assert proc.returncode == 2 and "line 4" in text and "blank line" in text and "min_words" not in text, text[-3000:]
    assert MODEL_LOADED not in text


@pytest.mark.parametrize(("override", "said"), [
    (["probes.epochs=1000000000"], "the probe training alone takes about"),
    (["bootstrap.n_resamples=10000000", "data.n_sentences=2000"], "the bootstrap alone takes about"),
])
def test_an_unbounded_setting_says_its_time_up_front(override, said, tmp_path):
    # the estimate comes from the validation step; the missing data.path then stops the run before any work
    proc = run_mspgt(["model=tiny_llama", *override, "data=text", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path,
                     check=False)
    text = log_text(proc)
    assert said in text and "docs/performance.md" in text and proc.returncode == 2, text[-3000:]


@pytest.mark.parametrize("layers", [0, -1])
def test_a_checkpoint_config_without_blocks_is_named_before_loading(layers, tmp_path):
    """model=local whose config.json says num_hidden_layers=0 or -1: one message naming config.json and the
    setting in it, not transformers' "load it with eager attention" or the hooks' "cannot find the decoder
    blocks" after the model loaded."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": layers,
                                                    "hidden_size": 64, "num_attention_heads": 4}))
    (folder / "model.safetensors").write_bytes(b"")  # never read: the config is refused first
    (folder / "tokenizer.json").write_text("{}")
    proc = run_mspgt(["model=local", f"model.local_path={folder}", *TINY, f"hydra.run.dir={tmp_path / 'r'}"],
                     tmp_path, check=False)
    text = log_text(proc)
    assert proc.returncode == 2, text[-3000:]
    assert f"num_hidden_layers={layers}" in text and str(folder / "config.json") in text and "fix:" in text, text[-3000:]
    assert "eager attention" not in text and "decoder blocks" not in text and "Traceback" not in text, text[-3000:]
    assert "loaded ckpt" not in text and "sentences in" not in text, "must fail before any data or model"
