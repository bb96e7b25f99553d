"""Appendix A.5 (experiment=fisher): the Fisher-trace estimators against a brute-force Jacobian on a tiny
random Llama with an 11-token vocabulary (float64), the second-order KL prediction against the measured KL at
tiny sigma, and the experiment end to end on tiny_llama (plumbing, not science)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mspgt.errors import MspgtError
from mspgt.interventions.fisher import (
    EXACT_MAX_VOCAB,
    _forward_logprobs,
    _row_sq_norms,
    differentiable_states,
    fisher_trace_sampled,
    fit_against_sigma_squared,
    noised_divergences,
    predicted_kl,
    predicted_positions,
)
from mspgt.model.loading import LoadedModel, decoder_blocks
from tests.conftest import TINY, run_mspgt


def fisher_trace_exact(loaded: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The test oracle: (B, L+1) Tr F_l per sentence with every y enumerated at every predicted position (one backward pass
    per position and vocabulary entry; rows of the batch share them): the reference for small vocabularies."""
    logp, states = _forward_logprobs(loaded, ids, mask)  # (B, T, V)
    B, T, V = logp.shape
    if V > EXACT_MAX_VOCAB:
        raise MspgtError(f"exact Fisher traces enumerate the vocabulary ({V} entries)",
                         f"use fisher_trace_sampled, or a model with at most {EXACT_MAX_VOCAB} tokens")
    keep = predicted_positions(mask).to(logp.dtype)  # (B, T)
    probs = logp.detach().exp()  # (B, T, V)
    total = torch.zeros(B, len(states), dtype=torch.float64, device=ids.device)  # (B, L+1)
    for u in range(T):
        if not keep[:, u].any():
            continue
        for y in range(V):
            picked = (keep[:, u] * logp[:, u, y]).sum()  # rows do not interact: each row's own log p_u(y)
            grads = torch.autograd.grad(picked, states, retain_graph=True)
            weight = (keep[:, u] * probs[:, u, y]).double()[:, None]  # (B, 1)
            total += weight * _row_sq_norms(grads).double()
    return total

VOCAB = 11


@pytest.fixture(scope="module")
def small_vocab():
    """A tiny Llama (3 blocks, d = 16, 11 tokens) in float64, and a padded batch of 3 sentences."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(config).double().eval()
    model.requires_grad_(False)
    from mspgt.model.attention_layout import attention_layout

    loaded = LoadedModel("small", "llama", model, None, decoder_blocks(model), torch.device("cpu"),
                         torch.float64, "small-seed0", attention_layout(config, config.num_hidden_layers))
    ids = torch.randint(0, VOCAB, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0  # a padded row
    return loaded, ids, mask


def brute_force_trace(loaded, ids, mask, layer: int) -> torch.Tensor:
    """(B,) sum_u sum_y p_u(y) ||d log p_u(y) / d h_layer||^2 from the full Jacobian of every log-probability
    with respect to h_layer (the block output replaced by the Jacobian's input through a hook)."""
    model = loaded.model
    with differentiable_states(loaded) as states:
        model(input_ids=ids, attention_mask=mask)
    h = states[layer].detach().clone()  # (B, T, d)
    module = model.get_input_embeddings() if layer == 0 else loaded.blocks[layer - 1]

    def logprobs(x: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(
            lambda _m, _a, out: (x, *out[1:]) if isinstance(out, tuple) else x)
        try:
            return torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, -1)  # (B, T, V)
        finally:
            handle.remove()

    jac = torch.autograd.functional.jacobian(logprobs, h)  # (B, T, V, B, T, d)
    p = logprobs(h).exp()  # (B, T, V)
    keep = predicted_positions(mask)
    out = torch.zeros(ids.shape[0], dtype=torch.float64)
    for b in range(ids.shape[0]):
        for u in range(ids.shape[1]):
            if keep[b, u]:
                out[b] += (p[b, u] * jac[b, u].square().sum(dim=(1, 2, 3))).sum()
    return out


def test_exact_trace_equals_brute_force_jacobian(small_vocab):
    loaded, ids, mask = small_vocab
    exact = fisher_trace_exact(loaded, ids, mask)  # (B, L+1)
    brute = torch.stack([brute_force_trace(loaded, ids, mask, layer) for layer in range(loaded.n_blocks + 1)], 1)
    assert exact.shape == (3, loaded.n_blocks + 1)
    torch.testing.assert_close(exact, brute, rtol=1e-5, atol=1e-8)


def test_rows_do_not_interact_and_padding_is_excluded(small_vocab):
    loaded, ids, mask = small_vocab
    batch = fisher_trace_exact(loaded, ids, mask)
    alone = fisher_trace_exact(loaded, ids[1:2, :4], mask[1:2, :4])  # the padded row without its padding
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-10, atol=1e-10)


def test_sampled_trace_is_unbiased(small_vocab):
    loaded, ids, mask = small_vocab
    exact = fisher_trace_exact(loaded, ids, mask).numpy()
    gen = torch.Generator().manual_seed(0)
    draws = np.stack([fisher_trace_sampled(loaded, ids, mask, 1, gen).numpy() for _ in range(300)])  # (K, B, L+1)
    mean, se = draws.mean(0), draws.std(0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(mean - exact) < 4.5 * se), (mean, exact, se)
    # several samples per call average them: same expectation, smaller spread
    two = np.stack([fisher_trace_sampled(loaded, ids, mask, 4, gen).numpy() for _ in range(60)])
    assert np.all(np.abs(two.mean(0) - exact) < 4.5 * two.std(0, ddof=1) / np.sqrt(len(two)))


def test_measured_kl_matches_the_second_order_prediction_at_tiny_sigma(small_vocab):
    loaded, ids, mask = small_vocab
    exact = fisher_trace_exact(loaded, ids, mask).numpy()
    n = predicted_positions(mask).sum().item()
    per_token = exact.sum(0) / n  # [L+1]
    s = [0.0, 0.7, 1.3, 0.9]
    sigma, blocks, draws = 1e-3, [1, 3], 200
    kl, dnll = noised_divergences(loaded, [(ids, mask)], [({b: s[b] for b in blocks}, sigma)], draws, seed=3)
    measured = kl.values[:, 0].sum(0) / n  # [draws] per-token KL of each noise draw
    predicted = predicted_kl(per_token, s, blocks, sigma)
    se = measured.std(ddof=1) / np.sqrt(draws)
    assert abs(measured.mean() - predicted) < 4 * se + 0.01 * predicted, (measured.mean(), predicted, se)
    assert dnll.values.shape == (3, 1, draws)


def test_fit_against_sigma_squared_recovers_a_planted_quadratic():
    sigmas = [0.01, 0.02, 0.05]
    values = np.array([[3.0 * s**2, 3.0 * s**2] for s in sigmas])  # [sigmas, draws]
    fit = fit_against_sigma_squared(sigmas, values)
    assert fit["slope"] == pytest.approx(3.0) and fit["r2"] == pytest.approx(1.0)
    assert abs(fit["intercept"]) < 1e-12


SCALES = "experiment.scale_layers={local:[1,2],intermediate:[3,4],global:[5,6]}"


def test_fisher_experiment_on_tiny_llama(tmp_path, shared_cache):
    args = ["experiment=fisher", "model=tiny_llama", *TINY, "experiment.n_sentences=12",
            "experiment.kl_sentences=8", SCALES, "experiment.sigmas=[0.01,0.05]", "hydra.run.dir=run"]
    run_mspgt(args, tmp_path, cache=shared_cache)
    result = json.loads((tmp_path / "run" / "fisher.json").read_text())
    assert result["experiment"] == "fisher" and result["heldout"]["first_sentence"] == 48
    assert set(result["scales"]) == {"local", "intermediate", "global"}
    assert len(result["fisher"]["per_token"]) == 7
    assert result["verdict"]["value"] in ("supported", "refuted", "mixed")
    for r in result["scales"].values():
        assert [p["sigma"] for p in r["per_sigma"]] == [0.01, 0.05]
    assert (tmp_path / "run" / "fisher.png").stat().st_size > 0
    assert "Verdict" in (tmp_path / "run" / "fisher.md").read_text()


@pytest.mark.parametrize("bad", ["experiment.sigmas=[-0.1]", "experiment.kl_sentences=500",
                                 "experiment.band=[1.5,2]", "experiment.samples_per_position=0"])
def test_bad_fisher_settings_fail_before_the_model_loads(tmp_path, shared_cache, bad):
    proc = run_mspgt(["experiment=fisher", "model=tiny_llama", *TINY, SCALES, bad, "hydra.run.dir=run"], tmp_path,
                     cache=shared_cache, check=False)
    assert proc.returncode == 2
    assert "fix:" in proc.stdout + proc.stderr
    assert "loaded tiny_llama" not in proc.stdout + proc.stderr
